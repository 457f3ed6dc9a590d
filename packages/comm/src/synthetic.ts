import { f32ArrayToBf16, f32ArrayToF16 } from '@q/core';
import type { HostPayload, PayloadDType } from './reference';

function hash32(x: number): number {
  // murmur3's finalizer: every input bit moves every output bit, so consecutive indices look independent.
  let h = x >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/**
 * Activation-like test data that any process can regenerate element by element: value i of rank r depends only
 * on (seed, r, i). Roughly N(0, 1) with 1% outliers of up to 20x, the shape that makes per-group scales matter.
 * Benchmarks and GPU tests use it so rank 0 can compute the exact sum of every rank's input without receiving it.
 *
 * @example
 * ```ts
 * const x = syntheticActivations(1, 8192, 'bf16'); // rank 1's input, raw bf16 bits
 * ```
 */
export function syntheticActivations(rank: number, n: number, dtype: PayloadDType, seed = 1): HostPayload {
  const f = new Float32Array(n);
  const base = Math.imul(seed, 0x9e3779b1) ^ Math.imul(rank + 1, 0x7feb352d);
  for (let i = 0; i < n; i++) {
    const a = hash32(base + Math.imul(i, 2) + 1);
    const b = hash32(a ^ 0x68e31da4);
    const u = (a >>> 8) / 16777216 + (b >>> 8) / 16777216 - 1; // triangular on (-1, 1)
    f[i] = (b & 0xff) < 3 ? 20 * u : 1.7 * u;
  }
  return dtype === 'f32' ? f : dtype === 'f16' ? f32ArrayToF16(f) : f32ArrayToBf16(f);
}
