/**
 * One rank of the CPU all-reduce (worker thread). Shared memory, all SharedArrayBuffer:
 * `inputs` one per rank, `send` [W ranks][W chunk records], `reduced` [W chunk records], `out` [W ranks][n f32], `sync` Int32Array
 * ([0] arrivals, [1] generation, [2] abort flag).
 */
import { QError, serveJobs } from '@q/core';
import {
  decodeChunk,
  encodeChunk,
  fromF32,
  type HostPayload,
  type PayloadDType,
  type QuantOptions,
  reduceChunk,
  schemeOf,
  toF32,
  wireLayout,
} from './reference';

export interface CpuWorkerData {
  readonly rank: number;
  readonly world: number;
  readonly n: number;
  readonly dtype: PayloadDType;
  readonly opts: QuantOptions;
  readonly inputs: readonly SharedArrayBuffer[];
  readonly send: SharedArrayBuffer;
  readonly reduced: SharedArrayBuffer;
  readonly out: SharedArrayBuffer;
  readonly sync: SharedArrayBuffer;
  readonly timeoutMs: number;
}

function barrier(sync: Int32Array, world: number, deadline: number, what: string): void {
  const gen = Atomics.load(sync, 1);
  if (Atomics.add(sync, 0, 1) === world - 1) {
    Atomics.store(sync, 0, 0);
    Atomics.add(sync, 1, 1);
    Atomics.notify(sync, 1);
    return;
  }
  while (Atomics.load(sync, 1) === gen) {
    if (Atomics.load(sync, 2) !== 0)
      throw new QError('E_COMM', `Expected every rank to reach ${what} but another rank failed`);
    const left = deadline - Date.now();
    if (left <= 0)
      throw new QError('E_TIMEOUT', `Expected every rank to reach ${what} in time but timed out`);
    Atomics.wait(sync, 1, gen, Math.min(left, 50));
  }
}

function run(d: CpuWorkerData): void {
  const sync = new Int32Array(d.sync);
  const deadline = Date.now() + d.timeoutMs;
  try {
    const load = (r: number): Float32Array => {
      const sab = d.inputs[r] as SharedArrayBuffer;
      const raw: HostPayload =
        d.dtype === 'f32' ? new Float32Array(sab, 0, d.n).slice() : new Uint16Array(sab, 0, d.n);
      return toF32(raw, d.dtype, `rank ${r} input`);
    };
    const x = load(d.rank);
    const out = new Float32Array(d.out, d.rank * d.n * 4, d.n);
    if ((d.opts.wire ?? 'int8') === 'none') {
      // Every rank sums all inputs in rank order: the same f32 operations as the reference.
      barrier(sync, d.world, deadline, 'start');
      out.set(load(0));
      for (let r = 1; r < d.world; r++) {
        const y = load(r);
        for (let i = 0; i < d.n; i++) out[i] = Math.fround((out[i] as number) + (y[i] as number));
      }
    } else {
      const layout = wireLayout(d.n, d.world, schemeOf(d.opts));
      const rb = layout.recordBytes;
      const mySend = new Uint8Array(d.send, d.rank * d.world * rb, d.world * rb);
      for (let j = 0; j < d.world; j++) encodeChunk(x, layout, j, mySend.subarray(j * rb, (j + 1) * rb));
      barrier(sync, d.world, deadline, 'all-to-all');
      const mine = Array.from(
        { length: d.world },
        (_, r) => new Uint8Array(d.send, (r * d.world + d.rank) * rb, rb),
      );
      reduceChunk(mine, layout, d.rank, new Uint8Array(d.reduced, d.rank * rb, rb));
      barrier(sync, d.world, deadline, 'all-gather');
      for (let j = 0; j < d.world; j++) decodeChunk(new Uint8Array(d.reduced, j * rb, rb), layout, j, out);
    }
    // The dtype rounding happens here so the main thread only copies bits.
    const rounded = fromF32(out, d.dtype);
    if (d.dtype !== 'f32') new Uint16Array(d.out, d.rank * d.n * 4, d.n).set(rounded as Uint16Array);
  } catch (e) {
    // The other ranks stop waiting at their next barrier.
    Atomics.store(sync, 2, 1);
    Atomics.notify(sync, 1);
    throw e;
  }
}

serveJobs(run);
