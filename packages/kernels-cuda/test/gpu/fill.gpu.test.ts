/**
 * fillRandom (benchmark weights drawn on the device) and addBias (the bf16 path's q/k/v bias) on the GPU.
 */
import { bf16BitsToF32, f32ToBf16Bits } from '@q/core';
import { addBias, DeviceTensor, fillRandom } from '@q/kernels-cuda';
import { describe, expect, it } from 'vitest';
import { freshSeed, noGpu, randn, rng } from './helpers';

describe.skipIf(noGpu)('addBias', () => {
  it('out[m, n] = bf16(f32(out) + bias[n]), exactly, for odd shapes', () => {
    const seed = freshSeed('addBias');
    const rand = rng(seed);
    const g = randn(rand);
    for (const [m, n] of [
      [1, 7],
      [5, 1024],
      [33, 1000],
    ] as const) {
      const bits = Uint16Array.from({ length: m * n }, () => f32ToBf16Bits(g() * 4));
      const bias = Float32Array.from({ length: n }, () => g());
      const out = DeviceTensor.fromHost('bf16', [m, n], bits);
      const b = DeviceTensor.fromHost('f32', [n], bias);
      addBias({ out, bias: b });
      const got = out.download() as Uint16Array;
      for (let i = 0; i < m * n; i++) {
        const want = f32ToBf16Bits(Math.fround(bf16BitsToF32(bits[i] as number) + (bias[i % n] as number)));
        if (got[i] !== want) expect(`[${Math.floor(i / n)}, ${i % n}] ${got[i]}`).toBe(`${want}`);
      }
      out.dispose();
      b.dispose();
    }
  });
  it('refuses a bias of the wrong length', () => {
    const out = DeviceTensor.alloc('bf16', [2, 8]);
    const b = DeviceTensor.alloc('f32', [7]);
    expect(() => addBias({ out, bias: b })).toThrow(/shape \[8\]/);
    out.dispose();
    b.dispose();
  });
});

describe.skipIf(noGpu)('fillRandom', () => {
  it('uniform f32/bf16 in [lo, hi), ints in [lo, hi], bytes; the same seed gives the same values', () => {
    const seed = freshSeed('fillRandom') | 0;
    const f = DeviceTensor.alloc('f32', [100_003]);
    fillRandom({ out: f, dist: 'uniform', lo: -0.5, hi: 2, seed });
    const a = f.download() as Float32Array;
    let mean = 0;
    for (const v of a) {
      expect(v >= -0.5 && v < 2).toBe(true);
      mean += v / a.length;
    }
    expect(Math.abs(mean - 0.75)).toBeLessThan(0.02);
    fillRandom({ out: f, dist: 'uniform', lo: -0.5, hi: 2, seed });
    expect((f.download() as Float32Array).every((v, i) => v === a[i])).toBe(true);
    fillRandom({ out: f, dist: 'uniform', lo: -0.5, hi: 2, seed: seed + 1 });
    expect((f.download() as Float32Array).some((v, i) => v !== a[i])).toBe(true);
    const h = DeviceTensor.alloc('bf16', [4097]);
    fillRandom({ out: h, dist: 'uniform', lo: -0.02, hi: 0.02, seed });
    for (const b of h.download() as Uint16Array) expect(Math.abs(bf16BitsToF32(b))).toBeLessThanOrEqual(0.02);
    const q = DeviceTensor.alloc('i32', [5000]);
    fillRandom({ out: q, dist: 'int', lo: 1, hi: 16, seed });
    const ints = q.download() as Int32Array;
    const seen = new Set(ints);
    expect(Math.min(...ints)).toBe(1);
    expect(Math.max(...ints)).toBe(16);
    expect(seen.size).toBe(16);
    const u = DeviceTensor.alloc('u8', [4096]);
    fillRandom({ out: u, dist: 'bytes', seed });
    expect(new Set(u.download() as Uint8Array).size).toBeGreaterThan(200);
    for (const t of [f, h, q, u]) t.dispose();
  });
});
