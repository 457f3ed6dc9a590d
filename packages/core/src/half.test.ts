import {
  bf16ArrayToF32,
  bf16BitsToF32,
  f16ArrayToF32,
  f16BitsToF32,
  f32ToBf16Bits,
  f32ToF16Bits,
  Tensor,
} from '@q/core';
import { describe, expect, it } from 'vitest';

// Independent reference: decode bit fields with float64 arithmetic, and step f32 values through their bits.
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** The next f32 above (dir 1) or below (dir -1) a positive finite f32 value. */
function nextF32(x: number, dir: 1 | -1): number {
  f32[0] = x;
  u32[0] = (u32[0] as number) + dir;
  return f32[0] as number;
}

/** Value of a half-precision bit pattern with `expBits` exponent and `mantBits` mantissa bits. */
function refDecode(bits: number, expBits: number, mantBits: number): number {
  const sign = bits >> (expBits + mantBits) ? -1 : 1;
  const e = (bits >> mantBits) & ((1 << expBits) - 1);
  const m = bits & ((1 << mantBits) - 1);
  const bias = (1 << (expBits - 1)) - 1;
  if (e === (1 << expBits) - 1) return m === 0 ? sign * Number.POSITIVE_INFINITY : Number.NaN;
  if (e === 0) return sign * m * 2 ** (1 - bias - mantBits);
  return sign * (1 + m / 2 ** mantBits) * 2 ** (e - bias);
}

/** Like refDecode, but the first non-finite pattern is read as the power of two past the largest finite. */
function refMagnitude(bits: number, expBits: number, mantBits: number): number {
  const e = (bits >> mantBits) & ((1 << expBits) - 1);
  const bias = (1 << (expBits - 1)) - 1;
  if (e === (1 << expBits) - 1) return 2 ** (e - bias);
  return refDecode(bits, expBits, mantBits);
}

const formats = [
  {
    name: 'f16',
    expBits: 5,
    mantBits: 10,
    dec: f16BitsToF32,
    enc: f32ToF16Bits,
    decArray: f16ArrayToF32,
    maxFinite: 0x7bff,
  },
  {
    name: 'bf16',
    expBits: 8,
    mantBits: 7,
    dec: bf16BitsToF32,
    enc: f32ToBf16Bits,
    decArray: bf16ArrayToF32,
    maxFinite: 0x7f7f,
  },
] as const;

for (const fmt of formats) {
  describe(`${fmt.name} exhaustive`, () => {
    const signBit = 1 << (fmt.expBits + fmt.mantBits);
    const isNaNBits = (h: number) =>
      ((h >> fmt.mantBits) & ((1 << fmt.expBits) - 1)) === (1 << fmt.expBits) - 1 &&
      (h & ((1 << fmt.mantBits) - 1)) !== 0;

    it('decodes all 65,536 patterns exactly (±0, subnormals, ±Inf, NaN)', () => {
      let checked = 0;
      for (let h = 0; h < 65536; h++) {
        const want = refDecode(h, fmt.expBits, fmt.mantBits);
        const got = fmt.dec(h);
        if (Number.isNaN(want)) {
          if (!Number.isNaN(got))
            throw new Error(`${fmt.name} 0x${h.toString(16)}: expected NaN, got ${got}`);
        } else if (!Object.is(got, want)) {
          throw new Error(`${fmt.name} 0x${h.toString(16)}: expected ${want}, got ${got}`);
        }
        checked++;
      }
      expect(checked).toBe(65536);
      expect(Object.is(fmt.dec(signBit), -0)).toBe(true);
    });

    it('widens all 65,536 patterns in bulk exactly as the reference decodes them', () => {
      const all = new Uint16Array(65536).map((_, i) => i);
      // A shuffled copy too, so the bulk path is not only checked on sorted input.
      const shuffled = all.slice().reverse();
      for (const src of [all, shuffled]) {
        const got = fmt.decArray(src);
        const viaTensor = new Tensor(fmt.name, [src.length], src).toFloat32();
        for (let i = 0; i < src.length; i++) {
          const h = src[i] as number;
          const want = refDecode(h, fmt.expBits, fmt.mantBits);
          for (const v of [got[i] as number, viaTensor[i] as number]) {
            if (Number.isNaN(want) ? !Number.isNaN(v) : !Object.is(v, want))
              throw new Error(`${fmt.name} bulk 0x${h.toString(16)}: expected ${want}, got ${v}`);
          }
        }
      }
      // A strided view goes element by element and agrees.
      const t = new Tensor(fmt.name, [256, 256], all).transpose();
      const tv = t.toFloat32();
      expect(tv[1]).toBe(fmt.dec(256));
    });

    it('round-trips every non-NaN pattern through f32 and keeps NaN a NaN', () => {
      for (let h = 0; h < 65536; h++) {
        const v = refDecode(h, fmt.expBits, fmt.mantBits);
        // The reference NaN carries no sign; for NaN patterns feed the decoded value (same bits in f32).
        const back = fmt.enc(Number.isNaN(v) ? fmt.dec(h) : v);
        if (Number.isNaN(v)) {
          if (!isNaNBits(back))
            throw new Error(`${fmt.name} NaN 0x${h.toString(16)} became 0x${back.toString(16)}`);
          if ((back & signBit) !== (h & signBit))
            throw new Error(`${fmt.name} NaN 0x${h.toString(16)} lost its sign`);
        } else if (back !== h) {
          throw new Error(`${fmt.name} 0x${h.toString(16)} (${v}) encoded as 0x${back.toString(16)}`);
        }
      }
      expect(isNaNBits(fmt.enc(Number.NaN))).toBe(true);
    });

    it('rounds every midpoint to even and its f32 neighbours to the nearer value, both signs', () => {
      let pairs = 0;
      // Pairs (h, h+1) of positive values; the last pairs the largest finite value with the overflow
      // threshold 2^(emax+1), which must round to Inf.
      for (let h = 0; h <= fmt.maxFinite; h++) {
        const a = refDecode(h, fmt.expBits, fmt.mantBits);
        const b = refMagnitude(h + 1, fmt.expBits, fmt.mantBits);
        const mid = (a + b) / 2;
        if (Math.fround(mid) !== mid) throw new Error(`midpoint ${mid} is not an f32`);
        const even = (h & 1) === 0 ? h : h + 1;
        const above = nextF32(mid, 1);
        const below = nextF32(mid, -1);
        for (const s of [0, signBit]) {
          const sg = s ? -1 : 1;
          // Doubles a hair off the midpoint (not f32 values) must round once, not via the midpoint.
          const eps = mid === 0 ? 0 : mid * 2 ** -40;
          const cases: [number, number][] = [
            [sg * mid, even | s],
            [sg * above, (h + 1) | s],
            [sg * below, h | s],
            [sg * (mid + eps), (h + 1) | s],
            [sg * (mid - eps), h | s],
          ];
          for (const [x, want] of cases) {
            const got = fmt.enc(x);
            if (got !== want) {
              throw new Error(
                `${fmt.name}: ${x} encoded as 0x${got.toString(16)}, expected 0x${want.toString(16)}`,
              );
            }
          }
        }
        pairs++;
      }
      expect(pairs).toBe(fmt.maxFinite + 1);
    });

    it('sends everything at or past the overflow threshold to ±Inf', () => {
      const inf = fmt.maxFinite + 1;
      const maxF32 = 3.4028234663852886e38;
      for (const x of [maxF32, Number.POSITIVE_INFINITY, 1e39]) {
        expect(fmt.enc(x)).toBe(inf);
        expect(fmt.enc(-x)).toBe(inf | signBit);
      }
    });

    it('flushes f32 values below half the smallest subnormal to ±0', () => {
      const tiny = refDecode(1, fmt.expBits, fmt.mantBits) / 2;
      for (const x of [nextF32(tiny, -1), 1e-45, 0]) {
        expect(fmt.enc(x)).toBe(0);
        expect(fmt.enc(-x)).toBe(signBit);
      }
    });
  });
}
