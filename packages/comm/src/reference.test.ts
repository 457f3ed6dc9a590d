import { bf16ArrayToF32, QError, Rng } from '@q/core';
import { describe, expect, it } from 'vitest';
import { allReduceThreads } from './cpu';
import { dequantizeGroups, quantizeGroups } from './quantize';
import {
  allReduceReference,
  chunkLength,
  exactSum,
  type PayloadDType,
  type QuantOptions,
  relativeError,
  schemeOf,
  wireLayout,
} from './reference';
import { randomPayload } from './test-utils';

describe('wireLayout', () => {
  it('splits into group-aligned chunks, the last ones short or empty', () => {
    const l = wireLayout(1000, 4, { bits: 4, symmetric: false, groupSize: 128 });
    expect(l.chunkElems).toBe(256);
    expect([0, 1, 2, 3].map((j) => chunkLength(l, j))).toEqual([256, 256, 256, 232]);
    const tiny = wireLayout(130, 4, { bits: 8, symmetric: true, groupSize: 128 });
    expect([0, 1, 2, 3].map((j) => chunkLength(tiny, j))).toEqual([128, 2, 0, 0]);
    expect(l.recordBytes % 16).toBe(0);
    expect(l.recordBytes).toBeGreaterThanOrEqual(128 + 2 * 4 + 2);
  });
});

describe('allReduceReference', () => {
  // Bound: at most 2x the relative error of one plain quantize-dequantize round of the summed inputs (the
  // two-step algorithm quantizes twice, each rank's rounding errors are independent and partly cancel).
  const cases: QuantOptions[] = [
    { wire: 'int8' },
    { wire: 'int8', symmetric: true },
    { wire: 'int4' },
    { wire: 'int4', symmetric: true, groupSize: 32 },
  ];
  for (const opts of cases) {
    it(`is close to the exact sum (${JSON.stringify(opts)})`, () => {
      const rand = new Rng(101);
      const inputs = Array.from({ length: 4 }, () => randomPayload(3000, 'f32', rand));
      const exact = exactSum(inputs, 'f32');
      const oneRound = dequantizeGroups(quantizeGroups(Float32Array.from(exact), schemeOf(opts)));
      const plain = relativeError(oneRound, 'f32', exact);
      const err = relativeError(allReduceReference(inputs, 'f32', opts), 'f32', exact);
      expect(err).toBeLessThan(2 * plain);
      expect(err).toBeGreaterThan(0);
    });
  }

  it('is within f32 rounding of the exact sum unquantized', () => {
    const rand = new Rng(102);
    const inputs = Array.from({ length: 4 }, () => randomPayload(3000, 'f32', rand));
    expect(
      relativeError(allReduceReference(inputs, 'f32', { wire: 'none' }), 'f32', exactSum(inputs, 'f32')),
    ).toBeLessThan(3 * 2 ** -24 * 4);
  });

  it('sums unquantized f32 in rank order', () => {
    const a = Float32Array.of(1e8, 1),
      b = Float32Array.of(1, 1e8),
      c = Float32Array.of(-1e8, -1e8);
    const out = allReduceReference([a, b, c], 'f32', { wire: 'none' }) as Float32Array;
    expect(Array.from(out)).toEqual([
      Math.fround(Math.fround(1e8 + 1) - 1e8),
      Math.fround(Math.fround(1 + 1e8) - 1e8),
    ]);
  });

  it('returns bf16 that is the f32 result rounded once', () => {
    const rand = new Rng(7);
    const inputs = Array.from({ length: 2 }, () => randomPayload(777, 'bf16', rand));
    const out = allReduceReference(inputs, 'bf16', { wire: 'int8' }) as Uint16Array;
    const f32in = inputs.map((x) => bf16ArrayToF32(x as Uint16Array));
    const f32out = allReduceReference(f32in, 'f32', { wire: 'int8' }) as Float32Array;
    const widened = bf16ArrayToF32(out);
    for (let i = 0; i < out.length; i++)
      expect(Math.abs((widened[i] as number) - (f32out[i] as number))).toBeLessThanOrEqual(
        Math.abs(f32out[i] as number) * 2 ** -8,
      );
  });

  it('rejects inputs of different lengths (E_COMM)', () => {
    expect(() => allReduceReference([new Float32Array(4), new Float32Array(5)], 'f32')).toThrow(
      expect.objectContaining({ code: 'E_COMM' }),
    );
  });

  it('rejects non-finite input (E_NUMERIC)', () => {
    expect(() => allReduceReference([Float32Array.of(1, Number.NaN)], 'f32')).toThrow(QError);
  });

  it('rejects a wrong array type for the dtype (E_DTYPE)', () => {
    expect(() => allReduceReference([new Float32Array(4)], 'bf16')).toThrow(
      expect.objectContaining({ code: 'E_DTYPE' }),
    );
  });
});

describe('allReduceThreads', () => {
  const grid: Array<[number, number, PayloadDType, QuantOptions]> = [
    [2, 8192, 'bf16', { wire: 'int8' }],
    [4, 5000, 'bf16', { wire: 'int4' }],
    [3, 1000, 'f16', { wire: 'int8', symmetric: true, groupSize: 64 }],
    [4, 130, 'f32', { wire: 'int4', symmetric: true }],
    [3, 777, 'bf16', { wire: 'none' }],
    [1, 300, 'bf16', { wire: 'int8' }],
  ];
  for (const [world, n, dtype, opts] of grid) {
    it(`equals the reference bit for bit on every rank (W=${world}, n=${n}, ${dtype}, ${JSON.stringify(opts)})`, async () => {
      const rand = new Rng(world * 1000 + n);
      const inputs = Array.from({ length: world }, () => randomPayload(n, dtype, rand));
      const ref = allReduceReference(inputs, dtype, opts);
      const outs = await allReduceThreads(inputs, dtype, opts);
      expect(outs.length).toBe(world);
      for (const o of outs)
        expect(
          Buffer.from(o.buffer, o.byteOffset, o.byteLength).equals(
            Buffer.from(ref.buffer, ref.byteOffset, ref.byteLength),
          ),
        ).toBe(true);
    });
  }

  it('fails every rank with E_NUMERIC when one rank holds NaN, without hanging', async () => {
    const inputs = [Float32Array.of(1, 2, 3), Float32Array.of(1, Number.NaN, 3)];
    await expect(allReduceThreads(inputs, 'f32', { timeoutMs: 2000 })).rejects.toThrow(QError);
  });
});
