import { allocStorage, assertDType, type DType, storageLength, type TypedArrayOf } from './dtype';
import { describeValue, QError } from './errors';
import {
  bf16ArrayToF32,
  bf16BitsToF32,
  f16ArrayToF32,
  f16BitsToF32,
  f32ToBf16Bits,
  f32ToF16Bits,
} from './half';
import { getInt4 } from './int4';

export type Shape = readonly number[];

function checkShape(shape: Shape, name = 'shape'): void {
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) {
      throw new QError(
        'E_SHAPE',
        `Expected non-negative integer dimensions for ${name} but received ${describeValue(shape)}`,
      );
    }
  }
}

/**
 * Number of elements of a shape.
 *
 * @example
 * ```ts
 * numel([2, 3, 4]) // 24
 * ```
 */
export function numel(shape: Shape): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/**
 * Row-major strides of a shape, in elements.
 *
 * @example
 * ```ts
 * contiguousStrides([2, 3, 4]) // [12, 4, 1]
 * ```
 */
export function contiguousStrides(shape: Shape): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i] as number;
  }
  return s;
}

/**
 * An n-dimensional array over a typed array. Views (reshape, slice, transpose) share `data`; `contiguous()`
 * copies into row-major order. Strides and offset are in elements. Packed int4 tensors support only
 * contiguous layouts (reshape and copies); slicing them along arbitrary dimensions would split bytes.
 *
 * @example
 * ```ts
 * const t = Tensor.from('f32', [2, 3], [1, 2, 3, 4, 5, 6]);
 * t.transpose(0, 1).contiguous().data // Float32Array [1, 4, 2, 5, 3, 6]
 * ```
 */
export class Tensor<D extends DType = DType> {
  readonly dtype: D;
  readonly shape: Shape;
  readonly strides: readonly number[];
  readonly offset: number;
  readonly data: TypedArrayOf<D>;

  constructor(dtype: D, shape: Shape, data?: TypedArrayOf<D>, strides?: readonly number[], offset = 0) {
    assertDType(dtype);
    checkShape(shape);
    this.dtype = dtype;
    this.shape = Object.freeze([...shape]);
    this.strides = Object.freeze(strides ? [...strides] : contiguousStrides(shape));
    this.offset = offset;
    const n = numel(shape);
    if (data === undefined) {
      this.data = allocStorage(dtype, n);
    } else {
      if (strides === undefined && data.length < storageLength(dtype, n) + (dtype === 'i4' ? 0 : offset)) {
        throw new QError(
          'E_SHAPE',
          `Expected at least ${storageLength(dtype, n)} array elements for a ${dtype} tensor of shape [${shape.join(', ')}] but received ${data.length}`,
        );
      }
      this.data = data;
    }
    if (strides !== undefined && strides.length !== shape.length) {
      throw new QError('E_SHAPE', `Expected ${shape.length} strides but received ${strides.length}`);
    }
  }

  /** A new contiguous tensor holding `values` (numbers are converted for f16/bf16; int4 values are packed). */
  static from<D extends DType>(dtype: D, shape: Shape, values: ArrayLike<number>): Tensor<D> {
    const n = numel(shape);
    if (values.length !== n) {
      throw new QError(
        'E_SHAPE',
        `Expected ${n} values for shape [${shape.join(', ')}] but received ${values.length}`,
      );
    }
    const t = new Tensor(dtype, shape);
    for (let i = 0; i < n; i++) t.setFlat(i, values[i] as number);
    return t;
  }

  /** A contiguous zero tensor. */
  static zeros<D extends DType>(dtype: D, shape: Shape): Tensor<D> {
    return new Tensor(dtype, shape);
  }

  get rank(): number {
    return this.shape.length;
  }

  get size(): number {
    return numel(this.shape);
  }

  isContiguous(): boolean {
    const c = contiguousStrides(this.shape);
    for (let i = 0; i < c.length; i++)
      if ((this.shape[i] as number) > 1 && c[i] !== this.strides[i]) return false;
    return true;
  }

  private physicalIndex(idx: readonly number[]): number {
    if (idx.length !== this.shape.length) {
      throw new QError('E_SHAPE', `Expected ${this.shape.length} indices but received ${idx.length}`);
    }
    let p = this.offset;
    for (let i = 0; i < idx.length; i++) {
      const v = idx[i] as number;
      const d = this.shape[i] as number;
      if (!Number.isInteger(v) || v < 0 || v >= d) {
        throw new QError('E_SHAPE', `Expected an index in [0, ${d}) for dimension ${i} but received ${v}`);
      }
      p += v * (this.strides[i] as number);
    }
    return p;
  }

  private flatToPhysical(i: number): number {
    if (this.strides.length === 0) return this.offset;
    let p = this.offset;
    let rem = i;
    for (let d = this.shape.length - 1; d >= 0; d--) {
      const dim = this.shape[d] as number;
      const q = rem % dim;
      rem = (rem - q) / dim;
      p += q * (this.strides[d] as number);
    }
    return p;
  }

  private readPhysical(p: number): number {
    switch (this.dtype) {
      case 'f16':
        return f16BitsToF32(this.data[p] as number);
      case 'bf16':
        return bf16BitsToF32(this.data[p] as number);
      case 'i4':
        return getInt4(this.data as Uint8Array, p);
      default:
        return this.data[p] as number;
    }
  }

  private writePhysical(p: number, v: number): void {
    switch (this.dtype) {
      case 'f16':
        (this.data as Uint16Array)[p] = f32ToF16Bits(v);
        return;
      case 'bf16':
        (this.data as Uint16Array)[p] = f32ToBf16Bits(v);
        return;
      case 'i4': {
        if (!Number.isInteger(v) || v < -8 || v > 7) {
          throw new QError('E_ARG', `Expected an integer in [-8, 7] for an int4 element but received ${v}`);
        }
        const bytes = this.data as Uint8Array;
        const b = bytes[p >> 1] as number;
        bytes[p >> 1] = (p & 1) === 0 ? (b & 0xf0) | (v & 0xf) : (b & 0x0f) | ((v & 0xf) << 4);
        return;
      }
      default:
        (this.data as Float32Array)[p] = v;
    }
  }

  /** Element at a multi-index, as a number (f16/bf16 decoded, int4 sign-extended). */
  get(...idx: number[]): number {
    return this.readPhysical(this.physicalIndex(idx));
  }

  set(idx: readonly number[], v: number): void {
    this.writePhysical(this.physicalIndex(idx), v);
  }

  /** Element at a row-major flat index of this (possibly strided) view. */
  getFlat(i: number): number {
    return this.readPhysical(this.flatToPhysical(i));
  }

  setFlat(i: number, v: number): void {
    this.writePhysical(this.flatToPhysical(i), v);
  }

  /** A view with a new shape; one dimension may be -1. Non-contiguous tensors are copied first. */
  reshape(shape: readonly number[]): Tensor<D> {
    const n = this.size;
    const infer = shape.indexOf(-1);
    const s = [...shape];
    if (infer >= 0) {
      if (shape.indexOf(-1, infer + 1) >= 0) {
        throw new QError('E_SHAPE', `Expected at most one -1 in reshape but received [${shape.join(', ')}]`);
      }
      const rest = numel(s.filter((_, i) => i !== infer));
      if (rest === 0 || n % rest !== 0) {
        throw new QError('E_SHAPE', `Expected a shape with ${n} elements but received [${shape.join(', ')}]`);
      }
      s[infer] = n / rest;
    }
    checkShape(s);
    if (numel(s) !== n) {
      throw new QError('E_SHAPE', `Expected a shape with ${n} elements but received [${shape.join(', ')}]`);
    }
    const base = this.isContiguous() ? this : this.contiguous();
    if (base.dtype === 'i4' && base.offset % 2 !== 0) {
      return new Tensor(base.dtype, s, base.contiguous().data);
    }
    return new Tensor(base.dtype, s, base.data, contiguousStrides(s), base.offset);
  }

  /** A view of `[start, end)` along dimension `dim`. */
  slice(dim: number, start: number, end: number = this.shape[dim] ?? 0): Tensor<D> {
    this.noPackedViews('slice');
    const d = this.shape[dim];
    if (d === undefined)
      throw new QError('E_SHAPE', `Expected a dimension in [0, ${this.rank}) but received ${dim}`);
    if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || end > d || start > end) {
      throw new QError(
        'E_SHAPE',
        `Expected 0 <= start <= end <= ${d} for slice of dimension ${dim} but received [${start}, ${end})`,
      );
    }
    const shape = [...this.shape];
    shape[dim] = end - start;
    return new Tensor(
      this.dtype,
      shape,
      this.data,
      this.strides,
      this.offset + start * (this.strides[dim] as number),
    );
  }

  /** A view with dimensions `a` and `b` swapped. */
  transpose(a = 0, b = 1): Tensor<D> {
    this.noPackedViews('transpose');
    if (this.shape[a] === undefined || this.shape[b] === undefined) {
      throw new QError('E_SHAPE', `Expected dimensions in [0, ${this.rank}) but received ${a} and ${b}`);
    }
    const shape = [...this.shape];
    const strides = [...this.strides];
    [shape[a], shape[b]] = [shape[b] as number, shape[a] as number];
    [strides[a], strides[b]] = [strides[b] as number, strides[a] as number];
    return new Tensor(this.dtype, shape, this.data, strides, this.offset);
  }

  /** A row-major copy that owns fresh storage (always a copy, so it is safe to mutate). */
  contiguous(): Tensor<D> {
    const out = new Tensor(this.dtype, this.shape);
    const n = this.size;
    if (this.dtype !== 'i4' && this.isContiguous()) {
      (out.data as Float32Array).set((this.data as Float32Array).subarray(this.offset, this.offset + n));
      return out;
    }
    if (this.dtype === 'i4') {
      for (let i = 0; i < n; i++) out.setFlat(i, this.getFlat(i));
      return out;
    }
    // Raw copy keeps f16/bf16 bits exact.
    const src = this.data as Float32Array;
    const dst = out.data as Float32Array;
    for (let i = 0; i < n; i++) dst[i] = src[this.flatToPhysical(i)] as number;
    return out;
  }

  /** All elements as f32 values in row-major order. */
  toFloat32(): Float32Array {
    const n = this.size;
    const out = new Float32Array(n);
    if (this.isContiguous()) {
      if (this.dtype === 'f32') {
        out.set((this.data as Float32Array).subarray(this.offset, this.offset + n));
        return out;
      }
      // Half-precision weights widen in bulk (a table or a shift per element), not through per-element getters.
      if (this.dtype === 'f16' || this.dtype === 'bf16') {
        const bits = (this.data as Uint16Array).subarray(this.offset, this.offset + n);
        return this.dtype === 'f16' ? f16ArrayToF32(bits, out) : bf16ArrayToF32(bits, out);
      }
    }
    for (let i = 0; i < n; i++) out[i] = this.getFlat(i);
    return out;
  }

  /** A contiguous copy converted to another dtype (values rounded/clamped by plain assignment for ints). */
  to<E extends DType>(dtype: E): Tensor<E> {
    if (dtype === 'f32') return new Tensor('f32', this.shape, this.toFloat32()) as unknown as Tensor<E>;
    const out = new Tensor(dtype, this.shape);
    const n = this.size;
    for (let i = 0; i < n; i++) out.setFlat(i, this.getFlat(i));
    return out;
  }

  private noPackedViews(op: string): void {
    if (this.dtype === 'i4') {
      throw new QError(
        'E_DTYPE',
        `Expected a dtype other than i4 for ${op} (packed int4 supports contiguous views only) but received i4`,
      );
    }
  }
}
