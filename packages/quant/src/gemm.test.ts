import { Rng, relativeError, unpackInt4 } from '@q/core';
import { describe, expect, it } from 'vitest';
import { quantizeActPerToken, quantizeActStatic } from './activation';
import { gemmW4A8Golden, gemmW4A8GoldenInt, gemmW8A8Golden, linearForward } from './gemm';
import { withIntegerScale } from './intscale';
import { randn } from './testing';
import type { GemmScaleMode, Int4Weights } from './types';
import { dequantizeInt4, quantizeInt4, quantizeInt8 } from './weights';

const f32 = (v: number): number => new Float32Array([v])[0] as number;

/** Float64 evaluation of the integer partial sums from independently unpacked operands. */
function refPartials(a: Int8Array, m: number, w: Int4Weights): number[][][] {
  const vals = unpackInt4(w.packed, w.n * w.kPadded);
  const groups = w.kPadded / w.groupSize;
  const out: number[][][] = [];
  for (let i = 0; i < m; i++) {
    const row: number[][] = [];
    for (let c = 0; c < w.n; c++) {
      const ps: number[] = [];
      for (let g = 0; g < groups; g++) {
        const z = w.zeros ? (w.zeros[c * groups + g] as number) : 0;
        let s = 0;
        for (let j = g * w.groupSize; j < (g + 1) * w.groupSize; j++) {
          s += (a[i * w.kPadded + j] as number) * ((vals[c * w.kPadded + j] as number) - z);
        }
        ps.push(s);
      }
      row.push(ps);
    }
    out.push(row);
  }
  return out;
}

describe('gemmW4A8Golden', () => {
  const rng = new Rng(99);
  const rand = (): number => rng.next();
  const cases: Array<{ mode: GemmScaleMode; symmetric: boolean }> = [
    { mode: 'per-channel', symmetric: true },
    { mode: 'per-channel', symmetric: false },
    { mode: 'group-float', symmetric: true },
    { mode: 'group-float', symmetric: false },
    { mode: 'group-int', symmetric: true },
  ];
  for (const { mode, symmetric } of cases) {
    it(`integer part equals float64 evaluation exactly, ${mode}, ${symmetric ? 'sym' : 'asym'}, random shapes`, () => {
      for (let trial = 0; trial < 4; trial++) {
        const m = 1 + Math.floor(rand() * 9);
        const n = 1 + Math.floor(rand() * 24);
        const gs = [32, 64, 128][Math.floor(rand() * 3)] as number;
        const k = 1 + Math.floor(rand() * 300);
        const seed = Math.floor(rand() * 1e9);
        let w = quantizeInt4(randn(n * k, seed, 0.05), n, k, {
          groupSize: mode === 'per-channel' ? 'channel' : gs,
          symmetric,
        });
        if (mode === 'group-int') w = withIntegerScale(w, { amplifierBits: 10 });
        const x = randn(m * k, seed + 1, 2);
        const { q: a, scales } = quantizeActPerToken(x, m, k, { kPadded: w.kPadded });
        const ref = refPartials(a, m, w);
        const groups = w.kPadded / w.groupSize;
        const ints = gemmW4A8GoldenInt({ a, aScales: scales, m, weights: w, mode });
        const viaFlag = gemmW4A8Golden({ a, aScales: scales, m, weights: w, mode, returnInt: true });
        expect(viaFlag.values).toEqual(ints.values);
        const out = gemmW4A8Golden({ a, aScales: scales, m, weights: w, mode });
        const dq = dequantizeInt4(w, mode === 'group-int');
        for (let i = 0; i < m; i++) {
          for (let c = 0; c < n; c++) {
            const ps = ref[i]?.[c] as number[];
            let expectF: number;
            if (mode === 'group-float') {
              for (let g = 0; g < groups; g++) expect(ints.values[(i * n + c) * groups + g]).toBe(ps[g]);
              let s = 0;
              for (let g = 0; g < groups; g++)
                s = f32(s + f32((ps[g] as number) * (w.scales[c * groups + g] as number)));
              expectF = f32(s * (scales[i] as number));
            } else if (mode === 'group-int') {
              const is = w.intScale as NonNullable<Int4Weights['intScale']>;
              let acc = 0;
              for (let g = 0; g < groups; g++) acc += (is.q[c * groups + g] as number) * (ps[g] as number);
              expect(ints.values[i * n + c]).toBe(acc);
              expectF = f32(f32(f32(acc) * (scales[i] as number)) * (is.unit[c] as number));
            } else {
              const acc = ps.reduce((p, v) => p + v, 0);
              expect(ints.values[i * n + c]).toBe(acc);
              expectF = f32(f32(f32(acc) * (scales[i] as number)) * (w.scales[c] as number));
            }
            expect(out[i * n + c]).toBe(expectF);
            // And the f32 output is close to the float64 product of the dequantized operands.
            let ref64 = 0;
            for (let j = 0; j < k; j++) {
              ref64 += (a[i * w.kPadded + j] as number) * (scales[i] as number) * (dq[c * k + j] as number);
            }
            expect(Math.abs((out[i * n + c] as number) - ref64)).toBeLessThanOrEqual(
              1e-5 * (Math.abs(ref64) + 1),
            );
          }
        }
      }
    });
  }

  it('refuses mismatched shapes and modes', () => {
    const w = quantizeInt4(randn(4 * 64, 1), 4, 64, { groupSize: 32 });
    expect(() =>
      gemmW4A8Golden({
        a: new Int8Array(10),
        aScales: new Float32Array(1),
        m: 1,
        weights: w,
        mode: 'group-float',
      }),
    ).toThrow(/kPadded=64/);
    expect(() =>
      gemmW4A8Golden({
        a: new Int8Array(64),
        aScales: new Float32Array(1),
        m: 1,
        weights: w,
        mode: 'per-channel',
      }),
    ).toThrow(/2 groups/);
    expect(() =>
      gemmW4A8Golden({
        a: new Int8Array(64),
        aScales: new Float32Array(1),
        m: 1,
        weights: w,
        mode: 'group-int',
      }),
    ).toThrow(/intScale/);
  });

  it('accepts one per-tensor scale for static activations', () => {
    const w = quantizeInt4(randn(3 * 64, 5), 3, 64, { groupSize: 64 });
    const x = randn(2 * 64, 6);
    const a = quantizeActStatic(x, 0.02);
    const out = gemmW4A8Golden({
      a,
      aScales: Float32Array.of(f32(0.02)),
      m: 2,
      weights: w,
      mode: 'per-channel',
    });
    const ref = refPartials(a, 2, w);
    expect(out[4]).toBe(f32(f32(f32(ref[1]?.[1]?.[0] as number) * f32(0.02)) * (w.scales[1] as number)));
  });
});

describe('gemmW8A8Golden', () => {
  it('equals the float64 integer sum with the f32 epilogue', () => {
    const m = 5;
    const n = 7;
    const k = 93;
    const wq = quantizeInt8(randn(n * k, 31), n, k);
    const { q: a, scales } = quantizeActPerToken(randn(m * k, 32), m, k);
    const out = gemmW8A8Golden({ a, aScales: scales, m, weights: wq });
    for (let i = 0; i < m; i++) {
      for (let c = 0; c < n; c++) {
        let acc = 0;
        for (let j = 0; j < k; j++) acc += (a[i * k + j] as number) * (wq.data[c * k + j] as number);
        expect(out[i * n + c]).toBe(f32(f32(f32(acc) * (scales[i] as number)) * (wq.scales[c] as number)));
      }
    }
  });
});

describe('int32 limits', () => {
  it('refuses a W8A8 K whose worst-case sum does not fit int32', () => {
    const k = 133_200; // 127 · 127 · k > 2^31 − 1
    const w = quantizeInt8(randn(k, 3), 1, k);
    expect(() =>
      gemmW8A8Golden({ a: new Int8Array(k), aScales: Float32Array.of(1), m: 1, weights: w }),
    ).toThrow(/K=133200/);
  });
});

describe('linearForward', () => {
  const m = 6;
  const n = 10;
  const k = 100;
  const wf = randn(n * k, 41, 0.1);
  const x = randn(m * k, 42);
  const bias = randn(n, 43);
  function ref64(w: Float32Array): number[] {
    const out: number[] = [];
    for (let i = 0; i < m; i++) {
      for (let c = 0; c < n; c++) {
        let s = 0;
        for (let j = 0; j < k; j++) s += (x[i * k + j] as number) * (w[c * k + j] as number);
        out.push(s + (bias[c] as number));
      }
    }
    return out;
  }
  const exact = ref64(wf);
  it('runs the integer path for every weight format and activation mode, close to float', () => {
    const w4 = withIntegerScale(quantizeInt4(wf, n, k, { groupSize: 32 }));
    const layers = [
      { weights: w4, act: 'dynamic' as const, tol: 0.15 },
      {
        weights: quantizeInt4(wf, n, k, { groupSize: 32 }),
        act: 'static' as const,
        staticScale: f32(4.5 / 127),
        tol: 0.15,
      },
      { weights: quantizeInt4(wf, n, k, { groupSize: 'channel' }), act: 'dynamic' as const, tol: 0.2 },
      { weights: quantizeInt8(wf, n, k), act: 'dynamic' as const, tol: 0.03 },
      { weights: w4, act: 'none' as const, tol: 0.15 },
      { weights: { format: 'f32' as const, n, k, data: wf }, act: 'none' as const, tol: 1e-6 },
      { weights: { format: 'f32' as const, n, k, data: wf }, act: 'dynamic' as const, tol: 0.03 },
    ];
    for (const l of layers) {
      const y = linearForward(x, m, { name: 'test', bias, ...l });
      expect(relativeError(y, exact)).toBeLessThan(l.tol);
    }
  });
  it('equals the golden GEMM plus bias bit for bit on the int4 dynamic path', () => {
    const w = withIntegerScale(quantizeInt4(wf, n, k, { groupSize: 64 }));
    const y = linearForward(x, m, { name: 'l', weights: w, act: 'dynamic', bias });
    const { q, scales } = quantizeActPerToken(x, m, k, { kPadded: w.kPadded });
    const g = gemmW4A8Golden({ a: q, aScales: scales, m, weights: w, mode: 'group-int' });
    for (let i = 0; i < y.length; i++) expect(y[i]).toBe(f32((g[i] as number) + (bias[i % n] as number)));
  });
  it('refuses a static layer without a scale', () => {
    const w = quantizeInt4(wf, n, k, { groupSize: 32 });
    expect(() =>
      linearForward(x, m, { name: 'model.layers.0.self_attn.o_proj', weights: w, act: 'static' }),
    ).toThrow(/o_proj/);
  });
});
