import { isQError, relativeError, unpackInt4 } from '@q/core';
import { describe, expect, it } from 'vitest';
import {
  checkIntScaleOverflow,
  integerScaleWithReport,
  intScaleError,
  toIntegerScale,
  withIntegerScale,
} from './intscale';
import { randn } from './testing';
import { dequantizeInt4, quantizeInt4 } from './weights';

function refRint(v: number): number {
  const f = Math.floor(v);
  const d = v - f;
  return d > 0.5 ? f + 1 : d < 0.5 ? f : f % 2 === 0 ? f : f + 1;
}

describe('toIntegerScale', () => {
  it('follows q = max(1, round(s / c · 2^b)) and unit = f32(c / 2^b)', () => {
    const n = 8;
    const k = 512;
    const w = randn(n * k, 12, 0.03);
    for (let j = 0; j < 64; j++) w[j] = 1e-8 * (j + 1); // a tiny group: q clamps to 1
    const q = quantizeInt4(w, n, k, { groupSize: 64 });
    for (const b of [6, 10, 12]) {
      const is = toIntegerScale(q, { amplifierBits: b });
      const groups = 8;
      for (let r = 0; r < n; r++) {
        let c = 0;
        for (let g = 0; g < groups; g++) c = Math.max(c, q.scales[r * groups + g] as number);
        expect(is.channelScale[r]).toBe(c);
        expect(is.unit[r]).toBe(new Float32Array([c / 2 ** b])[0]);
        for (let g = 0; g < groups; g++) {
          const s = q.scales[r * groups + g] as number;
          expect(is.q[r * groups + g]).toBe(Math.max(1, refRint((s / c) * 2 ** b)));
        }
      }
      expect(is.q[0]).toBe(1);
      expect(Math.max(...is.q)).toBe(2 ** b);
    }
  });

  it('dequantizes exactly to its float formula f32(f32(q·unit)·w_int)', () => {
    const n = 4;
    const k = 256;
    const q = withIntegerScale(quantizeInt4(randn(n * k, 2), n, k, { groupSize: 32 }));
    const d = dequantizeInt4(q, true);
    const vals = unpackInt4(q.packed, n * k);
    const is = q.intScale;
    if (!is) throw new Error('no intScale');
    const f32 = (v: number): number => new Float32Array([v])[0] as number;
    for (let i = 0; i < d.length; i++) {
      const r = Math.floor(i / k);
      const g = Math.floor((i % k) / 32);
      const s = f32((is.q[r * 8 + g] as number) * (is.unit[r] as number));
      expect(d[i]).toBe(f32(s * (vals[i] as number)));
    }
  });

  it('reports the error it adds over float scales, shrinking with b', () => {
    const q = quantizeInt4(randn(16 * 1024, 3), 16, 1024, { groupSize: 128 });
    const e6 = intScaleError(withIntegerScale(q, { amplifierBits: 6 }));
    const e12 = intScaleError(withIntegerScale(q, { amplifierBits: 12 }));
    expect(e6.relative).toBeGreaterThan(e12.relative);
    expect(e12.maxScaleRelative).toBeLessThan(2 ** -12 * 8);
    // Cross-check `relative` against dequantized matrices in float64.
    const a = dequantizeInt4(withIntegerScale(q, { amplifierBits: 6 }), true);
    const f = dequantizeInt4(q);
    expect(e6.relative).toBeCloseTo(relativeError(a, f), 5);
  });

  it('handles a channel whose scales are all zero', () => {
    const w = randn(2 * 64, 4);
    w.fill(0, 0, 64);
    const is = toIntegerScale(quantizeInt4(w, 2, 64, { groupSize: 32 }));
    expect(Array.from(is.unit.subarray(0, 1))).toEqual([0]);
    expect(Array.from(is.q.subarray(0, 2))).toEqual([1, 1]);
  });

  it('refuses with E_OVERFLOW naming layer, K, G, b and the bound when int32 cannot hold the sum', () => {
    const n = 2;
    const k = 16384;
    // Saturated weights: every |w_int| = 7, every group scale equal, so q = 2^b for every group.
    const w = new Float32Array(n * k).map((_, i) => (i % 3 === 0 ? -1 : 1));
    const q = quantizeInt4(w, n, k, { groupSize: 128 });
    const b = 12;
    // Bound: 127 · Σ_g 2^b · 7 · 128 = 127 · 128 groups · 4096 · 896.
    const expectedBound = 127 * 128 * 2 ** b * 7 * 128;
    expect(expectedBound).toBeGreaterThan(2 ** 31);
    try {
      toIntegerScale(q, { amplifierBits: b, name: 'model.layers.7.mlp.down_proj' });
      expect.unreachable();
    } catch (e) {
      expect(isQError(e, 'E_OVERFLOW')).toBe(true);
      const msg = (e as Error).message;
      expect(msg).toContain('model.layers.7.mlp.down_proj');
      expect(msg).toContain('K=16384');
      expect(msg).toContain('G=128');
      expect(msg).toContain('b=12');
      expect(msg).toContain(String(expectedBound));
    }
    // 'auto' picks the largest b that fits, and the bound it reports really fits.
    const { intScale, overflow } = integerScaleWithReport(q, { amplifierBits: 'auto' });
    expect(overflow.bound).toBeLessThanOrEqual(2 ** 31 - 1);
    expect(127 * 128 * 2 ** (intScale.amplifierBits + 1) * 7 * 128).toBeGreaterThan(2 ** 31 - 1);
    expect(checkIntScaleOverflow({ ...q, intScale }).fits).toBe(true);
  });

  it('checks the value-independent worst case when asked', () => {
    const q = quantizeInt4(randn(4 * 4096, 8), 4, 4096, { groupSize: 128 });
    const r = integerScaleWithReport(q, { amplifierBits: 10 }).overflow;
    expect(r.worstCase).toBe(
      127 * 8 * 128 * Math.max(...[0, 1, 2, 3].map((c) => sumQ(q, r.amplifierBits, c))),
    );
    expect(() => toIntegerScale(q, { amplifierBits: 16, overflowCheck: 'worst-case' })).toThrow(/worst-case/);
  });

  it('refuses asymmetric weights', () => {
    expect(() =>
      toIntegerScale(quantizeInt4(randn(64, 1), 1, 64, { groupSize: 32, symmetric: false })),
    ).toThrow(/symmetric/);
  });
});

function sumQ(q: ReturnType<typeof quantizeInt4>, b: number, row: number): number {
  const is = toIntegerScale(q, { amplifierBits: b });
  let s = 0;
  for (let g = 0; g < 32; g++) s += is.q[row * 32 + g] as number;
  return s;
}
