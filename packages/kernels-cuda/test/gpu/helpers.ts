import { gpuStatus } from '@q/kernels-cuda';

/** Mulberry32, a small seeded PRNG for test data. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
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
