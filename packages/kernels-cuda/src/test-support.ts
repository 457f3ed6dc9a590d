/**
 * Helpers of the argument-validation tests (ops.test.ts, attention.test.ts): tensors that wrap made-up device
 * addresses (the checks run before any native call, so nothing touches a GPU) and a QError expectation.
 * Not exported from the package.
 */
import { type DType, isQError, type QErrorCode } from '@q/core';
import { expect } from 'vitest';
import { DeviceTensor } from './device';

let next = 0x10000n;

/** A tensor at a fresh made-up, 1 MiB-aligned address (or `ptr`) on device 0 (or `device`). */
export function fakeTensor<D extends DType>(
  dtype: D,
  shape: number[],
  opts: { device?: number; ptr?: bigint } = {},
): DeviceTensor<D> {
  next += 0x100000n;
  return DeviceTensor.wrap(opts.ptr ?? next, dtype, shape, { device: opts.device ?? 0 });
}

/** `fn` throws a QError with `code` whose message contains (or matches) `text`. */
export function expectQ(fn: () => unknown, code: QErrorCode, text: string | RegExp): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(isQError(err, code), `expected ${code}, got ${String(err)}`).toBe(true);
  if (typeof text === 'string') expect((err as Error).message).toContain(text);
  else expect((err as Error).message).toMatch(text);
}
