import { isQError, unpackInt4 } from '@q/core';
import { describe, expect, it } from 'vitest';
import { withIntegerScale } from './intscale';
import { randn } from './testing';
import {
  dequantizeInt4,
  dequantizeInt8,
  groupLayout,
  quantizeInt4,
  quantizeInt4WithStats,
  quantizeInt8,
  relativeFrobenius,
  weightErrorFromStats,
} from './weights';

function refRint(v: number): number {
  const f = Math.floor(v);
  const d = v - f;
  return d > 0.5 ? f + 1 : d < 0.5 ? f : f % 2 === 0 ? f : f + 1;
}

describe('quantizeInt4 symmetric RTN', () => {
  for (const gs of [32, 64, 128, 'channel'] as const) {
    it(`matches float64 math for groupSize ${gs} with K padding`, () => {
      const n = 9;
      const k = 200;
      const w = randn(n * k, 5, 0.02);
      const q = quantizeInt4(w, n, k, { groupSize: gs });
      const G = gs === 'channel' ? k : gs;
      const kPadded = Math.ceil(k / G) * G;
      expect(q.kPadded).toBe(kPadded);
      expect(q.groupSize).toBe(G);
      const vals = unpackInt4(q.packed, n * kPadded);
      const groups = kPadded / G;
      for (let r = 0; r < n; r++) {
        for (let g = 0; g < groups; g++) {
          let amax = 0;
          for (let j = g * G; j < Math.min(k, (g + 1) * G); j++)
            amax = Math.max(amax, Math.abs(w[r * k + j] as number));
          const s = new Float32Array([amax / 7])[0] as number;
          expect(q.scales[r * groups + g]).toBe(s);
          for (let j = g * G; j < (g + 1) * G; j++) {
            const expectQ = j < k ? Math.max(-7, Math.min(7, refRint((w[r * k + j] as number) / s))) : 0;
            expect(vals[r * kPadded + j]).toBe(expectQ);
          }
        }
      }
      const dq = dequantizeInt4(q);
      for (let i = 0; i < w.length; i++) {
        const s = q.scales[Math.floor(i / k) * groups + Math.floor((i % k) / G)] as number;
        expect(Math.abs((dq[i] as number) - (w[i] as number))).toBeLessThanOrEqual(s / 2 + 1e-9);
      }
    });
  }

  it('refuses a group that does not divide K when padding is off, saying so', () => {
    try {
      quantizeInt4(randn(4 * 100, 1), 4, 100, { groupSize: 64, padK: false, name: 'layers.0.mlp.down_proj' });
      expect.unreachable();
    } catch (e) {
      expect(isQError(e, 'E_SHAPE')).toBe(true);
      expect((e as Error).message).toMatch(/K=100.*groupSize=64.*layers\.0\.mlp\.down_proj.*padK/);
    }
    expect(groupLayout(128, 64, false).kPadded).toBe(128);
  });

  it('handles all-zero groups without NaN', () => {
    const w = randn(2 * 64, 3);
    w.fill(0, 0, 32); // first group of row 0
    w.fill(0, 64, 128); // the whole row 1
    for (const symmetric of [true, false]) {
      const q = quantizeInt4(w, 2, 64, { groupSize: 32, symmetric, clip: { steps: 5, minRatio: 0.6 } });
      expect(q.scales[0]).toBe(0);
      expect(Array.from(q.scales).every(Number.isFinite)).toBe(true);
      const dq = dequantizeInt4(q);
      expect(dq.every(Number.isFinite)).toBe(true);
      expect(Array.from(dq.subarray(0, 32)).every((v) => v === 0)).toBe(true);
      expect(Array.from(dq.subarray(64)).every((v) => v === 0)).toBe(true);
    }
  });

  it('refuses NaN and Inf naming the layer', () => {
    const w = randn(64, 2);
    w[40] = Number.NaN;
    expect(() => quantizeInt4(w, 2, 32, { name: 'model.layers.3.self_attn.k_proj' })).toThrow(
      /model\.layers\.3\.self_attn\.k_proj.*row 1, column 8/,
    );
    w[40] = Number.NEGATIVE_INFINITY;
    expect(() => quantizeInt8(w, 2, 32, { name: 'x' })).toThrow(/E|finite/);
  });

  it('refuses an odd group size', () => {
    expect(() => quantizeInt4(randn(30, 1), 1, 30, { groupSize: 15 })).toThrow(/even group size/);
  });
});

describe('quantizeInt4 asymmetric', () => {
  it('stays within half a step of the weights and pads with the zero point', () => {
    const n = 5;
    const k = 90;
    const w = randn(n * k, 9, 0.1);
    for (let i = 0; i < w.length; i += 3) w[i] = Math.abs(w[i] as number) + 0.05; // skew the distribution
    const q = quantizeInt4(w, n, k, { groupSize: 32, symmetric: false });
    expect(q.zeros).toBeDefined();
    const dq = dequantizeInt4(q);
    const groups = q.kPadded / 32;
    for (let i = 0; i < w.length; i++) {
      const s = q.scales[Math.floor(i / k) * groups + Math.floor((i % k) / 32)] as number;
      expect(Math.abs((dq[i] as number) - (w[i] as number))).toBeLessThanOrEqual(s / 2 + 1e-7);
    }
    const vals = unpackInt4(q.packed, n * q.kPadded);
    for (let r = 0; r < n; r++) {
      for (let j = k; j < q.kPadded; j++)
        expect(vals[r * q.kPadded + j]).toBe(q.zeros?.[r * groups + groups - 1]);
    }
    // Asymmetric uses 16 levels, so it is at least as accurate as symmetric on skewed data.
    const sym = dequantizeInt4(quantizeInt4(w, n, k, { groupSize: 32 }));
    expect(relativeFrobenius(dq, w)).toBeLessThan(relativeFrobenius(sym, w));
  });
});

describe('clipping search', () => {
  it('picks the grid ratio with the lowest float64 MSE per channel', () => {
    const n = 6;
    const k = 128;
    const w = randn(n * k, 21, 0.05);
    for (let r = 0; r < n; r++) w[r * k + ((r * 7) % k)] = 0.6; // an outlier per row makes clipping pay off
    const clip = { steps: 11, minRatio: 0.5 };
    const q = quantizeInt4(w, n, k, { groupSize: 'channel', clip });
    for (let r = 0; r < n; r++) {
      let amax = 0;
      for (let j = 0; j < k; j++) amax = Math.max(amax, Math.abs(w[r * k + j] as number));
      let best = Number.POSITIVE_INFINITY;
      let bestS = 0;
      for (let i = 0; i < clip.steps; i++) {
        const ratio = 1 - (0.5 * i) / (clip.steps - 1);
        const s = new Float32Array([(amax * ratio) / 7])[0] as number;
        let e = 0;
        for (let j = 0; j < k; j++) {
          const v = w[r * k + j] as number;
          const d = v - s * Math.max(-7, Math.min(7, refRint(v / s)));
          e += d * d;
        }
        if (e < best) {
          best = e;
          bestS = s;
        }
      }
      expect(q.scales[r]).toBe(bestS);
    }
    const rtn = dequantizeInt4(quantizeInt4(w, n, k, { groupSize: 'channel' }));
    expect(relativeFrobenius(dequantizeInt4(q), w)).toBeLessThan(relativeFrobenius(rtn, w));
  });
  it('refuses a bad grid', () => {
    expect(() =>
      quantizeInt4(randn(32, 1), 1, 32, { groupSize: 32, clip: { steps: 1, minRatio: 0.5 } }),
    ).toThrow(/clip/);
  });
});

describe('quantizeInt8', () => {
  it('matches float64 math per output channel, zero rows included', () => {
    const n = 7;
    const k = 33;
    const w = randn(n * k, 4);
    w.fill(0, 2 * k, 3 * k);
    const q = quantizeInt8(w, n, k);
    for (let r = 0; r < n; r++) {
      let amax = 0;
      for (let j = 0; j < k; j++) amax = Math.max(amax, Math.abs(w[r * k + j] as number));
      const s = amax === 0 ? 0 : (new Float32Array([amax / 127])[0] as number);
      expect(q.scales[r]).toBe(s);
      for (let j = 0; j < k; j++) {
        expect(q.data[r * k + j]).toBe(s === 0 ? 0 : refRint((w[r * k + j] as number) / s));
      }
    }
    expect(dequantizeInt8(q).every(Number.isFinite)).toBe(true);
  });
});

describe('weightErrorFromStats', () => {
  it('equals the relative Frobenius error of the dequantized weights', () => {
    const n = 12;
    const k = 300;
    const w = randn(n * k, 77, 0.02);
    for (const opts of [
      { groupSize: 64 },
      { groupSize: 32, symmetric: false },
      { groupSize: 'channel' as const, clip: { steps: 8, minRatio: 0.6 } },
    ]) {
      const { weights, stats } = quantizeInt4WithStats(w, n, k, opts);
      expect(weightErrorFromStats(weights, stats)).toBeCloseTo(
        relativeFrobenius(dequantizeInt4(weights), w),
        6,
      );
    }
    const { weights, stats } = quantizeInt4WithStats(w, n, k, { groupSize: 64 });
    const wi = withIntegerScale(weights, { amplifierBits: 5 });
    expect(weightErrorFromStats(wi, stats)).toBeCloseTo(relativeFrobenius(dequantizeInt4(wi, true), w), 6);
  });
});
