import { Rng } from '@q/core';
import { gpuStatus } from '@q/kernels-cuda';

/** Uniform [0, 1) test data from @q/core's seeded Rng. */
export function rng(seed: number): () => number {
  const r = new Rng(seed);
  return () => r.next();
}

export function randn(rand: () => number): () => number {
  return () => Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());
}

/** Fresh data every run, reproducible from the printed seed (Q_TEST_SEED pins it). */
export function freshSeed(label: string): number {
  const seed = process.env.Q_TEST_SEED
    ? Number(process.env.Q_TEST_SEED)
    : (Date.now() ^ (process.pid << 8)) >>> 0;
  console.log(`${label}: seed ${seed}`);
  return seed;
}

export const status = gpuStatus();
if (!status.available) console.warn(`GPU tests skipped: ${status.reason}`);
export const noGpu = !status.available;
