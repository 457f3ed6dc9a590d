/**
 * The W4A8 GEMM against @q/quant's golden GEMM: integer accumulators bit-exact over a shape sweep (M from 1 to
 * 4096, every kernel variant the dispatch table may choose, K multiples of 128 and K that is not a multiple of the kernel's 64-wide tile, several N, group sizes
 * 64 and 128, all three scale modes), outputs poisoned before every run, float outputs within one rounding of
 * the half-precision output.
 */
import { bf16BitsToF32, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits } from '@q/core';
import { DeviceTensor, gemmFp8, gemmW4A8, gpuStatus, packForGemm, uploadGemmWeights } from '@q/kernels-cuda';
import {
  type GemmScaleMode,
  gemmW4A8Golden,
  gemmW4A8GoldenInt,
  type Int4Weights,
  quantizeActPerToken,
  quantizeInt4,
  withIntegerScale,
} from '@q/quant';
import { describe, expect, it } from 'vitest';
import { freshSeed, noGpu, randn, rng } from './helpers';

interface Case {
  m: number;
  n: number;
  k: number;
  groupSize: number | 'channel';
}

const M_SWEEP = [1, 3, 16, 33, 64, 128, 256, 512, 1000, 4096];
// N and K shrink as M grows so that the float64-free CPU golden stays fast.
function nkFor(m: number): Array<[number, number]> {
  if (m <= 33)
    return [
      [256, 4096],
      [144, 640],
      [128, 200],
    ];
  if (m <= 128)
    return [
      [256, 2048],
      [128, 200],
    ];
  return [
    [128, 512],
    [64, 200],
  ];
}

const cases: Case[] = [];
for (const m of M_SWEEP) {
  for (const [n, k] of nkFor(m)) {
    for (const g of [64, 128] as const) cases.push({ m, n, k, groupSize: g });
  }
  // Per-channel: one group of k; 1040 and 272 are not multiples of the 64-wide k tile. N = 256 at M = 128 and
  // 1000 lets the two-CTA cluster form (N % 256 == 0) run, with a token tile partly or wholly past M.
  for (const k of m <= 128 ? [4096, 1040, 272] : [1040, 272])
    cases.push({ m, n: m <= 33 ? 160 : m <= 1000 ? 256 : 128, k, groupSize: 'channel' });
}

// Every variant the dispatch tuner (src/tune.ts) can put in a table is checked on the same cases, so that a
// measured table may pick any of them: from 32 tokens on sm_90 with N % 128 == 0 the wgmma kernels (16, 18),
// the warp-specialized kernel (20) with its other tile widths (21: 128 tokens, 22: 192 per tile), its
// split-accumulator group modes (23: 160 tokens, 24: 128) and its two-CTA-cluster per-channel form (25); up to
// 1024 tokens the mma.sync kernel with each token-tile count (1, 2, 4, 8) and split-K (100·S + MT; split
// factors past the K units leave workers idle, which must still sum right).
// Q_TEST_WS_VARIANTS and Q_TEST_MMA_VARIANTS narrow the lists (comma-separated; empty for none).
const list = (v: string | undefined, dflt: string) =>
  (v ?? dflt)
    .split(',')
    .filter((x) => x !== '')
    .map(Number);
const WS_VARIANTS = list(process.env.Q_TEST_WS_VARIANTS, '16,18,20,21,22,23,24,25');
const MMA_VARIANTS = list(
  process.env.Q_TEST_MMA_VARIANTS,
  '1,2,4,8,201,202,204,208,301,402,404,408,801,808,1604',
);
function variantsFor(c: Case): number[] {
  const v = [0];
  if (c.m <= 1024) v.push(...MMA_VARIANTS);
  if (c.m >= 32 && c.n % 128 === 0 && gpuStatus().devices[0]?.computeCapability === '9.0')
    v.push(...WS_VARIANTS);
  return v;
}

function makeWeights(rand: () => number, n: number, k: number, groupSize: number | 'channel'): Int4Weights {
  const g = randn(rand);
  const w = new Float32Array(n * k);
  // Rows with different magnitudes so that the per-group scales differ.
  for (let r = 0; r < n; r++) {
    const s = 0.01 + rand() * 0.1;
    for (let j = 0; j < k; j++) w[r * k + j] = g() * s * (1 + ((3 * Math.floor(j / 64)) % 2));
  }
  const q = quantizeInt4(w, n, k, { groupSize });
  return groupSize === 'channel' ? q : withIntegerScale(q);
}

function makeActs(rand: () => number, m: number, k: number, kPadded: number) {
  const g = randn(rand);
  const x = new Float32Array(m * k);
  for (let i = 0; i < m; i++) {
    const s = 0.1 + rand() * 20;
    for (let j = 0; j < k; j++) x[i * k + j] = g() * s;
  }
  return quantizeActPerToken(x, m, k, { kPadded });
}

function halfToF32(dtype: 'f16' | 'bf16', bits: Uint16Array): Float32Array {
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++)
    out[i] = dtype === 'f16' ? f16BitsToF32(bits[i] as number) : bf16BitsToF32(bits[i] as number);
  return out;
}

describe.skipIf(noGpu)('gemmW4A8 on the GPU', () => {
  const seed = freshSeed('gemmW4A8');
  const rand = rng(seed);

  for (const c of cases) {
    const modes: GemmScaleMode[] = c.groupSize === 'channel' ? ['per-channel'] : ['group-float', 'group-int'];
    it(`M=${c.m} N=${c.n} K=${c.k} groupSize=${c.groupSize}: ${modes.join(', ')}`, () => {
      const w = makeWeights(rand, c.n, c.k, c.groupSize);
      const act = makeActs(rand, c.m, c.k, w.kPadded);
      const dw = uploadGemmWeights(packForGemm(w));
      const a = DeviceTensor.fromHost('i8', [c.m, w.kPadded], act.q);
      const aScale = DeviceTensor.fromHost('f32', [c.m], act.scales);
      const outI = DeviceTensor.alloc('i32', [c.m, c.n]);
      const outDtype = rand() < 0.5 ? 'f16' : 'bf16';
      const outH = DeviceTensor.alloc(outDtype, [c.m, c.n]);
      const bias = new Float32Array(c.n).map(() => rand() - 0.5);
      const resid = new Float32Array(c.m * c.n).map(() => rand() * 2 - 1);
      const residBits = new Uint16Array(resid.length);
      // The CPU goldens are computed once per mode and shared by the kernel variants.
      const memo = new Map<string, unknown>();
      const cached = <T>(key: string, f: () => T): T => {
        if (!memo.has(key)) memo.set(key, f());
        return memo.get(key) as T;
      };
      const golden = (mode: GemmScaleMode, f: () => ReturnType<typeof gemmW4A8GoldenInt>) =>
        cached(`i${mode}`, f);
      const goldenF = (mode: GemmScaleMode, f: () => ReturnType<typeof gemmW4A8Golden>) =>
        cached(`f${mode}`, f);
      try {
        for (const [mode, variant] of modes.flatMap((md) => variantsFor(c).map((v) => [md, v] as const))) {
          const args = { a: act.q, aScales: act.scales, m: c.m, weights: w, mode };
          const vTag = variant ? ` (variant ${variant})` : '';
          const gold = golden(mode, () => gemmW4A8GoldenInt(args));
          const ref = goldenF(mode, () => gemmW4A8Golden(args));
          // Integer part: bit-exact.
          outI.fillBytes(0xa5);
          gemmW4A8({ a, aScale, weights: dw, mode, out: outI, variant });
          const got = outI.download();
          let want = gold.values;
          if (mode === 'group-float') {
            want = new Int32Array(c.m * c.n);
            for (let i = 0; i < want.length; i++) {
              let s = 0;
              for (let gI = 0; gI < gold.groups; gI++) s += gold.values[i * gold.groups + gI] as number;
              want[i] = s;
            }
          }
          let bad = 0;
          let first = -1;
          for (let i = 0; i < want.length; i++)
            if (got[i] !== want[i]) {
              bad++;
              if (first < 0) first = i;
            }
          expect(
            bad,
            `${mode}${vTag}: ${bad} of ${want.length} int32 accumulators differ; first at ${first}: got ${got[first]}, want ${want[first]}`,
          ).toBe(0);

          // Float epilogue, with and without bias + residual.
          for (const withExtras of [false, true]) {
            outH.fillBytes(0xff);
            let residual: DeviceTensor | undefined;
            let biasT: DeviceTensor | undefined;
            if (withExtras) {
              for (let i = 0; i < resid.length; i++)
                residBits[i] =
                  outDtype === 'f16' ? f32ToF16Bits(resid[i] as number) : f32ToBf16Bits(resid[i] as number);
              residual = DeviceTensor.fromHost(outDtype, [c.m, c.n], residBits);
              biasT = DeviceTensor.fromHost('f32', [c.n], bias);
            }
            gemmW4A8({
              a,
              aScale,
              weights: dw,
              mode,
              variant,
              out: outH,
              ...(biasT ? { bias: biasT } : {}),
              ...(residual ? { residual } : {}),
            });
            const gotF = halfToF32(outDtype, outH.download() as Uint16Array);
            residual?.dispose();
            biasT?.dispose();
            const residF = halfToF32(outDtype, residBits);
            // Tolerance: one rounding to the output precision (relative 2^-10 f16, 2^-7 bf16) of the value,
            // plus a tiny absolute term for the f32 reordering of group-float sums.
            const rel = outDtype === 'f16' ? 2 ** -10 : 2 ** -7;
            let rms = 0;
            for (const v of ref) rms += v * v;
            rms = Math.sqrt(rms / ref.length);
            let worst = 0;
            let worstI = 0;
            for (let i = 0; i < ref.length; i++) {
              const n = i % c.n;
              const r = (ref[i] as number) + (withExtras ? (bias[n] as number) + (residF[i] as number) : 0);
              const err = Math.abs((gotF[i] as number) - r) / (rel * Math.abs(r) + 1e-5 * rms + 1e-30);
              if (!(err <= worst)) {
                worst = err;
                worstI = i;
              }
            }
            expect(
              worst,
              `${mode}${vTag} ${outDtype} extras=${withExtras}: worst error ratio ${worst} at ${worstI}`,
            ).toBeLessThanOrEqual(1);
          }
        }
      } finally {
        for (const t of [a, aScale, outI, outH]) t.dispose();
        dw.dispose();
      }
    });
  }
});

/** An e4m3 code's value (1 sign, 4 exponent bits with bias 7, 3 mantissa bits; 0x7f / 0xff are NaN). */
function e4m3(code: number): number {
  const sign = code & 0x80 ? -1 : 1;
  const e = (code >> 3) & 15;
  const m = code & 7;
  return sign * (e === 0 ? (m / 8) * 2 ** -6 : (1 + m / 8) * 2 ** (e - 7));
}

// The benchmark's fp8 baseline (cuBLASLt, per-tensor scales) against a float64 reference, so that its timings
// are of a GEMM that computes the right thing.
describe.skipIf(noGpu || gpuStatus().devices[0]?.computeCapability !== '9.0')(
  'gemmFp8 (cuBLASLt) on sm_90',
  () => {
    const rand = rng(freshSeed('gemmFp8'));
    for (const [m, n, k] of [
      [16, 64, 64],
      [33, 128, 528],
    ] as const) {
      it(`M=${m} N=${n} K=${k} within one bf16 rounding of float64`, () => {
        const code = () => {
          const c = Math.floor(rand() * 256);
          return (c & 0x7f) === 0x7f ? c - 1 : c;
        };
        const aBits = Uint8Array.from({ length: m * k }, code);
        const wBits = Uint8Array.from({ length: n * k }, code);
        const sa = 0.5 + rand();
        const sw = 0.01 + rand() * 0.02;
        const a = DeviceTensor.fromHost('u8', [m, k], aBits);
        const w = DeviceTensor.fromHost('u8', [n, k], wBits);
        const aScale = DeviceTensor.fromHost('f32', [1], Float32Array.of(sa));
        const wScale = DeviceTensor.fromHost('f32', [1], Float32Array.of(sw));
        const out = DeviceTensor.alloc('bf16', [m, n]);
        try {
          out.fillBytes(0xff);
          gemmFp8({ a, w, aScale, wScale, out });
          const got = halfToF32('bf16', out.download() as Uint16Array);
          const av = Float64Array.from(aBits, e4m3);
          const wv = Float64Array.from(wBits, e4m3);
          let worst = 0;
          for (let i = 0; i < m; i++)
            for (let j = 0; j < n; j++) {
              let s = 0;
              let mag = 0;
              for (let t = 0; t < k; t++) {
                const p = (av[i * k + t] as number) * (wv[j * k + t] as number);
                s += p;
                mag += Math.abs(p);
              }
              const ref = s * Math.fround(sa) * Math.fround(sw);
              // One bf16 rounding of the result plus f32 accumulation error (k·2^-24 of the absolute sum).
              const tol =
                2 ** -8 * Math.abs(ref) + k * 2 ** -23 * mag * Math.fround(sa) * Math.fround(sw) + 1e-30;
              worst = Math.max(worst, Math.abs((got[i * n + j] as number) - ref) / tol);
            }
          expect(worst).toBeLessThanOrEqual(1);
        } finally {
          for (const t of [a, w, aScale, wScale, out]) t.dispose();
        }
      });
    }
  },
);
