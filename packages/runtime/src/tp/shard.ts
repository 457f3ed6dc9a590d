import { packInt4, QError } from '@q/core';
import {
  type FloatWeights,
  gemmModeFor,
  gemmW4A8Golden,
  gemmW8A8Golden,
  type Int4Weights,
  type Int8Weights,
  linearForward,
  type QuantizedLinear,
  type QuantizedModel,
  type QuantWeights,
  quantizeValue,
  unpackInt4Weights,
} from '@q/quant';
import { FloatLinear, type Linear, QuantLinear } from '../cpu/linear';
import { type FloatTensorSource, Model, type ShardCollectives } from '../model';
import type { ShardPlan, TensorShard } from './plan';

/**
 * Slices of float and quantized checkpoints for one tensor-parallel rank, and the rank's CPU `Model` built from
 * them. Quantized layers keep their per-layer plan per shard: the static scale and the activation mode stay,
 * row-parallel int4 layers split K on group boundaries (Integer Scale rows keep their channel scale), and a
 * per-token dynamic row-parallel layer takes its scale from the max over every rank's slice of the row, so each
 * shard quantizes its activations exactly as the whole layer would.
 */

/** Max over ranks of a per-row vector (the amax of a row-parallel layer's input). */
export type MaxAcross = (x: Float32Array) => Promise<Float32Array>;

function shardOf(plan: ShardPlan, name: string): TensorShard {
  const s = plan.tensors.get(name);
  if (s === undefined)
    throw new QError(
      'E_FORMAT',
      `Expected ${name} in the Llama tensor layout for the shard plan but received none`,
    );
  return s;
}

/**
 * The slice of a row-major [rows, cols] (or [len]) array that `s` names.
 *
 * @example
 * ```ts
 * sliceMatrix(Float32Array.of(1, 2, 3, 4), [2, 2], { dim: 1, start: 1, end: 2 }); // [2, 4]
 * ```
 */
export function sliceMatrix<T extends Float32Array | Int8Array | Int32Array>(
  a: T,
  shape: readonly number[],
  s: Pick<TensorShard, 'dim' | 'start' | 'end'>,
): T {
  const rows = shape[0] as number;
  const cols = shape.length > 1 ? (shape[1] as number) : 1;
  if (a.length !== rows * cols)
    throw new QError(
      'E_SHAPE',
      `Expected ${rows * cols} values ([${shape.join(', ')}]) for a slice but received ${a.length}`,
    );
  if (s.dim === 0) return a.slice(s.start * cols, s.end * cols) as T;
  const w = s.end - s.start;
  const out = new (a.constructor as new (n: number) => T)(rows * w);
  for (let r = 0; r < rows; r++) out.set(a.subarray(r * cols + s.start, r * cols + s.end), r * w);
  return out;
}

function sliceInt4(w: Int4Weights, s: TensorShard, name: string, tp: number): Int4Weights {
  const groups = w.kPadded / w.groupSize;
  const vals = unpackInt4Weights(w);
  const full = [w.n, w.kPadded];
  if (s.dim === 0) {
    const n = s.end - s.start;
    const g = { dim: 0 as const, start: s.start, end: s.end };
    return {
      ...w,
      n,
      packed: packInt4(sliceMatrix(vals, full, g)),
      scales: sliceMatrix(w.scales, [w.n, groups], g),
      ...(w.zeros ? { zeros: sliceMatrix(w.zeros, [w.n, groups], g) } : {}),
      ...(w.intScale
        ? {
            intScale: {
              amplifierBits: w.intScale.amplifierBits,
              q: sliceMatrix(w.intScale.q, [w.n, groups], g),
              channelScale: w.intScale.channelScale.slice(s.start, s.end),
              unit: w.intScale.unit.slice(s.start, s.end),
            },
          }
        : {}),
    };
  }
  const k = s.end - s.start;
  const packed = packInt4(sliceMatrix(vals, full, s));
  // Per channel: one group per row, so any K split keeps the row's scale.
  if (groups === 1) return { ...w, k, kPadded: k, groupSize: k, packed };
  const gs = w.groupSize;
  if (s.start % gs !== 0 || k % gs !== 0)
    throw new QError(
      'E_ARG',
      `Expected K/tp (${w.k}/${tp} = ${w.k / tp}) to be a multiple of the int4 group size ${gs} for the row-parallel layer ${name} but received a split inside a group (quantize with a group size that divides ${w.k / tp}, or use a smaller --tp)`,
    );
  const g = { dim: 1 as const, start: s.start / gs, end: s.end / gs };
  return {
    ...w,
    k,
    kPadded: k,
    packed,
    scales: sliceMatrix(w.scales, [w.n, groups], g),
    ...(w.zeros ? { zeros: sliceMatrix(w.zeros, [w.n, groups], g) } : {}),
    ...(w.intScale ? { intScale: { ...w.intScale, q: sliceMatrix(w.intScale.q, [w.n, groups], g) } } : {}),
  };
}

function sliceInt8(w: Int8Weights, s: TensorShard): Int8Weights {
  const data = sliceMatrix(w.data, [w.n, w.k], s);
  return s.dim === 0
    ? { ...w, n: s.end - s.start, data, scales: w.scales.slice(s.start, s.end) }
    : { ...w, k: s.end - s.start, data };
}

function sliceWeights(w: QuantWeights, s: TensorShard, name: string, tp: number): QuantWeights {
  if (w.format === 'int4') return sliceInt4(w, s, name, tp);
  if (w.format === 'int8') return sliceInt8(w, s);
  const data = sliceMatrix(w.data, [w.n, w.k], s);
  const f: FloatWeights =
    s.dim === 0 ? { ...w, n: s.end - s.start, data } : { ...w, k: s.end - s.start, data };
  return f;
}

/**
 * One rank's slice of a quantized linear layer: the same activation mode and static scale, its rows (column- and
 * vocab-parallel) or its K columns (row-parallel; the bias stays with rank 0, which adds it once).
 *
 * @example
 * ```ts
 * const part = sliceQuantizedLinear(q.linears.get('model.layers.0.mlp.down_proj')!, plan);
 * part.weights.k; // intermediateSize / tp
 * ```
 */
export function sliceQuantizedLinear(layer: QuantizedLinear, plan: ShardPlan): QuantizedLinear {
  const s = shardOf(plan, `${layer.name}.weight`);
  if (s.kind === 'replicated') return layer;
  const weights = sliceWeights(layer.weights, s, layer.name, plan.tp);
  const { bias, ...rest } = layer;
  let b: Float32Array | undefined;
  if (bias !== undefined) b = s.dim === 0 ? bias.slice(s.start, s.end) : plan.rank === 0 ? bias : undefined;
  return { ...rest, weights, ...(b !== undefined ? { bias: b } : {}) };
}

/**
 * A row-parallel quantized layer with per-token dynamic activations: the scale of each row is f32(max|x| / 127)
 * over the whole row, so the ranks first agree on each row's max; then this rank's slice is quantized with it and
 * runs the golden integer GEMM. The partial output is what the whole layer computes over these K columns.
 */
class RowDynamicLinear implements Linear {
  readonly name: string;
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly format: 'f32' | 'int4' | 'int8';

  constructor(
    private readonly layer: QuantizedLinear,
    private readonly maxAcross: MaxAcross,
  ) {
    this.name = layer.name;
    this.inFeatures = layer.weights.k;
    this.outFeatures = layer.weights.n;
    this.format = layer.weights.format;
  }

  async forward(x: Float32Array, rows: number): Promise<Float32Array> {
    const k = this.inFeatures;
    const amax = new Float32Array(rows);
    for (let i = 0; i < rows; i++) {
      let m = 0;
      for (let j = 0; j < k; j++) {
        const v = Math.abs(x[i * k + j] as number);
        if (!(v <= m)) m = v;
      }
      if (!Number.isFinite(m))
        throw new QError(
          'E_NUMERIC',
          `Expected finite values for ${this.name} row ${i} but received max|x| = ${m}`,
        );
      amax[i] = m;
    }
    const global = await this.maxAcross(amax);
    const scales = new Float32Array(rows);
    for (let i = 0; i < rows; i++) {
      const s = Math.fround((global[i] as number) / 127);
      scales[i] = s === 0 ? 1 : s;
    }
    const w = this.layer.weights;
    let out: Float32Array;
    if (w.format === 'f32') {
      // Float weights behind quantized activations: the input is fake-quantized as linearForward does.
      const xin = new Float32Array(x.length);
      for (let i = 0; i < rows; i++) {
        const s = scales[i] as number;
        for (let j = 0; j < k; j++)
          xin[i * k + j] = Math.fround(quantizeValue(x[i * k + j] as number, s) * s);
      }
      const { bias: _b, ...rest } = this.layer;
      out = linearForward(xin, rows, { ...rest, act: 'none' });
    } else {
      const kp = w.format === 'int4' ? w.kPadded : k;
      const a = new Int8Array(rows * kp);
      for (let i = 0; i < rows; i++) {
        const s = scales[i] as number;
        for (let j = 0; j < k; j++) a[i * kp + j] = quantizeValue(x[i * k + j] as number, s);
      }
      out =
        w.format === 'int4'
          ? gemmW4A8Golden({ a, aScales: scales, m: rows, weights: w, mode: gemmModeFor(w) })
          : gemmW8A8Golden({ a, aScales: scales, m: rows, weights: w });
    }
    const bias = this.layer.bias;
    if (bias)
      for (let i = 0; i < rows; i++)
        for (let c = 0; c < this.outFeatures; c++)
          out[i * this.outFeatures + c] = Math.fround(
            (out[i * this.outFeatures + c] as number) + (bias[c] as number),
          );
    return out;
  }
}

function floatSlice(
  get: (name: string) => { toFloat32(): Float32Array; readonly shape: readonly number[] } | undefined,
  plan: ShardPlan,
  name: string,
  shape: readonly number[],
): Float32Array {
  const t = get(name);
  if (t === undefined) throw new QError('E_FORMAT', `Expected a tensor named ${name} but received none`);
  const s = shardOf(plan, name);
  if (t.shape.length !== s.shape.length || t.shape.some((v, i) => v !== s.shape[i]))
    throw new QError(
      'E_SHAPE',
      `Expected shape [${s.shape.join(', ')}] for ${name} but received [${t.shape.join(', ')}]`,
    );
  const a = t.toFloat32();
  const out = s.kind === 'replicated' ? a : sliceMatrix(a, s.shape, s);
  const want = shape.reduce((p, v) => p * v, 1);
  if (out.length !== want)
    throw new QError(
      'E_SHAPE',
      `Expected ${want} values ([${shape.join(', ')}]) for the shard of ${name} but received ${out.length}`,
    );
  return out;
}

/**
 * The CPU `Model` of one rank of a float model: each tensor read through `weights.get` and cut to the rank's
 * slice (the whole tensor is widened once and dropped).
 *
 * @example
 * ```ts
 * const rank1 = floatShardModel(loaded.config, loaded.weights, shardPlan(loaded.config, 2, 1), collectives);
 * ```
 */
export function floatShardModel(
  weights: FloatTensorSource,
  plan: ShardPlan,
  collectives: ShardCollectives,
): Model {
  const get = (name: string) => (weights.has(name) ? weights.get(name) : undefined);
  return Model.fromGetters(
    plan.config,
    (name, shape) => floatSlice(get, plan, name, shape),
    (name, n, k, withBias) => {
      if (!weights.has(`${name}.weight`)) return undefined;
      const w = floatSlice(get, plan, `${name}.weight`, [n, k]);
      const s = shardOf(plan, `${name}.weight`);
      let b: Float32Array | null = null;
      if (withBias || weights.has(`${name}.bias`)) {
        const full = get(`${name}.bias`);
        if (full === undefined)
          throw new QError('E_FORMAT', `Expected a tensor named ${name}.bias but received none`);
        const a = full.toFloat32();
        b = s.dim === 0 ? a.slice(s.start, s.end) : plan.rank === 0 ? a : null;
      }
      return new FloatLinear(name, w, n, k, b);
    },
    collectives,
  );
}

/**
 * The CPU `Model` of one rank of a quantized model (`q quantize` output or in memory).
 *
 * @example
 * ```ts
 * const rank0 = quantizedShardModel(q, shardPlan(q.config, 4, 0), collectives, maxAcross);
 * ```
 */
export function quantizedShardModel(
  q: QuantizedModel,
  plan: ShardPlan,
  collectives: ShardCollectives,
  maxAcross: MaxAcross,
): Model {
  const get = (name: string) => q.tensors.get(name);
  return Model.fromGetters(
    plan.config,
    (name, shape) => floatSlice(get, plan, name, shape),
    (name, n, k) => {
      const l = q.linears.get(name);
      if (l) {
        const part = sliceQuantizedLinear(l, plan);
        const s = shardOf(plan, `${name}.weight`);
        if (s.kind === 'row' && l.act === 'dynamic') return new RowDynamicLinear(part, maxAcross);
        return new QuantLinear(part, linearForward, true);
      }
      if (!q.tensors.has(`${name}.weight`)) return undefined;
      const w = floatSlice(get, plan, `${name}.weight`, [n, k]);
      const s = shardOf(plan, `${name}.weight`);
      const bt = q.tensors.get(`${name}.bias`);
      const b =
        bt === undefined
          ? null
          : s.dim === 0
            ? bt.toFloat32().slice(s.start, s.end)
            : plan.rank === 0
              ? bt.toFloat32()
              : null;
      return new FloatLinear(name, w, n, k, b);
    },
    collectives,
  );
}
