/**
 * Weights onto the device: where they come from (a model directory, or tensors already loaded), their layout
 * (`layout.ts`), the bytes they need (checked against free device memory before anything is allocated), and
 * the upload itself, tensor by tensor through one pinned buffer so the host never holds more than one layer.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  describeValue,
  f32ArrayToBf16,
  type ModelConfig,
  openSafetensors,
  openSafetensorsModel,
  QError,
  readHfConfig,
  readLlama2cCheckpoint,
  type SafetensorsReader,
  type Tensor,
} from '@q/core';
import {
  DeviceGemmWeights,
  DeviceTensor,
  fillRandom,
  PinnedBuffer,
  packForGemm,
  type Stream,
  tileScales,
} from '@q/kernels-cuda';
import {
  type GemmScaleMode,
  type Int4Weights,
  type LayerPlan,
  linearTensors,
  MANIFEST_FILE,
  type Manifest,
  type QuantizedModel,
  readManifest,
} from '@q/quant';
import type { ModelSourceData } from '../backend';
import { ropeInvFreq } from '../cpu/ops';
import { layerLinearNames } from '../model';
import {
  type DeviceDims,
  deviceDims,
  fusedRowMaps,
  groupKind,
  type Int4ColumnLayout,
  int4DeviceBytes,
  type LayerLayout,
  type LinearKind,
  type ModelLayout,
  oColumnMap,
  oGroupLayout,
  paddedInvFreq,
  padMatrix,
  padVector,
  remapInt4,
  roundUp,
  type StoredLinear,
  type TensorInfo,
} from './layout';

/** A tensor as loaders hand it: stored dtype and shape, values on demand. */
export type HostTensor = Pick<Tensor, 'dtype' | 'shape' | 'data' | 'toFloat32'>;

/**
 * What the GPU model is built from: a config, tensors by name (Hugging Face names for float models, checkpoint
 * names for `q quantize` output) and, for quantized models, the recipe and per-layer plans.
 */
export interface WeightSource {
  readonly config: ModelConfig;
  /** Quantized models: the recipe name (for messages). */
  readonly recipe?: string;
  /** Quantized models: the plan of every linear layer. */
  readonly plans?: readonly LayerPlan[];
  /** Quantized models read from a directory: the manifest, checked against the tensors. */
  readonly manifest?: Manifest;
  info(name: string): TensorInfo | undefined;
  read(name: string): HostTensor;
  close(): void;
}

/**
 * What `createCudaModel` accepts: a model path, what `loadModel` returns or a `QuantizedModel` in memory
 * (`ModelSourceData`, as `createModel` passes it), or tensors by name (`{ config, weights, recipe?, plans? }`).
 */
export type CudaModelInput =
  | string
  | ModelSourceData
  | WeightSource
  | {
      readonly config: ModelConfig;
      readonly weights: ReadonlyMap<string, HostTensor>;
      readonly recipe?: string | { readonly name: string };
      readonly plans?: readonly LayerPlan[];
    }
  | { readonly quantized: QuantizedModel };

function fromMap(
  config: ModelConfig,
  weights: ReadonlyMap<string, HostTensor>,
  recipe?: string,
  plans?: readonly LayerPlan[],
): WeightSource {
  return {
    config,
    ...(recipe !== undefined ? { recipe } : {}),
    ...(plans ? { plans } : {}),
    info: (n) => {
      const t = weights.get(n);
      return t ? { dtype: t.dtype, shape: t.shape } : undefined;
    },
    read: (n) => {
      const t = weights.get(n);
      if (!t) throw new QError('E_FORMAT', `Expected a tensor named ${n} but received none`);
      return t;
    },
    close: () => {},
  };
}

/**
 * Opens a model for the GPU: a llama2.c file, a Hugging Face directory, a `q quantize` directory, or tensors
 * already in memory. Reading is lazy for the directories (one tensor at a time).
 *
 * @example
 * ```ts
 * const src = openWeightSource('stories260K-fptq'); // quantized: recipe and plans from the manifest
 * ```
 */
export function openWeightSource(input: CudaModelInput): WeightSource {
  if (typeof input !== 'string') {
    if ('source' in input && typeof input.source === 'string') {
      if (input.source === 'quantized') return openWeightSource({ quantized: input.weights });
      const w = input.weights;
      return {
        config: input.config,
        info: (n) => (w.has(n) ? w.info(n) : undefined),
        read: (n) => w.get(n),
        // The loaded model owns its files; its caller closes them.
        close: () => {},
      };
    }
    if ('linears' in input && 'plans' in input && 'tensors' in input)
      return openWeightSource({ quantized: input });
    if ('quantized' in input) {
      const q = input.quantized;
      const all = new Map<string, HostTensor>(q.tensors);
      for (const l of q.linears.values()) for (const [n, t] of linearTensors(l)) all.set(n, t);
      return fromMap(q.config, all, q.recipe.name, q.plans);
    }
    if ('info' in input) return input;
    const r = input.recipe;
    return fromMap(input.config, input.weights, typeof r === 'string' ? r : r?.name, input.plans);
  }
  let st: fs.Stats;
  try {
    st = fs.statSync(input);
  } catch {
    throw new QError(
      'E_IO',
      `Expected a model file or directory for the model path but received ${JSON.stringify(input)}`,
    );
  }
  if (st.isFile()) {
    const ck = readLlama2cCheckpoint(input);
    return fromMap(ck.config, ck.weights);
  }
  if (fs.existsSync(path.join(input, MANIFEST_FILE))) return quantizedDirSource(input);
  const config = readHfConfig(input);
  const reader = openSafetensorsModel(input);
  return {
    config,
    info: (n) => (reader.has(n) ? reader.info(n) : undefined),
    read: (n) => reader.read(n),
    close: () => reader.close(),
  };
}

function quantizedDirSource(dir: string): WeightSource {
  const manifest = readManifest(dir);
  const readers = new Map<string, SafetensorsReader>();
  const fileOf = new Map<string, string>();
  for (const [n, f] of Object.entries(manifest.tensors)) fileOf.set(n, f);
  for (const l of manifest.layers)
    for (const suffix of [
      'qweight',
      'scales',
      'zeros',
      'iscale',
      'iscale_channel',
      'iscale_unit',
      'act_scale',
      'bias',
      'weight',
    ])
      fileOf.set(`${l.name}.${suffix}`, l.file);
  const reader = (file: string): SafetensorsReader => {
    if (!manifest.files.includes(file))
      throw new QError(
        'E_FORMAT',
        `Invalid quantized checkpoint ${dir}: file ${file} is not listed in ${MANIFEST_FILE}`,
      );
    let r = readers.get(file);
    if (!r) {
      r = openSafetensors(path.join(dir, file));
      readers.set(file, r);
    }
    return r;
  };
  const locate = (n: string): SafetensorsReader | undefined => {
    const f = fileOf.get(n);
    if (f === undefined) return undefined;
    const r = reader(f);
    return r.has(n) ? r : undefined;
  };
  return {
    config: manifest.config,
    recipe: manifest.recipe.name,
    plans: manifest.layers.map((l) => l.plan),
    manifest,
    info: (n) => locate(n)?.info(n),
    read: (n) => {
      const r = locate(n);
      if (!r) throw new QError('E_FORMAT', `Invalid quantized checkpoint ${dir}: tensor ${n} is missing`);
      return r.read(n);
    },
    close: () => {
      for (const r of readers.values()) r.close();
    },
  };
}

/** A float (unquantized) linear as stored. */
function floatStored(name: string, n: number, k: number, bias: boolean, plan?: LayerPlan): StoredLinear {
  return {
    name,
    format: 'f32',
    n,
    k,
    kPadded: k,
    groupSize: k,
    symmetric: true,
    intScale: false,
    bias,
    plan: plan ?? { name, range: 0, act: 'none', lae: false },
  };
}

function formatError(src: WeightSource, problem: string): QError {
  return new QError(
    'E_FORMAT',
    `Invalid ${src.recipe !== undefined ? `quantized (${src.recipe}) ` : ''}model: ${problem}`,
  );
}

function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/**
 * The stored layout of one quantized linear, from its tensors' shapes and its plan, checked against the
 * config's shape [n, k] and the manifest (when the source has one): any disagreement is E_FORMAT.
 */
export function storedLinear(src: WeightSource, name: string, n: number, k: number): StoredLinear {
  const plan = src.plans?.find((p) => p.name === name);
  const man = src.manifest?.layers.find((l) => l.name === name);
  const qw = src.info(`${name}.qweight`);
  const fw = src.info(`${name}.weight`);
  const hasBias = src.info(`${name}.bias`) !== undefined;
  if (man && (man.n !== n || man.k !== k))
    throw formatError(
      src,
      `the manifest gives [${man.n}, ${man.k}] for ${name} but the config needs [${n}, ${k}]`,
    );
  if (!plan) {
    if (fw) return floatStored(name, n, k, hasBias, { name, range: 0, act: 'none', lae: false });
    throw formatError(src, `no plan and no weights for ${name}`);
  }
  if (qw === undefined) {
    if (!fw) throw formatError(src, `Expected ${name}.qweight or ${name}.weight but received neither`);
    if (fw.shape.length !== 2 || fw.shape[0] !== n || fw.shape[1] !== k)
      throw formatError(
        src,
        `Expected shape [${n}, ${k}] for ${name}.weight but received [${fw.shape.join(', ')}]`,
      );
    return floatStored(name, n, k, hasBias, plan);
  }
  if (qw.dtype === 'i8') {
    return {
      name,
      format: 'int8',
      n,
      k,
      kPadded: k,
      groupSize: k,
      symmetric: true,
      intScale: false,
      bias: hasBias,
      plan,
    };
  }
  const sc = src.info(`${name}.scales`);
  if (qw.dtype !== 'u8' || !sc || sc.shape.length !== 2 || sc.shape[0] !== n)
    throw formatError(
      src,
      `Expected u8 ${name}.qweight and f32 ${name}.scales [${n}, groups] but received ${qw.dtype} [${qw.shape.join(', ')}] and ${sc ? `[${sc.shape.join(', ')}]` : 'none'}`,
    );
  const groups = sc.shape[1] as number;
  const bytes = numel(qw.shape);
  const kPadded =
    man?.kPadded ?? (qw.shape.length === 2 ? (qw.shape[1] as number) * 2 : Math.floor((2 * bytes) / n));
  if (Math.ceil((n * kPadded) / 2) !== bytes || (qw.shape.length === 2 && qw.shape[0] !== n))
    throw formatError(
      src,
      `Expected ${Math.ceil((n * kPadded) / 2)} bytes ([${n}, ${kPadded}] int4) in ${name}.qweight but received [${qw.shape.join(', ')}]`,
    );
  if (kPadded < k || kPadded % groups !== 0)
    throw formatError(
      src,
      `Expected kPadded ≥ ${k} and a multiple of ${groups} groups for ${name} but received kPadded ${kPadded}`,
    );
  const groupSize = kPadded / groups;
  if (man?.groupSize !== undefined && man.groupSize !== groupSize)
    throw formatError(
      src,
      `the manifest gives groupSize ${man.groupSize} for ${name} but its scales hold ${groups} groups of ${groupSize}`,
    );
  const iq = src.info(`${name}.iscale`);
  if (iq && (iq.shape[0] !== n || numel(iq.shape) !== n * groups))
    throw formatError(
      src,
      `Expected [${n}, ${groups}] for ${name}.iscale but received [${iq.shape.join(', ')}]`,
    );
  const symmetric = src.info(`${name}.zeros`) === undefined && man?.symmetric !== false;
  return {
    name,
    format: 'int4',
    n,
    k,
    kPadded,
    groupSize,
    symmetric,
    intScale: iq !== undefined,
    bias: hasBias,
    plan,
  };
}

/** The seven stored linears of one layer: q, k, v, o, gate, up, down. */
type StoredLayer = [
  StoredLinear,
  StoredLinear,
  StoredLinear,
  StoredLinear,
  StoredLinear,
  StoredLinear,
  StoredLinear,
];

/** Stored linears of layer i in forward order (q, k, v, o, gate, up, down). */
function storedLayer(src: WeightSource, i: number, dims: DeviceDims): StoredLayer {
  const { d, hd, nh, nkv, ff } = dims;
  const shapes: [number, number][] = [
    [nh * hd, d],
    [nkv * hd, d],
    [nkv * hd, d],
    [d, nh * hd],
    [ff, d],
    [ff, d],
    [d, ff],
  ];
  return layerLinearNames(i).map((name, j) => {
    const [n, k] = shapes[j] as [number, number];
    if (src.plans === undefined) {
      const w = src.info(`${name}.weight`);
      if (!w) throw formatError(src, `Expected a tensor named ${name}.weight but received none`);
      if (w.shape.length !== 2 || w.shape[0] !== n || w.shape[1] !== k)
        throw new QError(
          'E_SHAPE',
          `Expected shape [${n}, ${k}] for ${name}.weight but received [${w.shape.join(', ')}]`,
        );
      return floatStored(name, n, k, src.info(`${name}.bias`) !== undefined, {
        name,
        range: 0,
        act: 'none',
        lae: false,
      });
    }
    return storedLinear(src, name, n, k);
  }) as StoredLayer;
}

/** Device bytes of one fused linear of a layout: bf16 [n, kFloat] or packed int4 with its scales. */
function linearBytes(kind: LinearKind, n: number, kFloat: number): number {
  return kind.kind === 'bf16'
    ? n * kFloat * 2
    : int4DeviceBytes(n, kind.kPadded, kind.kPadded / kind.groupSize, kind.intScale);
}

/** Device kPadded of o_proj and down_proj (their K moves: padded heads, padded MLP width). */
function oLayout(kind: LinearKind, dims: DeviceDims): Int4ColumnLayout | null {
  return kind.kind === 'w4a8' ? oGroupLayout(dims, kind.kPadded, kind.groupSize) : null;
}

function downLayout(kind: LinearKind, dims: DeviceDims): Int4ColumnLayout | null {
  if (kind.kind !== 'w4a8') return null;
  if (kind.mode !== 'per-channel' && kind.kPadded % 16 === 0 && kind.kPadded >= dims.ffP) return null;
  const newK = roundUp(Math.max(kind.kPadded, dims.ffP), kind.mode === 'per-channel' ? 16 : kind.groupSize);
  const map = new Int32Array(newK).fill(-1);
  for (let c = 0; c < dims.ff; c++) map[c] = c;
  if (kind.mode !== 'per-channel' && newK !== kind.kPadded)
    throw new QError('E_INTERNAL', `down_proj: kPadded ${kind.kPadded} < padded MLP width ${dims.ffP}`);
  return { kPadded: newK, groupSize: kind.mode === 'per-channel' ? newK : kind.groupSize, colMap: map };
}

function withK(kind: LinearKind, cols: Int4ColumnLayout | null): LinearKind {
  if (kind.kind !== 'w4a8' || !cols) return kind;
  return { ...kind, kPadded: cols.kPadded, groupSize: cols.groupSize };
}

function perChannelK(kind: LinearKind): Int4ColumnLayout | null {
  if (kind.kind !== 'w4a8' || kind.kPadded % 16 === 0) return null;
  const newK = roundUp(kind.kPadded, 16);
  const map = new Int32Array(newK).fill(-1);
  for (let c = 0; c < kind.kPadded; c++) map[c] = c;
  return { kPadded: newK, groupSize: newK, colMap: map };
}

/**
 * Decides the device layout of a model and its weight bytes without reading any weight.
 *
 * @example
 * ```ts
 * const layout = planLayout(openWeightSource('stories260K-fptq'));
 * layout.layers[0].qkv; // { kind: 'w4a8', act: 'static', mode: 'group-int', kPadded: 128, ... }
 * ```
 */
export function planLayout(src: WeightSource): ModelLayout {
  const c = src.config;
  const dims = deviceDims(c);
  const recipe = src.recipe ?? 'float';
  const layers: LayerLayout[] = [];
  let bytes = 0;
  const linBytes = linearBytes;
  for (let i = 0; i < c.numLayers; i++) {
    const [q, k, v, o, g, u, dn] = storedLayer(src, i, dims);
    const qkvKind = withK(groupKind([q, k, v], recipe), perChannelK(groupKind([q, k, v], recipe)));
    const oKind0 = groupKind([o], recipe);
    const oKind = withK(oKind0, oLayout(oKind0, dims));
    const guKind = withK(groupKind([g, u], recipe), perChannelK(groupKind([g, u], recipe)));
    const dKind0 = groupKind([dn], recipe);
    const dKind = withK(dKind0, downLayout(dKind0, dims));
    const qkvBias = q.bias || k.bias || v.bias;
    layers.push({ qkv: qkvKind, o: oKind, gateUp: guKind, down: dKind, qkvBias });
    bytes += linBytes(qkvKind, dims.qkvN, dims.d) + (qkvBias ? dims.qkvN * 4 : 0);
    bytes += linBytes(oKind, dims.d, dims.nh * dims.P);
    bytes += linBytes(guKind, 2 * dims.ffP, dims.d);
    bytes += linBytes(dKind, dims.d, dims.ffP);
    bytes += 2 * dims.d * 4;
  }
  const tiedHead = src.info('lm_head.weight') === undefined && c.tieWordEmbeddings;
  if (src.info('lm_head.weight') === undefined && !c.tieWordEmbeddings)
    throw formatError(
      src,
      'Expected a tensor named lm_head.weight (the embeddings are not tied) but received none',
    );
  bytes += dims.vocab * dims.d * 2 * (tiedHead ? 1 : 2) + dims.d * 4 + (dims.P / 2) * 4;
  return { dims, layers, tiedHead, weightBytes: bytes };
}

/** One fused linear on the device. */
export type DeviceLinear =
  | { readonly kind: 'bf16'; readonly w: DeviceTensor; readonly bias?: DeviceTensor }
  | {
      readonly kind: 'w4a8';
      readonly w: DeviceGemmWeights;
      readonly bias?: DeviceTensor;
      readonly act: 'static' | 'dynamic';
      readonly staticScale?: number;
      /** f32 [1] holding staticScale (the GEMM's aScale) for static plans. */
      readonly aScale?: DeviceTensor;
      readonly mode: GemmScaleMode;
    };

export interface DeviceLayer {
  readonly inputNorm: DeviceTensor;
  readonly postNorm: DeviceTensor;
  readonly qkv: DeviceLinear;
  readonly o: DeviceLinear;
  readonly gateUp: DeviceLinear;
  readonly down: DeviceLinear;
}

export interface DeviceWeights {
  readonly layout: ModelLayout;
  /** bf16 [V, d]. */
  readonly embed: DeviceTensor;
  readonly layers: readonly DeviceLayer[];
  /** f32 [d]. */
  readonly finalNorm: DeviceTensor;
  /** bf16 [V, d] (the embedding tensor itself when tied). */
  readonly lmHead: DeviceTensor;
  /** f32 [P/2]. */
  readonly invFreq: DeviceTensor;
}

/** Owns device allocations so that every path (dispose, error during load) frees them. */
export class DeviceArena {
  readonly #items: { dispose(): void }[] = [];

  track<T extends { dispose(): void }>(x: T): T {
    this.#items.push(x);
    return x;
  }

  /** Frees everything tracked, newest first; never throws (a failed free must not hide the error that led here). */
  dispose(): void {
    while (this.#items.length > 0) {
      const x = this.#items.pop();
      try {
        x?.dispose();
      } catch {
        // Keep freeing the rest.
      }
    }
  }
}

/** Copies host bytes to new device tensors through one pinned staging buffer, chunk by chunk. */
export class PinnedUploader {
  readonly #pinned: PinnedBuffer;
  readonly #bytes: Uint8Array;

  constructor(
    readonly device: number,
    readonly stream: Stream,
    chunkBytes: number,
  ) {
    this.#pinned = PinnedBuffer.alloc(chunkBytes, device);
    this.#bytes = new Uint8Array(this.#pinned.buffer);
  }

  /** Allocates (tracked by `arena`) and fills a device tensor from `data`. */
  put(
    arena: DeviceArena,
    dtype: DeviceTensor['dtype'],
    shape: readonly number[],
    data: ArrayBufferView,
  ): DeviceTensor {
    const t = arena.track(DeviceTensor.alloc(dtype, shape, { device: this.device }));
    this.copy(t, data);
    return t;
  }

  /** Fills `t` from `data` (same byte length). */
  copy(t: DeviceTensor, data: ArrayBufferView): void {
    if (data.byteLength !== t.byteLength)
      throw new QError('E_INTERNAL', `upload: ${data.byteLength} bytes for a tensor of ${t.byteLength}`);
    const src = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    const chunk = this.#bytes.length;
    for (let off = 0; off < src.length; off += chunk) {
      const len = Math.min(chunk, src.length - off);
      this.#bytes.set(src.subarray(off, off + len));
      const view = DeviceTensor.wrap(t.ptr + BigInt(off), 'u8', [len], { device: this.device });
      view.upload(this.#bytes.subarray(0, len), this.stream);
      // The staging buffer is reused by the next chunk, so this copy must have landed first.
      this.stream.synchronize();
    }
  }

  dispose(): void {
    this.#pinned.dispose();
  }
}

function readF32(src: WeightSource, name: string, count: number): Float32Array {
  const t = src.read(name);
  if (numel(t.shape) !== count)
    throw new QError('E_SHAPE', `Expected ${count} values for ${name} but received [${t.shape.join(', ')}]`);
  return t.toFloat32();
}

function readInt4(src: WeightSource, s: StoredLinear): Int4Weights {
  const groups = s.kPadded / s.groupSize;
  const exact = <T extends ArrayBufferView>(suffix: string, dtype: string, count: number): T => {
    const t = src.read(`${s.name}.${suffix}`);
    if (t.dtype !== dtype || numel(t.shape) !== count)
      throw formatError(
        src,
        `Expected ${dtype} with ${count} elements for ${s.name}.${suffix} but received ${t.dtype} [${t.shape.join(', ')}]`,
      );
    return t.data as unknown as T;
  };
  const w: Int4Weights = {
    format: 'int4',
    n: s.n,
    k: s.k,
    kPadded: s.kPadded,
    groupSize: s.groupSize,
    symmetric: true,
    packed: exact<Uint8Array>('qweight', 'u8', Math.ceil((s.n * s.kPadded) / 2)),
    scales: exact<Float32Array>('scales', 'f32', s.n * groups),
  };
  if (!s.intScale) return w;
  return {
    ...w,
    intScale: {
      amplifierBits: src.manifest?.layers.find((l) => l.name === s.name)?.amplifierBits ?? 0,
      q: exact<Int32Array>('iscale', 'i32', s.n * groups),
      channelScale: exact<Float32Array>('iscale_channel', 'f32', s.n),
      unit: exact<Float32Array>('iscale_unit', 'f32', s.n),
    },
  };
}

/**
 * Uploads a model's weights in the layout `planLayout` chose. Every allocation is tracked by `arena`; the
 * caller disposes the arena when this throws.
 */
/** What `uploadWeights` needs of an uploader (tests pass one that only records shapes). */
export type TensorPutter = Pick<PinnedUploader, 'device' | 'put'>;

export function uploadWeights(
  src: WeightSource,
  layout: ModelLayout,
  up: TensorPutter,
  arena: DeviceArena,
): DeviceWeights {
  const c = src.config;
  const dims = layout.dims;
  const { d, P, nh, ffP, qkvN, vocab } = dims;
  const maps = fusedRowMaps(c, dims);
  const bf16 = (f: Float32Array, shape: readonly number[]): DeviceTensor =>
    up.put(arena, 'bf16', shape, f32ArrayToBf16(f));
  const f32 = (f: Float32Array, shape: readonly number[]): DeviceTensor => up.put(arena, 'f32', shape, f);
  const gemm = (w: Int4Weights): DeviceGemmWeights => {
    const p = packForGemm(w);
    const packed = up.put(arena, 'u8', [p.packed.length], p.packed) as DeviceTensor<'u8'>;
    const scales = up.put(
      arena,
      'f32',
      [p.n, p.groups],
      tileScales(p.scales, p.n, p.groups),
    ) as DeviceTensor<'f32'>;
    let intQ: DeviceTensor<'i32'> | undefined;
    let unit: DeviceTensor<'f32'> | undefined;
    if (p.intScale) {
      intQ = up.put(
        arena,
        'i32',
        [p.n, p.groups],
        tileScales(p.intScale.q, p.n, p.groups),
      ) as DeviceTensor<'i32'>;
      unit = up.put(arena, 'f32', [p.n], p.intScale.unit) as DeviceTensor<'f32'>;
    }
    return new DeviceGemmWeights({
      n: p.n,
      k: p.k,
      kPadded: p.kPadded,
      groupSize: p.groupSize,
      groups: p.groups,
      device: up.device,
      packed,
      scales,
      ...(intQ && unit ? { intQ, unit } : {}),
    });
  };
  const actScale = (s: StoredLinear): number | undefined => {
    if (s.plan.act !== 'static') return undefined;
    const t = src.info(`${s.name}.act_scale`)
      ? readF32(src, `${s.name}.act_scale`, 1)[0]
      : s.plan.staticScale;
    if (t === undefined || !(t > 0) || !Number.isFinite(t))
      throw new QError(
        'E_NUMERIC',
        `Expected a positive finite static scale for ${s.name} but received ${describeValue(t)}`,
      );
    return t;
  };
  /** One fused linear: members' rows concatenated then mapped; K columns mapped by `cols`. */
  const linear = (
    kind: LinearKind,
    members: readonly StoredLinear[],
    rowMap: Int32Array | null,
    n: number,
    kFloat: number,
    colMap: Int32Array | null,
    cols: Int4ColumnLayout | null,
  ): DeviceLinear => {
    const hasBias = members.some((m) => m.bias);
    let bias: DeviceTensor | undefined;
    if (hasBias) {
      const parts = members.map((m) =>
        m.bias ? readF32(src, `${m.name}.bias`, m.n) : new Float32Array(m.n),
      );
      const cat = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
      let o = 0;
      for (const p of parts) {
        cat.set(p, o);
        o += p.length;
      }
      bias = f32(rowMap ? padVector(cat, rowMap) : cat, [n]);
    }
    if (kind.kind === 'bf16') {
      const totalRows = members.reduce((a, m) => a + m.n, 0);
      const k0 = (members[0] as StoredLinear).k;
      const cat = new Float32Array(totalRows * k0);
      let o = 0;
      for (const m of members) {
        const w = readF32(src, `${m.name}.weight`, m.n * m.k);
        cat.set(w, o);
        o += w.length;
      }
      const w = padMatrix(cat, totalRows, k0, rowMap, colMap);
      if (w.length !== n * kFloat)
        throw new QError('E_INTERNAL', `${members[0]?.name}: padded to ${w.length}, expected ${n}×${kFloat}`);
      return { kind: 'bf16', w: bf16(w, [n, kFloat]), ...(bias ? { bias } : {}) };
    }
    const first = members[0] as StoredLinear;
    const parts = members.map((m) => readInt4(src, m));
    const needRemap = rowMap !== null || cols !== null || parts.length > 1;
    const w = gemm(needRemap ? remapInt4(parts, rowMap, cols) : (parts[0] as Int4Weights));
    if (w.n !== n || w.kPadded !== kind.kPadded)
      throw new QError(
        'E_INTERNAL',
        `${first.name}: device weights [${w.n}, ${w.kPadded}], layout [${n}, ${kind.kPadded}]`,
      );
    const s = actScale(first);
    return {
      kind: 'w4a8',
      w,
      act: kind.act,
      mode: kind.mode,
      ...(s !== undefined ? { staticScale: s, aScale: f32(Float32Array.of(s), [1]) } : {}),
      ...(bias ? { bias } : {}),
    };
  };
  const oCols = oColumnMap(dims);
  const downCols = new Int32Array(ffP).fill(-1);
  for (let j = 0; j < dims.ff; j++) downCols[j] = j;
  const layers: DeviceLayer[] = [];
  for (let i = 0; i < c.numLayers; i++) {
    const L = layout.layers[i] as LayerLayout;
    const [q, k, v, o, g, u, dn] = storedLayer(src, i, dims);
    const p = `model.layers.${i}`;
    const oK =
      L.o.kind === 'w4a8' && (dims.P !== dims.hd || L.o.kPadded !== o.kPadded)
        ? oGroupLayout(dims, o.kPadded, o.groupSize)
        : null;
    const dK = L.down.kind === 'w4a8' && L.down.kPadded !== dn.kPadded ? downColsFor(L.down, dims) : null;
    const qkvK =
      L.qkv.kind === 'w4a8' && L.qkv.kPadded !== q.kPadded ? identityCols(q.kPadded, L.qkv.kPadded) : null;
    const guK =
      L.gateUp.kind === 'w4a8' && L.gateUp.kPadded !== g.kPadded
        ? identityCols(g.kPadded, L.gateUp.kPadded)
        : null;
    layers.push({
      inputNorm: f32(readF32(src, `${p}.input_layernorm.weight`, d), [d]),
      postNorm: f32(readF32(src, `${p}.post_attention_layernorm.weight`, d), [d]),
      qkv: linear(L.qkv, [q, k, v], maps.qkv, qkvN, d, null, qkvK),
      o: linear(L.o, [o], null, d, nh * P, oCols, oK),
      gateUp: linear(L.gateUp, [g, u], maps.gateUp, 2 * ffP, d, null, guK),
      down: linear(L.down, [dn], null, d, ffP, downCols, dK),
    });
  }
  const embedF = readF32(src, 'model.embed_tokens.weight', vocab * d);
  const embed = bf16(embedF, [vocab, d]);
  const lmHead = layout.tiedHead ? embed : bf16(readF32(src, 'lm_head.weight', vocab * d), [vocab, d]);
  return {
    layout,
    embed,
    layers,
    finalNorm: f32(readF32(src, 'model.norm.weight', d), [d]),
    lmHead,
    invFreq: f32(paddedInvFreq(ropeInvFreq(c), P), [P / 2]),
  };
}

function identityCols(kIn: number, kOut: number): Int4ColumnLayout {
  const map = new Int32Array(kOut).fill(-1);
  for (let c = 0; c < kIn; c++) map[c] = c;
  return { kPadded: kOut, groupSize: kOut, colMap: map };
}

function downColsFor(kind: LinearKind & { kind: 'w4a8' }, dims: DeviceDims): Int4ColumnLayout {
  const map = new Int32Array(kind.kPadded).fill(-1);
  for (let c = 0; c < dims.ff; c++) map[c] = c;
  return { kPadded: kind.kPadded, groupSize: kind.groupSize, colMap: map };
}

/**
 * The activation plan of synthetic W4A8 models, as FPTQ decides on Llama-2/3: the inputs after the norms
 * (q/k/v, gate/up) are LAE + per-tensor static, o_proj's input static, down_proj's input (heavy outliers)
 * per-token dynamic. Weights int4 group 128 with Integer Scale (group-int).
 */
export const SYNTHETIC_FPTQ_PLAN = { qkv: 'static', o: 'static', gateUp: 'static', down: 'dynamic' } as const;

/**
 * The device layout of a model drawn at random: every linear W4A8 (`SYNTHETIC_FPTQ_PLAN`) or every linear bf16.
 *
 * @example
 * ```ts
 * syntheticLayout(config, 'w4a8').layers[0].down; // { kind: 'w4a8', act: 'dynamic', mode: 'group-int', ... }
 * ```
 */
export function syntheticLayout(c: ModelConfig, path: 'w4a8' | 'bf16'): ModelLayout {
  const dims = deviceDims(c);
  const g = 128;
  const kind = (act: 'static' | 'dynamic', k: number): LinearKind =>
    path === 'bf16'
      ? { kind: 'bf16' }
      : {
          kind: 'w4a8',
          act,
          ...(act === 'static' ? { staticScale: 0.05 } : {}),
          mode: 'group-int',
          kPadded: roundUp(k, g),
          groupSize: g,
          intScale: true,
        };
  const P = SYNTHETIC_FPTQ_PLAN;
  const layer: LayerLayout = {
    qkv: kind(P.qkv, dims.d),
    o: kind(P.o, dims.nh * dims.P),
    gateUp: kind(P.gateUp, dims.d),
    down: kind(P.down, dims.ffP),
    qkvBias: false,
  };
  const linBytes = linearBytes;
  const perLayer =
    linBytes(layer.qkv, dims.qkvN, dims.d) +
    linBytes(layer.o, dims.d, dims.nh * dims.P) +
    linBytes(layer.gateUp, 2 * dims.ffP, dims.d) +
    linBytes(layer.down, dims.d, dims.ffP) +
    2 * dims.d * 4;
  const tiedHead = c.tieWordEmbeddings;
  return {
    dims,
    layers: Array.from({ length: c.numLayers }, () => layer),
    tiedHead,
    weightBytes:
      perLayer * c.numLayers + dims.vocab * dims.d * 2 * (tiedHead ? 1 : 2) + dims.d * 4 + (dims.P / 2) * 4,
  };
}

/**
 * Allocates a synthetic layout's weights and fills them on the device with random values in realistic ranges
 * (int4 codes uniform, group scales and Integer Scale factors positive, bf16 weights ±0.02, norm gains ~1).
 */
export function drawWeights(
  c: ModelConfig,
  layout: ModelLayout,
  arena: DeviceArena,
  stream: Stream,
  device: number,
  seed: number,
): DeviceWeights {
  const { d, P, nh, ffP, qkvN, vocab } = layout.dims;
  let s = seed >>> 0;
  const next = (): number => {
    s = (s + 0x9e3779b9) >>> 0;
    return s;
  };
  const alloc = (dtype: DeviceTensor['dtype'], shape: readonly number[]): DeviceTensor =>
    arena.track(DeviceTensor.alloc(dtype, shape, { device }));
  const uniform = (dtype: 'f32' | 'bf16', shape: readonly number[], lo: number, hi: number): DeviceTensor => {
    const t = alloc(dtype, shape);
    fillRandom({ out: t, dist: 'uniform', lo, hi, seed: next(), stream });
    return t;
  };
  const linear = (kind: LinearKind, n: number, kf: number): DeviceLinear => {
    if (kind.kind === 'bf16') return { kind: 'bf16', w: uniform('bf16', [n, kf], -0.02, 0.02) };
    const groups = kind.kPadded / kind.groupSize;
    const packed = alloc('u8', [n * Math.ceil(kind.kPadded / 64) * 32]) as DeviceTensor<'u8'>;
    fillRandom({ out: packed, dist: 'bytes', seed: next(), stream });
    const scales = uniform('f32', [n, groups], 1e-3, 2e-3) as DeviceTensor<'f32'>;
    const intQ = alloc('i32', [n, groups]) as DeviceTensor<'i32'>;
    fillRandom({ out: intQ, dist: 'int', lo: 1, hi: 16, seed: next(), stream });
    const unit = uniform('f32', [n], 1e-5, 2e-5) as DeviceTensor<'f32'>;
    const w = new DeviceGemmWeights({
      n,
      k: kind.kPadded,
      kPadded: kind.kPadded,
      groupSize: kind.groupSize,
      groups,
      device,
      packed,
      scales,
      intQ,
      unit,
    });
    const staticScale = kind.act === 'static' ? (kind.staticScale ?? 0.05) : undefined;
    let aScale: DeviceTensor | undefined;
    if (staticScale !== undefined) aScale = uniform('f32', [1], staticScale, staticScale);
    return {
      kind: 'w4a8',
      w,
      act: kind.act,
      mode: kind.mode,
      ...(staticScale !== undefined && aScale ? { staticScale, aScale } : {}),
    };
  };
  const layers: DeviceLayer[] = layout.layers.map((L) => ({
    inputNorm: uniform('f32', [d], 0.5, 1.5),
    postNorm: uniform('f32', [d], 0.5, 1.5),
    qkv: linear(L.qkv, qkvN, d),
    o: linear(L.o, d, nh * P),
    gateUp: linear(L.gateUp, 2 * ffP, d),
    down: linear(L.down, d, ffP),
  }));
  const embed = uniform('bf16', [vocab, d], -1, 1);
  const lmHead = layout.tiedHead ? embed : uniform('bf16', [vocab, d], -0.02, 0.02);
  const inv = paddedInvFreq(ropeInvFreq(c), P);
  const invFreq = alloc('f32', [P / 2]);
  invFreq.upload(inv);
  stream.synchronize();
  return { layout, embed, layers, finalNorm: uniform('f32', [d], 0.5, 1.5), lmHead, invFreq };
}
