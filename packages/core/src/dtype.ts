import { describeValue, QError } from './errors';

/**
 * Element types. `f16` and `bf16` are stored as raw bits in a Uint16Array; `i4` is packed signed int4,
 * two values a byte, low nibble first (see `int4.ts`), stored in a Uint8Array.
 */
export type DType = 'f32' | 'f16' | 'bf16' | 'i8' | 'u8' | 'i32' | 'i4';

export interface DTypeArrayMap {
  f32: Float32Array;
  f16: Uint16Array;
  bf16: Uint16Array;
  i8: Int8Array;
  u8: Uint8Array;
  i32: Int32Array;
  i4: Uint8Array;
}

export type TypedArrayOf<D extends DType> = DTypeArrayMap[D];

export const DTYPES: readonly DType[] = ['f32', 'f16', 'bf16', 'i8', 'u8', 'i32', 'i4'];

/** Bits per element. */
export const DTYPE_BITS: Readonly<Record<DType, number>> = {
  f32: 32,
  f16: 16,
  bf16: 16,
  i8: 8,
  u8: 8,
  i32: 32,
  i4: 4,
};

/**
 * Asserts that `x` names a dtype; throws `E_DTYPE` listing the valid ones otherwise.
 *
 * @example
 * ```ts
 * assertDType('f16'); // ok
 * assertDType('f64'); // throws QError E_DTYPE listing the valid dtypes
 * ```
 */
export function assertDType(x: unknown, name = 'dtype'): asserts x is DType {
  if (typeof x !== 'string' || !(DTYPES as readonly string[]).includes(x)) {
    throw new QError(
      'E_DTYPE',
      `Expected one of ${DTYPES.join(', ')} for ${name} but received ${describeValue(x)}`,
    );
  }
}

/**
 * Bytes needed to hold `count` elements of `dtype` (int4 rounds up to whole bytes).
 *
 * @example
 * ```ts
 * byteLength('i4', 5) // 3
 * byteLength('bf16', 5) // 10
 * ```
 */
export function byteLength(dtype: DType, count: number): number {
  return Math.ceil((count * DTYPE_BITS[dtype]) / 8);
}

/**
 * Length of the backing typed array (in array elements) for `count` tensor elements.
 *
 * @example
 * ```ts
 * storageLength('i4', 5) // 3 (bytes of a Uint8Array)
 * storageLength('f32', 5) // 5
 * ```
 */
export function storageLength(dtype: DType, count: number): number {
  return dtype === 'i4' ? Math.ceil(count / 2) : count;
}

/**
 * Allocates a zeroed backing array for `count` elements of `dtype`.
 *
 * @example
 * ```ts
 * allocStorage('bf16', 4) // Uint16Array(4)
 * ```
 */
export function allocStorage<D extends DType>(dtype: D, count: number): TypedArrayOf<D> {
  const n = storageLength(dtype, count);
  switch (dtype) {
    case 'f32':
      return new Float32Array(n) as TypedArrayOf<D>;
    case 'f16':
    case 'bf16':
      return new Uint16Array(n) as TypedArrayOf<D>;
    case 'i8':
      return new Int8Array(n) as TypedArrayOf<D>;
    case 'u8':
    case 'i4':
      return new Uint8Array(n) as TypedArrayOf<D>;
    case 'i32':
      return new Int32Array(n) as TypedArrayOf<D>;
    default:
      throw new QError('E_DTYPE', `Expected a dtype but received ${describeValue(dtype)}`);
  }
}

/**
 * Wraps a byte range as the typed array of `dtype` (copies when the offset is misaligned).
 *
 * @example
 * ```ts
 * viewBytes('f32', new Uint8Array(8)) // Float32Array(2) over the same bytes
 * ```
 */
export function viewBytes<D extends DType>(dtype: D, bytes: Uint8Array): TypedArrayOf<D> {
  const bpe = dtype === 'i4' ? 1 : DTYPE_BITS[dtype] / 8;
  let buf = bytes;
  if (bytes.byteOffset % bpe !== 0) buf = bytes.slice();
  const n = Math.floor(buf.byteLength / bpe);
  switch (dtype) {
    case 'f32':
      return new Float32Array(buf.buffer, buf.byteOffset, n) as TypedArrayOf<D>;
    case 'f16':
    case 'bf16':
      return new Uint16Array(buf.buffer, buf.byteOffset, n) as TypedArrayOf<D>;
    case 'i8':
      return new Int8Array(buf.buffer, buf.byteOffset, n) as TypedArrayOf<D>;
    case 'u8':
    case 'i4':
      return new Uint8Array(buf.buffer, buf.byteOffset, n) as TypedArrayOf<D>;
    case 'i32':
      return new Int32Array(buf.buffer, buf.byteOffset, n) as TypedArrayOf<D>;
    default:
      throw new QError('E_DTYPE', `Expected a dtype but received ${describeValue(dtype)}`);
  }
}
