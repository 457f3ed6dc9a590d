/**
 * Activation quantization on the GPU: bit-identical to @q/quant for per-token dynamic and per-tensor static
 * (f16 and bf16 inputs, zero rows, padded outputs); fused RMSNorm + quantize within ±1 code of a float64
 * reference.
 */
import { bf16BitsToF32, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits } from '@q/core';
import { DeviceTensor, quantizeAct, rmsNormQuantize } from '@q/kernels-cuda';
import { quantizeActPerToken, quantizeActStatic } from '@q/quant';
import { describe, expect, it } from 'vitest';
import { freshSeed, noGpu, randn, rng } from './helpers';

function halfData(rand: () => number, dtype: 'f16' | 'bf16', m: number, k: number) {
  const g = randn(rand);
  const bits = new Uint16Array(m * k);
  const f32 = new Float32Array(m * k);
  for (let i = 0; i < m; i++) {
    const s = i === 1 ? 0 : 10 ** (rand() * 4 - 2); // row 1 is all zeros: scale must become 1
    for (let j = 0; j < k; j++) {
      const v = g() * s;
      const b = dtype === 'f16' ? f32ToF16Bits(v) : f32ToBf16Bits(v);
      bits[i * k + j] = b;
      f32[i * k + j] = dtype === 'f16' ? f16BitsToF32(b) : bf16BitsToF32(b);
    }
  }
  return { bits, f32 };
}

function firstDiff(a: ArrayLike<number>, b: ArrayLike<number>): string {
  let n = 0;
  let first = -1;
  for (let i = 0; i < a.length; i++)
    if (!Object.is(a[i], b[i])) {
      n++;
      if (first < 0) first = i;
    }
  return n === 0 ? 'none' : `${n} differ, first at ${first}: ${a[first]} vs ${b[first]}`;
}

describe.skipIf(noGpu)('activation quantization on the GPU', () => {
  const seed = freshSeed('actquant');
  const rand = rng(seed);
  for (const dtype of ['f16', 'bf16'] as const) {
    for (const [m, k, ldq] of [
      [1, 4096, 4096],
      [7, 200, 256],
      [33, 11008, 11008],
      [300, 1000, 1024],
    ] as const) {
      it(`${dtype} M=${m} K=${k} ldq=${ldq}: dynamic and static bit-exact`, () => {
        const { bits, f32 } = halfData(rand, dtype, m, k);
        const x = DeviceTensor.fromHost(dtype, [m, k], bits);
        const q = DeviceTensor.alloc('i8', [m, ldq]);
        const scales = DeviceTensor.alloc('f32', [m]);
        try {
          q.fillBytes(0x5a);
          scales.fillBytes(0xff);
          quantizeAct({ x, out: q, scales, mode: 'dynamic' });
          const want = quantizeActPerToken(f32, m, k, { kPadded: ldq });
          expect(firstDiff(scales.download(), want.scales)).toBe('none');
          expect(firstDiff(q.download(), want.q)).toBe('none');

          const s = Math.fround(0.001 + rand() * 0.05);
          q.fillBytes(0x5a);
          quantizeAct({ x, out: q, mode: 'static', staticScale: s });
          const wantS = quantizeActStatic(f32, s, { m, k, kPadded: ldq });
          expect(firstDiff(q.download(), wantS)).toBe('none');
        } finally {
          x.dispose();
          q.dispose();
          scales.dispose();
        }
      });
    }
    it(`${dtype}: fused RMSNorm + quantize within ±1 code of a float64 reference`, () => {
      const m = 19;
      const k = 4096;
      const eps = 1e-5;
      const { bits, f32 } = halfData(rand, dtype, m, k);
      const gBits = new Uint16Array(k);
      const gF = new Float64Array(k);
      for (let j = 0; j < k; j++) {
        const v = 0.2 + rand() * 2;
        gBits[j] = dtype === 'f16' ? f32ToF16Bits(v) : f32ToBf16Bits(v);
        gF[j] = dtype === 'f16' ? f16BitsToF32(gBits[j] as number) : bf16BitsToF32(gBits[j] as number);
      }
      const x = DeviceTensor.fromHost(dtype, [m, k], bits);
      const gain = DeviceTensor.fromHost(dtype, [k], gBits);
      const q = DeviceTensor.alloc('i8', [m, k]);
      const scales = DeviceTensor.alloc('f32', [m]);
      try {
        q.fillBytes(0x5a);
        rmsNormQuantize({ x, gain, eps, out: q, scales, mode: 'dynamic' });
        const gotQ = q.download();
        const gotS = scales.download();
        for (let i = 0; i < m; i++) {
          let ss = 0;
          for (let j = 0; j < k; j++) ss += (f32[i * k + j] as number) ** 2;
          const rstd = 1 / Math.sqrt(ss / k + eps);
          const y = Array.from(
            { length: k },
            (_, j) => (f32[i * k + j] as number) * rstd * (gF[j] as number),
          );
          const amax = Math.max(...y.map(Math.abs));
          const scale = amax / 127 || 1;
          expect(Math.abs((gotS[i] as number) - scale) / scale, `row ${i} scale`).toBeLessThan(1e-5);
          for (let j = 0; j < k; j++) {
            const want = Math.max(-127, Math.min(127, Math.round((y[j] as number) / scale)));
            expect(Math.abs((gotQ[i * k + j] as number) - want), `row ${i} col ${j}`).toBeLessThanOrEqual(1);
          }
        }
      } finally {
        for (const t of [x, gain, q, scales]) t.dispose();
      }
    });
  }
});
