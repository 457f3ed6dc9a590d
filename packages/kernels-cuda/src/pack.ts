/**
 * The device layout of int4 weights for the W4A8 GEMM (csrc/gemm/w4a8_mma.cu), and back.
 *
 * Tiles of 16 output channels × 64 k, ordered [n/16][kTiles][lane 0..31][16 bytes], kTiles = ceil(kPadded/64)
 * (k past kPadded is zero). Lane l = 4g + t owns rows n0+g and n0+g+8 and k = k0+16t … k0+16t+15; byte i holds
 * w[n0+g, k0+16t+i] in its low nibble and w[n0+g+8, k0+16t+i] in its high nibble. On the GPU, `(x << 4) &
 * 0xF0F0F0F0` and `x & 0xF0F0F0F0` of each 32-bit word are then exactly the int8 (16·w) register fragments of
 * operand A of `mma.m16n8k32` for rows g and g+8, so one 16-byte load feeds two mma steps with no shuffles.
 */
import { QError } from '@q/core';
import type { Int4Weights } from '@q/quant';

/** Name of the layout; stored with the weights so a future layout is never misread. */
export const GEMM_LAYOUT = 'q-w4a8-mma16x64-v1';

/** Weights in the GEMM's device layout, still on the host. */
export interface PackedGemmWeights {
  readonly layout: typeof GEMM_LAYOUT;
  readonly n: number;
  readonly k: number;
  readonly kPadded: number;
  readonly groupSize: number;
  /** kPadded / groupSize (1 for per-channel weights). */
  readonly groups: number;
  readonly kTiles: number;
  /** [n/16][kTiles][32][16] bytes. */
  readonly packed: Uint8Array;
  /** f32 [n, groups]. */
  readonly scales: Float32Array;
  /** Integer Scale factors i32 [n, groups] and unit f32 [n], when the weights carry them. */
  readonly intScale?: { readonly q: Int32Array; readonly unit: Float32Array; readonly amplifierBits: number };
}

function nib(packed: Uint8Array, idx: number): number {
  const b = packed[idx >> 1] as number;
  return (idx & 1) === 0 ? b & 0xf : b >> 4;
}

/**
 * Checks the GEMM's constraints on int4 weights; throws a QError naming the numbers.
 *
 * @example
 * ```ts
 * checkGemmWeights(weights); // throws E_SHAPE naming n, k or groupSize when the kernel cannot take them
 * ```
 */
export function checkGemmWeights(w: Int4Weights, what = 'packForGemm'): void {
  if (w.format !== 'int4')
    throw new QError('E_FORMAT', `${what}: Expected int4 weights but received format ${String(w.format)}`);
  if (!w.symmetric || w.zeros !== undefined) {
    throw new QError(
      'E_UNSUPPORTED',
      `${what}: Expected symmetric int4 weights (the GEMM has no zero points) but received asymmetric ones`,
    );
  }
  if (!Number.isInteger(w.n) || w.n <= 0 || w.n % 16 !== 0) {
    throw new QError('E_SHAPE', `${what}: n=${w.n} is not a positive multiple of 16`);
  }
  if (!Number.isInteger(w.groupSize) || w.groupSize <= 0 || w.kPadded % w.groupSize !== 0) {
    throw new QError('E_SHAPE', `${what}: k=${w.kPadded} is not a multiple of groupSize=${w.groupSize}`);
  }
  if (w.kPadded < w.k) throw new QError('E_SHAPE', `${what}: kPadded=${w.kPadded} is smaller than k=${w.k}`);
  if (w.kPadded % 16 !== 0) {
    throw new QError(
      'E_SHAPE',
      `${what}: k=${w.kPadded} is not a multiple of 16 (pad k to a multiple of 16)`,
    );
  }
  const groups = w.kPadded / w.groupSize;
  if (groups > 1 && w.groupSize % 64 !== 0) {
    throw new QError(
      'E_UNSUPPORTED',
      `${what}: groupSize=${w.groupSize} is not a multiple of 64 (the GEMM's k tile)`,
    );
  }
  if (w.packed.length !== (w.n * w.kPadded) / 2) {
    throw new QError(
      'E_SHAPE',
      `${what}: Expected ${(w.n * w.kPadded) / 2} packed bytes for n=${w.n}, kPadded=${w.kPadded} but received ${w.packed.length}`,
    );
  }
  if (w.scales.length !== w.n * groups) {
    throw new QError(
      'E_SHAPE',
      `${what}: Expected ${w.n * groups} scales for n=${w.n}, groups=${groups} but received ${w.scales.length}`,
    );
  }
  if (w.intScale !== undefined && (w.intScale.q.length !== w.n * groups || w.intScale.unit.length !== w.n)) {
    throw new QError(
      'E_SHAPE',
      `${what}: Expected intScale.q of length ${w.n * groups} and unit of length ${w.n} but received ${w.intScale.q.length} and ${w.intScale.unit.length}`,
    );
  }
}

/**
 * Re-lays int4 weights for the W4A8 GEMM (high-nibble form, interleaved for the mma fragments).
 *
 * @example
 * ```ts
 * const p = packForGemm(quantizeInt4(w, { groupSize: 128 }));
 * const dev = uploadGemmWeights(p);
 * ```
 */
export function packForGemm(w: Int4Weights): PackedGemmWeights {
  checkGemmWeights(w);
  const { n, kPadded } = w;
  const kTiles = Math.ceil(kPadded / 64);
  const out = new Uint8Array((n / 16) * kTiles * 512);
  let o = 0;
  for (let nt = 0; nt < n / 16; nt++) {
    for (let kt = 0; kt < kTiles; kt++) {
      for (let lane = 0; lane < 32; lane++) {
        const g = lane >> 2;
        const t = lane & 3;
        const r0 = (nt * 16 + g) * kPadded;
        const r1 = (nt * 16 + g + 8) * kPadded;
        const kb = kt * 64 + 16 * t;
        for (let i = 0; i < 16; i++) {
          const k = kb + i;
          out[o++] = k < kPadded ? nib(w.packed, r0 + k) | (nib(w.packed, r1 + k) << 4) : 0;
        }
      }
    }
  }
  const groups = kPadded / w.groupSize;
  return {
    layout: GEMM_LAYOUT,
    n,
    k: w.k,
    kPadded,
    groupSize: w.groupSize,
    groups,
    kTiles,
    packed: out,
    scales: w.scales,
    ...(w.intScale
      ? { intScale: { q: w.intScale.q, unit: w.intScale.unit, amplifierBits: w.intScale.amplifierBits } }
      : {}),
  };
}

/**
 * Inverse of the layout part of `packForGemm`: the plain int4 packing (low nibble first), row-major
 * [n, kPadded].
 *
 * @example
 * ```ts
 * unpackFromGemm(packForGemm(w)) // equals w.packed byte for byte
 * ```
 */
export function unpackFromGemm(p: PackedGemmWeights): Uint8Array {
  if (p.layout !== GEMM_LAYOUT)
    throw new QError('E_FORMAT', `Expected layout ${GEMM_LAYOUT} but received ${String(p.layout)}`);
  const { n, kPadded, kTiles } = p;
  if (p.packed.length !== (n / 16) * kTiles * 512) {
    throw new QError(
      'E_SHAPE',
      `Expected ${(n / 16) * kTiles * 512} packed bytes but received ${p.packed.length}`,
    );
  }
  const out = new Uint8Array((n * kPadded) / 2);
  const put = (idx: number, v: number): void => {
    const j = idx >> 1;
    out[j] = (idx & 1) === 0 ? ((out[j] as number) & 0xf0) | v : ((out[j] as number) & 0x0f) | (v << 4);
  };
  let o = 0;
  for (let nt = 0; nt < n / 16; nt++) {
    for (let kt = 0; kt < kTiles; kt++) {
      for (let lane = 0; lane < 32; lane++) {
        const g = lane >> 2;
        const t = lane & 3;
        for (let i = 0; i < 16; i++) {
          const b = p.packed[o++] as number;
          const k = kt * 64 + 16 * t + i;
          if (k >= kPadded) continue;
          put((nt * 16 + g) * kPadded + k, b & 0xf);
          put((nt * 16 + g + 8) * kPadded + k, b >> 4);
        }
      }
    }
  }
  return out;
}
