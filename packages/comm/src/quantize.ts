/**
 * Group-wise quantization of all-reduce payloads: the exact reference that the CPU workers and the CUDA
 * kernels reproduce bit for bit.
 *
 * ## Rounding rules (bit-exact contract)
 * All arithmetic is IEEE float32 with round-to-nearest-even; `rint` is round half to even (CUDA
 * `__float2int_rn`); every division is a true f32 division (CUDA `__fdiv_rn`), never a multiply by a reciprocal;
 * no fused multiply-add anywhere (CUDA `__fmul_rn`/`__fadd_rn`).
 * A group is `groupSize` consecutive elements; the last group of a chunk may be shorter (see `wireLayout`), and
 * its statistics cover only the elements that exist.
 *
 * - symmetric, `qmax = 127` (int8) or `7` (int4): `amax = max |x|`; `scale = f32(amax / qmax)`, and `scale = 1`
 *   when that is 0; `q = clamp(rint(f32(x / scale)), -qmax, qmax)`; dequantized `f32(q * scale)`.
 * - asymmetric, `qmaxU = 255` (int8) or `15` (int4): `lo = min(0, min x)`, `hi = max(0, max x)` (zero is always in
 *   range, so a group of positive values still has an exact zero); `scale = f32(f32(hi - lo) / qmaxU)`, and
 *   `scale = 1` when that is 0; `zero = clamp(rint(f32(-lo / scale)), 0, qmaxU)`;
 *   `q = clamp(rint(f32(x / scale)) + zero, 0, qmaxU)`; dequantized `f32((q - zero) * scale)` (`q - zero` is an
 *   exact integer).
 *
 * Code storage: int8 one byte per element (symmetric as two's complement, asymmetric as unsigned); int4 two per
 * byte, element 2i in the low nibble (symmetric as 4-bit two's complement, asymmetric unsigned). Inputs must be
 * finite; results for NaN or Inf are not specified.
 */
import { QError } from '@q/core';

/** Bits of one code on the wire. */
export type QuantBits = 8 | 4;

/** How payload groups are quantized. */
export interface QuantScheme {
  readonly bits: QuantBits;
  /** Symmetric (scale only) or asymmetric (scale and integer zero point). */
  readonly symmetric: boolean;
  /** Elements per group; a positive even number. */
  readonly groupSize: number;
}

/** The default of q's all-reduce: int8, asymmetric, groups of 128 (the Flash Communication setting). */
export const DEFAULT_SCHEME: QuantScheme = { bits: 8, symmetric: false, groupSize: 128 };

/** Quantized groups of one contiguous run of `length` elements. */
export interface QuantizedGroups {
  readonly scheme: QuantScheme;
  readonly length: number;
  /** Packed codes, `ceil(length * bits / 8)` bytes. */
  readonly codes: Uint8Array;
  /** f32 scale per group. */
  readonly scales: Float32Array;
  /** Asymmetric: zero point per group (0..qmaxU). Symmetric: empty. */
  readonly zeros: Uint8Array;
}

/**
 * Throws E_ARG unless the scheme is one q implements.
 *
 * @example
 * ```ts
 * checkScheme({ bits: 8, symmetric: false, groupSize: 128 }); // ok
 * checkScheme({ bits: 8, symmetric: false, groupSize: 3 }); // throws E_ARG
 * ```
 */
export function checkScheme(scheme: QuantScheme, name = 'scheme'): void {
  if (scheme.bits !== 8 && scheme.bits !== 4) {
    throw new QError('E_ARG', `Expected bits 8 or 4 for ${name}.bits but received ${String(scheme.bits)}`);
  }
  if (!Number.isInteger(scheme.groupSize) || scheme.groupSize < 2 || scheme.groupSize % 2 !== 0) {
    throw new QError(
      'E_ARG',
      `Expected a positive even integer for ${name}.groupSize but received ${String(scheme.groupSize)}`,
    );
  }
  if (typeof scheme.symmetric !== 'boolean') {
    throw new QError(
      'E_ARG',
      `Expected a boolean for ${name}.symmetric but received ${String(scheme.symmetric)}`,
    );
  }
}

const f32 = Math.fround;

/**
 * Round half to even of a finite number (CUDA `__float2int_rn` on the f32 values used here).
 *
 * @example
 * ```ts
 * rintHalfEven(2.5) // 2
 * rintHalfEven(-3.5) // -4
 * ```
 */
export function rintHalfEven(v: number): number {
  const r = Math.round(v);
  // Math.round rounds halves toward +Inf; a tie that landed on an odd integer goes one step down instead.
  return r - v === 0.5 && (r & 1) !== 0 ? r - 1 : r;
}

/**
 * Code bytes for `length` elements.
 *
 * @example
 * ```ts
 * codeBytes(129, 4) // 65
 * ```
 */
export function codeBytes(length: number, bits: QuantBits): number {
  return bits === 8 ? length : Math.ceil(length / 2);
}

/**
 * Quantizes `x[offset .. offset+length)` into `codes`/`scales`/`zeros` (at group 0, code byte 0).
 *
 * @example
 * ```ts
 * const codes = new Uint8Array(256), scales = new Float32Array(2), zeros = new Uint8Array(2);
 * quantizeInto(x, 0, 256, DEFAULT_SCHEME, codes, scales, zeros);
 * ```
 */
export function quantizeInto(
  x: Float32Array,
  offset: number,
  length: number,
  scheme: QuantScheme,
  codes: Uint8Array,
  scales: Float32Array,
  zeros: Uint8Array,
): void {
  const { bits, symmetric, groupSize } = scheme;
  if (bits === 4) codes.fill(0, 0, codeBytes(length, 4));
  const groups = Math.ceil(length / groupSize);
  for (let g = 0; g < groups; g++) {
    const start = offset + g * groupSize;
    const end = Math.min(offset + length, start + groupSize);
    let scale: number;
    let zero = 0;
    let lo: number;
    let hi: number;
    if (symmetric) {
      let amax = 0;
      for (let i = start; i < end; i++) {
        const a = Math.abs(x[i] as number);
        if (a > amax) amax = a;
      }
      const qmax = bits === 8 ? 127 : 7;
      scale = f32(amax / qmax);
      if (scale === 0) scale = 1;
      lo = -qmax;
      hi = qmax;
    } else {
      let mn = 0;
      let mx = 0;
      for (let i = start; i < end; i++) {
        const v = x[i] as number;
        if (v < mn) mn = v;
        if (v > mx) mx = v;
      }
      const qmaxU = bits === 8 ? 255 : 15;
      scale = f32(f32(mx - mn) / qmaxU);
      if (scale === 0) scale = 1;
      zero = Math.min(qmaxU, Math.max(0, rintHalfEven(f32(-mn / scale))));
      zeros[g] = zero;
      lo = 0;
      hi = qmaxU;
    }
    scales[g] = scale;
    for (let i = start; i < end; i++) {
      let q = rintHalfEven(f32((x[i] as number) / scale)) + zero;
      q = Math.max(lo, Math.min(q, hi));
      const k = i - offset;
      if (bits === 8) codes[k] = q & 0xff;
      else codes[k >> 1] = (codes[k >> 1] as number) | ((q & 0xf) << ((k & 1) * 4));
    }
  }
}

/**
 * Dequantizes `length` elements from `codes`/`scales`/`zeros` into `out[offset ..)`.
 *
 * @example
 * ```ts
 * dequantizeInto(codes, scales, zeros, 256, DEFAULT_SCHEME, out, 0);
 * ```
 */
export function dequantizeInto(
  codes: Uint8Array,
  scales: Float32Array,
  zeros: Uint8Array,
  length: number,
  scheme: QuantScheme,
  out: Float32Array,
  offset: number,
): void {
  const { bits, symmetric, groupSize } = scheme;
  for (let k = 0; k < length; k++) {
    const g = (k / groupSize) | 0;
    let q: number;
    if (bits === 8) {
      const b = codes[k] as number;
      q = symmetric ? (b << 24) >> 24 : b;
    } else {
      const n = ((codes[k >> 1] as number) >> ((k & 1) * 4)) & 0xf;
      q = symmetric ? (n << 28) >> 28 : n;
    }
    if (!symmetric) q -= zeros[g] as number;
    out[offset + k] = f32(q * (scales[g] as number));
  }
}

/**
 * Quantizes a run of f32 values group-wise (the rules in this file's header).
 *
 * @example
 * ```ts
 * const q = quantizeGroups(new Float32Array([0.5, -1, 2, 0.25]), { bits: 8, symmetric: true, groupSize: 2 });
 * q.scales // Float32Array [1/127, 2/127] rounded to f32
 * ```
 */
export function quantizeGroups(x: Float32Array, scheme: QuantScheme = DEFAULT_SCHEME): QuantizedGroups {
  checkScheme(scheme);
  const groups = Math.ceil(x.length / scheme.groupSize);
  const codes = new Uint8Array(codeBytes(x.length, scheme.bits));
  const scales = new Float32Array(groups);
  const zeros = new Uint8Array(scheme.symmetric ? 0 : groups);
  quantizeInto(x, 0, x.length, scheme, codes, scales, zeros);
  return { scheme, length: x.length, codes, scales, zeros };
}

/**
 * The f32 values that quantized groups stand for.
 *
 * @example
 * ```ts
 * const x = new Float32Array([0.5, -1, 2, 0.25]);
 * const back = dequantizeGroups(quantizeGroups(x)); // within scale/2 of x per element
 * ```
 */
export function dequantizeGroups(q: QuantizedGroups, out = new Float32Array(q.length)): Float32Array {
  dequantizeInto(q.codes, q.scales, q.zeros, q.length, q.scheme, out, 0);
  return out;
}
