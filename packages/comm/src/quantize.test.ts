import { QError, Rng } from '@q/core';
import { describe, expect, it } from 'vitest';
import { dequantizeGroups, type QuantScheme, quantizeGroups, rintHalfEven } from './quantize';
import { randomF32 } from './test-utils';

const schemes: QuantScheme[] = [
  { bits: 8, symmetric: true, groupSize: 128 },
  { bits: 8, symmetric: false, groupSize: 128 },
  { bits: 4, symmetric: true, groupSize: 64 },
  { bits: 4, symmetric: false, groupSize: 32 },
];

describe('rintHalfEven', () => {
  it('rounds ties to even and everything else to nearest', () => {
    expect([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 2.4999, -2.5001, 7.5, -7.5].map(rintHalfEven)).toEqual([
      0, 2, 2, -0, -2, -2, 2, -3, 8, -8,
    ]);
  });
});

describe('quantizeGroups', () => {
  for (const s of schemes) {
    it(`bounds the error by half a step, codes in range (${s.bits}-bit ${s.symmetric ? 'sym' : 'asym'} g${s.groupSize})`, () => {
      const rand = new Rng(11 + s.bits + s.groupSize);
      const n = 5 * s.groupSize + 7; // ends in a partial group
      const x = randomF32(n, rand);
      const q = quantizeGroups(x, s);
      const back = dequantizeGroups(q);
      const groups = Math.ceil(n / s.groupSize);
      expect(q.scales.length).toBe(groups);
      for (let g = 0; g < groups; g++) {
        const xs = Array.from(x.subarray(g * s.groupSize, (g + 1) * s.groupSize));
        // Independent float64 statistics of the group, then the f32 step the contract prescribes.
        const levels = s.symmetric ? (s.bits === 8 ? 127 : 7) : s.bits === 8 ? 255 : 15;
        const range = s.symmetric ? Math.max(...xs.map(Math.abs)) : Math.max(0, ...xs) - Math.min(0, ...xs);
        expect(Math.abs((q.scales[g] as number) - range / levels)).toBeLessThanOrEqual(
          (range / levels) * 2 ** -22,
        );
        const step = q.scales[g] as number;
        for (let i = 0; i < xs.length; i++) {
          const k = g * s.groupSize + i;
          // Half a step, plus the zero point's own rounding for asymmetric groups.
          const bound = step * (s.symmetric ? 0.5 : 1) * (1 + 1e-6);
          expect(Math.abs((back[k] as number) - (x[k] as number))).toBeLessThanOrEqual(bound);
        }
      }
    });
  }

  it('maps the largest magnitude of a symmetric group to ±qmax', () => {
    const x = randomF32(256, new Rng(3));
    // Each group's largest magnitude, whatever the random draw holds.
    const peak = (lo: number): number => 1 + Math.max(...Array.from(x.subarray(lo, lo + 128), Math.abs));
    x[17] = peak(0);
    x[200] = -peak(128);
    const q = quantizeGroups(x, { bits: 8, symmetric: true, groupSize: 128 });
    expect(new Int8Array(q.codes.buffer)[17]).toBe(127);
    expect(new Int8Array(q.codes.buffer)[200]).toBe(-127);
  });

  it('gives a zero group scale 1, zero codes and exact zeros back', () => {
    const x = new Float32Array(256);
    x.set(randomF32(128, new Rng(5)), 128);
    for (const s of schemes) {
      const q = quantizeGroups(x, s);
      expect(q.scales[0]).toBe(1);
      const back = dequantizeGroups(q);
      expect(Array.from(back.subarray(0, s.groupSize)).every((v) => v === 0)).toBe(true);
    }
  });

  it('keeps zero exact in asymmetric groups of one sign', () => {
    const x = new Float32Array(64).map((_, i) => 1 + i / 10);
    x[5] = 0;
    const q = quantizeGroups(x, { bits: 4, symmetric: false, groupSize: 64 });
    expect(q.zeros[0]).toBe(0);
    expect(dequantizeGroups(q)[5]).toBe(0);
  });

  it('computes the statistics of a partial last group over its own elements only', () => {
    const x = randomF32(130, new Rng(8));
    x[0] = 1000;
    const q = quantizeGroups(x, { bits: 8, symmetric: true, groupSize: 128 });
    const tail = Math.max(Math.abs(x[128] as number), Math.abs(x[129] as number));
    expect(q.scales[1]).toBe(Math.fround(tail / 127));
  });

  it('packs int4 low nibble first', () => {
    const x = new Float32Array([7, -7, 0, 7]);
    const q = quantizeGroups(x, { bits: 4, symmetric: true, groupSize: 4 });
    expect(Array.from(q.codes)).toEqual([0x97, 0x70]);
  });

  it('rejects a bad group size', () => {
    expect(() => quantizeGroups(new Float32Array(4), { bits: 8, symmetric: true, groupSize: 3 })).toThrow(
      QError,
    );
  });

  it('rejects a bad bit width', () => {
    expect(() =>
      quantizeGroups(new Float32Array(4), { bits: 2 as 8, symmetric: true, groupSize: 2 }),
    ).toThrow(/bits 8 or 4/);
  });
});
