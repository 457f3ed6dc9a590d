import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { QError } from '@q/core';

/**
 * out[i, j] = bias[j] + Σ_t x[i, t] · w[j, t] for output columns j in [n0, n1): x is [m, k] and w is [n, k],
 * both row-major (w in the [out, in] layout every loader produces, so each dot product walks two contiguous
 * rows). Sums are accumulated in float64 and rounded once to float32.
 *
 * Self-contained on purpose: its source text is also what the worker threads run (see `workerSource`), which
 * keeps the worker independent of file paths and therefore safe under any bundler.
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

function workerSource(): string {
  return `
const { parentPort } = require('node:worker_threads');
const gemmRange = ${gemmRange.toString()};
parentPort.on('message', (job) => {
  try {
    gemmRange(job.x, job.m, job.k, job.w, job.bias, job.out, job.n, job.n0, job.n1);
  } catch (e) {
    Atomics.store(job.ctrl, 1, 1);
  }
  Atomics.add(job.ctrl, 0, 1);
  Atomics.notify(job.ctrl, 0);
});
`;
}

/**
 * Blocks until `expected` workers have counted themselves done in ctrl[0]. A worker that died cannot report
 * (its error event would need this thread's event loop), so ten silent minutes end the wait with E_TIMEOUT.
 */
export function waitForWorkers(ctrl: Int32Array, expected: number): void {
  let silent = 0;
  let last = -1;
  for (;;) {
    const done = Atomics.load(ctrl, 0);
    if (done >= expected) return;
    if (done !== last) silent = 0;
    last = done;
    if (Atomics.wait(ctrl, 0, done, 60_000) === 'timed-out' && ++silent >= 10) {
      throw new QError(
        'E_TIMEOUT',
        `Expected ${expected} worker threads to finish a matmul within 10 minutes but ${done} did`,
      );
    }
  }
}

/** Below this many multiply-adds a matmul runs on the calling thread: a worker round trip costs ~0.1 ms. */
export const PARALLEL_MIN_MACS = 1 << 21;

interface Pool {
  readonly workers: Worker[];
  readonly ctrl: Int32Array;
  xBuf: Float32Array;
  outBuf: Float32Array;
}

let pool: Pool | null | undefined;

/**
 * Threads that share a large matmul, the calling one included: by default the number of cores (at most 8), so
 * one less worker than that, since the calling thread computes a share too and then waits without spinning.
 * `Q_THREADS` overrides it (1 disables the workers).
 *
 * @example
 * ```ts
 * threadCount(); // e.g. 2 on a 2-core machine; Q_THREADS=1 gives 1
 * ```
 */
export function threadCount(): number {
  const env = process.env.Q_THREADS;
  if (env !== undefined && env !== '') {
    const v = Number(env);
    if (!Number.isInteger(v) || v < 1) {
      throw new QError(
        'E_ARG',
        `Expected a positive integer for Q_THREADS but received ${JSON.stringify(env)}`,
      );
    }
    return v;
  }
  return Math.max(1, Math.min(8, availableParallelism()));
}

function getPool(): Pool | null {
  if (pool !== undefined) return pool;
  const threads = threadCount();
  if (threads <= 1 || typeof SharedArrayBuffer === 'undefined') {
    pool = null;
    return pool;
  }
  const src = workerSource();
  const workers: Worker[] = [];
  for (let i = 0; i < threads - 1; i++) {
    const w = new Worker(src, { eval: true });
    // Idle workers must not keep a finished CLI run alive.
    w.unref();
    workers.push(w);
  }
  pool = {
    workers,
    ctrl: new Int32Array(new SharedArrayBuffer(8)),
    xBuf: new Float32Array(new SharedArrayBuffer(4)),
    outBuf: new Float32Array(new SharedArrayBuffer(4)),
  };
  return pool;
}

/** Terminates the float matmul worker threads (they are re-created on demand).
 *
 * @example
 * ```ts
 * await shutdownGemmThreads();
 * ```
 */
export async function shutdownGemmThreads(): Promise<void> {
  const p = pool;
  pool = undefined;
  if (p) await Promise.all(p.workers.map((w) => w.terminate()));
}

/** A copy of `a` on shared memory, so worker threads can read it without a copy per call.
 *
 * @example
 * ```ts
 * const w = toShared(weights); // worker threads now read w in place
 * ```
 */
export function toShared(a: Float32Array): Float32Array {
  if (typeof SharedArrayBuffer === 'undefined' || a.buffer instanceof SharedArrayBuffer) return a;
  const s = new Float32Array(new SharedArrayBuffer(a.byteLength));
  s.set(a);
  return s;
}

function sharedScratch(cur: Float32Array, len: number): Float32Array {
  if (cur.length >= len) return cur;
  return new Float32Array(new SharedArrayBuffer(Math.max(len, cur.length * 2) * 4));
}

/**
 * y = x · wᵀ (+ bias): x [m, k], w [n, k] row-major, y [m, n]. Large products are split by output columns
 * over worker threads (when `w` lives on shared memory, see `toShared`); the call stays synchronous because the
 * calling thread computes its own share and then blocks on an atomic counter until the workers are done.
 *
 * @example
 * ```ts
 * const y = matmulT(new Float32Array([1, 2]), 1, 2, new Float32Array([3, 4, 5, 6]), 2); // [11, 17]
 * ```
 */
export function matmulT(
  x: Float32Array,
  m: number,
  k: number,
  w: Float32Array,
  n: number,
  bias: Float32Array | null = null,
): Float32Array {
  if (x.length < m * k || w.length < n * k || (bias !== null && bias.length < n)) {
    throw new QError(
      'E_SHAPE',
      `Expected x [${m}, ${k}], w [${n}, ${k}] and bias [${n}] for matmulT but received lengths ${x.length}, ${w.length}, ${bias?.length ?? 'none'}`,
    );
  }
  const p =
    m * n * k >= PARALLEL_MIN_MACS && n >= 64 && w.buffer instanceof SharedArrayBuffer ? getPool() : null;
  if (p === null) {
    const out = new Float32Array(m * n);
    gemmRange(x, m, k, w, bias, out, n, 0, n);
    return out;
  }
  p.xBuf = sharedScratch(p.xBuf, m * k);
  p.outBuf = sharedScratch(p.outBuf, m * n);
  const xs = p.xBuf.subarray(0, m * k);
  xs.set(x.subarray(0, m * k));
  const outS = p.outBuf.subarray(0, m * n);
  const parts = p.workers.length + 1;
  const chunk = Math.ceil(n / parts / 4) * 4;
  const sharedBias = bias === null || bias.buffer instanceof SharedArrayBuffer ? bias : toShared(bias);
  Atomics.store(p.ctrl, 0, 0);
  Atomics.store(p.ctrl, 1, 0);
  let posted = 0;
  for (let i = 1; i < parts; i++) {
    const n0 = i * chunk;
    const n1 = Math.min(n, n0 + chunk);
    if (n0 >= n1) break;
    p.workers[i - 1]?.postMessage({ x: xs, m, k, w, bias: sharedBias, out: outS, n, n0, n1, ctrl: p.ctrl });
    posted++;
  }
  gemmRange(xs, m, k, w, sharedBias, outS, n, 0, Math.min(chunk, n));
  waitForWorkers(p.ctrl, posted);
  if (Atomics.load(p.ctrl, 1) !== 0) {
    throw new QError(
      'E_INTERNAL',
      `Expected every matmul worker to succeed for [${m}, ${k}] x [${n}, ${k}]ᵀ`,
    );
  }
  return outS.slice();
}
