import { QError } from './errors';

/**
 * The relative error ‖a − b‖₂ / ‖b‖₂ of `a` against the reference `b`, summed in float64: 0 when both are zero,
 * +Infinity when only the reference is. The one error measure numeric tests, calibration reports and benchmarks
 * state their tolerances in.
 *
 * @example
 * ```ts
 * relativeError(Float32Array.of(1.01, 2), Float64Array.of(1, 2)); // ≈ 0.00447
 * ```
 */
export function relativeError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) {
    throw new QError(
      'E_SHAPE',
      `Expected arrays of equal length for relativeError but received ${a.length} and ${b.length}`,
    );
  }
  let num = 0;
  let den = 0;
  for (let i = 0; i < b.length; i++) {
    const r = b[i] as number;
    const d = (a[i] as number) - r;
    num += d * d;
    den += r * r;
  }
  if (den === 0) return num === 0 ? 0 : Number.POSITIVE_INFINITY;
  return Math.sqrt(num / den);
}
