import { isQError, Rng } from '@q/core';
import { describe, expect, it } from 'vitest';
import { quantizeActPerToken, quantizeActStatic, rintHalfEven, staticScaleFromRange } from './activation';
import { randn } from './testing';

// Independent reference: f32 rounding through a Float32Array store, ties-to-even through floor.
const f32 = (v: number): number => new Float32Array([v])[0] as number;
function refRint(v: number): number {
  const f = Math.floor(v);
  const d = v - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}
const refQ = (x: number, s: number): number => Math.max(-127, Math.min(127, refRint(f32(x / s))));

describe('rintHalfEven', () => {
  it('rounds exact .5 ties to even, both signs', () => {
    for (let v = -20; v <= 20; v++) {
      const t = v + 0.5;
      expect(rintHalfEven(t)).toBe(refRint(t));
      expect(Math.abs(rintHalfEven(t) % 2)).toBe(0);
    }
  });
  it('handles magnitudes around 2^51 and 2^52, -0, NaN and infinities', () => {
    for (const base of [2 ** 51, 2 ** 52, 2 ** 53]) {
      for (const x of [base - 1.5, base - 0.5, base + 0.5, base + 1.5, base + 2, -base - 0.5, -base + 0.5]) {
        if (Number.isInteger(x * 2)) expect(rintHalfEven(x)).toBe(refRint(x));
      }
    }
    expect(Object.is(rintHalfEven(-0.2), 0)).toBe(true);
    expect(rintHalfEven(Number.NaN)).toBeNaN();
    expect(rintHalfEven(Number.POSITIVE_INFINITY)).toBe(Number.POSITIVE_INFINITY);
  });
  it('matches the reference away from ties', () => {
    const rng = new Rng(1);
    const r = (): number => rng.next();
    for (let i = 0; i < 10000; i++) {
      const v = (r() - 0.5) * 1000;
      expect(rintHalfEven(v)).toBe(refRint(v));
    }
  });
});

describe('quantizeActPerToken', () => {
  it('matches float64 reference math bit for bit on random rows', () => {
    const m = 13;
    const k = 77;
    const x = randn(m * k, 7, 3);
    const { q, scales, kPadded } = quantizeActPerToken(x, m, k, { kPadded: 96 });
    expect(kPadded).toBe(96);
    for (let i = 0; i < m; i++) {
      let amax = 0;
      for (let j = 0; j < k; j++) amax = Math.max(amax, Math.abs(x[i * k + j] as number));
      const s = f32(amax / 127);
      expect(scales[i]).toBe(s);
      for (let j = 0; j < k; j++) expect(q[i * 96 + j]).toBe(refQ(x[i * k + j] as number, s));
      for (let j = k; j < 96; j++) expect(q[i * 96 + j]).toBe(0);
    }
  });
  it('rounds exact ties to even (row max 127 gives scale 1)', () => {
    const row = Float32Array.of(127, 2.5, -2.5, 3.5, -3.5, 0.5, -126.5, 1.5);
    const { q, scales } = quantizeActPerToken(row, 1, row.length);
    expect(scales[0]).toBe(1);
    expect(Array.from(q)).toEqual([127, 2, -2, 4, -4, 0, -126, 2]);
  });
  it('never produces -128 and the row maximum maps to ±127', () => {
    const x = randn(50 * 31, 3, 100);
    const { q } = quantizeActPerToken(x, 50, 31);
    expect(Math.min(...q)).toBeGreaterThanOrEqual(-127);
    for (let i = 0; i < 50; i++) expect(Math.max(...q.subarray(i * 31, i * 31 + 31).map(Math.abs))).toBe(127);
  });
  it('gives scale 1 and zeros for an all-zero row', () => {
    const { q, scales } = quantizeActPerToken(new Float32Array(8), 2, 4);
    expect(Array.from(scales)).toEqual([1, 1]);
    expect(q.every((v) => v === 0)).toBe(true);
  });
  it('refuses NaN with E_NUMERIC naming the layer', () => {
    const x = randn(8, 2);
    x[5] = Number.NaN;
    expect(() => quantizeActPerToken(x, 2, 4, { name: 'layer.q_proj' })).toThrow(/layer\.q_proj row 1/);
  });
  it('refuses a shape mismatch', () => {
    try {
      quantizeActPerToken(new Float32Array(7), 2, 4);
      expect.unreachable();
    } catch (e) {
      expect(isQError(e, 'E_SHAPE')).toBe(true);
    }
  });
});

describe('quantizeActStatic', () => {
  it('matches the float64 reference and saturates', () => {
    const x = randn(40 * 9, 11, 5);
    const s = f32(0.03);
    const q = quantizeActStatic(x, s);
    for (let i = 0; i < x.length; i++) expect(q[i]).toBe(refQ(x[i] as number, s));
    expect(q.some((v) => v === 127 || v === -127)).toBe(true);
  });
  it('pads rows when asked', () => {
    const x = randn(6, 5);
    const q = quantizeActStatic(x, 0.01, { m: 2, k: 3, kPadded: 4 });
    expect(q.length).toBe(8);
    expect(q[3]).toBe(0);
    expect(q[4]).toBe(refQ(x[3] as number, f32(0.01)));
  });
  it('rounds ties to even with scale 0.5', () => {
    expect(Array.from(quantizeActStatic(Float32Array.of(1.25, 0.75, -1.25), 0.5))).toEqual([2, 2, -2]);
  });
  it('refuses a non-positive scale and non-finite input', () => {
    expect(() => quantizeActStatic(Float32Array.of(1), 0)).toThrow(/static scale/);
    expect(() => quantizeActStatic(Float32Array.of(Number.POSITIVE_INFINITY), 1, { name: 'o_proj' })).toThrow(
      /o_proj/,
    );
  });
  it('derives static scales from ranges', () => {
    expect(staticScaleFromRange(12.7)).toBe(f32(f32(12.7) / 127));
    expect(staticScaleFromRange(0)).toBe(1);
  });
});
