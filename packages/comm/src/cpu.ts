import { QError, shippedScript, WorkerPool } from '@q/core';
import type { CpuWorkerData } from './cpu-worker';
import {
  commonLength,
  type HostPayload,
  type PayloadDType,
  type QuantOptions,
  schemeOf,
  wireLayout,
} from './reference';

/** Options of the CPU multi-rank all-reduce. */
export interface CpuAllReduceOptions extends QuantOptions {
  /** A rank that does not reach a step within this time fails every rank (E_TIMEOUT). Default 60 000. */
  readonly timeoutMs?: number;
}

/**
 * The two-step all-reduce run by one worker thread per rank over SharedArrayBuffer: the same steps as the GPU
 * path (quantize, all-to-all, dequantize-sum, requantize, all-gather, dequantize), bit for bit equal to
 * `allReduceReference`. Returns every rank's output (they are identical).
 *
 * @example
 * ```ts
 * const inputs = [new Float32Array([1, 2]), new Float32Array([3, 4])];
 * const [rank0, rank1] = await allReduceThreads(inputs, 'f32', { wire: 'int4' });
 * ```
 */
export async function allReduceThreads(
  inputs: readonly HostPayload[],
  dtype: PayloadDType,
  opts: CpuAllReduceOptions = {},
): Promise<HostPayload[]> {
  const n = commonLength(inputs);
  const world = inputs.length;
  const wire = opts.wire ?? 'int8';
  const rb = wire === 'none' ? 0 : wireLayout(n, world, schemeOf(opts)).recordBytes;
  const elemBytes = dtype === 'f32' ? 4 : 2;
  const shared = inputs.map((x, r) => {
    if ((dtype === 'f32') !== x instanceof Float32Array) {
      throw new QError(
        'E_DTYPE',
        `Expected ${dtype === 'f32' ? 'a Float32Array' : 'a Uint16Array'} for inputs[${r}] but received ${x.constructor.name}`,
      );
    }
    const sab = new SharedArrayBuffer(n * elemBytes);
    new Uint8Array(sab).set(new Uint8Array(x.buffer, x.byteOffset, n * elemBytes));
    return sab;
  });
  const send = new SharedArrayBuffer(Math.max(1, world * world * rb));
  const reduced = new SharedArrayBuffer(Math.max(1, world * rb));
  const out = new SharedArrayBuffer(world * n * 4);
  const sync = new SharedArrayBuffer(12);
  const timeoutMs = opts.timeoutMs ?? 60_000;
  const pool = new WorkerPool(await shippedScript('cpu-worker', import.meta.url), {
    size: world,
    name: 'the CPU all-reduce',
  });
  let results: PromiseSettledResult<void>[];
  try {
    results = await Promise.allSettled(
      inputs.map((_, rank) => {
        const data: CpuWorkerData = {
          rank,
          world,
          n,
          dtype,
          opts: { wire, symmetric: opts.symmetric ?? false, groupSize: opts.groupSize ?? 128 },
          inputs: shared,
          send,
          reduced,
          out,
          sync,
          timeoutMs,
        };
        // Every rank needs its own thread: they meet at barriers.
        return pool.run<CpuWorkerData, void>(data, { worker: rank }).catch((e: unknown) => {
          const err = e as QError;
          const code =
            err.code === 'E_NUMERIC' || err.code === 'E_ARG' || err.code === 'E_TIMEOUT'
              ? err.code
              : 'E_COMM';
          throw new QError(code, `rank ${rank}: ${err.message}`, { cause: e });
        });
      }),
    );
  } finally {
    await pool.terminate();
  }
  const failed = results.find((r) => r.status === 'rejected');
  if (failed) throw (failed as PromiseRejectedResult).reason;
  return inputs.map((_, r) =>
    dtype === 'f32'
      ? new Float32Array(out, r * n * 4, n).slice()
      : new Uint16Array(out, r * n * 4, n).slice(),
  );
}
