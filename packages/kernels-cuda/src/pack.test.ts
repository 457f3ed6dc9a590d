import { getInt4, isQError, packInt4, Rng } from '@q/core';
import type { Int4Weights } from '@q/quant';
import { describe, expect, it } from 'vitest';
import { tileScales } from './ops';
import { GEMM_LAYOUT, packForGemm, unpackFromGemm } from './pack';

function rng(seed: number): () => number {
  const r = new Rng(seed);
  return () => r.next();
}

function weights(
  n: number,
  kPadded: number,
  groupSize: number,
  seed: number,
  over: Partial<Int4Weights> = {},
): Int4Weights {
  const r = rng(seed);
  const vals = Int8Array.from({ length: n * kPadded }, () => Math.floor(r() * 15) - 7);
  const groups = kPadded / groupSize;
  return {
    format: 'int4',
    n,
    k: kPadded,
    kPadded,
    groupSize,
    symmetric: true,
    packed: packInt4(vals),
    scales: Float32Array.from({ length: n * groups }, () => r()),
    ...over,
  };
}

const seed = Date.now() >>> 0;

describe('packForGemm', () => {
  for (const [n, k, gs] of [
    [16, 64, 64],
    [48, 272, 272],
    [32, 1040, 1040],
    [64, 512, 128],
    [160, 256, 64],
  ] as const) {
    it(`round-trips n=${n} kPadded=${k} groupSize=${gs} (seed ${seed})`, () => {
      const w = weights(n, k, gs, seed + n + k);
      const p = packForGemm(w);
      expect(p.layout).toBe(GEMM_LAYOUT);
      expect(p.packed.length).toBe((n / 16) * Math.ceil(k / 64) * 512);
      expect(Buffer.from(unpackFromGemm(p)).equals(Buffer.from(w.packed))).toBe(true);
    });
  }

  it('lays out words so that the FastGEMM masks yield 16·w of rows g and g+8', () => {
    const n = 32;
    const k = 192;
    const w = weights(n, k, 64, seed ^ 0x5a5a);
    const p = packForGemm(w);
    const view = new DataView(p.packed.buffer, p.packed.byteOffset, p.packed.byteLength);
    const kTiles = k / 64;
    for (let nt = 0; nt < n / 16; nt++)
      for (let kt = 0; kt < kTiles; kt++)
        for (let lane = 0; lane < 32; lane++)
          for (let j = 0; j < 4; j++) {
            const x = view.getUint32(((nt * kTiles + kt) * 32 + lane) * 16 + 4 * j, true);
            const lo = (x << 4) & 0xf0f0f0f0;
            const hi = x & 0xf0f0f0f0;
            for (let b = 0; b < 4; b++) {
              const g = lane >> 2;
              const kk = kt * 64 + 16 * (lane & 3) + 4 * j + b;
              const l0 = ((lo >>> (8 * b)) << 24) >> 24;
              const l1 = ((hi >>> (8 * b)) << 24) >> 24;
              expect(l0).toBe(16 * getInt4(w.packed, (nt * 16 + g) * k + kk));
              expect(l1).toBe(16 * getInt4(w.packed, (nt * 16 + g + 8) * k + kk));
            }
          }
  });

  it('zero-fills k past kPadded in the last tile', () => {
    const p = packForGemm(weights(16, 272, 272, seed));
    const lastTile = p.packed.subarray(4 * 512);
    for (let lane = 0; lane < 32; lane++) {
      const t = lane & 3;
      for (let i = 0; i < 16; i++) if (256 + 16 * t + i >= 272) expect(lastTile[lane * 16 + i]).toBe(0);
    }
  });

  it('rejects asymmetric weights', () => {
    const w = weights(16, 128, 128, 1, { symmetric: false, zeros: new Int8Array(16) });
    expect(() => packForGemm(w)).toThrow(/symmetric/);
    try {
      packForGemm(w);
    } catch (e) {
      expect(isQError(e, 'E_UNSUPPORTED')).toBe(true);
    }
  });

  it('rejects n that is not a multiple of 16, naming it', () => {
    expect(() => packForGemm(weights(24, 128, 128, 1))).toThrow('n=24 is not a positive multiple of 16');
  });

  it('rejects k that is not a multiple of the group size, naming both', () => {
    const w = weights(16, 4100, 4100, 1);
    expect(() => packForGemm({ ...w, groupSize: 128 })).toThrow(
      'packForGemm: k=4100 is not a multiple of groupSize=128',
    );
  });

  it('rejects a per-channel k that is not a multiple of 16', () => {
    expect(() => packForGemm(weights(16, 4100, 4100, 1))).toThrow('k=4100 is not a multiple of 16');
  });

  it('rejects group sizes that do not fill the 64-wide k tile', () => {
    const w = weights(16, 128, 32, 1);
    try {
      packForGemm(w);
      expect.unreachable();
    } catch (e) {
      expect(isQError(e, 'E_UNSUPPORTED')).toBe(true);
      expect(String(e)).toContain('groupSize=32');
    }
  });

  it('rejects packed data of the wrong length', () => {
    const w = weights(16, 128, 128, 1);
    expect(() => packForGemm({ ...w, packed: w.packed.subarray(1) })).toThrow(/Expected 1024 packed bytes/);
  });
});

describe('tileScales', () => {
  it('moves [n, groups] to [n/16][groups][16]', () => {
    const n = 32;
    const groups = 3;
    const src = Float32Array.from({ length: n * groups }, (_, i) => i);
    const t = tileScales(src, n, groups);
    for (let r = 0; r < n; r++)
      for (let g = 0; g < groups; g++)
        expect(t[(r >> 4) * groups * 16 + g * 16 + (r & 15)]).toBe(src[r * groups + g]);
  });
});
