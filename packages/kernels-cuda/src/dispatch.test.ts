/**
 * The measured dispatch table without a GPU: bucket rounding, nearest shape class, the checks of a table read
 * from a file, the variant numbers gemmW4A8 accepts, and which variants the tuner times.
 */
import { Rng } from '@q/core';
import { describe, expect, it } from 'vitest';
import {
  DISPATCH_BUCKETS,
  dispatchBucket,
  type GemmDispatchTable,
  isGemmVariant,
  lookupGemmVariant,
  parseGemmDispatchTable,
  shippedGemmDispatchTable,
} from './dispatch';
import h200 from './dispatch/h200.json';
import { DeviceGemmWeights, gemmW4A8 } from './ops';
import { expectQ, fakeTensor } from './test-support';
import { tuneCandidates } from './tune';

function table(entries: GemmDispatchTable['entries']): GemmDispatchTable {
  return {
    format: 1,
    gpu: 'G',
    sms: 10,
    computeCapability: '9.0',
    groupSize: 128,
    date: '',
    buckets: [...DISPATCH_BUCKETS],
    entries,
  };
}

describe('dispatch table', () => {
  it('rounds M up to the next bucket, and past the last to the last', () => {
    const rng = new Rng(7);
    for (let i = 0; i < 2000; i++) {
      const m = 1 + rng.int(10000);
      const b = dispatchBucket(m);
      const want = DISPATCH_BUCKETS.findIndex((x) => x >= m);
      expect(b, `M=${m}`).toBe(want < 0 ? DISPATCH_BUCKETS.length - 1 : want);
    }
    expect(dispatchBucket(4096)).toBe(12);
    expect(dispatchBucket(4097)).toBe(12);
  });

  it('picks the entry of the same mode with the nearest (N, K) in log distance', () => {
    const v = (x: number) => DISPATCH_BUCKETS.map((_, i) => (i === 7 ? x : 0));
    const t = table([
      { n: 4096, k: 4096, mode: 'group-int', variants: v(404) },
      { n: 4096, k: 11008, mode: 'group-int', variants: v(208) },
      { n: 4096, k: 11008, mode: 'per-channel', variants: v(21) },
    ]);
    expect(lookupGemmVariant(t, 4096, 10000, 'group-int', 100)).toBe(208);
    expect(lookupGemmVariant(t, 5120, 5120, 'group-int', 128)).toBe(404);
    expect(lookupGemmVariant(t, 4096, 4096, 'per-channel', 65)).toBe(21);
    expect(lookupGemmVariant(t, 4096, 4096, 'per-channel', 64)).toBe(0);
    expect(lookupGemmVariant(t, 4096, 4096, 'group-float', 128)).toBe(0);
  });

  it('rejects a table with unknown variants or other buckets, naming the file', () => {
    const bad = table([{ n: 16, k: 64, mode: 'per-channel', variants: DISPATCH_BUCKETS.map(() => 3) }]);
    expect(() => parseGemmDispatchTable(bad, 't.json')).toThrow(/known variants .* for t\.json/);
    expect(() => parseGemmDispatchTable({ ...table([]), buckets: [1, 2] }, 't.json')).toThrow(/buckets/);
    expect(() => parseGemmDispatchTable({ ...table([]), format: 2 }, 't.json')).toThrow(/format 1/);
  });

  it('ships a table that parses, and none for a GPU it was not measured on', () => {
    expect(() => parseGemmDispatchTable(h200)).not.toThrow();
    expect(shippedGemmDispatchTable('Some GPU', 1)).toBeUndefined();
  });

  it('knows the variant numbers', () => {
    for (const v of [0, 1, 2, 4, 8, 16, 18, 20, 25, 201, 408, 1608])
      expect(isGemmVariant(v), String(v)).toBe(true);
    for (const v of [-1, 3, 17, 19, 26, 100, 101, 203, 1708, 2.5])
      expect(isGemmVariant(v), String(v)).toBe(false);
  });

  it('gemmW4A8 rejects an unknown variant before any native call', () => {
    const n = 256;
    const k = 4096;
    const w = new DeviceGemmWeights({
      n,
      k,
      kPadded: k,
      groupSize: 128,
      groups: 32,
      device: 0,
      packed: fakeTensor('u8', [(n / 16) * (k / 64) * 512]),
      scales: fakeTensor('f32', [n, 32]),
      intQ: fakeTensor('i32', [n, 32]),
      unit: fakeTensor('f32', [n]),
    });
    expectQ(
      () =>
        gemmW4A8({
          a: fakeTensor('i8', [16, k]),
          aScale: fakeTensor('f32', [16]),
          weights: w,
          mode: 'group-int',
          out: fakeTensor('bf16', [16, n]),
          variant: 203,
        }),
      'E_ARG',
      'but received 203',
    );
  });
});

describe('tuneCandidates', () => {
  const base = { n: 4096, k: 4096, groupSize: 128, sms: 132, sm90: true } as const;
  it('times only token tiles no wider than twice M, and no wgmma below 32 tokens', () => {
    expect(tuneCandidates({ ...base, m: 1, mode: 'per-channel' }).filter((v) => v < 100)).toEqual([1]);
    expect(tuneCandidates({ ...base, m: 16, mode: 'group-int' }).filter((v) => v < 100)).toEqual([1, 2]);
    const c32 = tuneCandidates({ ...base, m: 32, mode: 'group-int' });
    expect(c32).toContain(16);
    expect(c32).toContain(24);
    expect(c32).not.toContain(25);
    expect(
      tuneCandidates({ ...base, m: 64, mode: 'per-channel', sm90: false }).some((v) => v >= 16 && v < 100),
    ).toBe(false);
  });

  it('splits K only while every split worker has a unit of K and the grid is small', () => {
    // group-int, group 128, K 4096: 32 groups; 8 warps per block at MT ≥ 2, so 2 or 4 splits (8 would idle
    // warps); MT 1 at M = 128 is 256 × 16 blocks, over 16 per SM, so it is not split.
    const c = tuneCandidates({ ...base, m: 128, mode: 'group-int' }).filter((v) => v >= 100);
    expect(c).toEqual([202, 402, 204, 404, 208, 408]);
    // At M = 16, MT 1 (16 warps) still gets its 2 splits.
    expect(tuneCandidates({ ...base, m: 16, mode: 'group-int' }).filter((v) => v >= 100)).toEqual([
      201, 202, 402,
    ]);
    // 70B gate+up at M = 1024: the unsplit grid already fills the GPU many times over.
    expect(
      tuneCandidates({ ...base, n: 57344, k: 8192, m: 1024, mode: 'per-channel' }).filter((v) => v >= 100),
    ).toEqual([]);
    // No mma.sync and no split-K past 1024 tokens.
    expect(tuneCandidates({ ...base, m: 2048, mode: 'per-channel' }).every((v) => v >= 16 && v < 100)).toBe(
      true,
    );
  });
});
