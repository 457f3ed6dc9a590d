import { describe, expect, it } from 'vitest';
import { Rng } from './random';
import { relativeError } from './relative-error';

describe('relativeError', () => {
  it('equals ‖a − b‖ / ‖b‖ for a known perturbation of random data', () => {
    const rng = new Rng(5);
    const b = Float64Array.from({ length: 1000 }, () => rng.normal());
    const eps = 1e-3;
    // a = b · (1 + eps) gives exactly eps.
    const a = b.map((v) => v * (1 + eps));
    expect(relativeError(a, b)).toBeCloseTo(eps, 12);
    expect(relativeError(b, b)).toBe(0);
  });

  it('is 0 for two zero arrays, infinite against a zero reference, and refuses unequal lengths', () => {
    expect(relativeError(new Float32Array(3), new Float32Array(3))).toBe(0);
    expect(relativeError(Float32Array.of(1, 0), new Float32Array(2))).toBe(Number.POSITIVE_INFINITY);
    expect(() => relativeError(new Float32Array(2), new Float32Array(3))).toThrow(
      expect.objectContaining({ code: 'E_SHAPE' }),
    );
  });
});
