import { availableParallelism } from 'node:os';
import { QError, shippedScript, WorkerPool } from '@q/core';

/**
 * Threads that share a large matmul, the calling one included: by default the number of cores (at most 8), so
 * one less worker than that, since the calling thread computes a share too before it awaits the workers.
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

/** Below this many multiply-adds a matmul runs on the calling thread alone: a worker round trip costs ~0.1 ms. */
export const PARALLEL_MIN_MACS = 1 << 21;

let pool: Promise<WorkerPool | null> | undefined;

/**
 * The CPU backend's worker threads (`cpu-worker`), `threadCount() − 1` of them, started on first use; null when
 * there is one thread or no SharedArrayBuffer. Every concurrent caller shares them: jobs queue per worker, and
 * each call brings its own shared buffers, so calls of different models never share scratch memory.
 */
export function cpuPool(): Promise<WorkerPool | null> {
  if (pool === undefined) {
    const threads = threadCount();
    pool =
      threads <= 1 || typeof SharedArrayBuffer === 'undefined'
        ? Promise.resolve(null)
        : shippedScript('cpu-worker', import.meta.url).then(
            (url) => new WorkerPool(url, { size: threads - 1, name: 'the CPU backend' }),
          );
    // A failed start is retried on the next call rather than remembered.
    pool.catch(() => {
      pool = undefined;
    });
  }
  return pool;
}

/**
 * Terminates every worker thread of the CPU backend (they are re-created on demand). Idle workers never keep a
 * process alive; this is for programs that want them gone now.
 *
 * @example
 * ```ts
 * await shutdownThreads();
 * ```
 */
export async function shutdownThreads(): Promise<void> {
  const p = pool;
  pool = undefined;
  const live = await p?.catch(() => null);
  await live?.terminate();
}

/**
 * Output-column ranges [c0, c1) for `parts` threads over n columns, each a multiple of `align` wide but the last;
 * the first range is the calling thread's.
 */
export function columnSplit(n: number, parts: number, align = 4): [number, number][] {
  const chunk = Math.ceil(n / parts / align) * align;
  const out: [number, number][] = [];
  for (let c0 = 0; c0 < n; c0 += chunk) out.push([c0, Math.min(n, c0 + chunk)]);
  return out;
}

/** A copy of `a` on shared memory (or `a` itself if it already is), so worker threads read it in place.
 *
 * @example
 * ```ts
 * const w = toShared(weights); // worker threads now read w in place
 * ```
 */
export function toShared<T extends Float32Array | Int8Array | Uint8Array | Int32Array>(a: T): T {
  if (typeof SharedArrayBuffer === 'undefined' || a.buffer instanceof SharedArrayBuffer) return a;
  const Ctor = a.constructor as new (b: SharedArrayBuffer) => T;
  const s = new Ctor(new SharedArrayBuffer(a.byteLength));
  s.set(a as never);
  return s;
}

/** The pool if it was started, without starting one. */
export function runningPool(): Promise<WorkerPool | null> | undefined {
  return pool;
}
