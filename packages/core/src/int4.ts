import { QError } from './errors';

/**
 * Signed int4 bit formats.
 *
 * - Plain packing: value i lives in byte i>>1, in the low nibble when i is even and the high nibble when odd,
 *   two's complement (-8..7).
 * - High-nibble form (FastGEMM): a single int4 value w stored as an int8 lane equal to 16·w, i.e. the nibble
 *   sits in bits 4..7 and bits 0..3 are zero. `byte & 0xF0` of a plainly packed odd element, or
 *   `(byte << 4) & 0xF0` of an even one, gives this lane directly; an int8 dot product over such lanes is
 *   16x the int4 dot product, which the kernel's output scale divides back out.
 */

function checkRange(v: number, i: number): void {
  if (!Number.isInteger(v) || v < -8 || v > 7) {
    throw new QError('E_ARG', `Expected an integer in [-8, 7] for int4 element ${i} but received ${v}`);
  }
}

/**
 * Packs int4 values (-8..7), low nibble first. An odd count leaves the last high nibble zero.
 *
 * @example
 * ```ts
 * packInt4(Int8Array.of(1, -1)) // Uint8Array [0xF1]
 * ```
 */
export function packInt4(
  values: ArrayLike<number>,
  out = new Uint8Array(Math.ceil(values.length / 2)),
): Uint8Array {
  if (out.length < Math.ceil(values.length / 2)) {
    throw new QError(
      'E_SHAPE',
      `Expected at least ${Math.ceil(values.length / 2)} bytes for out but received ${out.length}`,
    );
  }
  for (let i = 0; i < values.length; i += 2) {
    const lo = values[i] as number;
    checkRange(lo, i);
    let hi = 0;
    if (i + 1 < values.length) {
      hi = values[i + 1] as number;
      checkRange(hi, i + 1);
    }
    out[i >> 1] = (lo & 0xf) | ((hi & 0xf) << 4);
  }
  return out;
}

/**
 * Unpacks `count` int4 values packed low nibble first.
 *
 * @example
 * ```ts
 * unpackInt4(Uint8Array.of(0xF1), 2) // Int8Array [1, -1]
 * ```
 */
export function unpackInt4(packed: Uint8Array, count: number, out = new Int8Array(count)): Int8Array {
  if (packed.length * 2 < count) {
    throw new QError(
      'E_SHAPE',
      `Expected at least ${Math.ceil(count / 2)} bytes for packed int4 but received ${packed.length}`,
    );
  }
  for (let i = 0; i < count; i++) {
    const b = packed[i >> 1] as number;
    const nib = (i & 1) === 0 ? b & 0xf : b >> 4;
    out[i] = (nib << 28) >> 28;
  }
  return out;
}

/**
 * Reads element i of a plainly packed int4 array.
 *
 * @example
 * ```ts
 * getInt4(Uint8Array.of(0xf1), 1) // -1
 * ```
 */
export function getInt4(packed: Uint8Array, i: number): number {
  const b = packed[i >> 1] as number;
  const nib = (i & 1) === 0 ? b & 0xf : b >> 4;
  return (nib << 28) >> 28;
}

/**
 * int4 values → int8 lanes in the high-nibble form (each lane = 16·w).
 *
 * @example
 * ```ts
 * toHighNibble(Int8Array.of(-1, 7)) // Int8Array [-16, 112]
 * ```
 */
export function toHighNibble(values: ArrayLike<number>, out = new Int8Array(values.length)): Int8Array {
  for (let i = 0; i < values.length; i++) {
    const v = values[i] as number;
    checkRange(v, i);
    out[i] = ((v & 0xf) << 28) >> 24;
  }
  return out;
}

/**
 * High-nibble int8 lanes → int4 values. Throws when a lane has bits in its low nibble.
 *
 * @example
 * ```ts
 * fromHighNibble(Int8Array.of(-16, 112)) // Int8Array [-1, 7]
 * ```
 */
export function fromHighNibble(lanes: Int8Array, out = new Int8Array(lanes.length)): Int8Array {
  for (let i = 0; i < lanes.length; i++) {
    const l = lanes[i] as number;
    if ((l & 0xf) !== 0) {
      throw new QError('E_FORMAT', `Expected a multiple of 16 for high-nibble lane ${i} but received ${l}`);
    }
    out[i] = l >> 4;
  }
  return out;
}

/**
 * Extracts the two high-nibble lanes of one plainly packed byte with the FastGEMM bit tricks:
 * `(b << 4) & 0xF0` is 16·(element 2i) and `b & 0xF0` is 16·(element 2i+1), both as signed int8.
 *
 * @example
 * ```ts
 * byteToHighNibblePair(0xf1) // [16, -16]
 * ```
 */
export function byteToHighNibblePair(b: number): [number, number] {
  const lo = (((b << 4) & 0xf0) << 24) >> 24;
  const hi = ((b & 0xf0) << 24) >> 24;
  return [lo, hi];
}
