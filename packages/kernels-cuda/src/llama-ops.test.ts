/**
 * Argument validation of the Llama-layer kernels. The tensors wrap made-up device addresses: every check runs in
 * TypeScript before any native call, so each bad call must fail with a QError naming the numbers without a GPU.
 */
import { type DType, isQError, type QErrorCode } from '@q/core';
import { describe, expect, it } from 'vitest';
import { DeviceTensor } from './device';
import { addRmsNorm, embedding, ropeKvWrite, SAMPLE_MAX_VOCAB, sample, siluMul } from './llama-ops';
import { gemmHalf } from './ops';

let next = 0x10000n;
function t<D extends DType>(
  dtype: D,
  shape: number[],
  opts: { device?: number; ptr?: bigint } = {},
): DeviceTensor<D> {
  next += 0x100000n;
  return DeviceTensor.wrap(opts.ptr ?? next, dtype, shape, { device: opts.device ?? 0 });
}

function expectQ(fn: () => unknown, code: QErrorCode, text: string): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(isQError(err, code), `expected ${code}, got ${String(err)}`).toBe(true);
  expect((err as Error).message).toContain(text);
}

/** Valid arguments reach the native call, which fails here (no GPU or addon) or on a GPU (made-up pointers). */
function expectNativeReached(fn: () => unknown): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(isQError(err)).toBe(true);
  expect(['E_NO_DEVICE', 'E_NATIVE_MISSING', 'E_CUDA', 'E_CUBLAS']).toContain((err as { code: string }).code);
}

describe('embedding validation', () => {
  const good = () => ({ ids: t('i32', [5]), table: t('bf16', [1000, 64]), out: t('f32', [5, 64]) });

  it('rejects wrong dtypes', () => {
    expectQ(
      () => embedding({ ...good(), ids: t('f32', [5]) }),
      'E_DTYPE',
      'embedding: Expected dtype i32 for ids but received f32',
    );
    expectQ(
      () => embedding({ ...good(), table: t('f16', [1000, 64]) }),
      'E_DTYPE',
      'Expected dtype bf16 for table but received f16',
    );
    expectQ(
      () => embedding({ ...good(), out: t('bf16', [5, 64]) }),
      'E_DTYPE',
      'Expected dtype f32 for out but received bf16',
    );
  });

  it('rejects wrong shapes, naming them', () => {
    expectQ(
      () => embedding({ ...good(), ids: t('i32', [5, 1]) }),
      'E_SHAPE',
      'Expected a 1-D tensor [T] for ids but received [5, 1]',
    );
    expectQ(
      () => embedding({ ...good(), out: t('f32', [5, 65]) }),
      'E_SHAPE',
      'Expected shape [5, 64] for out but received [5, 65]',
    );
    expectQ(() => embedding({ ...good(), out: t('f32', [4, 64]) }), 'E_SHAPE', 'received [4, 64]');
  });

  it('rejects tensors on different devices and misaligned pointers', () => {
    expectQ(
      () => embedding({ ...good(), out: t('f32', [5, 64], { device: 1 }) }),
      'E_ARG',
      'Expected out on device 0 (where ids is) but received device 1',
    );
    expectQ(
      () => embedding({ ...good(), ids: t('i32', [5], { ptr: 0x300002n }) }),
      'E_ARG',
      'Expected a 4-byte aligned device pointer for ids but received 0x300002',
    );
  });

  it('passes valid arguments to the native call', () => {
    expectNativeReached(() => embedding(good()));
  });
});

describe('addRmsNorm validation', () => {
  const good = () => ({
    x: t('f32', [3, 128]),
    r: t('bf16', [3, 128]),
    gain: t('f32', [128]),
    eps: 1e-5,
    out: t('bf16', [3, 128]),
  });

  it('rejects wrong dtypes of x, r, gain and out', () => {
    expectQ(
      () => addRmsNorm({ ...good(), x: t('bf16', [3, 128]) }),
      'E_DTYPE',
      'addRmsNorm: Expected dtype f32 for x but received bf16',
    );
    expectQ(
      () => addRmsNorm({ ...good(), r: t('f32', [3, 128]) }),
      'E_DTYPE',
      'Expected dtype bf16 for r but received f32',
    );
    expectQ(
      () => addRmsNorm({ ...good(), gain: t('bf16', [128]) }),
      'E_DTYPE',
      'Expected dtype f32 for gain but received bf16',
    );
    expectQ(
      () => addRmsNorm({ ...good(), out: t('f16', [3, 128]) }),
      'E_DTYPE',
      'Expected dtype bf16 or i8 for out but received f16',
    );
  });

  it('rejects wrong shapes of r, gain and out', () => {
    expectQ(
      () => addRmsNorm({ ...good(), r: t('bf16', [3, 64]) }),
      'E_SHAPE',
      'Expected shape [3, 128] for r but received [3, 64]',
    );
    expectQ(
      () => addRmsNorm({ ...good(), gain: t('f32', [64]) }),
      'E_SHAPE',
      'Expected shape [128] for gain but received [64]',
    );
    expectQ(
      () => addRmsNorm({ ...good(), out: t('bf16', [2, 128]) }),
      'E_SHAPE',
      'Expected shape [3, 128] for out but received [2, 128]',
    );
    expectQ(
      () => addRmsNorm({ ...good(), out: t('i8', [3, 120]), mode: 'static', staticScale: 0.1 }),
      'E_SHAPE',
      'addRmsNorm: Expected out of shape [3, ≥128] but received [3, 120]',
    );
  });

  it('rejects a bad eps', () => {
    expectQ(() => addRmsNorm({ ...good(), eps: -1 }), 'E_ARG', 'Expected a finite eps ≥ 0 but received -1');
    expectQ(() => addRmsNorm({ ...good(), eps: Number.NaN }), 'E_ARG', 'but received NaN');
  });

  it('checks the int8 modes: mode given, scale positive, scales f32 [T]', () => {
    const q = () => t('i8', [3, 128]);
    expectQ(
      () => addRmsNorm({ ...good(), out: q() }),
      'E_ARG',
      "Expected mode 'static' or 'dynamic' for an i8 out but received undefined",
    );
    expectQ(
      () => addRmsNorm({ ...good(), out: q(), mode: 'static', staticScale: 0 }),
      'E_ARG',
      'Expected a positive finite staticScale for mode',
    );
    expectQ(() => addRmsNorm({ ...good(), out: q(), mode: 'dynamic' }), 'E_ARG', 'Expected scales (f32 [3])');
    expectQ(
      () => addRmsNorm({ ...good(), out: q(), mode: 'dynamic', scales: t('f32', [4]) }),
      'E_SHAPE',
      'Expected shape [3] for scales but received [4]',
    );
    expectQ(
      () => addRmsNorm({ ...good(), out: q(), mode: 'dynamic', scales: t('i32', [3]) }),
      'E_DTYPE',
      'Expected dtype f32 for scales but received i32',
    );
    expectQ(() => addRmsNorm({ ...good(), mode: 'dynamic' }), 'E_ARG', 'Expected no mode for a bf16 out');
  });

  it('passes valid arguments to the native call (bf16, static and dynamic, with and without r)', () => {
    expectNativeReached(() => addRmsNorm(good()));
    const { r: _r, ...noR } = good();
    expectNativeReached(() =>
      addRmsNorm({ ...noR, out: t('i8', [3, 128]), mode: 'static', staticScale: 0.5 }),
    );
    expectNativeReached(() =>
      addRmsNorm({ ...good(), out: t('i8', [3, 136]), mode: 'dynamic', scales: t('f32', [3]) }),
    );
  });
});

describe('siluMul validation', () => {
  const good = () => ({ gateUp: t('bf16', [4, 512]), out: t('bf16', [4, 256]) });

  it('rejects wrong dtypes and an odd gateUp', () => {
    expectQ(
      () => siluMul({ ...good(), gateUp: t('f16', [4, 512]) }),
      'E_DTYPE',
      'siluMul: Expected dtype bf16 for gateUp but received f16',
    );
    expectQ(
      () => siluMul({ ...good(), gateUp: t('bf16', [4, 511]) }),
      'E_SHAPE',
      'Expected an even number of columns (gate and up) for gateUp but received [4, 511]',
    );
    expectQ(
      () => siluMul({ ...good(), out: t('f32', [4, 256]) }),
      'E_DTYPE',
      'Expected dtype bf16 or i8 for out but received f32',
    );
  });

  it('rejects wrong output shapes and bad int8 modes', () => {
    expectQ(
      () => siluMul({ ...good(), out: t('bf16', [4, 512]) }),
      'E_SHAPE',
      'Expected shape [4, 256] for out but received [4, 512]',
    );
    expectQ(
      () => siluMul({ ...good(), out: t('i8', [4, 200]), mode: 'static', staticScale: 1 }),
      'E_SHAPE',
      'Expected out of shape [4, ≥256] but received [4, 200]',
    );
    expectQ(
      () =>
        siluMul({ ...good(), out: t('i8', [4, 256]), mode: 'static', staticScale: Number.POSITIVE_INFINITY }),
      'E_ARG',
      'but received Infinity',
    );
    expectQ(
      () => siluMul({ ...good(), out: t('i8', [4, 256]), mode: 'fp8' as never }),
      'E_ARG',
      "Expected mode 'static' or 'dynamic' for an i8 out but received fp8",
    );
  });

  it('passes valid arguments to the native call', () => {
    expectNativeReached(() => siluMul(good()));
    expectNativeReached(() =>
      siluMul({ ...good(), out: t('i8', [4, 256]), mode: 'dynamic', scales: t('f32', [4]) }),
    );
  });
});

describe('ropeKvWrite validation', () => {
  // nh 8, nkv 2, hd 64: qkv width (8 + 4) · 64 = 768; 10 pages of 16 positions; 3 sequences of up to 4 pages.
  const good = () => ({
    qkv: t('bf16', [5, 768]),
    positions: t('i32', [5]),
    seqOfToken: t('i32', [5]),
    pageTable: t('i32', [3, 4]),
    k: t('bf16', [10, 16, 2, 64]),
    v: t('bf16', [10, 16, 2, 64]),
    invFreq: t('f32', [32]),
    numHeads: 8,
    numKvHeads: 2,
    headDim: 64,
    style: 'half' as const,
  });

  it('rejects head counts that do not fit together and unsupported head sizes', () => {
    expectQ(
      () => ropeKvWrite({ ...good(), numKvHeads: 3 }),
      'E_ARG',
      'Expected numHeads a multiple of numKvHeads but received numHeads=8, numKvHeads=3',
    );
    expectQ(
      () => ropeKvWrite({ ...good(), numHeads: 0 }),
      'E_ARG',
      'Expected an integer ≥ 1 for numHeads but received 0',
    );
    expectQ(
      () => ropeKvWrite({ ...good(), headDim: 72 }),
      'E_UNSUPPORTED',
      'Expected headDim a multiple of 16 up to 256 but received 72',
    );
    expectQ(() => ropeKvWrite({ ...good(), headDim: 512 }), 'E_UNSUPPORTED', 'but received 512');
    expectQ(
      () => ropeKvWrite({ ...good(), style: 'neox' as never }),
      'E_ARG',
      "Expected style 'interleaved' or 'half' but received neox",
    );
  });

  it('rejects a qkv whose width is not (numHeads + 2·numKvHeads)·headDim', () => {
    expectQ(
      () => ropeKvWrite({ ...good(), qkv: t('bf16', [5, 1024]) }),
      'E_SHAPE',
      'Expected shape [5, 768] ((numHeads + 2·numKvHeads)·headDim) for qkv but received [5, 1024]',
    );
    expectQ(
      () => ropeKvWrite({ ...good(), qkv: t('f16', [5, 768]) }),
      'E_DTYPE',
      'Expected dtype bf16 for qkv but received f16',
    );
  });

  it('rejects positions, seqOfToken and pageTable of the wrong dtype or length', () => {
    expectQ(
      () => ropeKvWrite({ ...good(), positions: t('i32', [4]) }),
      'E_SHAPE',
      'Expected shape [5] for positions but received [4]',
    );
    expectQ(
      () => ropeKvWrite({ ...good(), seqOfToken: t('f32', [5]) }),
      'E_DTYPE',
      'Expected dtype i32 for seqOfToken but received f32',
    );
    expectQ(
      () => ropeKvWrite({ ...good(), pageTable: t('i32', [12]) }),
      'E_SHAPE',
      'Expected a 2-D tensor [rows, cols] for pageTable but received [12]',
    );
  });

  it('rejects caches that do not match the heads or each other', () => {
    expectQ(
      () => ropeKvWrite({ ...good(), k: t('bf16', [10, 16, 4, 64]) }),
      'E_SHAPE',
      'Expected shape [10, 16, 2, 64] ([pages, pageSize, numKvHeads, headDim]) for k but received [10, 16, 4, 64]',
    );
    expectQ(
      () => ropeKvWrite({ ...good(), k: t('bf16', [160, 2, 64]) }),
      'E_SHAPE',
      'Expected a 4-D tensor [pages, pageSize, 2, 64] for k but received [160, 2, 64]',
    );
    expectQ(
      () => ropeKvWrite({ ...good(), v: t('bf16', [9, 16, 2, 64]) }),
      'E_SHAPE',
      'Expected shape [10, 16, 2, 64] (that of k) for v but received [9, 16, 2, 64]',
    );
    expectQ(
      () => ropeKvWrite({ ...good(), v: t('f16', [10, 16, 2, 64]) }),
      'E_DTYPE',
      'Expected dtype bf16 for v but received f16',
    );
  });

  it('rejects invFreq of the wrong length and misaligned rows', () => {
    expectQ(
      () => ropeKvWrite({ ...good(), invFreq: t('f32', [64]) }),
      'E_SHAPE',
      'Expected shape [32] for invFreq but received [64]',
    );
    expectQ(
      () => ropeKvWrite({ ...good(), qkv: t('bf16', [5, 768], { ptr: 0x400008n }) }),
      'E_ARG',
      'Expected a 16-byte aligned device pointer for qkv but received 0x400008',
    );
    expectQ(
      () => ropeKvWrite({ ...good(), v: t('bf16', [10, 16, 2, 64], { device: 2 }) }),
      'E_ARG',
      'Expected v on device 0 (where qkv is) but received device 2',
    );
  });

  it('passes valid arguments to the native call (both styles)', () => {
    expectNativeReached(() => ropeKvWrite(good()));
    expectNativeReached(() => ropeKvWrite({ ...good(), style: 'interleaved' }));
  });
});

describe('sample validation', () => {
  const good = () => ({
    logits: t('f32', [4, 32000]),
    temperature: t('f32', [4]),
    topK: t('i32', [4]),
    topP: t('f32', [4]),
    seeds: t('i32', [4]),
    steps: t('i32', [4]),
    out: t('i32', [4]),
  });

  it('rejects wrong dtypes of logits and the per-row settings', () => {
    expectQ(
      () => sample({ ...good(), logits: t('bf16', [4, 32000]) }),
      'E_DTYPE',
      'sample: Expected dtype f32 for logits but received bf16',
    );
    expectQ(
      () => sample({ ...good(), temperature: t('i32', [4]) }),
      'E_DTYPE',
      'Expected dtype f32 for temperature but received i32',
    );
    expectQ(
      () => sample({ ...good(), topK: t('f32', [4]) }),
      'E_DTYPE',
      'Expected dtype i32 for topK but received f32',
    );
    expectQ(
      () => sample({ ...good(), topP: t('i32', [4]) }),
      'E_DTYPE',
      'Expected dtype f32 for topP but received i32',
    );
    expectQ(
      () => sample({ ...good(), seeds: t('f32', [4]) }),
      'E_DTYPE',
      'Expected dtype i32 for seeds but received f32',
    );
    expectQ(
      () => sample({ ...good(), out: t('f32', [4]) }),
      'E_DTYPE',
      'Expected dtype i32 for out but received f32',
    );
  });

  it('rejects per-row tensors whose length is not the number of rows', () => {
    expectQ(
      () => sample({ ...good(), steps: t('i32', [3]) }),
      'E_SHAPE',
      'Expected shape [4] for steps but received [3]',
    );
    expectQ(
      () => sample({ ...good(), out: t('i32', [4, 1]) }),
      'E_SHAPE',
      'Expected shape [4] for out but received [4, 1]',
    );
    expectQ(
      () => sample({ ...good(), logits: t('f32', [128000]) }),
      'E_SHAPE',
      'Expected a 2-D tensor [rows, cols] for logits but received [128000]',
    );
  });

  it('rejects a vocabulary beyond 2^23', () => {
    expectQ(
      () => sample({ ...good(), logits: t('f32', [4, SAMPLE_MAX_VOCAB + 1]) }),
      'E_UNSUPPORTED',
      `Expected a vocabulary in [1, 8388608] for logits but received [4, ${SAMPLE_MAX_VOCAB + 1}]`,
    );
  });

  it('passes valid arguments to the native call', () => {
    expectNativeReached(() => sample(good()));
  });
});

describe('gemmHalf with an f32 out', () => {
  it('accepts f32 logits and names f32 among the allowed out dtypes', () => {
    expectNativeReached(() =>
      gemmHalf({ a: t('bf16', [2, 64]), w: t('bf16', [32, 64]), out: t('f32', [2, 32]) }),
    );
    expectQ(
      () => gemmHalf({ a: t('bf16', [2, 64]), w: t('bf16', [32, 64]), out: t('f16', [2, 32]) }),
      'E_DTYPE',
      'gemmHalf: Expected dtype bf16 (that of a) or f32 for out but received f16',
    );
    expectQ(
      () =>
        gemmHalf({
          a: t('bf16', [2, 64]),
          w: t('bf16', [32, 64]),
          out: t('f32', [2, 32], { ptr: 0x500002n }),
        }),
      'E_ARG',
      'Expected a 4-byte aligned device pointer for out but received 0x500002',
    );
  });
});
