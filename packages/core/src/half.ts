/**
 * IEEE binary16 (f16) and bfloat16 (bf16) conversion to and from f32, round-to-nearest-even.
 *
 * Conversions work on the raw bits through a shared scratch buffer, so they are exact and allocation-free.
 */
const scratch = new DataView(new ArrayBuffer(4));

/**
 * f32 bits of `x` rounded to odd: when `x` is not an f32, the result is the neighbouring f32 whose last
 * mantissa bit is 1. Rounding that to f16 or bf16 (far fewer bits) to nearest even then gives the
 * correctly rounded result of the original double, where plain `Math.fround` first would round twice
 * (a double just above an f16 midpoint would become the midpoint and then tie to even, downwards).
 * For inputs that are already f32 values this is the identity.
 */
function f32BitsRoundToOdd(x: number): number {
  scratch.setFloat32(0, x);
  let b = scratch.getUint32(0);
  const f = scratch.getFloat32(0);
  if (f !== x && !Number.isNaN(x) && (b & 1) === 0) b += Math.abs(f) < Math.abs(x) ? 1 : -1;
  return b >>> 0;
}

function bitsToF32(bits: number): number {
  scratch.setUint32(0, bits >>> 0);
  return scratch.getFloat32(0);
}

/**
 * f32 (or any JS number, rounded once) → f16 bits, round-to-nearest-even, with subnormals, ±0, ±Inf and NaN (NaN keeps its sign and
 * becomes a quiet NaN that keeps the top payload bits).
 *
 * @example
 * ```ts
 * f32ToF16Bits(1) // 0x3c00
 * ```
 */
export function f32ToF16Bits(x: number): number {
  const b = f32BitsRoundToOdd(x);
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  const mant = b & 0x7fffff;
  if (exp === 0xff) {
    if (mant === 0) return sign | 0x7c00;
    return sign | 0x7e00 | (mant >>> 13);
  }
  // Unbiased exponent; f16 normal range is [-14, 15].
  const e = exp - 127;
  if (e > 15) return sign | 0x7c00;
  if (e >= -14) {
    // Normal f16: keep 10 mantissa bits, round the 13 dropped bits to nearest even.
    let h = ((e + 15) << 10) | (mant >>> 13);
    const rest = mant & 0x1fff;
    if (rest > 0x1000 || (rest === 0x1000 && (h & 1) === 1)) h += 1; // may carry into the exponent: correct
    return sign | h;
  }
  if (e < -25) return sign; // below half the smallest subnormal: rounds to zero
  // Subnormal f16: value = m * 2^-24 with m < 1024.
  const full = mant | 0x800000; // 24-bit significand, value = full * 2^(e-23)
  const shift = -e - 1; // number of bits dropped: (e - 23) - (-24) = e + 1, negated
  const m = full >>> shift;
  const rest = full & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  let h = m;
  if (rest > half || (rest === half && (h & 1) === 1)) h += 1;
  return sign | h;
}

/**
 * f16 bits → f32 value (exact).
 *
 * @example
 * ```ts
 * f16BitsToF32(0x3c00) // 1
 * ```
 */
export function f16BitsToF32(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) {
    if (mant === 0) return bitsToF32(sign);
    // Subnormal: normalise.
    let e = -14;
    let m = mant;
    while ((m & 0x400) === 0) {
      m <<= 1;
      e -= 1;
    }
    return bitsToF32(sign | ((e + 127) << 23) | ((m & 0x3ff) << 13));
  }
  if (exp === 0x1f) return bitsToF32(sign | 0x7f800000 | (mant << 13));
  return bitsToF32(sign | ((exp - 15 + 127) << 23) | (mant << 13));
}

/**
 * f32 (or any JS number, rounded once) → bf16 bits, round-to-nearest-even; NaN stays NaN (quiet), never rounds to Inf.
 *
 * @example
 * ```ts
 * f32ToBf16Bits(1) // 0x3f80
 * ```
 */
export function f32ToBf16Bits(x: number): number {
  const b = f32BitsRoundToOdd(x);
  if ((b & 0x7f800000) === 0x7f800000 && (b & 0x7fffff) !== 0) return ((b >>> 16) | 0x40) & 0xffff;
  const lsb = (b >>> 16) & 1;
  return ((b + 0x7fff + lsb) >>> 16) & 0xffff;
}

/**
 * bf16 bits → f32 value (exact).
 *
 * @example
 * ```ts
 * bf16BitsToF32(0x3f80) // 1
 * ```
 */
export function bf16BitsToF32(h: number): number {
  return bitsToF32((h & 0xffff) << 16);
}

/**
 * Converts a whole array of f32 values to f16 bits.
 *
 * @example
 * ```ts
 * f32ArrayToF16([1, 0.5]) // Uint16Array [0x3c00, 0x3800]
 * ```
 */
export function f32ArrayToF16(src: ArrayLike<number>, out = new Uint16Array(src.length)): Uint16Array {
  for (let i = 0; i < src.length; i++) out[i] = f32ToF16Bits(src[i] as number);
  return out;
}

let f16Table: Float32Array | undefined;

/** Every f16 bit pattern's f32 value (256 KiB, built on first use): one indexed load per element. */
function f16ToF32Table(): Float32Array {
  if (f16Table === undefined) {
    const t = new Float32Array(65536);
    for (let i = 0; i < 65536; i++) t[i] = f16BitsToF32(i);
    f16Table = t;
  }
  return f16Table;
}

/**
 * Converts a whole array of f16 bits to f32 values (exact), through a 65536-entry table, so a large tensor
 * widens at memory speed rather than decoding every element's bit fields.
 *
 * @example
 * ```ts
 * f16ArrayToF32(Uint16Array.of(0x3c00)) // Float32Array [1]
 * ```
 */
export function f16ArrayToF32(
  src: Uint16Array,
  out: Float32Array = new Float32Array(src.length),
): Float32Array {
  const t = f16ToF32Table();
  const n = src.length;
  // Copying whole words through a Uint32Array view keeps NaN payloads bit for bit (a float store may not).
  const o = new Uint32Array(out.buffer, out.byteOffset, n);
  const tb = new Uint32Array(t.buffer);
  for (let i = 0; i < n; i++) o[i] = tb[src[i] as number] as number;
  return out;
}

/**
 * Converts a whole array of f32 values to bf16 bits.
 *
 * @example
 * ```ts
 * f32ArrayToBf16([1, -2]) // Uint16Array [0x3f80, 0xc000]
 * ```
 */
export function f32ArrayToBf16(src: ArrayLike<number>, out = new Uint16Array(src.length)): Uint16Array {
  for (let i = 0; i < src.length; i++) out[i] = f32ToBf16Bits(src[i] as number);
  return out;
}

/**
 * Converts a whole array of bf16 bits to f32 values (exact): a bf16 value is the top half of its f32, so this
 * is one shift per element on a Uint32Array view of the output.
 *
 * @example
 * ```ts
 * bf16ArrayToF32(Uint16Array.of(0x3f80)) // Float32Array [1]
 * ```
 */
export function bf16ArrayToF32(
  src: Uint16Array,
  out: Float32Array = new Float32Array(src.length),
): Float32Array {
  const n = src.length;
  const o = new Uint32Array(out.buffer, out.byteOffset, n);
  for (let i = 0; i < n; i++) o[i] = (src[i] as number) << 16;
  return out;
}
