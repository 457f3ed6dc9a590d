import { QError } from '@q/core';
import type { Int4Weights, QuantizedLinear, QuantWeights } from '@q/quant';
import { matmulT } from './gemm';
import { columnSplit, cpuPool, PARALLEL_MIN_MACS, runningPool, toShared } from './threads';

/**
 * One linear layer y = x · Wᵀ (+ b) over rows of x. Every projection of the model goes through this
 * interface, so a float layer and a quantized one are interchangeable and calibration can watch every input.
 */
export interface Linear {
  /** Parameter name without `.weight`, e.g. `model.layers.0.mlp.down_proj`. */
  readonly name: string;
  readonly inFeatures: number;
  readonly outFeatures: number;
  /** `f32` for float weights, otherwise the quantized weight format. */
  readonly format: 'f32' | 'int4' | 'int8';
  /** x [rows, inFeatures] → y [rows, outFeatures]. */
  forward(x: Float32Array, rows: number): Promise<Float32Array>;
}

/**
 * A float32 linear layer (weights [out, in]).
 *
 * @example
 * ```ts
 * const l = new FloatLinear('proj', new Float32Array([1, 0, 0, 1]), 2, 2);
 * await l.forward(new Float32Array([3, 4]), 1); // Float32Array [3, 4]
 * ```
 */
export class FloatLinear implements Linear {
  readonly format = 'f32' as const;
  readonly weight: Float32Array;
  readonly bias: Float32Array | null;

  constructor(
    readonly name: string,
    weight: Float32Array,
    readonly outFeatures: number,
    readonly inFeatures: number,
    bias: Float32Array | null = null,
  ) {
    if (weight.length !== outFeatures * inFeatures) {
      throw new QError(
        'E_SHAPE',
        `Expected ${outFeatures * inFeatures} weights ([${outFeatures}, ${inFeatures}]) for ${name} but received ${weight.length}`,
      );
    }
    if (bias !== null && bias.length !== outFeatures) {
      throw new QError(
        'E_SHAPE',
        `Expected ${outFeatures} bias values for ${name} but received ${bias.length}`,
      );
    }
    // Large weights live on shared memory once, so worker threads read them in place.
    this.weight = outFeatures * inFeatures * 16 >= PARALLEL_MIN_MACS ? toShared(weight) : weight;
    this.bias = bias;
  }

  forward(x: Float32Array, rows: number): Promise<Float32Array> {
    return matmulT(x, rows, this.inFeatures, this.weight, this.outFeatures, this.bias);
  }
}

/** The function that runs a quantized layer exactly (injected so tests can run another one). */
export type QuantLinearForward = (x: Float32Array, rows: number, layer: QuantizedLinear) => Float32Array;

/** One column slice of a quantized layer, run by a worker thread (see `cpu-worker.ts`). */
export interface QuantJob {
  readonly kind: 'quant';
  /** Names `slice` for the worker's cache: the same id always comes with the same slice. */
  readonly id: number;
  readonly slice: QuantizedLinear;
  readonly x: Float32Array;
  readonly rows: number;
  /** Shared output [rows, n]; the worker writes columns [c0, c1). */
  readonly out: Float32Array;
  readonly n: number;
  readonly c0: number;
  readonly c1: number;
}

/** Forgets slices whose layer is gone. */
export interface QuantDropJob {
  readonly kind: 'drop';
  readonly ids: readonly number[];
}

let nextSliceId = 0;

/** When a QuantLinear is collected, its workers forget its slices (if the pool still runs). */
const dropSlices = new FinalizationRegistry<number[]>((ids) => {
  void runningPool()?.then((pool) => {
    if (pool === null) return;
    for (let i = 0; i < pool.size; i++)
      pool.run<QuantDropJob, void>({ kind: 'drop', ids }, { worker: i }).catch(() => undefined);
  });
});

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

/** The layer with every array on shared memory (copied once), so slices of it reach workers without copies. */
function sharedLayer(layer: QuantizedLinear): QuantizedLinear {
  const w = layer.weights;
  let weights: QuantWeights;
  if (w.format === 'int4') {
    const iq = w.intScale;
    weights = {
      ...w,
      packed: toShared(w.packed),
      scales: toShared(w.scales),
      ...(w.zeros ? { zeros: toShared(w.zeros) } : {}),
      ...(iq
        ? {
            intScale: {
              ...iq,
              q: toShared(iq.q),
              channelScale: toShared(iq.channelScale),
              unit: toShared(iq.unit),
            },
          }
        : {}),
    };
  } else if (w.format === 'int8') weights = { ...w, data: toShared(w.data), scales: toShared(w.scales) };
  else weights = { ...w, data: toShared(w.data) };
  const out: Mutable<QuantizedLinear> = { ...layer, weights };
  if (layer.bias) out.bias = toShared(layer.bias);
  return out;
}

/** Output channels [c0, c1) of `layer` as a layer of its own: views, no copies. */
function sliceLayer(layer: QuantizedLinear, c0: number, c1: number): QuantizedLinear {
  const w = layer.weights;
  const n = c1 - c0;
  let weights: QuantWeights;
  if (w.format === 'int4') {
    const g = w.kPadded / w.groupSize;
    const rowBytes = w.kPadded / 2;
    const iq = w.intScale;
    weights = {
      ...w,
      n,
      packed: w.packed.subarray(c0 * rowBytes, c1 * rowBytes),
      scales: w.scales.subarray(c0 * g, c1 * g),
      ...(w.zeros ? { zeros: w.zeros.subarray(c0 * g, c1 * g) } : {}),
      ...(iq
        ? {
            intScale: {
              ...iq,
              q: iq.q.subarray(c0 * g, c1 * g),
              channelScale: iq.channelScale.subarray(c0, c1),
              unit: iq.unit.subarray(c0, c1),
            },
          }
        : {}),
    };
  } else if (w.format === 'int8') {
    weights = { ...w, n, data: w.data.subarray(c0 * w.k, c1 * w.k), scales: w.scales.subarray(c0, c1) };
  } else weights = { ...w, n, data: w.data.subarray(c0 * w.k, c1 * w.k) };
  const out: Mutable<QuantizedLinear> = { ...layer, weights };
  if (layer.bias) out.bias = layer.bias.subarray(c0, c1);
  return out;
}

/** Whether output channels of these weights can be sliced without copying (int4 rows must start on a byte). */
function sliceable(w: QuantWeights): boolean {
  return w.format !== 'int4' || (w as Int4Weights).kPadded % 2 === 0;
}

interface Split {
  readonly ranges: readonly [number, number][];
  readonly slices: readonly QuantizedLinear[];
  readonly ids: readonly number[];
}

/**
 * A quantized linear layer run by `@q/quant`'s exact integer reference (`linearForward`): activation
 * quantization, the int8×int4 (or int8×int8) integer GEMM and the f32 epilogue, bit for bit what a GPU kernel
 * must reproduce.
 *
 * @example
 * ```ts
 * const l = new QuantLinear(quantizedModel.linears.get('model.layers.0.mlp.down_proj')!, linearForward);
 * const y = await l.forward(x, rows);
 * ```
 */
export class QuantLinear implements Linear {
  readonly name: string;
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly format: 'f32' | 'int4' | 'int8';
  private split: Split | undefined;

  /**
   * `parallel`: `run` is `@q/quant`'s `linearForward`, so large layers are split by output columns over the
   * worker threads, which run the same function on their slice (bit-identical, since every output column and
   * every activation quantizer depends only on the whole input row). Each thread keeps its slice, so the
   * weights are unpacked once per layer, never per call, and decode (one row) uses every thread too.
   */
  constructor(
    readonly layer: QuantizedLinear,
    private readonly run: QuantLinearForward,
    private readonly parallel = false,
  ) {
    this.name = layer.name;
    this.inFeatures = layer.weights.k;
    this.outFeatures = layer.weights.n;
    this.format = layer.weights.format;
  }

  private splitFor(parts: number): Split {
    if (this.split?.ranges.length === parts) return this.split;
    const shared = sharedLayer(this.layer);
    const ranges = columnSplit(this.outFeatures, parts, 16);
    const slices = ranges.map(([c0, c1]) => sliceLayer(shared, c0, c1));
    const ids = ranges.map(() => nextSliceId++);
    if (this.split) dropSlices.unregister(this);
    dropSlices.register(this, ids.slice(1), this);
    this.split = { ranges, slices, ids };
    return this.split;
  }

  async forward(x: Float32Array, rows: number): Promise<Float32Array> {
    const n = this.outFeatures;
    const k = this.inFeatures;
    const pool =
      this.parallel &&
      x.length === rows * k &&
      rows * n * k >= PARALLEL_MIN_MACS &&
      n >= 64 &&
      sliceable(this.layer.weights)
        ? await cpuPool()
        : null;
    if (pool === null) return this.run(x, rows, this.layer);
    const split = this.splitFor(Math.min(pool.size + 1, Math.ceil(n / 16)));
    const xs = toShared(x.slice());
    const out = new Float32Array(new SharedArrayBuffer(rows * n * 4));
    const jobs = split.ranges.slice(1).map(([c0, c1], i) =>
      pool.run<QuantJob, void>(
        {
          kind: 'quant',
          id: split.ids[i + 1] as number,
          slice: split.slices[i + 1] as QuantizedLinear,
          x: xs,
          rows,
          out,
          n,
          c0,
          c1,
        },
        { worker: i },
      ),
    );
    try {
      const [c0, c1] = split.ranges[0] as [number, number];
      const y = this.run(x, rows, split.slices[0] as QuantizedLinear);
      const width = c1 - c0;
      for (let r = 0; r < rows; r++) out.set(y.subarray(r * width, (r + 1) * width), r * n + c0);
    } finally {
      // Settle every job before the buffers are dropped, even when this thread's share threw.
      await Promise.allSettled(jobs);
    }
    await Promise.all(jobs);
    return out.slice();
  }
}
