/** Input makers shared by the tests (not exported from the package), drawn from @q/core's seeded Rng. */
import { f32ArrayToBf16, f32ArrayToF16, type Rng } from '@q/core';
import type { HostPayload, PayloadDType } from './reference';

/** Activation-like values: mostly N(0,1)-ish with a few outliers. */
export function randomF32(n: number, rng: Rng, scale = 1): Float32Array {
  const rand = (): number => rng.next();
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u = rand() + rand() + rand() - 1.5;
    x[i] = (rand() < 0.01 ? 20 * u : u) * scale;
  }
  return x;
}

export function randomPayload(n: number, dtype: PayloadDType, rng: Rng): HostPayload {
  const x = randomF32(n, rng);
  return dtype === 'f32' ? x : dtype === 'f16' ? f32ArrayToF16(x) : f32ArrayToBf16(x);
}
