import { QError, relativeError } from '@q/core';
import { rintHalfEven } from './activation';
import type { Int4Weights, Int8Weights } from './types';

/**
 * Weight quantizers: pure CPU functions from a row-major f32 matrix W[n, k] (out × in) to the formats of
 * `types.ts`. Groups run along k. All-zero groups get scale 0 and values 0 (no division happens), so they
 * dequantize to exactly 0.
 */

/** Clipping search: try `clip ∈ {1, 1 − step, …, minRatio}` times the group range, keep the lowest MSE. */
export interface ClipSearch {
  /** Number of clip ratios tried, evenly spaced from 1 down to `minRatio` (≥ 2). */
  readonly steps: number;
  /** Smallest ratio tried, in (0, 1). */
  readonly minRatio: number;
}

export interface Int4Options {
  /** Elements per group along k, or 'channel' for one group per output row. Default 128. */
  readonly groupSize?: number | 'channel';
  /** Zero-pad k up to a multiple of groupSize (otherwise a group that does not divide k is an error). Default true. */
  readonly padK?: boolean;
  /** Symmetric [-7, 7] (true, default) or asymmetric [-8, 7] with a zero point. */
  readonly symmetric?: boolean;
  /** Search the clip ratio of each group minimising the reconstruction MSE; false (default) is plain RTN. */
  readonly clip?: ClipSearch | false;
  /** Layer name for error messages. */
  readonly name?: string;
}

export const DEFAULT_CLIP_SEARCH: ClipSearch = Object.freeze({ steps: 20, minRatio: 0.5 });

function checkMatrix(w: Float32Array, n: number, k: number, name: string): void {
  if (!Number.isSafeInteger(n) || n < 1 || !Number.isSafeInteger(k) || k < 1) {
    throw new QError('E_SHAPE', `Expected n ≥ 1 and k ≥ 1 for ${name} but received n=${n}, k=${k}`);
  }
  if (w.length !== n * k) {
    throw new QError(
      'E_SHAPE',
      `Expected ${n * k} elements (n=${n} × k=${k}) for ${name} but received ${w.length}`,
    );
  }
}

/**
 * Throws `E_NUMERIC` naming the layer and the first bad element when `w` holds NaN or ±Inf.
 *
 * @example
 * ```ts
 * assertFinite(Float32Array.of(1, NaN), 'model.layers.0.mlp.up_proj', 2) // throws: … row 0, column 1
 * ```
 */
export function assertFinite(w: ArrayLike<number>, name: string, cols?: number): void {
  for (let i = 0; i < w.length; i++) {
    const v = w[i] as number;
    if (v - v !== 0) {
      const where = cols ? `row ${Math.floor(i / cols)}, column ${i % cols}` : `element ${i}`;
      throw new QError('E_NUMERIC', `Expected finite values for ${name} but received ${v} at ${where}`);
    }
  }
}

function checkClip(clip: ClipSearch | false | undefined, name: string): ClipSearch | false {
  if (clip === undefined || clip === false) return false;
  if (!Number.isInteger(clip.steps) || clip.steps < 2 || !(clip.minRatio > 0 && clip.minRatio < 1)) {
    throw new QError(
      'E_ARG',
      `Expected clip {steps ≥ 2, 0 < minRatio < 1} for ${name} but received ${JSON.stringify(clip)}`,
    );
  }
  return clip;
}

/**
 * Resolves the group size and padded k for a layer. Throws `E_SHAPE` when the group does not divide k and
 * padding is off, and `E_ARG` for a group size that is not a positive even integer.
 *
 * @example
 * ```ts
 * groupLayout(172, 64, true) // { groupSize: 64, kPadded: 192, groups: 3 }
 * ```
 */
export function groupLayout(
  k: number,
  groupSize: number | 'channel' = 128,
  padK = true,
  name = 'weights',
): { groupSize: number; kPadded: number; groups: number } {
  if (groupSize === 'channel') return { groupSize: k, kPadded: k, groups: 1 };
  if (!Number.isSafeInteger(groupSize) || groupSize < 2 || groupSize % 2 !== 0) {
    throw new QError(
      'E_ARG',
      `Expected a positive even group size (32, 64, 128) or 'channel' for ${name} but received ${groupSize}`,
    );
  }
  const groups = Math.ceil(k / groupSize);
  if (k % groupSize !== 0 && !padK) {
    throw new QError(
      'E_SHAPE',
      `Expected K=${k} to be a multiple of groupSize=${groupSize} for ${name} but received a remainder of ${
        k % groupSize
      }; padding is off (padK: false), so turn padK on to zero-pad K to ${groups * groupSize}`,
    );
  }
  return { groupSize, kPadded: groups * groupSize, groups };
}

/**
 * Quantizes W[n, k] to int4 group-wise along k (round to nearest, ties to even). Symmetric:
 * `scale = f32(max|w| / 7)`, `q = clamp(rint(w / scale), -7, 7)`. Asymmetric: the range [min(w, 0), max(w, 0)]
 * maps onto [-8, 7] with an integer zero point. With `clip`, the range is shrunk by the ratio minimising
 * Σ (w − dequant(q))² of each group.
 *
 * @example
 * ```ts
 * const q = quantizeInt4(new Float32Array(4096 * 4096).fill(0.1), 4096, 4096, { groupSize: 128 });
 * q.scales.length // 4096 * 32
 * ```
 */
export function quantizeInt4(w: Float32Array, n: number, k: number, options: Int4Options = {}): Int4Weights {
  return quantizeInt4WithStats(w, n, k, options).weights;
}

/**
 * Per-group sums gathered while quantizing, row-major [n, groups], with `e = q − zero` the effective integer:
 * Σw², Σw·e, Σe², Σ|e|. They give the reconstruction error for any group scale s as
 * `Σw² − 2sΣwe + s²Σe²` and the Integer Scale overflow bound, without another pass over the weights.
 */
export interface Int4GroupStats {
  readonly sumW2: Float64Array;
  readonly sumWE: Float64Array;
  readonly sumE2: Float64Array;
  readonly sumAbsE: Float64Array;
}

/**
 * `quantizeInt4` that also returns the per-group sums of `Int4GroupStats` (one pass for plain RTN).
 *
 * @example
 * ```ts
 * const { weights, stats } = quantizeInt4WithStats(w, n, k, { groupSize: 128 });
 * weightErrorFromStats(weights, stats) // relative Frobenius error of dequant(weights) vs w
 * ```
 */
export function quantizeInt4WithStats(
  w: Float32Array,
  n: number,
  k: number,
  options: Int4Options = {},
): { weights: Int4Weights; stats: Int4GroupStats } {
  const name = options.name ?? 'weights';
  checkMatrix(w, n, k, name);
  const { groupSize, kPadded, groups } = groupLayout(k, options.groupSize ?? 128, options.padK ?? true, name);
  const symmetric = options.symmetric ?? true;
  const clip = checkClip(options.clip, name);
  const ratios: number[] = [1];
  if (clip) {
    for (let i = 1; i < clip.steps; i++) ratios.push(1 - ((1 - clip.minRatio) * i) / (clip.steps - 1));
  }
  const qmin = symmetric ? -7 : -8;
  const vals = new Int8Array(n * kPadded);
  const scales = new Float32Array(n * groups);
  const zeros = symmetric ? undefined : new Int8Array(n * groups);
  const sumW2 = new Float64Array(n * groups);
  const sumWE = new Float64Array(n * groups);
  const sumE2 = new Float64Array(n * groups);
  const sumAbsE = new Float64Array(n * groups);
  const tmp = new Int8Array(groupSize);
  for (let r = 0; r < n; r++) {
    const rowIn = r * k;
    const rowOut = r * kPadded;
    for (let g = 0; g < groups; g++) {
      const k0 = g * groupSize;
      const k1 = Math.min(k, k0 + groupSize);
      let lo = 0;
      let hi = 0;
      // v·0 is NaN exactly when v is NaN or ±Inf, so one sum checks the whole group.
      let bad = 0;
      let w2 = 0;
      for (let j = k0; j < k1; j++) {
        const v = w[rowIn + j] as number;
        bad += v * 0;
        w2 += v * v;
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
      if (Number.isNaN(bad)) assertFinite(w, name, k);
      const gi = r * groups + g;
      sumW2[gi] = w2;
      if (lo === 0 && hi === 0) {
        // All-zero group: scale 0 and q 0 dequantize exactly to 0 without dividing by anything.
        continue;
      }
      if (!clip && symmetric) {
        // Plain symmetric RTN, the hot path: one pass, no search.
        const scale = Math.fround(Math.max(-lo, hi) / 7);
        scales[gi] = scale;
        let we = 0;
        let e2 = 0;
        let ae = 0;
        for (let j = k0; j < k1; j++) {
          const v = w[rowIn + j] as number;
          const q = Math.min(7, Math.max(-7, rintHalfEven(v / scale)));
          vals[rowOut + j] = q;
          we += v * q;
          e2 += q * q;
          ae += q < 0 ? -q : q;
        }
        sumWE[gi] = we;
        sumE2[gi] = e2;
        sumAbsE[gi] = ae;
        continue;
      }
      let bestErr = Number.POSITIVE_INFINITY;
      let bestScale = 0;
      let bestZero = 0;
      for (const ratio of ratios) {
        let scale: number;
        let zero = 0;
        if (symmetric) {
          scale = Math.fround((Math.max(-lo, hi) * ratio) / 7);
        } else {
          scale = Math.fround(((hi - lo) * ratio) / 15);
          zero = Math.min(7, Math.max(-8, rintHalfEven(-8 - (lo * ratio) / scale)));
        }
        if (scale === 0) continue;
        let err = 0;
        for (let j = k0; j < k1; j++) {
          const v = w[rowIn + j] as number;
          const q = Math.min(7, Math.max(qmin, rintHalfEven(v / scale) + zero));
          tmp[j - k0] = q;
          const d = v - scale * (q - zero);
          err += d * d;
        }
        if (err < bestErr) {
          bestErr = err;
          bestScale = scale;
          bestZero = zero;
          for (let j = k0; j < k1; j++) vals[rowOut + j] = tmp[j - k0] as number;
        }
      }
      scales[gi] = bestScale;
      let we = 0;
      let e2 = 0;
      let ae = 0;
      for (let j = k0; j < k1; j++) {
        const e = (vals[rowOut + j] as number) - bestZero;
        we += (w[rowIn + j] as number) * e;
        e2 += e * e;
        ae += Math.abs(e);
      }
      sumWE[gi] = we;
      sumE2[gi] = e2;
      sumAbsE[gi] = ae;
      if (zeros) {
        zeros[gi] = bestZero;
        // Padded columns hold the zero point so that they dequantize to weight 0.
        for (let j = k1; j < k0 + groupSize; j++) vals[rowOut + j] = bestZero;
      }
    }
  }
  const base = {
    format: 'int4' as const,
    n,
    k,
    kPadded,
    groupSize,
    symmetric,
    packed: packNibbles(vals),
    scales,
  };
  return { weights: zeros ? { ...base, zeros } : base, stats: { sumW2, sumWE, sumE2, sumAbsE } };
}

/**
 * The relative Frobenius error ‖dequant(W_q) − W‖ / ‖W‖ from the group sums, using the Integer Scale group
 * scales `f32(q · unit)` when the weights carry an intScale (float scales otherwise). Ignores the final f32
 * rounding of each dequantized value (a 2^-24 relative effect).
 *
 * @example
 * ```ts
 * const { weights, stats } = quantizeInt4WithStats(w, n, k);
 * weightErrorFromStats(weights, stats) // ≈ relativeFrobenius(dequantizeInt4(weights), w)
 * ```
 */
export function weightErrorFromStats(w: Int4Weights, stats: Int4GroupStats): number {
  const groups = w.kPadded / w.groupSize;
  const is = w.intScale;
  let num = 0;
  let den = 0;
  for (let r = 0; r < w.n; r++) {
    for (let g = 0; g < groups; g++) {
      const gi = r * groups + g;
      const s = is ? Math.fround((is.q[gi] as number) * (is.unit[r] as number)) : (w.scales[gi] as number);
      const w2 = stats.sumW2[gi] as number;
      num += Math.max(0, w2 - 2 * s * (stats.sumWE[gi] as number) + s * s * (stats.sumE2[gi] as number));
      den += w2;
    }
  }
  if (den === 0) return num === 0 ? 0 : Number.POSITIVE_INFINITY;
  return Math.sqrt(num / den);
}

/** Plain int4 packing, low nibble first (the values are already in range). */
function packNibbles(vals: Int8Array): Uint8Array {
  const out = new Uint8Array((vals.length + 1) >> 1);
  const pairs = vals.length >> 1;
  for (let i = 0; i < pairs; i++) {
    out[i] = ((vals[2 * i] as number) & 0xf) | (((vals[2 * i + 1] as number) & 0xf) << 4);
  }
  if (vals.length & 1) out[pairs] = (vals[vals.length - 1] as number) & 0xf;
  return out;
}

/**
 * The int4 values of `w` as an Int8Array [n, kPadded] (zero points not subtracted).
 *
 * @example
 * ```ts
 * unpackInt4Weights(quantizeInt4(w, n, k)).length // n * kPadded
 * ```
 */
export function unpackInt4Weights(w: Int4Weights): Int8Array {
  const count = w.n * w.kPadded;
  const out = new Int8Array(count);
  const p = w.packed;
  const pairs = count >> 1;
  for (let i = 0; i < pairs; i++) {
    const b = p[i] as number;
    out[2 * i] = (b << 28) >> 28;
    out[2 * i + 1] = (b << 24) >> 28;
  }
  if (count & 1) out[count - 1] = ((p[pairs] as number) << 28) >> 28;
  return out;
}

/**
 * Dequantizes int4 weights to f32 [n, k] (the padding dropped): `f32(scale · (q − zero))`, or with
 * `useIntegerScale` the Integer Scale value `f32(f32(intScale.q · unit) · q)`.
 *
 * @example
 * ```ts
 * const wq = dequantizeInt4(quantizeInt4(w, n, k)); // ≈ w
 * ```
 */
export function dequantizeInt4(w: Int4Weights, useIntegerScale = false): Float32Array {
  const vals = unpackInt4Weights(w);
  const groups = w.kPadded / w.groupSize;
  const out = new Float32Array(w.n * w.k);
  const is = useIntegerScale ? w.intScale : undefined;
  if (useIntegerScale && !is) {
    throw new QError('E_ARG', 'Expected weights with an intScale for useIntegerScale but received none');
  }
  for (let r = 0; r < w.n; r++) {
    for (let g = 0; g < groups; g++) {
      const gi = r * groups + g;
      const z = w.zeros ? (w.zeros[gi] as number) : 0;
      const s = is ? Math.fround((is.q[gi] as number) * (is.unit[r] as number)) : (w.scales[gi] as number);
      const j1 = Math.min(w.k, (g + 1) * w.groupSize);
      for (let j = g * w.groupSize; j < j1; j++) {
        out[r * w.k + j] = Math.fround(s * ((vals[r * w.kPadded + j] as number) - z));
      }
    }
  }
  return out;
}

/**
 * int8 per-output-channel symmetric quantization: `scale[n] = f32(max|w| / 127)`,
 * `q = clamp(rint(w / scale), -127, 127)`; an all-zero row gets scale 0.
 *
 * @example
 * ```ts
 * const q = quantizeInt8(Float32Array.of(1, -0.5, 0, 0), 2, 2); // scales [f32(1/127), 0]
 * ```
 */
export function quantizeInt8(
  w: Float32Array,
  n: number,
  k: number,
  options: { name?: string } = {},
): Int8Weights {
  const name = options.name ?? 'weights';
  checkMatrix(w, n, k, name);
  assertFinite(w, name, k);
  const data = new Int8Array(n * k);
  const scales = new Float32Array(n);
  for (let r = 0; r < n; r++) {
    let amax = 0;
    for (let j = 0; j < k; j++) amax = Math.max(amax, Math.abs(w[r * k + j] as number));
    if (amax === 0) continue;
    const scale = Math.fround(amax / 127);
    scales[r] = scale;
    for (let j = 0; j < k; j++) {
      const q = rintHalfEven((w[r * k + j] as number) / scale);
      data[r * k + j] = Math.min(127, Math.max(-127, q));
    }
  }
  return { format: 'int8', n, k, data, scales };
}

/**
 * Dequantizes int8 weights to f32 [n, k].
 *
 * @example
 * ```ts
 * dequantizeInt8(quantizeInt8(w, n, k)) // ≈ w
 * ```
 */
export function dequantizeInt8(w: Int8Weights): Float32Array {
  const out = new Float32Array(w.n * w.k);
  for (let r = 0; r < w.n; r++) {
    const s = w.scales[r] as number;
    for (let j = 0; j < w.k; j++) out[r * w.k + j] = Math.fround(s * (w.data[r * w.k + j] as number));
  }
  return out;
}

/**
 * Relative Frobenius error ‖a − b‖ / ‖b‖ in float64 (0 when both are zero): `@q/core`'s `relativeError` under
 * the name this package has always exported.
 *
 * @example
 * ```ts
 * relativeFrobenius(dequantizeInt4(q), w) // e.g. 0.08 for Gaussian weights at g128
 * ```
 */
export const relativeFrobenius: (a: ArrayLike<number>, b: ArrayLike<number>) => number = relativeError;
