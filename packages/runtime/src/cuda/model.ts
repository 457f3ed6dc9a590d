/**
 * The GPU `CausalLM`: the CPU `Model` (model.ts) layer for layer, on the device. Residual stream f32; norms
 * fused with the residual add and with quantizing the next GEMM's input; q/k/v and gate/up one GEMM each; RoPE
 * fused with writing the paged cache; attention over the pages; lm_head logits f32 from cuBLAS.
 *
 *   CPU Model.forward                      CudaModel (per layer, on one stream)
 *   embed rows                             embedding(ids → x f32)
 *   h = rmsNorm(x, inputNorm)              addRmsNorm(x (+= r), inputNorm → h bf16 | int8 static/dynamic)
 *   q, k, v = L.q(h), L.k(h), L.v(h)       qkv = gemmW4A8 | gemmHalf (+ bias)
 *   rope(q, k); cache k, v                 ropeKvWrite(qkv → pages)
 *   softmax(q·k / √hd) · v                 attentionPrefill | attentionDecode
 *   x += L.o(att)                          r = o_proj(att) (quantizeAct first for W4A8)
 *   h2 = rmsNorm(x, postNorm)              addRmsNorm(x += r, postNorm → h2)
 *   g = silu(L.gate(h2)) · L.up(h2)        gu = gate_up(h2); siluMul(gu → act bf16 | int8)
 *   x += L.down(g)                         r = down_proj(act)   (added by the next addRmsNorm)
 *   lmHead(rmsNorm(x, finalNorm))          addRmsNorm(x += r, finalNorm → bf16); gemmHalf → f32 logits
 */
import { type DType, type ModelConfig, QError } from '@q/core';
import * as kernels from '@q/kernels-cuda';
import {
  addBias,
  DeviceTensor,
  Event,
  fillRandom,
  gemmHalf,
  gemmW4A8,
  memoryInfo,
  quantizeAct,
  Stream,
  synchronize,
  useDevice,
} from '@q/kernels-cuda';
import type { CacheOptions, CausalLM, ForwardOptions, KVCache, SamplingParams } from '../lm';
import { CudaKVCache, cacheBytes } from './cache';
import {
  DECODE_BUCKETS,
  decodeBucket,
  GraphRunner,
  metaLayout,
  StepIO,
  type StepViews,
} from './graph-runner';
import type { LinearKind, ModelLayout } from './layout';
import {
  type CudaModelInput,
  DeviceArena,
  type DeviceLinear,
  type DeviceWeights,
  drawWeights,
  openWeightSource,
  PinnedUploader,
  planLayout,
  syntheticLayout,
  uploadWeights,
} from './weights';

/** Options of `createCudaModel`. */
export interface CudaModelOptions {
  /** CUDA device index (default 0). */
  readonly device?: number;
  /** Most sequences in one step, and the default cache's slots (default 8). */
  readonly maxBatch?: number;
  /** Most positions of one sequence (default min(config.maxSeqLen, 4096)). */
  readonly maxContext?: number;
  /** Positions per cache page (default 16). */
  readonly pageSize?: number;
  /** Most tokens of one prefill step; longer prompts run in chunks (default 2048). */
  readonly prefillChunk?: number;
  /** Replay decode steps as CUDA graphs (default true; false runs the same launches eagerly). */
  readonly cudaGraphs?: boolean;
  /** Pinned staging buffer of the weight upload, bytes (default 64 MiB). */
  readonly uploadChunkBytes?: number;
}

/** Time of one kernel kind within a step (summed over layers). */
export interface KernelTime {
  name: string;
  ms: number;
  /** Launches of this kind in the step. */
  count: number;
}

/** Device memory a model needs, by part. */
export interface MemoryPlan {
  readonly weights: number;
  readonly cache: number;
  readonly workspace: number;
  /** What cuBLAS and the CUDA context take beyond q's own allocations (an estimate). */
  readonly reserve: number;
  readonly total: number;
}

/** The fixed activation buffers of one model, sized for `maxTokens` rows. */
interface Workspace {
  readonly x: DeviceTensor;
  readonly hB: DeviceTensor;
  readonly hQ: DeviceTensor;
  readonly aScale: DeviceTensor;
  readonly qkv: DeviceTensor;
  readonly att: DeviceTensor;
  readonly r: DeviceTensor;
  readonly gu: DeviceTensor;
  readonly act: DeviceTensor;
  readonly hLast: DeviceTensor;
  readonly logits: DeviceTensor;
  readonly outIds: DeviceTensor;
  readonly attnWs: DeviceTensor;
  /** Rows of `logits` (lm_head runs in chunks of this many rows). */
  readonly logitRows: number;
  /** Widest int8 activation row (the largest kPadded). */
  readonly qCols: number;
}

const RESERVE_BYTES = 512 * 1024 * 1024;

function kPaddedOf(k: LinearKind): number {
  return k.kind === 'w4a8' ? k.kPadded : 0;
}

function workspaceShapes(
  layout: ModelLayout,
  maxTokens: number,
  maxSeqs: number,
  attnWsBytes: number,
): Record<keyof Omit<Workspace, 'logitRows' | 'qCols'>, [DType, number[]]> & {
  logitRows: number;
  qCols: number;
} {
  const { d, nh, P, ffP, qkvN, vocab } = layout.dims;
  let qCols = 16;
  for (const L of layout.layers)
    qCols = Math.max(qCols, kPaddedOf(L.qkv), kPaddedOf(L.o), kPaddedOf(L.gateUp), kPaddedOf(L.down));
  const logitRows = Math.max(maxSeqs, Math.min(maxTokens, 256));
  return {
    x: ['f32', [maxTokens, d]],
    hB: ['bf16', [maxTokens, d]],
    hQ: ['i8', [maxTokens * qCols]],
    aScale: ['f32', [maxTokens]],
    qkv: ['bf16', [maxTokens, qkvN]],
    att: ['bf16', [maxTokens, nh * P]],
    r: ['bf16', [maxTokens, d]],
    gu: ['bf16', [maxTokens, 2 * ffP]],
    act: ['bf16', [maxTokens, ffP]],
    hLast: ['bf16', [maxSeqs, d]],
    logits: ['f32', [logitRows, vocab]],
    outIds: ['i32', [maxSeqs]],
    attnWs: ['u8', [Math.max(16, attnWsBytes)]],
    logitRows,
    qCols,
  };
}

const DTYPE_BYTES: Record<string, number> = { f32: 4, bf16: 2, i8: 1, u8: 1, i32: 4 };

function shapesBytes(s: ReturnType<typeof workspaceShapes>): number {
  let b = 0;
  for (const [k, v] of Object.entries(s)) {
    if (k === 'logitRows' || k === 'qCols') continue;
    const [dt, shape] = v as [DType, number[]];
    b += (DTYPE_BYTES[dt] ?? 4) * shape.reduce((a, x) => a * x, 1);
  }
  return b;
}

/** A view of the first `rows` rows of a [maxRows, ...] buffer (or of `count` elements of a flat one). */
function rows(t: DeviceTensor, shape: readonly number[]): DeviceTensor {
  return DeviceTensor.wrap(t.ptr, t.dtype, shape, { device: t.device });
}

function rowAt(t: DeviceTensor, row: number, cols: number, bytesPerElem: number): DeviceTensor {
  return DeviceTensor.wrap(t.ptr + BigInt(row * cols * bytesPerElem), t.dtype, [1, cols], {
    device: t.device,
  });
}

/** Every live model, so that a program's SIGINT handler can free device memory (`disposeAllCudaModels`). */
const live = new Set<CudaModel>();

/**
 * Disposes every live GPU model (for a CLI's SIGINT handler; library code installs none).
 *
 * @example
 * ```ts
 * process.once('SIGINT', () => { void disposeAllCudaModels().finally(() => process.exit(130)); });
 * ```
 */
export async function disposeAllCudaModels(): Promise<void> {
  for (const m of [...live]) await m.dispose();
}

/**
 * A Llama-family decoder on one CUDA device: bf16 for float checkpoints, W4A8 for `q quantize` output.
 * Build it with `createCudaModel`.
 *
 * @example
 * ```ts
 * const model = await createCudaModel('stories260K-fptq', { device: 0, maxBatch: 4 });
 * const cache = model.createCache({ batch: 4, capacity: 512 });
 * const logits = await model.forward([[1, 403, 407]], { cache, logits: 'last' });
 * await model.dispose();
 * ```
 */
export class CudaModel implements CausalLM {
  readonly backend = 'cuda' as const;
  readonly config: ModelConfig;
  readonly device: number;
  readonly maxBatch: number;
  readonly maxContext: number;
  readonly pageSize: number;
  readonly prefillChunk: number;
  readonly layout: ModelLayout;
  readonly memory: MemoryPlan;
  /** Rows of the step buffers: sequences of one step (the largest decode bucket used). */
  readonly maxSeqs: number;
  readonly #arena: DeviceArena;
  readonly #weights: DeviceWeights;
  readonly #stream: Stream;
  readonly #io: StepIO;
  readonly #ws: Workspace;
  readonly #runner: GraphRunner;
  readonly #caches = new Set<CudaKVCache>();
  readonly #maxPages: number;
  #disposed = false;
  #trace: { name: string; ev: Event }[] | undefined;

  private constructor(p: {
    config: ModelConfig;
    device: number;
    maxBatch: number;
    maxContext: number;
    pageSize: number;
    prefillChunk: number;
    maxSeqs: number;
    layout: ModelLayout;
    memory: MemoryPlan;
    arena: DeviceArena;
    weights: DeviceWeights;
    stream: Stream;
    io: StepIO;
    ws: Workspace;
    graphs: boolean;
  }) {
    this.config = p.config;
    this.device = p.device;
    this.maxBatch = p.maxBatch;
    this.maxContext = p.maxContext;
    this.pageSize = p.pageSize;
    this.prefillChunk = p.prefillChunk;
    this.maxSeqs = p.maxSeqs;
    this.layout = p.layout;
    this.memory = p.memory;
    this.#arena = p.arena;
    this.#weights = p.weights;
    this.#stream = p.stream;
    this.#io = p.io;
    this.#ws = p.ws;
    this.#maxPages = Math.ceil(p.maxContext / p.pageSize);
    this.#runner = new GraphRunner(p.stream, p.graphs);
    live.add(this);
  }

  /**
   * Loads a model onto the device: plans the layout, checks that weights, the default cache (maxBatch ×
   * maxContext) and the workspace fit in free device memory (E_DEVICE_MEMORY with the bytes needed and free,
   * before allocating), then uploads tensor by tensor. Everything allocated is freed if loading fails.
   */
  static async create(input: CudaModelInput, options: CudaModelOptions = {}): Promise<CudaModel> {
    const src = openWeightSource(input);
    try {
      return CudaModel.#build(src.config, planLayout(src), options, (arena, stream, device, layout) => {
        const up = new PinnedUploader(
          device,
          stream,
          Math.min(options.uploadChunkBytes ?? 64 << 20, Math.max(1 << 20, layout.weightBytes)),
        );
        try {
          return uploadWeights(src, layout, up, arena);
        } finally {
          up.dispose();
        }
      });
    } finally {
      if (typeof input === 'string') src.close();
    }
  }

  /**
   * A model of the given shape whose weights are drawn at random directly on the device (benchmarks: speed does
   * not depend on the values). 'w4a8' follows the fptq plan of `SYNTHETIC_FPTQ_PLAN` (group-int g128); 'bf16'
   * runs every linear through cuBLAS.
   *
   * @example
   * ```ts
   * const m = await CudaModel.synthetic(LLAMA_SHAPES['llama2-7b'], 'w4a8', { maxBatch: 64, maxContext: 2176 });
   * ```
   */
  static async synthetic(
    config: ModelConfig,
    path: 'w4a8' | 'bf16',
    options: CudaModelOptions & { readonly seed?: number } = {},
  ): Promise<CudaModel> {
    const layout = syntheticLayout(config, path);
    return CudaModel.#build(config, layout, options, (arena, stream, device) =>
      drawWeights(config, layout, arena, stream, device, options.seed ?? 1),
    );
  }

  /**
   * Device bytes a model needs with these options, by part (no allocation; needs only the layout).
   *
   * @example
   * ```ts
   * CudaModel.memoryPlan(planLayout(src), config, { maxBatch: 8, maxContext: 2048 }, attnBytes).total;
   * ```
   */
  static memoryPlan(
    layout: ModelLayout,
    config: ModelConfig,
    o: Required<Pick<CudaModelOptions, 'maxBatch' | 'maxContext' | 'pageSize' | 'prefillChunk'>>,
    attnWsBytes: number,
  ): MemoryPlan {
    const maxSeqs = seqRows(o.maxBatch);
    const maxTokens = Math.max(o.prefillChunk, maxSeqs);
    const pages = o.maxBatch * Math.ceil(o.maxContext / o.pageSize);
    const weights = layout.weightBytes;
    const cache = cacheBytes(layout.dims, config.numLayers, pages, o.pageSize);
    const meta = metaLayout(maxTokens, maxSeqs, Math.ceil(o.maxContext / o.pageSize)).total * 4;
    const workspace = shapesBytes(workspaceShapes(layout, maxTokens, maxSeqs, attnWsBytes)) + meta;
    return {
      weights,
      cache,
      workspace,
      reserve: RESERVE_BYTES,
      total: weights + cache + workspace + RESERVE_BYTES,
    };
  }

  static #build(
    config: ModelConfig,
    layout: ModelLayout,
    options: CudaModelOptions,
    makeWeights: (arena: DeviceArena, stream: Stream, device: number, layout: ModelLayout) => DeviceWeights,
  ): CudaModel {
    const device = options.device ?? 0;
    const pos = (v: number | undefined, name: string, dflt: number): number => {
      const x = v ?? dflt;
      if (!Number.isInteger(x) || x < 1)
        throw new QError('E_ARG', `Expected a positive integer for ${name} but received ${x}`);
      return x;
    };
    const maxBatch = pos(options.maxBatch, 'maxBatch', 8);
    const maxContext = pos(options.maxContext, 'maxContext', Math.min(config.maxSeqLen, 4096));
    const pageSize = pos(options.pageSize, 'pageSize', 16);
    const prefillChunk = pos(options.prefillChunk, 'prefillChunk', 2048);
    if (maxContext > config.maxSeqLen)
      throw new QError(
        'E_ARG',
        `Expected maxContext at most ${config.maxSeqLen} (the model's context) but received ${maxContext}`,
      );
    const maxSeqs = seqRows(maxBatch);
    const maxTokens = Math.max(prefillChunk, maxSeqs);
    const { nh, P } = layout.dims;
    useDevice(device);
    const attnWsBytes = kernels.attentionDecodeWorkspaceBytes(maxSeqs, nh, P, maxContext);
    const memory = CudaModel.memoryPlan(
      layout,
      config,
      { maxBatch, maxContext, pageSize, prefillChunk },
      attnWsBytes,
    );
    const { free } = memoryInfo(device);
    if (memory.total > free)
      throw new QError(
        'E_DEVICE_MEMORY',
        `Expected the model to fit in the ${free} bytes free on device ${device} but it needs ${memory.total} bytes (weights ${memory.weights}, KV cache ${memory.cache} for ${maxBatch} × ${maxContext} positions, workspace ${memory.workspace}, reserve ${memory.reserve}); lower maxBatch or maxContext`,
        { details: { ...memory, needed: memory.total, free } },
      );
    const arena = new DeviceArena();
    try {
      const stream = arena.track(Stream.create(device));
      const weights = makeWeights(arena, stream, device, layout);
      const shapes = workspaceShapes(layout, maxTokens, maxSeqs, attnWsBytes);
      const alloc = (k: keyof typeof shapes): DeviceTensor => {
        const [dt, shape] = shapes[k] as [DType, number[]];
        return arena.track(DeviceTensor.alloc(dt, shape, { device }));
      };
      const ws: Workspace = {
        x: alloc('x'),
        hB: alloc('hB'),
        hQ: alloc('hQ'),
        aScale: alloc('aScale'),
        qkv: alloc('qkv'),
        att: alloc('att'),
        r: alloc('r'),
        gu: alloc('gu'),
        act: alloc('act'),
        hLast: alloc('hLast'),
        logits: alloc('logits'),
        outIds: alloc('outIds'),
        attnWs: alloc('attnWs'),
        logitRows: shapes.logitRows,
        qCols: shapes.qCols,
      };
      const io = arena.track(
        new StepIO(metaLayout(maxTokens, maxSeqs, Math.ceil(maxContext / pageSize)), device),
      );
      synchronize(device);
      return new CudaModel({
        config,
        device,
        maxBatch,
        maxContext,
        pageSize,
        prefillChunk,
        maxSeqs,
        layout,
        memory,
        arena,
        weights,
        stream,
        io,
        ws,
        graphs: options.cudaGraphs ?? true,
      });
    } catch (e) {
      arena.dispose();
      throw e;
    }
  }

  #check(): void {
    if (this.#disposed)
      throw new QError('E_DISPOSED', 'Expected a live CUDA model but it was used after dispose()');
  }

  createCache(options: CacheOptions = {}): CudaKVCache {
    this.#check();
    const batch = options.batch ?? 1;
    const capacity = options.capacity ?? this.maxContext;
    if (capacity > this.maxContext)
      throw new QError(
        'E_ARG',
        `Expected a cache capacity of at most ${this.maxContext} (the model's maxContext) but received ${capacity}`,
      );
    if (options.pageSize !== undefined && options.pageSize !== this.pageSize)
      throw new QError(
        'E_ARG',
        `Expected pageSize ${this.pageSize} (the model's, set by createCudaModel's pageSize) for the cache but received ${options.pageSize}`,
      );
    const pages = options.pages ?? batch * Math.ceil(capacity / this.pageSize);
    const c = new CudaKVCache(this, this.layout.dims, this.config.numLayers, this.device, {
      batch,
      capacity,
      pageSize: this.pageSize,
      pages,
      maxPagesPerSeq: this.#maxPages,
    });
    this.#caches.add(c);
    return c;
  }

  forward(tokens: readonly (readonly number[])[], options: ForwardOptions = {}): Promise<Float32Array> {
    return Promise.resolve().then(() => this.#run(tokens, options, undefined) as Float32Array);
  }

  forwardSample(
    tokens: readonly (readonly number[])[],
    options: ForwardOptions & { readonly sampling: readonly SamplingParams[] },
  ): Promise<Int32Array> {
    return Promise.resolve().then(() => {
      const s = options.sampling;
      if (!Array.isArray(s) || s.length !== tokens.length)
        throw new QError(
          'E_ARG',
          `Expected one sampling entry per sequence (${tokens.length}) for sampling but received ${Array.isArray(s) ? s.length : typeof s}`,
        );
      s.forEach((p, i) => {
        checkSampling(p, i);
      });
      return this.#run(tokens, options, s) as Int32Array;
    });
  }

  #run(
    tokens: readonly (readonly number[])[],
    options: ForwardOptions,
    sampling: readonly SamplingParams[] | undefined,
  ): Float32Array | Int32Array {
    this.#check();
    if (options.hook)
      throw new QError(
        'E_UNSUPPORTED',
        'Expected no hook for a CUDA forward (calibration observes the CPU model) but received one',
      );
    const S = tokens.length;
    if (S < 1) throw new QError('E_ARG', 'Expected at least one sequence for forward but received none');
    if (S > this.maxSeqs)
      throw new QError(
        'E_ARG',
        `Expected at most ${this.maxSeqs} sequences (maxBatch) for forward but received ${S}`,
      );
    const V = this.config.vocabSize;
    tokens.forEach((seq, i) => {
      if (seq.length < 1)
        throw new QError('E_ARG', `Expected at least one new token for sequence ${i} but received none`);
      for (const t of seq)
        if (!Number.isInteger(t) || t < 0 || t >= V)
          throw new QError('E_ARG', `Expected token ids in [0, ${V}) for sequence ${i} but received ${t}`);
    });
    const own = options.cache === undefined;
    const cache = own
      ? this.createCache({
          batch: S,
          capacity: Math.min(this.maxContext, Math.max(...tokens.map((t) => t.length))),
        })
      : options.cache;
    try {
      if (!(cache instanceof CudaKVCache) || cache.owner !== this)
        throw new QError(
          'E_ARG',
          'Expected a cache made by this CUDA model (model.createCache) for options.cache but received another',
        );
      const slots = options.slots ?? tokens.map((_, i) => i);
      if (slots.length !== S)
        throw new QError(
          'E_ARG',
          `Expected ${S} slots (one per sequence) for options.slots but received ${slots.length}`,
        );
      if (new Set(slots).size !== S)
        throw new QError(
          'E_ARG',
          `Expected distinct slots for options.slots but received [${slots.join(', ')}]`,
        );
      slots.forEach((s, i) => {
        cache.checkSlot(s);
        const want = (cache.lengths[s] as number) + (tokens[i] as readonly number[]).length;
        if (want > cache.capacity)
          throw new QError(
            'E_ARG',
            `Expected at most ${cache.capacity} positions (the cache capacity) for sequence ${i} (slot ${s}) but received ${want}`,
          );
      });
      slots.forEach((s, i) => {
        cache.reserve(s, (cache.lengths[s] as number) + (tokens[i] as readonly number[]).length);
      });
      const mode = options.logits ?? 'all';
      const decode = tokens.every((t) => t.length === 1) && decodeBucket(S) !== undefined;
      const out = decode
        ? this.#decode(cache, tokens, slots, mode, sampling)
        : this.#prefill(cache, tokens, slots, mode, sampling);
      slots.forEach((s, i) => {
        cache.lengths[s] = (cache.lengths[s] as number) + (tokens[i] as readonly number[]).length;
      });
      return out;
    } finally {
      if (own) {
        this.#caches.delete(cache as CudaKVCache);
        cache?.dispose();
      }
    }
  }

  #writeSampling(i: number, p: SamplingParams | undefined): void {
    const io = this.#io;
    io.temperature[i] = p ? p.temperature : 0;
    io.topK[i] = p ? p.topK : 0;
    io.topP[i] = p ? p.topP : 1;
    io.seeds[i] = p ? p.seed | 0 : 0;
    io.steps[i] = p ? p.step | 0 : 0;
  }

  #writePages(row: number, cache: CudaKVCache, slot: number | undefined): void {
    const mp = this.#maxPages;
    const pt = this.#io.pageTable;
    const pages = slot === undefined ? [] : cache.pagesOf(slot);
    for (let j = 0; j < mp; j++) pt[row * mp + j] = j < pages.length ? (pages[j] as number) : cache.dummyPage;
  }

  #decode(
    cache: CudaKVCache,
    tokens: readonly (readonly number[])[],
    slots: readonly number[],
    mode: 'all' | 'last' | 'none',
    sampling: readonly SamplingParams[] | undefined,
  ): Float32Array | Int32Array {
    const S = tokens.length;
    const B = decodeBucket(S) as number;
    const io = this.#io;
    for (let i = 0; i < B; i++) {
      const real = i < S;
      const slot = real ? (slots[i] as number) : undefined;
      const len = slot === undefined ? 0 : (cache.lengths[slot] as number);
      io.ids[i] = real ? ((tokens[i] as readonly number[])[0] as number) : 0;
      io.positions[i] = len;
      io.seqOfToken[i] = i;
      io.qStart[i] = i;
      io.contextLens[i] = len + 1;
      this.#writePages(i, cache, slot);
      this.#writeSampling(i, real ? sampling?.[i] : undefined);
    }
    io.qStart[B] = B;
    io.upload(B, B, this.#stream);
    const views = io.views(B, B);
    this.#runner.run(cache, B, () => {
      this.#launchLayers(cache, views, B, B, 1, true);
      this.#launchHead(rows(this.#ws.hB, [B, this.layout.dims.d]), B, views);
    });
    return this.#collect(S, mode, sampling !== undefined);
  }

  /** Downloads the first `n` rows of logits (or ids) after the stream's work. */
  #collect(n: number, mode: 'all' | 'last' | 'none', ids: boolean): Float32Array | Int32Array {
    const ws = this.#ws;
    const V = this.config.vocabSize;
    if (ids) {
      const out = new Int32Array(n);
      rows(ws.outIds, [n]).downloadInto(out, this.#stream);
      this.#stream.synchronize();
      return out;
    }
    if (mode === 'none') {
      this.#stream.synchronize();
      return new Float32Array(0);
    }
    const out = new Float32Array(n * V);
    rows(ws.logits, [n, V]).downloadInto(out, this.#stream);
    this.#stream.synchronize();
    return out;
  }

  /** lm_head (f32 logits) and device sampling over rows [0, n) of `h`, sampling parameters from `views`. */
  #launchHead(h: DeviceTensor, n: number, views: StepViews): void {
    const ws = this.#ws;
    const V = this.config.vocabSize;
    const logits = rows(ws.logits, [n, V]);
    gemmHalf({ a: h, w: this.#weights.lmHead, out: logits, stream: this.#stream });
    this.#mark('lm_head');
    kernels.sample({
      logits,
      temperature: views.temperature,
      topK: views.topK,
      topP: views.topP,
      seeds: views.seeds,
      steps: views.steps,
      out: rows(ws.outIds, [n]),
      stream: this.#stream,
    });
    this.#mark('sample');
  }

  #prefill(
    cache: CudaKVCache,
    tokens: readonly (readonly number[])[],
    slots: readonly number[],
    mode: 'all' | 'last' | 'none',
    sampling: readonly SamplingParams[] | undefined,
  ): Float32Array | Int32Array {
    const S = tokens.length;
    const V = this.config.vocabSize;
    const d = this.layout.dims.d;
    const total = tokens.reduce((a, t) => a + t.length, 0);
    const perSeq = mode === 'all' && !sampling ? total : S;
    const logitsOut = sampling || mode === 'none' ? undefined : new Float32Array(perSeq * V);
    const idsOut = sampling ? new Int32Array(S) : undefined;
    const io = this.#io;
    const ws = this.#ws;
    const chunk = this.#io.layout.maxTokens;
    const done = new Array<number>(S).fill(0);
    let seq = 0;
    let outRow = 0;
    while (seq < S) {
      // The pinned metadata of the previous chunk may still be queued for copying: wait before rewriting it.
      if (seq > 0 || done[0] !== 0) this.#stream.synchronize();
      // One chunk: tokens of consecutive sequences, in order, up to `chunk` tokens.
      const parts: { i: number; a: number; b: number }[] = [];
      let T = 0;
      while (seq < S && T < chunk && parts.length < this.maxSeqs) {
        const n = (tokens[seq] as readonly number[]).length;
        const a = done[seq] as number;
        const b = Math.min(n, a + (chunk - T));
        parts.push({ i: seq, a, b });
        T += b - a;
        done[seq] = b;
        if (b === n) seq++;
      }
      const Sc = parts.length;
      let t = 0;
      let maxQ = 0;
      const finishing: { row: number; i: number }[] = [];
      parts.forEach((p, j) => {
        const slot = slots[p.i] as number;
        const base = cache.lengths[slot] as number;
        const seqTokens = tokens[p.i] as readonly number[];
        io.qStart[j] = t;
        for (let x = p.a; x < p.b; x++) {
          io.ids[t] = seqTokens[x] as number;
          io.positions[t] = base + x;
          io.seqOfToken[t] = j;
          t++;
        }
        io.contextLens[j] = base + p.b;
        maxQ = Math.max(maxQ, p.b - p.a);
        this.#writePages(j, cache, slot);
        if (p.b === seqTokens.length) finishing.push({ row: t - 1, i: p.i });
      });
      io.qStart[Sc] = t;
      // Sampling parameters are indexed by the finishing sequences' order (the rows lm_head runs on).
      finishing.forEach((f, k) => {
        this.#writeSampling(k, sampling?.[f.i]);
      });
      io.upload(T, Math.max(Sc, finishing.length), this.#stream);
      const views = io.views(T, Sc);
      this.#launchLayers(cache, views, T, Sc, maxQ, false);
      const hB = rows(ws.hB, [T, d]);
      if (logitsOut && mode === 'all') {
        for (let r0 = 0; r0 < T; r0 += ws.logitRows) {
          const n = Math.min(ws.logitRows, T - r0);
          const h = DeviceTensor.wrap(hB.ptr + BigInt(r0 * d * 2), 'bf16', [n, d], { device: this.device });
          const lg = rows(ws.logits, [n, V]);
          gemmHalf({ a: h, w: this.#weights.lmHead, out: lg, stream: this.#stream });
          lg.downloadInto(logitsOut.subarray((outRow + r0) * V, (outRow + r0 + n) * V), this.#stream);
          this.#stream.synchronize();
        }
        outRow += T;
      } else if (finishing.length > 0 && (logitsOut || idsOut)) {
        const K = finishing.length;
        finishing.forEach((f, k) => {
          rowAt(ws.hLast, k, d, 2).copyFrom(rowAt(ws.hB, f.row, d, 2), this.#stream);
        });
        this.#launchHead(rows(ws.hLast, [K, d]), K, io.views(T, K));
        const got = this.#collect(K, 'last', idsOut !== undefined);
        finishing.forEach((f, k) => {
          if (idsOut) idsOut[f.i] = (got as Int32Array)[k] as number;
          else logitsOut?.set((got as Float32Array).subarray(k * V, (k + 1) * V), f.i * V);
        });
      }
    }
    this.#stream.synchronize();
    if (idsOut) return idsOut;
    return logitsOut ?? new Float32Array(0);
  }

  /** The norm before a GEMM group: x += r (when given), then the group's input as bf16 or int8. */
  #norm(
    x: DeviceTensor,
    r: DeviceTensor | undefined,
    gain: DeviceTensor,
    lin: DeviceLinear,
    T: number,
  ): void {
    const ws = this.#ws;
    const d = this.layout.dims.d;
    const eps = this.config.rmsNormEps;
    const stream = this.#stream;
    if (lin.kind === 'bf16') {
      kernels.addRmsNorm({ x, ...(r ? { r } : {}), gain, eps, out: rows(ws.hB, [T, d]), stream });
      return;
    }
    const out = rows(ws.hQ, [T, lin.w.kPadded]);
    if (lin.act === 'static')
      kernels.addRmsNorm({
        x,
        ...(r ? { r } : {}),
        gain,
        eps,
        out,
        mode: 'static',
        staticScale: lin.staticScale as number,
        stream,
      });
    else
      kernels.addRmsNorm({
        x,
        ...(r ? { r } : {}),
        gain,
        eps,
        out,
        mode: 'dynamic',
        scales: rows(ws.aScale, [T]),
        stream,
      });
  }

  /** One GEMM group over its prepared input (hB for bf16, hQ + scales for W4A8) into `out` [T, N]. */
  #gemm(lin: DeviceLinear, aBf16: DeviceTensor, T: number, out: DeviceTensor): void {
    const ws = this.#ws;
    const stream = this.#stream;
    if (lin.kind === 'bf16') {
      gemmHalf({ a: aBf16, w: lin.w, out, stream });
      if (lin.bias) addBias({ out, bias: lin.bias, stream });
      return;
    }
    gemmW4A8({
      a: rows(ws.hQ, [T, lin.w.kPadded]),
      aScale: lin.act === 'static' ? (lin.aScale as DeviceTensor) : rows(ws.aScale, [T]),
      weights: lin.w,
      mode: lin.mode,
      out,
      ...(lin.bias ? { bias: lin.bias } : {}),
      stream,
    });
  }

  /** Every decoder layer and the final norm (into hB) for a step of T tokens over S sequences. */
  #launchLayers(
    cache: CudaKVCache,
    v: StepViews,
    T: number,
    S: number,
    maxQLen: number,
    decode: boolean,
  ): void {
    const W = this.#weights;
    const ws = this.#ws;
    const c = this.config;
    const { d, nh, nkv, P, hd, ffP, qkvN } = this.layout.dims;
    const stream = this.#stream;
    const x = rows(ws.x, [T, d]);
    const r = rows(ws.r, [T, d]);
    const qkv = rows(ws.qkv, [T, qkvN]);
    const att = rows(ws.att, [T, nh * P]);
    const gu = rows(ws.gu, [T, 2 * ffP]);
    const hB = rows(ws.hB, [T, d]);
    const scale = 1 / Math.sqrt(hd);
    kernels.embedding({ ids: v.ids, table: W.embed, out: x, stream });
    this.#mark('embedding');
    W.layers.forEach((L, l) => {
      this.#norm(x, l === 0 ? undefined : r, L.inputNorm, L.qkv, T);
      this.#mark('addRmsNorm');
      this.#gemm(L.qkv, hB, T, qkv);
      this.#mark(`qkv ${L.qkv.kind}`);
      const k = cache.k[l] as DeviceTensor;
      const vv = cache.v[l] as DeviceTensor;
      kernels.ropeKvWrite({
        qkv,
        positions: v.positions,
        seqOfToken: v.seqOfToken,
        pageTable: v.pageTable,
        k,
        v: vv,
        invFreq: W.invFreq,
        numHeads: nh,
        numKvHeads: nkv,
        headDim: P,
        style: c.ropeStyle,
        stream,
      });
      this.#mark('ropeKvWrite');
      const common = {
        q: qkv,
        qStride: qkvN,
        k,
        v: vv,
        pageTable: v.pageTable,
        contextLens: v.contextLens,
        numHeads: nh,
        numKvHeads: nkv,
        headDim: P,
        scale,
        out: att,
        stream,
      };
      if (decode) kernels.attentionDecode({ ...common, workspace: ws.attnWs, maxContext: cache.capacity });
      else kernels.attentionPrefill({ ...common, qStart: v.qStart, positions: v.positions, maxQLen });
      this.#mark(decode ? 'attentionDecode' : 'attentionPrefill');
      if (L.o.kind === 'w4a8') {
        const q = rows(ws.hQ, [T, L.o.w.kPadded]);
        if (L.o.act === 'static')
          quantizeAct({ x: att, out: q, mode: 'static', staticScale: L.o.staticScale as number, stream });
        else quantizeAct({ x: att, out: q, mode: 'dynamic', scales: rows(ws.aScale, [T]), stream });
      }
      if (L.o.kind === 'w4a8') this.#mark('quantizeAct');
      this.#gemm(L.o, att, T, r);
      this.#mark(`o ${L.o.kind}`);
      this.#norm(x, r, L.postNorm, L.gateUp, T);
      this.#mark('addRmsNorm');
      this.#gemm(L.gateUp, hB, T, gu);
      this.#mark(`gate_up ${L.gateUp.kind}`);
      const act = rows(ws.act, [T, ffP]);
      if (L.down.kind === 'w4a8') {
        const q = rows(ws.hQ, [T, L.down.w.kPadded]);
        if (L.down.act === 'static')
          kernels.siluMul({
            gateUp: gu,
            out: q,
            mode: 'static',
            staticScale: L.down.staticScale as number,
            stream,
          });
        else kernels.siluMul({ gateUp: gu, out: q, mode: 'dynamic', scales: rows(ws.aScale, [T]), stream });
      } else kernels.siluMul({ gateUp: gu, out: act, stream });
      this.#mark('siluMul');
      this.#gemm(L.down, act, T, r);
      this.#mark(`down ${L.down.kind}`);
    });
    kernels.addRmsNorm({ x, r, gain: W.finalNorm, eps: c.rmsNormEps, out: hB, stream });
    this.#mark('addRmsNorm');
    void S;
  }

  /** The stream every launch of this model goes to (for timing with events). */
  get stream(): Stream {
    this.#check();
    return this.#stream;
  }

  #mark(name: string): void {
    const t = this.#trace;
    if (!t) return;
    const ev = Event.create(this.device);
    ev.record(this.#stream);
    t.push({ name, ev });
  }

  /**
   * Times every kernel of one step with events between launches (eager launches, graphs off): one decode step
   * of `batch` sequences at `context` positions, or one prefill of `prompt` tokens. Returns the time per kernel
   * kind summed over layers, in launch order of first appearance.
   *
   * @example
   * ```ts
   * for (const k of await model.breakdown('decode', { batch: 1, context: 512 })) console.log(k.name, k.ms);
   * ```
   */
  async breakdown(
    kind: 'decode' | 'prefill',
    o: { readonly batch?: number; readonly context?: number; readonly prompt?: number } = {},
  ): Promise<KernelTime[]> {
    this.#check();
    const batch = kind === 'decode' ? (o.batch ?? 1) : 1;
    const context = kind === 'decode' ? (o.context ?? 512) : 0;
    const prompt = kind === 'prefill' ? (o.prompt ?? 2048) : 1;
    const cache = this.createCache({ batch, capacity: Math.min(this.maxContext, context + prompt) });
    const enabled = this.#runner.enabled;
    try {
      for (let s = 0; s < batch; s++) {
        cache.reserve(s, context);
        cache.lengths[s] = context;
      }
      for (const t of [...cache.k, ...cache.v])
        fillRandom({ out: t, dist: 'uniform', lo: -1, hi: 1, seed: 7, stream: this.#stream });
      const V = this.config.vocabSize;
      const tokens = Array.from({ length: batch }, (_, i) =>
        Array.from({ length: prompt }, (_, j) => (i * 7919 + j * 104729) % V),
      );
      const run = (): void => {
        this.#run(tokens, { cache, logits: 'last' }, undefined);
        for (let s = 0; s < batch; s++) cache.lengths[s] = context;
      };
      this.#runner.enabled = false;
      run(); // warm-up
      this.#stream.synchronize();
      this.#trace = [];
      this.#mark('start');
      run();
      this.#stream.synchronize();
      const marks = this.#trace;
      const out = new Map<string, KernelTime>();
      for (let i = 1; i < marks.length; i++) {
        const m = marks[i] as { name: string; ev: Event };
        const ms = Event.elapsedMs((marks[i - 1] as { ev: Event }).ev, m.ev);
        const k = out.get(m.name) ?? { name: m.name, ms: 0, count: 0 };
        k.ms += ms;
        k.count++;
        out.set(m.name, k);
      }
      for (const m of marks) m.ev.dispose();
      return [...out.values()];
    } finally {
      this.#trace = undefined;
      this.#runner.enabled = enabled;
      this.#caches.delete(cache);
      cache.dispose();
    }
  }

  async dispose(): Promise<void> {
    if (this.#disposed) return;
    this.#disposed = true;
    live.delete(this);
    try {
      this.#stream.synchronize();
    } catch {
      // A failed stream must not keep memory alive.
    }
    for (const c of this.#caches) c.dispose();
    this.#caches.clear();
    this.#arena.dispose();
  }
}

/** Step rows: maxBatch, rounded up to its decode bucket so a padded batch fits. */
function seqRows(maxBatch: number): number {
  return decodeBucket(maxBatch) ?? maxBatch;
}

function checkSampling(p: SamplingParams, i: number): void {
  const bad = (what: string, v: unknown): QError =>
    new QError('E_ARG', `Expected ${what} for sampling[${i}] but received ${String(v)}`);
  if (!(p.temperature >= 0) || !Number.isFinite(p.temperature))
    throw bad('a finite temperature ≥ 0', p.temperature);
  if (!Number.isInteger(p.topK) || p.topK < 0) throw bad('an integer topK ≥ 0', p.topK);
  if (!(p.topP > 0 && p.topP <= 1)) throw bad('topP in (0, 1]', p.topP);
  if (!Number.isInteger(p.seed)) throw bad('an integer seed', p.seed);
  if (!Number.isInteger(p.step) || p.step < 0) throw bad('an integer step ≥ 0', p.step);
}

export type { KVCache };
export { DECODE_BUCKETS };
