import {
  byteToHighNibblePair,
  fromHighNibble,
  getInt4,
  isQError,
  packInt4,
  toHighNibble,
  unpackInt4,
} from '@q/core';
import { describe, expect, it } from 'vitest';
import { rng } from '../test/helpers';

function randomInt4(n: number, seed: number): Int8Array {
  const r = rng(seed);
  const out = new Int8Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.floor(r() * 16) - 8;
  return out;
}

describe('int4 plain packing', () => {
  it('puts element 2i in the low nibble and 2i+1 in the high nibble, two’s complement', () => {
    for (let lo = -8; lo <= 7; lo++) {
      for (let hi = -8; hi <= 7; hi++) {
        const b = packInt4([lo, hi])[0] as number;
        // Reference from the definition: nibble = value mod 16.
        expect(b).toBe((((lo % 16) + 16) % 16) + 16 * (((hi % 16) + 16) % 16));
      }
    }
  });

  it('round-trips random values of even and odd counts', () => {
    for (const n of [1, 2, 7, 64, 1001]) {
      const v = randomInt4(n, n);
      const packed = packInt4(v);
      expect(packed.length).toBe(Math.ceil(n / 2));
      expect(Array.from(unpackInt4(packed, n))).toEqual(Array.from(v));
      for (let i = 0; i < n; i++) expect(getInt4(packed, i)).toBe(v[i]);
      if (n % 2 === 1) expect((packed[packed.length - 1] as number) >> 4).toBe(0);
    }
  });

  it('rejects values outside [-8, 7] and short buffers', () => {
    for (const bad of [8, -9, 0.5, Number.NaN]) {
      expect(() => packInt4([0, bad])).toThrow(/int4 element 1/);
    }
    expect(() => unpackInt4(new Uint8Array(1), 3)).toThrowError(expect.objectContaining({ code: 'E_SHAPE' }));
    try {
      packInt4([1, 2, 3], new Uint8Array(1));
    } catch (e) {
      expect(isQError(e, 'E_SHAPE')).toBe(true);
    }
  });
});

describe('int4 high-nibble form', () => {
  it('stores 16·w in an int8 lane and reads it back', () => {
    const v = randomInt4(500, 7);
    const lanes = toHighNibble(v);
    for (let i = 0; i < v.length; i++) {
      expect(lanes[i]).toBe(16 * (v[i] as number));
      expect((lanes[i] as number) & 0x0f).toBe(0);
    }
    expect(Array.from(fromHighNibble(lanes))).toEqual(Array.from(v));
  });

  it('rejects lanes with low-nibble bits', () => {
    expect(() => fromHighNibble(Int8Array.of(16, 17))).toThrowError(
      expect.objectContaining({ code: 'E_FORMAT', message: expect.stringMatching(/lane 1/) }),
    );
  });

  it('byte & 0xF0 and (byte << 4) & 0xF0 of every packed byte give 16× its two elements', () => {
    for (let b = 0; b < 256; b++) {
      const [lo, hi] = unpackInt4(Uint8Array.of(b), 2);
      const [lLane, hLane] = byteToHighNibblePair(b);
      expect(lLane).toBe(16 * (lo as number));
      expect(hLane).toBe(16 * (hi as number));
      // The same tricks through an Int8Array store, as a kernel's int8 registers would see them.
      const lanes = Int8Array.of(b & 0xf0, (b << 4) & 0xf0);
      expect(lanes[0]).toBe(16 * (hi as number));
      expect(lanes[1]).toBe(16 * (lo as number));
    }
  });

  it('an int8 dot product over high-nibble lanes is 16× the int4 dot product', () => {
    const a = randomInt4(256, 11);
    const x = randomInt4(256, 12);
    const lanes = toHighNibble(a);
    let ref = 0;
    let dot = 0;
    for (let i = 0; i < 256; i++) {
      ref += (a[i] as number) * (x[i] as number);
      dot += (lanes[i] as number) * (x[i] as number);
    }
    expect(dot).toBe(16 * ref);
  });
});
