import { QError } from '@q/core';
import { columnSplit, cpuPool, PARALLEL_MIN_MACS, toShared } from './threads';

/**
 * out[i, j] = bias[j] + Σ_t x[i, t] · w[j, t] for output columns j in [n0, n1): x is [m, k] and w is [n, k],
 * both row-major (w in the [out, in] layout every loader produces, so each dot product walks two contiguous
 * rows). Sums are accumulated in float64 and rounded once to float32.
 *
 * The worker threads run this same function (see `cpu-worker.ts`).
 *
 * @example
 * ```ts
 * const out = new Float32Array(2);
 * gemmRange(Float32Array.of(1, 2), 1, 2, Float32Array.of(3, 4, 5, 6), null, out, 2, 0, 2); // out = [11, 17]
 * ```
 */
export function gemmRange(
  x: Float32Array,
  m: number,
  k: number,
  w: Float32Array,
  bias: Float32Array | null,
  out: Float32Array,
  n: number,
  n0: number,
  n1: number,
): void {
  const k4 = k - (k % 4);
  let i = 0;
  // 4x4 register blocks: each loaded x and w value feeds four multiply-adds.
  for (; i + 4 <= m; i += 4) {
    const a0 = i * k;
    const a1 = a0 + k;
    const a2 = a1 + k;
    const a3 = a2 + k;
    let j = n0;
    for (; j + 4 <= n1; j += 4) {
      const b0 = j * k;
      const b1 = b0 + k;
      const b2 = b1 + k;
      const b3 = b2 + k;
      let s00 = 0;
      let s01 = 0;
      let s02 = 0;
      let s03 = 0;
      let s10 = 0;
      let s11 = 0;
      let s12 = 0;
      let s13 = 0;
      let s20 = 0;
      let s21 = 0;
      let s22 = 0;
      let s23 = 0;
      let s30 = 0;
      let s31 = 0;
      let s32 = 0;
      let s33 = 0;
      for (let t = 0; t < k; t++) {
        const x0 = x[a0 + t] as number;
        const x1 = x[a1 + t] as number;
        const x2 = x[a2 + t] as number;
        const x3 = x[a3 + t] as number;
        const w0 = w[b0 + t] as number;
        const w1 = w[b1 + t] as number;
        const w2 = w[b2 + t] as number;
        const w3 = w[b3 + t] as number;
        s00 += x0 * w0;
        s01 += x0 * w1;
        s02 += x0 * w2;
        s03 += x0 * w3;
        s10 += x1 * w0;
        s11 += x1 * w1;
        s12 += x1 * w2;
        s13 += x1 * w3;
        s20 += x2 * w0;
        s21 += x2 * w1;
        s22 += x2 * w2;
        s23 += x2 * w3;
        s30 += x3 * w0;
        s31 += x3 * w1;
        s32 += x3 * w2;
        s33 += x3 * w3;
      }
      const c0 = bias === null ? 0 : (bias[j] as number);
      const c1 = bias === null ? 0 : (bias[j + 1] as number);
      const c2 = bias === null ? 0 : (bias[j + 2] as number);
      const c3 = bias === null ? 0 : (bias[j + 3] as number);
      let o = i * n + j;
      out[o] = s00 + c0;
      out[o + 1] = s01 + c1;
      out[o + 2] = s02 + c2;
      out[o + 3] = s03 + c3;
      o += n;
      out[o] = s10 + c0;
      out[o + 1] = s11 + c1;
      out[o + 2] = s12 + c2;
      out[o + 3] = s13 + c3;
      o += n;
      out[o] = s20 + c0;
      out[o + 1] = s21 + c1;
      out[o + 2] = s22 + c2;
      out[o + 3] = s23 + c3;
      o += n;
      out[o] = s30 + c0;
      out[o + 1] = s31 + c1;
      out[o + 2] = s32 + c2;
      out[o + 3] = s33 + c3;
    }
    for (; j < n1; j++) {
      const b = j * k;
      let s0 = 0;
      let s1 = 0;
      let s2 = 0;
      let s3 = 0;
      for (let t = 0; t < k; t++) {
        const wv = w[b + t] as number;
        s0 += (x[a0 + t] as number) * wv;
        s1 += (x[a1 + t] as number) * wv;
        s2 += (x[a2 + t] as number) * wv;
        s3 += (x[a3 + t] as number) * wv;
      }
      const bj = bias === null ? 0 : (bias[j] as number);
      out[i * n + j] = s0 + bj;
      out[(i + 1) * n + j] = s1 + bj;
      out[(i + 2) * n + j] = s2 + bj;
      out[(i + 3) * n + j] = s3 + bj;
    }
  }
  for (; i < m; i++) {
    const a = i * k;
    for (let j = n0; j < n1; j++) {
      const b = j * k;
      let s0 = 0;
      let s1 = 0;
      let s2 = 0;
      let s3 = 0;
      let t = 0;
      for (; t < k4; t += 4) {
        s0 += (x[a + t] as number) * (w[b + t] as number);
        s1 += (x[a + t + 1] as number) * (w[b + t + 1] as number);
        s2 += (x[a + t + 2] as number) * (w[b + t + 2] as number);
        s3 += (x[a + t + 3] as number) * (w[b + t + 3] as number);
      }
      for (; t < k; t++) s0 += (x[a + t] as number) * (w[b + t] as number);
      out[i * n + j] = s0 + s1 + s2 + s3 + (bias === null ? 0 : (bias[j] as number));
    }
  }
}

/** One column range of a float matmul, run by a worker thread (see `cpu-worker.ts`). */
export interface GemmJob {
  readonly kind: 'gemm';
  readonly x: Float32Array;
  readonly m: number;
  readonly k: number;
  readonly w: Float32Array;
  readonly bias: Float32Array | null;
  readonly out: Float32Array;
  readonly n: number;
  readonly n0: number;
  readonly n1: number;
}

/**
 * y = x · wᵀ (+ bias): x [m, k], w [n, k] row-major, y [m, n]. Large products (when `w` lives on shared memory,
 * see `toShared`) are split by output columns over the worker threads: the calling thread computes the first
 * range, then awaits the others, so it never blocks on them. Each call has its own shared buffers, so concurrent
 * calls (two models in one process) are safe.
 *
 * @example
 * ```ts
 * const y = await matmulT(new Float32Array([1, 2]), 1, 2, new Float32Array([3, 4, 5, 6]), 2); // [11, 17]
 * ```
 */
export async function matmulT(
  x: Float32Array,
  m: number,
  k: number,
  w: Float32Array,
  n: number,
  bias: Float32Array | null = null,
): Promise<Float32Array> {
  if (x.length < m * k || w.length < n * k || (bias !== null && bias.length < n)) {
    throw new QError(
      'E_SHAPE',
      `Expected x [${m}, ${k}], w [${n}, ${k}] and bias [${n}] for matmulT but received lengths ${x.length}, ${w.length}, ${bias?.length ?? 'none'}`,
    );
  }
  const pool =
    m * n * k >= PARALLEL_MIN_MACS && n >= 64 && w.buffer instanceof SharedArrayBuffer
      ? await cpuPool()
      : null;
  if (pool === null) {
    const out = new Float32Array(m * n);
    gemmRange(x, m, k, w, bias, out, n, 0, n);
    return out;
  }
  const xs = toShared(x.subarray(0, m * k).slice());
  const out = new Float32Array(new SharedArrayBuffer(m * n * 4));
  const sharedBias = bias === null ? null : toShared(bias);
  const [mine, ...rest] = columnSplit(n, pool.size + 1);
  const jobs = rest.map(([n0, n1], i) =>
    pool.run<GemmJob, void>(
      { kind: 'gemm', x: xs, m, k, w, bias: sharedBias, out, n, n0, n1 },
      { worker: i },
    ),
  );
  try {
    gemmRange(xs, m, k, w, sharedBias, out, n, mine?.[0] ?? 0, mine?.[1] ?? 0);
  } finally {
    // Settle every job before the buffers are dropped, even when this thread's share threw.
    await Promise.allSettled(jobs);
  }
  await Promise.all(jobs);
  return out.slice();
}

export { PARALLEL_MIN_MACS, threadCount, toShared } from './threads';
