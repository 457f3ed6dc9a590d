/** Seeded PRNG and input makers shared by the tests (not exported from the package). */
import { f32ArrayToBf16, f32ArrayToF16 } from '@q/core';
import type { HostPayload, PayloadDType } from './reference';

export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Activation-like values: mostly N(0,1)-ish with a few outliers. */
export function randomF32(n: number, rand: () => number, scale = 1): Float32Array {
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u = rand() + rand() + rand() - 1.5;
    x[i] = (rand() < 0.01 ? 20 * u : u) * scale;
  }
  return x;
}

export function randomPayload(n: number, dtype: PayloadDType, rand: () => number): HostPayload {
  const x = randomF32(n, rand);
  return dtype === 'f32' ? x : dtype === 'f16' ? f32ArrayToF16(x) : f32ArrayToBf16(x);
}
