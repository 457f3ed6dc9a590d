import { QError } from '@q/core';

/**
 * int8 activation quantizers, bit-exact per the rounding rule in `types.ts`: f32 arithmetic
 * (`Math.fround` after every operation), a true division, round half to even, clamp to ±127.
 */

/** The largest int8 magnitude produced (-128 is never produced, so the range is symmetric). */
export const INT8_MAX = 127;

/**
 * Rounds to the nearest integer, ties to even (IEEE `roundTiesToEven`, CUDA `__float2int_rn`).
 *
 * @example
 * ```ts
 * rintHalfEven(2.5) // 2
 * rintHalfEven(3.5) // 4
 * rintHalfEven(-2.5) // -2
 * ```
 */
export function rintHalfEven(x: number): number {
  // Adding and subtracting 1.5·2^52 rounds to an integer in the FPU's own round-half-even mode; exact for
  // |x| < 2^51 and a few times faster than a tie check around Math.round.
  if (x < 2251799813685248 && x > -2251799813685248) return x + 6755399441055744 - 6755399441055744;
  // Beyond 2^51 only .5 fractions remain (and none beyond 2^52); Math.round sends ties up, so fix odd ones.
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Per-token dynamic quantization of a row-major [m, k] matrix. */
export interface PerTokenQuant {
  /** int8 values, row-major [m, kPadded] (the padding columns are 0). */
  readonly q: Int8Array;
  /** f32 scale of each row, [m]. */
  readonly scales: Float32Array;
  readonly m: number;
  readonly k: number;
  readonly kPadded: number;
}

export interface ActQuantOptions {
  /** Row stride of the output (≥ k); the extra columns are zero, matching zero-padded weights. Default k. */
  readonly kPadded?: number;
  /** Named in error messages. */
  readonly name?: string;
}

function checkShape(x: Float32Array, m: number, k: number, kPadded: number, name: string): void {
  if (!Number.isSafeInteger(m) || m < 0 || !Number.isSafeInteger(k) || k < 1) {
    throw new QError('E_SHAPE', `Expected m ≥ 0 and k ≥ 1 for ${name} but received m=${m}, k=${k}`);
  }
  if (x.length !== m * k) {
    throw new QError(
      'E_SHAPE',
      `Expected ${m * k} elements (m=${m} × k=${k}) for ${name} but received ${x.length}`,
    );
  }
  if (!Number.isSafeInteger(kPadded) || kPadded < k) {
    throw new QError('E_SHAPE', `Expected kPadded ≥ k=${k} for ${name} but received ${kPadded}`);
  }
}

/**
 * Quantizes one value with an f32 scale: `clamp(rintHalfEven(f32(x / scale)), -127, 127)`.
 * `x` and `scale` must already be f32 values.
 *
 * @example
 * ```ts
 * quantizeValue(Math.fround(1.5), Math.fround(1)) // 2
 * ```
 */
export function quantizeValue(x: number, scale: number): number {
  const r = rintHalfEven(Math.fround(x / scale));
  return Math.min(INT8_MAX, Math.max(-INT8_MAX, r));
}

/**
 * Per-token dynamic int8 quantization: one f32 scale `f32(max|x| / 127)` per row (1 when the row is all zero).
 * Throws `E_NUMERIC` when a row holds NaN or ±Inf.
 *
 * @example
 * ```ts
 * const { q, scales } = quantizeActPerToken(Float32Array.of(1, -2, 0.5, 4), 2, 2);
 * // scales = [f32(2/127), f32(4/127)], q = [64, -127, 16, 127]
 * ```
 */
export function quantizeActPerToken(
  x: Float32Array,
  m: number,
  k: number,
  options: ActQuantOptions = {},
): PerTokenQuant {
  const kPadded = options.kPadded ?? k;
  const name = options.name ?? 'activations';
  checkShape(x, m, k, kPadded, name);
  const q = new Int8Array(m * kPadded);
  const scales = new Float32Array(m);
  for (let i = 0; i < m; i++) {
    const base = i * k;
    let amax = 0;
    for (let j = 0; j < k; j++) {
      const v = Math.abs(x[base + j] as number);
      if (!(v <= amax)) {
        amax = v;
        // NaN fails every comparison, so stop here or a later value would overwrite it.
        if (Number.isNaN(v)) break;
      }
    }
    if (!Number.isFinite(amax)) {
      throw new QError(
        'E_NUMERIC',
        `Expected finite values for ${name} row ${i} but received max|x| = ${amax}`,
      );
    }
    let scale = Math.fround(amax / INT8_MAX);
    if (scale === 0) scale = 1;
    scales[i] = scale;
    const ob = i * kPadded;
    for (let j = 0; j < k; j++) {
      const r = rintHalfEven(Math.fround((x[base + j] as number) / scale));
      q[ob + j] = Math.min(INT8_MAX, Math.max(-INT8_MAX, r));
    }
  }
  return { q, scales, m, k, kPadded };
}

/**
 * Per-tensor static int8 quantization with a calibrated f32 scale. Values beyond ±127·scale saturate.
 * `x` is row-major [m, k] where `k` defaults to `x.length` (one row); with `kPadded` the rows are written
 * with that stride and zero padding. Throws `E_NUMERIC` for NaN/±Inf inputs or a scale that is not a positive
 * finite number.
 *
 * @example
 * ```ts
 * quantizeActStatic(Float32Array.of(0.5, -1, 10), 0.05) // Int8Array [10, -20, 127]
 * ```
 */
export function quantizeActStatic(
  x: Float32Array,
  scale: number,
  options: ActQuantOptions & { readonly m?: number; readonly k?: number } = {},
): Int8Array {
  const name = options.name ?? 'activations';
  const k = options.k ?? (options.m !== undefined && options.m > 0 ? x.length / options.m : x.length);
  const m = options.m ?? (k > 0 ? x.length / k : 0);
  const kPadded = options.kPadded ?? k;
  if (x.length === 0) return new Int8Array(0);
  checkShape(x, m, k, kPadded, name);
  const s = Math.fround(scale);
  if (!(s > 0) || !Number.isFinite(s)) {
    throw new QError(
      'E_NUMERIC',
      `Expected a positive finite f32 static scale for ${name} but received ${scale}`,
    );
  }
  const q = new Int8Array(m * kPadded);
  for (let i = 0; i < m; i++) {
    const base = i * k;
    const ob = i * kPadded;
    for (let j = 0; j < k; j++) {
      const v = x[base + j] as number;
      if (!Number.isFinite(v)) {
        throw new QError(
          'E_NUMERIC',
          `Expected finite values for ${name} but received ${v} at row ${i}, column ${j}`,
        );
      }
      const r = rintHalfEven(Math.fround(v / s));
      q[ob + j] = Math.min(INT8_MAX, Math.max(-INT8_MAX, r));
    }
  }
  return q;
}

/**
 * The f32 static scale stored for a calibrated range r = max|X|: `f32(r / 127)`, or 1 when r is 0.
 *
 * @example
 * ```ts
 * staticScaleFromRange(12.7) // Math.fround(12.7 / 127)
 * ```
 */
export function staticScaleFromRange(range: number): number {
  const s = Math.fround(Math.fround(range) / INT8_MAX);
  return s === 0 ? 1 : s;
}
