import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { QError } from '@q/core';
import type { QuantizedLinear } from '@q/quant';
import { PARALLEL_MIN_MACS, threadCount, waitForWorkers } from './gemm';

/**
 * Worker threads that run `@q/quant`'s `linearForward` on slices of rows. Rows are independent in every
 * activation quantizer (per-token scales are per row, a static scale is one number) and in the integer GEMM,
 * so splitting by rows gives bit-identical outputs.
 *
 * The workers load `@q/quant` by module resolution, so they run only when this code runs from a build
 * (`dist/`), where the calling thread and the workers use the same published `@q/quant`; from sources (tests)
 * the quantized path stays on the calling thread.
 */

interface QuantPool {
  readonly workers: Worker[];
  readonly ctrl: Int32Array;
  readonly registered: WeakMap<QuantizedLinear, number>;
  nextId: number;
  xBuf: Float32Array;
  outBuf: Float32Array;
}

let pool: QuantPool | null | undefined;

function quantModulePath(): string | null {
  try {
    const here = import.meta.url;
    if (!/[\\/]dist[\\/][^\\/]+\.c?js$/.test(fileURLToPath(here))) return null;
    return createRequire(here).resolve('@q/quant');
  } catch {
    return null;
  }
}

const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { linearForward } = require(workerData.quantPath);
const layers = new Map();
parentPort.on('message', (m) => {
  if (m.type === 'layer') {
    layers.set(m.id, m.layer);
    return;
  }
  try {
    const y = linearForward(m.x.subarray(m.r0 * m.k, m.r1 * m.k), m.r1 - m.r0, layers.get(m.id));
    m.out.set(y, m.r0 * m.n);
  } catch (e) {
    Atomics.store(m.ctrl, 1, 1);
  }
  Atomics.add(m.ctrl, 0, 1);
  Atomics.notify(m.ctrl, 0);
});
`;

function getPool(): QuantPool | null {
  if (pool !== undefined) return pool;
  const threads = threadCount();
  const quantPath = threads > 1 && typeof SharedArrayBuffer !== 'undefined' ? quantModulePath() : null;
  if (quantPath === null) {
    pool = null;
    return pool;
  }
  const workers: Worker[] = [];
  for (let i = 0; i < threads - 1; i++) {
    const w = new Worker(WORKER_SOURCE, { eval: true, workerData: { quantPath } });
    w.unref();
    workers.push(w);
  }
  pool = {
    workers,
    ctrl: new Int32Array(new SharedArrayBuffer(8)),
    registered: new WeakMap(),
    nextId: 0,
    xBuf: new Float32Array(new SharedArrayBuffer(4)),
    outBuf: new Float32Array(new SharedArrayBuffer(4)),
  };
  return pool;
}

/** Terminates the quantized-path workers (re-created on demand). */
export async function shutdownQuantThreads(): Promise<void> {
  const p = pool;
  pool = undefined;
  if (p) await Promise.all(p.workers.map((w) => w.terminate()));
}

function compactCopy<T>(v: T): T {
  if (ArrayBuffer.isView(v)) return (v as unknown as { slice(): T }).slice();
  if (Array.isArray(v)) return v.map(compactCopy) as T;
  if (typeof v === 'object' && v !== null)
    return Object.fromEntries(Object.entries(v).map(([key, x]) => [key, compactCopy(x)])) as T;
  return v;
}

function scratch(cur: Float32Array, len: number): Float32Array {
  return cur.length >= len ? cur : new Float32Array(new SharedArrayBuffer(Math.max(len, cur.length * 2) * 4));
}

/**
 * Runs `run(x, rows, layer)` (which must be `@q/quant`'s `linearForward`) over row slices on the worker threads
 * when that pays, else on the calling thread. Returns y [rows, n].
 */
export function parallelLinearForward(
  x: Float32Array,
  rows: number,
  layer: QuantizedLinear,
  run: (x: Float32Array, rows: number, layer: QuantizedLinear) => Float32Array,
): Float32Array {
  const { n, k } = layer.weights;
  const p = rows >= 8 && rows * n * k >= PARALLEL_MIN_MACS ? getPool() : null;
  if (p === null || x.length !== rows * k) return run(x, rows, layer);
  let id = p.registered.get(layer);
  if (id === undefined) {
    id = p.nextId++;
    p.registered.set(layer, id);
    // Each worker keeps its own copy of the layer (copied once, then referenced by id); compact copies so a
    // view into a larger file buffer does not ship the whole buffer.
    const compact = compactCopy(layer);
    for (const w of p.workers) w.postMessage({ type: 'layer', id, layer: compact });
  }
  p.xBuf = scratch(p.xBuf, rows * k);
  p.outBuf = scratch(p.outBuf, rows * n);
  const xs = p.xBuf.subarray(0, rows * k);
  xs.set(x);
  const out = p.outBuf.subarray(0, rows * n);
  const parts = p.workers.length + 1;
  const chunk = Math.ceil(rows / parts);
  Atomics.store(p.ctrl, 0, 0);
  Atomics.store(p.ctrl, 1, 0);
  let posted = 0;
  for (let i = 1; i < parts; i++) {
    const r0 = i * chunk;
    const r1 = Math.min(rows, r0 + chunk);
    if (r0 >= r1) break;
    p.workers[i - 1]?.postMessage({ type: 'run', id, x: xs, out, r0, r1, k, n, ctrl: p.ctrl });
    posted++;
  }
  const mine = Math.min(chunk, rows);
  out.set(run(x.subarray(0, mine * k), mine, layer), 0);
  waitForWorkers(p.ctrl, posted);
  if (Atomics.load(p.ctrl, 1) !== 0) {
    throw new QError(
      'E_INTERNAL',
      `Expected every quantized-path worker to succeed for layer ${layer.name} (${rows} rows)`,
    );
  }
  return out.slice();
}
