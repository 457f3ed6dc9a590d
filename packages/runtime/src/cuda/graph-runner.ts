/**
 * Step metadata and CUDA graphs. Each step's host metadata (token ids, positions, sequence of each token,
 * qStart, context lengths, page table, sampling parameters) is written into one pinned buffer and copied into
 * one fixed device buffer with four async copies, so a captured graph reads new values at the same addresses.
 * A decode step (every sequence one token) pads its batch to a bucket and replays that bucket's graph,
 * captured on the bucket's first use right after running the same launches eagerly.
 */
import { QError } from '@q/core';
import { DeviceTensor, Graph, PinnedBuffer, type Stream } from '@q/kernels-cuda';
import type { CudaKVCache } from './cache';

/** Batch sizes a decode graph is captured for; a batch is padded up to the next one. */
export const DECODE_BUCKETS: readonly number[] = [1, 2, 4, 8, 16, 32, 64, 128];

/**
 * The decode bucket of a batch of `s` sequences, or undefined above the largest (run eagerly).
 *
 * @example
 * ```ts
 * decodeBucket(3); // 4
 * decodeBucket(200); // undefined
 * ```
 */
export function decodeBucket(s: number): number | undefined {
  return DECODE_BUCKETS.find((b) => b >= s);
}

/** Element offsets (i32 units) of the metadata regions. */
export interface MetaLayout {
  readonly maxTokens: number;
  readonly maxSeqs: number;
  readonly maxPages: number;
  readonly ids: number;
  readonly positions: number;
  readonly seqOfToken: number;
  readonly qStart: number;
  readonly contextLens: number;
  readonly temperature: number;
  readonly topK: number;
  readonly topP: number;
  readonly seeds: number;
  readonly steps: number;
  readonly pageTable: number;
  readonly total: number;
}

/**
 * Where each region lives: three token regions of `maxTokens`, then the per-sequence regions, the page table
 * last so that a step copies [qStart, pageTable row S) in one piece.
 *
 * @example
 * ```ts
 * metaLayout(2048, 8, 256).pageTable; // 3·2048 + 9 + 6·8
 * ```
 */
export function metaLayout(maxTokens: number, maxSeqs: number, maxPages: number): MetaLayout {
  const ids = 0;
  const positions = maxTokens;
  const seqOfToken = 2 * maxTokens;
  const qStart = 3 * maxTokens;
  const contextLens = qStart + maxSeqs + 1;
  const temperature = contextLens + maxSeqs;
  const topK = temperature + maxSeqs;
  const topP = topK + maxSeqs;
  const seeds = topP + maxSeqs;
  const steps = seeds + maxSeqs;
  const pageTable = steps + maxSeqs;
  return {
    maxTokens,
    maxSeqs,
    maxPages,
    ids,
    positions,
    seqOfToken,
    qStart,
    contextLens,
    temperature,
    topK,
    topP,
    seeds,
    steps,
    pageTable,
    total: pageTable + maxSeqs * maxPages,
  };
}

/** The device views of one step of T tokens over S sequences. */
export interface StepViews {
  readonly ids: DeviceTensor;
  readonly positions: DeviceTensor;
  readonly seqOfToken: DeviceTensor;
  readonly qStart: DeviceTensor;
  readonly contextLens: DeviceTensor;
  readonly temperature: DeviceTensor;
  readonly topK: DeviceTensor;
  readonly topP: DeviceTensor;
  readonly seeds: DeviceTensor;
  readonly steps: DeviceTensor;
  readonly pageTable: DeviceTensor;
}

/** Pinned host metadata and its device twin. */
export class StepIO {
  readonly layout: MetaLayout;
  readonly ids: Int32Array;
  readonly positions: Int32Array;
  readonly seqOfToken: Int32Array;
  readonly qStart: Int32Array;
  readonly contextLens: Int32Array;
  readonly temperature: Float32Array;
  readonly topK: Int32Array;
  readonly topP: Float32Array;
  readonly seeds: Int32Array;
  readonly steps: Int32Array;
  readonly pageTable: Int32Array;
  readonly #host: PinnedBuffer;
  readonly #i32: Int32Array;
  readonly #dev: DeviceTensor;

  constructor(
    layout: MetaLayout,
    readonly device: number,
  ) {
    this.layout = layout;
    this.#host = PinnedBuffer.alloc(layout.total * 4, device);
    try {
      this.#dev = DeviceTensor.alloc('i32', [layout.total], { device });
    } catch (e) {
      this.#host.dispose();
      throw e;
    }
    const buf = this.#host.buffer;
    this.#i32 = new Int32Array(buf);
    const L = layout;
    const i32 = (off: number, n: number): Int32Array => new Int32Array(buf, off * 4, n);
    this.ids = i32(L.ids, L.maxTokens);
    this.positions = i32(L.positions, L.maxTokens);
    this.seqOfToken = i32(L.seqOfToken, L.maxTokens);
    this.qStart = i32(L.qStart, L.maxSeqs + 1);
    this.contextLens = i32(L.contextLens, L.maxSeqs);
    this.temperature = new Float32Array(buf, L.temperature * 4, L.maxSeqs);
    this.topK = i32(L.topK, L.maxSeqs);
    this.topP = new Float32Array(buf, L.topP * 4, L.maxSeqs);
    this.seeds = i32(L.seeds, L.maxSeqs);
    this.steps = i32(L.steps, L.maxSeqs);
    this.pageTable = i32(L.pageTable, L.maxSeqs * L.maxPages);
  }

  #view(off: number, shape: readonly number[]): DeviceTensor {
    return DeviceTensor.wrap(this.#dev.ptr + BigInt(off * 4), 'i32', shape, { device: this.device });
  }

  #viewF(off: number, shape: readonly number[]): DeviceTensor {
    return DeviceTensor.wrap(this.#dev.ptr + BigInt(off * 4), 'f32', shape, { device: this.device });
  }

  /** Device views for a step of `t` tokens over `s` sequences (fixed addresses: a graph may keep them). */
  views(t: number, s: number): StepViews {
    const L = this.layout;
    return {
      ids: this.#view(L.ids, [t]),
      positions: this.#view(L.positions, [t]),
      seqOfToken: this.#view(L.seqOfToken, [t]),
      qStart: this.#view(L.qStart, [s + 1]),
      contextLens: this.#view(L.contextLens, [s]),
      temperature: this.#viewF(L.temperature, [s]),
      topK: this.#view(L.topK, [s]),
      topP: this.#viewF(L.topP, [s]),
      seeds: this.#view(L.seeds, [s]),
      steps: this.#view(L.steps, [s]),
      pageTable: this.#view(L.pageTable, [s, L.maxPages]),
    };
  }

  /** Queues the copies of a step's metadata (t tokens, s sequences) on `stream`. */
  upload(t: number, s: number, stream: Stream): void {
    const L = this.layout;
    if (t > L.maxTokens || s > L.maxSeqs)
      throw new QError(
        'E_INTERNAL',
        `step of ${t} tokens / ${s} sequences exceeds ${L.maxTokens} / ${L.maxSeqs}`,
      );
    for (const off of [L.ids, L.positions, L.seqOfToken])
      this.#view(off, [t]).upload(this.#i32.subarray(off, off + t), stream);
    const end = L.pageTable + s * L.maxPages;
    this.#view(L.qStart, [end - L.qStart]).upload(this.#i32.subarray(L.qStart, end), stream);
  }

  dispose(): void {
    this.#dev.dispose();
    this.#host.dispose();
  }
}

/**
 * Runs decode steps through per-bucket CUDA graphs stored on the cache: the first step of a bucket runs
 * `launch` eagerly (its result is the step's result) and then captures the same launches; later steps of that
 * bucket replay the graph. With `enabled` false every step runs eagerly (the same launches, for checks).
 */
export class GraphRunner {
  constructor(
    readonly stream: Stream,
    public enabled: boolean,
  ) {}

  /** Runs one decode step of bucket `bucket` against `cache`. */
  run(cache: CudaKVCache, bucket: number, launch: () => void): void {
    const g = this.enabled ? cache.graphs.get(bucket) : undefined;
    if (g) {
      g.launch(this.stream);
      return;
    }
    launch();
    if (!this.enabled) return;
    // Capture only after the eager launches completed: lazy library initialisation (cuBLAS handles, kernel
    // attributes) then happens outside the capture.
    this.stream.synchronize();
    cache.graphs.set(bucket, Graph.capture(this.stream, launch));
  }
}
