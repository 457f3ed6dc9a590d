/**
 * Argument validation of every kernel entry point. The tensors here wrap made-up device addresses: the checks
 * run in TypeScript before any native call, so each bad call must fail with a QError naming the numbers
 * without touching a GPU (this machine may have none).
 */
import { isQError } from '@q/core';
import { describe, expect, it } from 'vitest';
import { DeviceTensor, Graph, PinnedBuffer, Stream } from './device';
import { DeviceGemmWeights, gemmHalf, gemmW4A8, quantizeAct, rmsNormQuantize } from './ops';
import { expectQ, fakeTensor } from './test-support';

const t = fakeTensor;

function weights(n = 256, k = 4096, groupSize = 128, withInt = true): DeviceGemmWeights {
  const groups = k / groupSize;
  return new DeviceGemmWeights({
    n,
    k,
    kPadded: k,
    groupSize,
    groups,
    device: 0,
    packed: t('u8', [(n / 16) * (k / 64) * 512]),
    scales: t('f32', [n, groups]),
    ...(withInt ? { intQ: t('i32', [n, groups]), unit: t('f32', [n]) } : {}),
  });
}

function good() {
  return {
    a: t('i8', [16, 4096]),
    aScale: t('f32', [16]),
    weights: weights(),
    mode: 'group-int' as const,
    out: t('bf16', [16, 256]),
  };
}

describe('gemmW4A8 validation', () => {
  it('rejects activations of the wrong dtype', () => {
    expectQ(
      () => gemmW4A8({ ...good(), a: t('f16', [16, 4096]) }),
      'E_DTYPE',
      'gemmW4A8: Expected dtype i8 for a but received f16',
    );
  });

  it('rejects K that is not a multiple of the group size, naming both', () => {
    expectQ(
      () => gemmW4A8({ ...good(), a: t('i8', [16, 4100]) }),
      'E_SHAPE',
      'gemmW4A8: k=4100 is not a multiple of groupSize=128',
    );
  });

  it('rejects activations whose K differs from the weights', () => {
    expectQ(
      () => gemmW4A8({ ...good(), a: t('i8', [16, 2048]) }),
      'E_SHAPE',
      'Expected a of shape [16, 4096]',
    );
  });

  it('rejects mismatched output shapes', () => {
    expectQ(
      () => gemmW4A8({ ...good(), out: t('bf16', [16, 255]) }),
      'E_SHAPE',
      'Expected shape [16, 256] for out but received [16, 255]',
    );
    expectQ(() => gemmW4A8({ ...good(), out: t('bf16', [15, 256]) }), 'E_SHAPE', 'received [15, 256]');
  });

  it('rejects an output dtype it cannot write', () => {
    expectQ(
      () => gemmW4A8({ ...good(), out: t('f32', [16, 256]) }),
      'E_DTYPE',
      'Expected dtype f16 or bf16 or i32 for out but received f32',
    );
  });

  it('rejects activation scales of the wrong shape or dtype', () => {
    expectQ(
      () => gemmW4A8({ ...good(), aScale: t('f32', [8]) }),
      'E_SHAPE',
      'Expected shape [16] or [1] for aScale but received [8]',
    );
    expectQ(() => gemmW4A8({ ...good(), aScale: t('f16', [16]) }), 'E_DTYPE', 'for aScale but received f16');
  });

  it('rejects per-channel mode for grouped weights and group-int without Integer Scale', () => {
    expectQ(() => gemmW4A8({ ...good(), mode: 'per-channel' }), 'E_ARG', 'received 32 groups of 128');
    expectQ(() => gemmW4A8({ ...good(), weights: weights(256, 4096, 128, false) }), 'E_ARG', 'with intScale');
  });

  it('rejects an unknown mode', () => {
    expectQ(() => gemmW4A8({ ...good(), mode: 'fp8' as never }), 'E_ARG', 'but received fp8');
  });

  it('rejects bias and residual of the wrong shape or dtype', () => {
    expectQ(() => gemmW4A8({ ...good(), bias: t('f32', [128]) }), 'E_SHAPE', 'Expected shape [256] for bias');
    expectQ(
      () => gemmW4A8({ ...good(), residual: t('f16', [16, 256]) }),
      'E_DTYPE',
      'Expected dtype bf16 (that of out) for residual but received f16',
    );
    expectQ(
      () => gemmW4A8({ ...good(), residual: t('bf16', [16, 128]) }),
      'E_SHAPE',
      'for residual but received [16, 128]',
    );
  });

  it('rejects misaligned buffers, naming the address', () => {
    expectQ(
      () => gemmW4A8({ ...good(), a: t('i8', [16, 4096], { ptr: 0x100008n }) }),
      'E_ARG',
      'Expected a 16-byte aligned device pointer for a but received 0x100008',
    );
    expectQ(
      () => gemmW4A8({ ...good(), out: t('bf16', [16, 256], { ptr: 0x200001n }) }),
      'E_ARG',
      'for out but received 0x200001',
    );
  });

  it('rejects tensors on different devices', () => {
    expectQ(
      () => gemmW4A8({ ...good(), out: t('bf16', [16, 256], { device: 1 }) }),
      'E_ARG',
      'Expected out on device 0 (where a is) but received device 1',
    );
  });

  it('rejects a tensor used after dispose()', () => {
    const a = t('i8', [16, 4096]);
    a.dispose();
    expectQ(() => gemmW4A8({ ...good(), a }), 'E_DISPOSED', 'used after dispose()');
    expectQ(() => a.ptr, 'E_DISPOSED', 'device tensor [16, 4096] i8');
  });

  it('fails with a QError, not a crash, when the arguments are fine but no GPU (or addon) is there', () => {
    let err: unknown;
    try {
      gemmW4A8({ ...good(), a: t('i8', [16, 4096]) });
    } catch (e) {
      err = e;
    }
    // On a GPU machine the made-up pointers are never reached: the device check fails first for device 0 only
    // if it is missing, so accept a CUDA error there too.
    expect(isQError(err)).toBe(true);
    expect(['E_NO_DEVICE', 'E_NATIVE_MISSING', 'E_CUDA']).toContain((err as { code: string }).code);
  });
});

describe('activation quantization validation', () => {
  it('rejects input dtypes other than f16/bf16', () => {
    expectQ(
      () =>
        quantizeAct({ x: t('f32', [4, 64]), out: t('i8', [4, 64]), scales: t('f32', [4]), mode: 'dynamic' }),
      'E_DTYPE',
      'quantizeAct: Expected dtype f16 or bf16 for x but received f32',
    );
  });

  it('rejects an output narrower than the input', () => {
    expectQ(
      () =>
        quantizeAct({ x: t('f16', [4, 64]), out: t('i8', [4, 32]), scales: t('f32', [4]), mode: 'dynamic' }),
      'E_SHAPE',
      'Expected out of shape [4, ≥64] for x [4, 64] but received [4, 32]',
    );
  });

  it('needs scales for dynamic mode and a positive scale for static mode', () => {
    expectQ(
      () => quantizeAct({ x: t('f16', [4, 64]), out: t('i8', [4, 64]), mode: 'dynamic' }),
      'E_ARG',
      'Expected scales (f32 [4])',
    );
    expectQ(
      () => quantizeAct({ x: t('f16', [4, 64]), out: t('i8', [4, 64]), mode: 'static', staticScale: 0 }),
      'E_ARG',
      'Expected a positive finite staticScale',
    );
  });

  it('checks the RMSNorm gain', () => {
    expectQ(
      () =>
        rmsNormQuantize({
          x: t('bf16', [4, 64]),
          gain: t('f16', [64]),
          out: t('i8', [4, 64]),
          scales: t('f32', [4]),
          mode: 'dynamic',
        }),
      'E_DTYPE',
      'Expected dtype bf16 (that of x) for gain but received f16',
    );
    expectQ(
      () =>
        rmsNormQuantize({
          x: t('bf16', [4, 64]),
          gain: t('bf16', [32]),
          out: t('i8', [4, 64]),
          scales: t('f32', [4]),
          mode: 'dynamic',
        }),
      'E_SHAPE',
      'Expected shape [64] for gain but received [32]',
    );
  });
});

describe('gemmHalf validation', () => {
  it('rejects mixed dtypes and mismatched K', () => {
    expectQ(
      () => gemmHalf({ a: t('bf16', [2, 64]), w: t('f16', [32, 64]), out: t('bf16', [2, 32]) }),
      'E_DTYPE',
      'for w but received f16',
    );
    expectQ(
      () => gemmHalf({ a: t('bf16', [2, 64]), w: t('bf16', [32, 48]), out: t('bf16', [2, 32]) }),
      'E_SHAPE',
      'Expected w of shape [N, 64]',
    );
    expectQ(
      () => gemmHalf({ a: t('i8', [2, 64]), w: t('i8', [32, 64]), out: t('i8', [2, 32]) }),
      'E_DTYPE',
      'received i8',
    );
  });
});

describe('device resources without a GPU', () => {
  it('DeviceTensor.alloc fails with a QError naming the device, never a crash', () => {
    let err: unknown;
    try {
      DeviceTensor.alloc('f32', [4], { device: 3 }).dispose();
    } catch (e) {
      err = e;
    }
    if (err === undefined) return; // a machine with 4+ GPUs
    expect(isQError(err)).toBe(true);
    expect(['E_NO_DEVICE', 'E_NATIVE_MISSING']).toContain((err as { code: string }).code);
    if ((err as { code: string }).code === 'E_NO_DEVICE') expect((err as Error).message).toContain('3');
  });

  it('rejects a negative device index with E_NO_DEVICE', () => {
    expectQ(() => DeviceTensor.alloc('f32', [4], { device: -1 }), 'E_NO_DEVICE', 'received -1');
  });

  it('rejects bad shapes before allocating', () => {
    expectQ(() => DeviceTensor.alloc('f32', [4, -2]), 'E_SHAPE', 'received [4, -2]');
  });

  it('rejects a bad pinned size', () => {
    expectQ(() => PinnedBuffer.alloc(-5), 'E_ARG', 'received -5');
  });

  it('refuses to capture the default stream', () => {
    expectQ(() => Graph.capture(Stream.default(0), () => undefined), 'E_ARG', 'default stream');
  });

  it('dispose() is idempotent and wrap() never frees foreign memory', () => {
    const x = t('u8', [16]);
    x.dispose();
    x.dispose();
    expect(x.disposed).toBe(true);
  });
});
