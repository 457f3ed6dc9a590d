import { QError } from '@q/core';
import { rintHalfEven } from './activation';
import type { Int4Weights, IntegerScale } from './types';
import { unpackInt4Weights } from './weights';

/**
 * Integer Scale: group scales as integers, normalised per output channel.
 * `c_n = max_g s[n, g]`, `q[n, g] = max(1, rintHalfEven(s[n, g] / c_n · 2^b))` (the ratio in float64),
 * `unit[n] = f32(c_n / 2^b)`. A channel whose scales are all 0 gets c = 0, unit = 0 and q = 1.
 *
 * Overflow rule: the kernel accumulates `Σ_g q[n, g] · P_g` in int32, with
 * `|P_g| ≤ 127 · Σ_{k∈g} |w_int[n, k]|`. The guaranteed bound of every partial and final sum of channel n is
 * `B_n = 127 · Σ_g q[n, g] · Σ_{k∈g} |w_int[n, k]|`; a layer fits when `max_n B_n ≤ 2^31 − 1`. The worst case
 * that ignores the weight values is `W_n = 127 · 8 · G · Σ_g q[n, g]`.
 */

export const INT32_MAX = 2147483647;

/** Default amplifier exponent b (2^10, as in the Integer Scale paper). */
export const DEFAULT_AMPLIFIER_BITS = 10;

export interface IntegerScaleOptions {
  /** Amplifier exponent b, or 'auto' for the largest b in [minBits, maxBits] that passes the overflow check. */
  readonly amplifierBits?: number | 'auto';
  /** Smallest b 'auto' may pick. Default 1. */
  readonly minBits?: number;
  /** Largest b 'auto' may pick. Default 16. */
  readonly maxBits?: number;
  /**
   * Which bound must fit in int32: 'data' (default) uses the layer's actual int4 values, 'worst-case' the
   * value-independent `127 · 8 · G · Σ_g q`.
   */
  readonly overflowCheck?: 'data' | 'worst-case';
  /** Layer name for error messages. */
  readonly name?: string;
}

/** The overflow bounds of one layer at one amplifier. */
export interface OverflowReport {
  readonly name: string;
  readonly k: number;
  readonly groupSize: number;
  readonly amplifierBits: number;
  /** max_n 127 · Σ_g q[n, g] · Σ_{k∈g} |w_int[n, k]|. */
  readonly bound: number;
  /** max_n 127 · 8 · G · Σ_g q[n, g]. */
  readonly worstCase: number;
  /** Whether the checked bound is ≤ 2^31 − 1. */
  readonly fits: boolean;
}

function checkBits(b: number, name: string): void {
  if (!Number.isInteger(b) || b < 0 || b > 30) {
    throw new QError('E_ARG', `Expected an integer amplifierBits in [0, 30] for ${name} but received ${b}`);
  }
}

function integerScaleAt(scales: Float32Array, n: number, groups: number, b: number): IntegerScale {
  const amp = 2 ** b;
  const q = new Int32Array(n * groups);
  const channelScale = new Float32Array(n);
  const unit = new Float32Array(n);
  for (let r = 0; r < n; r++) {
    let c = 0;
    for (let g = 0; g < groups; g++) c = Math.max(c, scales[r * groups + g] as number);
    channelScale[r] = c;
    unit[r] = Math.fround(c / amp);
    for (let g = 0; g < groups; g++) {
      const s = scales[r * groups + g] as number;
      q[r * groups + g] = c === 0 ? 1 : Math.max(1, rintHalfEven((s / c) * amp));
    }
  }
  return { amplifierBits: b, q, channelScale, unit };
}

/** Σ_{k∈g} |w_int[n, k]| of every group, [n, groups]. */
function groupAbsSums(w: Int4Weights): Float64Array {
  const vals = unpackInt4Weights(w);
  const groups = w.kPadded / w.groupSize;
  const out = new Float64Array(w.n * groups);
  for (let r = 0; r < w.n; r++) {
    for (let g = 0; g < groups; g++) {
      let s = 0;
      const base = r * w.kPadded + g * w.groupSize;
      for (let j = 0; j < w.groupSize; j++) s += Math.abs(vals[base + j] as number);
      out[r * groups + g] = s;
    }
  }
  return out;
}

function boundsOf(
  w: Int4Weights,
  is: IntegerScale,
  absSums: Float64Array,
  name: string,
  check: 'data' | 'worst-case',
): OverflowReport {
  const groups = w.kPadded / w.groupSize;
  let bound = 0;
  let worstCase = 0;
  for (let r = 0; r < w.n; r++) {
    let bn = 0;
    let qsum = 0;
    for (let g = 0; g < groups; g++) {
      const qg = is.q[r * groups + g] as number;
      bn += qg * (absSums[r * groups + g] as number);
      qsum += qg;
    }
    bound = Math.max(bound, 127 * bn);
    worstCase = Math.max(worstCase, 127 * 8 * w.groupSize * qsum);
  }
  const fits = (check === 'data' ? bound : worstCase) <= INT32_MAX;
  return { name, k: w.k, groupSize: w.groupSize, amplifierBits: is.amplifierBits, bound, worstCase, fits };
}

function checkSymmetric(w: Int4Weights, name: string): void {
  if (!w.symmetric) {
    throw new QError(
      'E_ARG',
      `Expected symmetric int4 weights for Integer Scale of ${name} but received asymmetric`,
    );
  }
}

/**
 * Computes the overflow bounds of `w` with its Integer Scale (or with `intScale` given).
 *
 * @example
 * ```ts
 * const r = checkIntScaleOverflow(withIntegerScale(quantizeInt4(w, n, k)), { name: 'q_proj' });
 * r.bound <= 2 ** 31 - 1 // true
 * ```
 */
export function checkIntScaleOverflow(
  w: Int4Weights,
  options: { intScale?: IntegerScale; name?: string; overflowCheck?: 'data' | 'worst-case' } = {},
): OverflowReport {
  const name = options.name ?? 'weights';
  const is = options.intScale ?? w.intScale;
  if (!is) throw new QError('E_ARG', `Expected weights with an intScale for ${name} but received none`);
  return boundsOf(w, is, groupAbsSums(w), name, options.overflowCheck ?? 'data');
}

function overflowError(r: OverflowReport, check: 'data' | 'worst-case'): QError {
  const groups = Math.round(r.k / r.groupSize);
  return new QError(
    'E_OVERFLOW',
    `Expected the Integer Scale int32 accumulation of layer ${r.name} to fit in 2^31 − 1 but received a ${check} bound of ${
      check === 'data' ? r.bound : r.worstCase
    } (K=${r.k}, G=${r.groupSize}, groups≈${groups}, b=${r.amplifierBits}; data bound ${r.bound}, worst case 127·8·G·Σq = ${
      r.worstCase
    }); lower amplifierBits or use 'auto'`,
    { details: { ...r } },
  );
}

/**
 * Converts the float group scales of symmetric int4 weights to Integer Scale, checking that the int32
 * accumulation cannot overflow. Throws `E_OVERFLOW` naming the layer, K, G, b and the bound when it cannot fit
 * (with 'auto': when no b in [minBits, maxBits] fits).
 *
 * @example
 * ```ts
 * const is = toIntegerScale(quantizeInt4(w, 4096, 4096, { groupSize: 128 })); // b = 10
 * is.q[0] // an integer in [1, 1024]
 * ```
 */
export function toIntegerScale(w: Int4Weights, options: IntegerScaleOptions = {}): IntegerScale {
  return integerScaleWithReport(w, options).intScale;
}

/**
 * Like `toIntegerScale`, also returning the overflow report of the chosen amplifier.
 *
 * @example
 * ```ts
 * const { intScale, overflow } = integerScaleWithReport(q, { amplifierBits: 'auto' });
 * ```
 */
export function integerScaleWithReport(
  w: Int4Weights,
  options: IntegerScaleOptions = {},
  /** Σ_{k∈g} |w_int[n, k]|, [n, groups], when already known (see `quantizeInt4WithStats`). */
  absSumsKnown?: Float64Array,
): { intScale: IntegerScale; overflow: OverflowReport } {
  const name = options.name ?? 'weights';
  checkSymmetric(w, name);
  const check = options.overflowCheck ?? 'data';
  const groups = w.kPadded / w.groupSize;
  const absSums = absSumsKnown ?? groupAbsSums(w);
  const bits = options.amplifierBits ?? DEFAULT_AMPLIFIER_BITS;
  if (bits === 'auto') {
    const minBits = options.minBits ?? 1;
    const maxBits = options.maxBits ?? 16;
    checkBits(minBits, name);
    checkBits(maxBits, name);
    let last: OverflowReport | undefined;
    for (let b = maxBits; b >= minBits; b--) {
      const is = integerScaleAt(w.scales, w.n, groups, b);
      const r = boundsOf(w, is, absSums, name, check);
      if (r.fits) return { intScale: is, overflow: r };
      last = r;
    }
    if (!last)
      throw new QError(
        'E_ARG',
        `Expected minBits ≤ maxBits for ${name} but received ${minBits} > ${maxBits}`,
      );
    throw overflowError(last, check);
  }
  checkBits(bits, name);
  const is = integerScaleAt(w.scales, w.n, groups, bits);
  const r = boundsOf(w, is, absSums, name, check);
  if (!r.fits) throw overflowError(r, check);
  return { intScale: is, overflow: r };
}

/**
 * Returns a copy of `w` carrying its Integer Scale.
 *
 * @example
 * ```ts
 * const q = withIntegerScale(quantizeInt4(w, n, k), { amplifierBits: 'auto' });
 * ```
 */
export function withIntegerScale(w: Int4Weights, options: IntegerScaleOptions = {}): Int4Weights {
  return { ...w, intScale: toIntegerScale(w, options) };
}

/** What Integer Scale adds over float scales for one layer. */
export interface IntScaleErrorReport {
  /** ‖W_int − W_float‖_F / ‖W_float‖_F of the dequantized weights (int-scale vs float-scale). */
  readonly relative: number;
  /** max over groups of |q·unit − s| / s (groups with s > 0). */
  readonly maxScaleRelative: number;
}

/**
 * Measures the error Integer Scale adds over the float group scales, on the dequantized weights.
 *
 * @example
 * ```ts
 * intScaleError(withIntegerScale(q)).relative // ~1e-4 at b = 10
 * ```
 */
export function intScaleError(
  w: Int4Weights,
  /** Σ_{k∈g} w_int², [n, groups], when already known (see `quantizeInt4WithStats`). */
  sumSquaresKnown?: Float64Array,
): IntScaleErrorReport {
  const is = w.intScale;
  if (!is) throw new QError('E_ARG', 'Expected weights with an intScale for intScaleError but received none');
  const groups = w.kPadded / w.groupSize;
  const vals = sumSquaresKnown ? undefined : unpackInt4Weights(w);
  let num = 0;
  let den = 0;
  let maxRel = 0;
  for (let r = 0; r < w.n; r++) {
    const unit = is.unit[r] as number;
    for (let g = 0; g < groups; g++) {
      const gi = r * groups + g;
      const s = w.scales[gi] as number;
      const si = Math.fround((is.q[gi] as number) * unit);
      if (s > 0) maxRel = Math.max(maxRel, Math.abs(si - s) / s);
      let sq = sumSquaresKnown ? (sumSquaresKnown[gi] as number) : 0;
      if (vals) {
        const base = r * w.kPadded + g * w.groupSize;
        for (let j = 0; j < w.groupSize; j++) {
          const v = vals[base + j] as number;
          sq += v * v;
        }
      }
      num += (si - s) * (si - s) * sq;
      den += s * s * sq;
    }
  }
  return { relative: den === 0 ? 0 : Math.sqrt(num / den), maxScaleRelative: maxRel };
}
