import { contiguousStrides, isQError, numel, Tensor } from '@q/core';
import { describe, expect, it } from 'vitest';
import { randomFloats } from '../test/helpers';

/** Reference element of a row-major [d0, d1, d2] array at (i, j, k). */
const at = (v: Float32Array, dims: number[], i: number, j: number, k: number) =>
  v[(i * (dims[1] as number) + j) * (dims[2] as number) + k] as number;

describe('Tensor', () => {
  const dims = [3, 4, 5];
  const vals = randomFloats(60, 1);
  const t = Tensor.from('f32', dims, vals);

  it('has row-major strides and numel', () => {
    expect(t.strides).toEqual([20, 5, 1]);
    expect(contiguousStrides([2, 1, 3])).toEqual([3, 3, 1]);
    expect(numel([])).toBe(1);
    expect(t.size).toBe(60);
    expect(t.isContiguous()).toBe(true);
    expect(t.get(2, 3, 4)).toBe(at(vals, dims, 2, 3, 4));
  });

  it('transpose is a view with swapped strides and indexes correctly', () => {
    const tr = t.transpose(0, 2);
    expect(tr.shape).toEqual([5, 4, 3]);
    expect(tr.strides).toEqual([1, 5, 20]);
    expect(tr.data).toBe(t.data);
    expect(tr.isContiguous()).toBe(false);
    for (let k = 0; k < 5; k++)
      for (let j = 0; j < 4; j++)
        for (let i = 0; i < 3; i++) expect(tr.get(k, j, i)).toBe(at(vals, dims, i, j, k));
  });

  it('slice is a view with an offset', () => {
    const s = t.slice(1, 1, 3);
    expect(s.shape).toEqual([3, 2, 5]);
    expect(s.offset).toBe(5);
    expect(s.data).toBe(t.data);
    for (let i = 0; i < 3; i++)
      for (let j = 0; j < 2; j++)
        for (let k = 0; k < 5; k++) expect(s.get(i, j, k)).toBe(at(vals, dims, i, j + 1, k));
  });

  it('contiguous copies a strided view into row-major order with fresh storage', () => {
    const v = t.transpose(0, 1).slice(2, 1, 4);
    const c = v.contiguous();
    expect(c.isContiguous()).toBe(true);
    expect(c.offset).toBe(0);
    expect(c.data).not.toBe(t.data);
    expect(c.strides).toEqual(contiguousStrides(c.shape));
    let n = 0;
    for (let j = 0; j < 4; j++)
      for (let i = 0; i < 3; i++)
        for (let k = 1; k < 4; k++) expect(c.data[n++]).toBe(at(vals, dims, i, j, k));
    c.data[0] = 123;
    expect(t.get(0, 0, 1)).not.toBe(123);
  });

  it('reshape shares storage when contiguous, infers -1, and copies non-contiguous input', () => {
    const r = t.reshape([12, -1]);
    expect(r.shape).toEqual([12, 5]);
    expect(r.data).toBe(t.data);
    const tr = t.transpose(0, 1);
    const r2 = tr.reshape([60]);
    expect(r2.data).not.toBe(t.data);
    for (let i = 0; i < 60; i++) expect(r2.getFlat(i)).toBe(tr.getFlat(i));
  });

  it('keeps f16 and bf16 bits exact through views and copies', () => {
    const bits = new Uint16Array([0x7e01, 0x8000, 0x0001, 0x3c00, 0xfc00, 0x7bff]);
    const h = new Tensor('f16', [2, 3], bits);
    expect(Array.from(h.transpose().contiguous().data)).toEqual([
      0x7e01, 0x3c00, 0x8000, 0xfc00, 0x0001, 0x7bff,
    ]);
    expect(h.get(0, 1)).toBe(-0);
    expect(Tensor.from('bf16', [1], [1]).data[0]).toBe(0x3f80);
  });

  it('packs int4 tensors and refuses byte-splitting views', () => {
    const q = Tensor.from('i4', [2, 3], [-8, 7, 1, -1, 0, 3]);
    expect(q.data.length).toBe(3);
    expect(q.reshape([3, 2]).getFlat(5)).toBe(3);
    expect(() => q.transpose()).toThrowError(expect.objectContaining({ code: 'E_DTYPE' }));
    expect(() => q.slice(0, 0, 1)).toThrowError(expect.objectContaining({ code: 'E_DTYPE' }));
    expect(() => q.set([0, 0], 9)).toThrowError(expect.objectContaining({ code: 'E_ARG' }));
  });

  it('converts between dtypes', () => {
    const x = Tensor.from('f32', [4], [1.5, -2, 3.25, 65519]);
    const h = x.to('f16');
    expect(Array.from(h.toFloat32())).toEqual([1.5, -2, 3.25, 65504]);
  });

  it('throws E_SHAPE with the numbers for bad shapes, indices, slices and reshapes', () => {
    const cases: [() => unknown, RegExp][] = [
      [() => new Tensor('f32', [2, -1]), /non-negative integer dimensions/],
      [() => new Tensor('f32', [2, 3], new Float32Array(5)), /at least 6 array elements/],
      [() => t.get(3, 0, 0), /index in \[0, 3\) for dimension 0 but received 3/],
      [() => t.get(0, 0), /3 indices but received 2/],
      [() => t.slice(1, 3, 2), /0 <= start <= end <= 4/],
      [() => t.slice(5, 0, 1), /dimension in \[0, 3\)/],
      [() => t.reshape([7, -1]), /shape with 60 elements/],
      [() => t.reshape([-1, -1]), /at most one -1/],
      [() => t.transpose(0, 9), /dimensions in \[0, 3\)/],
      [() => Tensor.from('f32', [2], [1]), /2 values/],
    ];
    for (const [fn, re] of cases) {
      let err: unknown;
      try {
        fn();
      } catch (e) {
        err = e;
      }
      expect(isQError(err, 'E_SHAPE'), String(re)).toBe(true);
      expect((err as Error).message).toMatch(re);
    }
    expect(() => new Tensor('f64' as never, [1])).toThrowError(expect.objectContaining({ code: 'E_DTYPE' }));
  });
});
