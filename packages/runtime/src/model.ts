import { layerLinearNames, layerLinears, llamaNormNames, type ModelConfig, QError } from '@q/core';
import { FloatLinear, type Linear } from './cpu/linear';
import { RopeTable, rmsNorm, ropeInvFreq, softmaxInPlace } from './cpu/ops';
import type { CacheOptions, CausalLM, ForwardOptions, KVCache } from './lm';

/** The weights of one decoder layer of the CPU model. */
export interface CpuLayerWeights {
  readonly inputNorm: Float32Array;
  readonly postNorm: Float32Array;
  readonly q: Linear;
  readonly k: Linear;
  readonly v: Linear;
  readonly o: Linear;
  readonly gate: Linear;
  readonly up: Linear;
  readonly down: Linear;
}

/** Everything a CPU forward pass needs; linears may be float or quantized. */
export interface CpuModelWeights {
  /** [vocab, hidden]. */
  readonly embed: Float32Array;
  readonly layers: readonly CpuLayerWeights[];
  readonly finalNorm: Float32Array;
  /** The classifier; for tied embeddings a float linear over `embed` unless a recipe quantized it. */
  readonly lmHead: Linear;
}

/** Float tensors by Hugging Face name: a loader's `ModelWeights` or a plain `Map<string, Tensor>`. */
export interface FloatTensorSource {
  has(name: string): boolean;
  get(name: string): { toFloat32(): Float32Array; readonly shape: readonly number[] } | undefined;
}

export { layerLinearNames };

/**
 * How one tensor-parallel shard of the model meets the other ranks (built by `tp/`): the shard holds the vocabulary
 * rows [start, end) of the embeddings and the classifier, and its o_proj and down_proj outputs are partial sums.
 */
export interface ShardCollectives {
  /** Vocabulary rows [start, end) of this shard's embedding and classifier. */
  readonly vocab: { readonly start: number; readonly end: number };
  /**
   * Sums a partial [rows, hidden] activation over the ranks: the vocab-parallel embedding (`model.embed_tokens`)
   * and the outputs of the row-parallel o_proj and down_proj (their layer names).
   */
  allReduce(name: string, x: Float32Array, rows: number): Promise<Float32Array>;
  /** The ranks' logits [rows, vocab slice] side by side: [rows, vocab], the same on every rank. */
  gatherLogits(logits: Float32Array, rows: number): Promise<Float32Array>;
}

const DEFAULT_PAGE_SIZE = 16;

function positiveInt(v: number, name: string): number {
  if (!Number.isInteger(v) || v < 1)
    throw new QError('E_ARG', `Expected a positive integer for ${name} but received ${v}`);
  return v;
}

/** The pages behind a `CpuKVCache`, reachable only from this module (the cache exposes no host arrays). */
class PagePool {
  readonly lens: number[];
  /** Page ids of each slot, in position order. */
  readonly tables: number[][];
  readonly free: number[];
  /** keys[layer][page], values[layer][page]: [pageSize, kvDim], allocated on first use and kept for reuse. */
  readonly keys: (Float32Array | undefined)[][];
  readonly values: (Float32Array | undefined)[][];

  constructor(
    readonly batch: number,
    readonly capacity: number,
    readonly pageSize: number,
    readonly pagesTotal: number,
    readonly kvDim: number,
    readonly numLayers: number,
  ) {
    this.lens = new Array<number>(batch).fill(0);
    this.tables = Array.from({ length: batch }, () => []);
    // Lowest page ids first, so a fresh cache hands out pages 0, 1, 2, …
    this.free = Array.from({ length: pagesTotal }, (_, i) => pagesTotal - 1 - i);
    this.keys = Array.from({ length: numLayers }, () => []);
    this.values = Array.from({ length: numLayers }, () => []);
  }

  release(slot: number): void {
    const t = this.tables[slot] as number[];
    for (let i = t.length - 1; i >= 0; i--) this.free.push(t[i] as number);
    t.length = 0;
    this.lens[slot] = 0;
  }

  /** Makes room for `add[i]` more positions in slot `slots[i]`; checks every slot before taking a page. */
  reserve(slots: readonly number[], add: readonly number[]): void {
    let need = 0;
    slots.forEach((s, i) => {
      const len = (this.lens[s] as number) + (add[i] as number);
      if (len > this.capacity)
        throw new QError(
          'E_ARG',
          `Expected at most ${this.capacity} positions (the context) for sequence ${i} but received ${len}`,
        );
      need += Math.max(0, Math.ceil(len / this.pageSize) - (this.tables[s] as number[]).length);
    });
    if (need > this.free.length)
      throw new QError(
        'E_ARG',
        `Expected at most ${this.free.length} free cache pages (${this.pagesTotal - this.free.length} of ${this.pagesTotal} in use) for forward but received a batch that needs ${need}`,
      );
    slots.forEach((s, i) => {
      const t = this.tables[s] as number[];
      const pages = Math.ceil(((this.lens[s] as number) + (add[i] as number)) / this.pageSize);
      while (t.length < pages) {
        const page = this.free.pop() as number;
        t.push(page);
        for (let l = 0; l < this.numLayers; l++) {
          const kl = this.keys[l] as (Float32Array | undefined)[];
          const vl = this.values[l] as (Float32Array | undefined)[];
          if (kl[page] === undefined) kl[page] = new Float32Array(this.pageSize * this.kvDim);
          if (vl[page] === undefined) vl[page] = new Float32Array(this.pageSize * this.kvDim);
        }
      }
    });
  }

  /** The pages of one slot for one layer (keys, values), in position order. */
  pagesOf(layer: number, slot: number): [Float32Array[], Float32Array[]] {
    const t = this.tables[slot] as number[];
    const kl = this.keys[layer] as Float32Array[];
    const vl = this.values[layer] as Float32Array[];
    return [t.map((p) => kl[p] as Float32Array), t.map((p) => vl[p] as Float32Array)];
  }
}

const pools = new WeakMap<CpuKVCache, PagePool>();

function poolOf(cache: CpuKVCache): PagePool {
  const p = pools.get(cache);
  if (p === undefined)
    throw new QError('E_DISPOSED', 'Expected a live KV cache but received one that was disposed');
  return p;
}

/**
 * The CPU model's key/value cache: per layer, pages of `pageSize` positions × kvHeads·headDim for keys and
 * values. A slot takes pages from the pool as its sequence grows (their memory is allocated on first use and
 * kept for reuse) and gives them back on `reset(slot)`.
 *
 * @example
 * ```ts
 * const cache = model.createCache({ batch: 2, capacity: 256 });
 * await model.forward([[1, 5, 9], [1, 7]], { cache });
 * cache.lengths; // [3, 2]
 * cache.pagesInUse; // 2 (one page of 16 positions per slot)
 * ```
 */
export class CpuKVCache implements KVCache {
  readonly batch: number;
  readonly capacity: number;
  readonly pageSize: number;
  readonly pagesTotal: number;

  constructor(config: ModelConfig, options: CacheOptions = {}) {
    this.batch = positiveInt(options.batch ?? 1, 'batch');
    this.capacity = positiveInt(options.capacity ?? config.maxSeqLen, 'capacity');
    this.pageSize = positiveInt(options.pageSize ?? DEFAULT_PAGE_SIZE, 'pageSize');
    this.pagesTotal = positiveInt(
      options.pages ?? this.batch * Math.ceil(this.capacity / this.pageSize),
      'pages',
    );
    pools.set(
      this,
      new PagePool(
        this.batch,
        this.capacity,
        this.pageSize,
        this.pagesTotal,
        config.numKvHeads * config.headDim,
        config.numLayers,
      ),
    );
  }

  get lengths(): readonly number[] {
    return poolOf(this).lens;
  }

  get pagesInUse(): number {
    const p = pools.get(this);
    return p === undefined ? 0 : this.pagesTotal - p.free.length;
  }

  reset(slot?: number): void {
    const p = poolOf(this);
    if (slot === undefined) {
      for (let s = 0; s < this.batch; s++) p.release(s);
      return;
    }
    if (!Number.isInteger(slot) || slot < 0 || slot >= this.batch)
      throw new QError('E_ARG', `Expected a slot in [0, ${this.batch}) for reset but received ${slot}`);
    p.release(slot);
  }

  dispose(): void {
    pools.delete(this);
  }
}

/**
 * A Llama-family decoder (Llama 2/3, Mistral, Qwen2) on the CPU, the `'cpu'` backend of `CausalLM`: RMSNorm,
 * RoPE (interleaved or half, theta, linear or llama3 scaling), grouped-query causal attention over a paged KV
 * cache, SwiGLU MLP, optional q/k/v bias, tied embeddings. Float32 activations; every projection is a `Linear`
 * (float or quantized). Usually built by `createModel(loaded, { backend: 'cpu' })`.
 *
 * @example
 * ```ts
 * const model = Model.fromFloatWeights(config, weights); // weights: Map<HF name, Tensor> or a loader's
 * const logits = await model.forward([[config.bosTokenId]], { logits: 'last' }); // [1, vocab]
 * ```
 */
export class Model implements CausalLM {
  readonly backend = 'cpu' as const;
  private readonly rope: RopeTable;
  private disposed = false;

  /** `shard`: this model is one tensor-parallel rank (its config holds the rank's heads and MLP width). */
  constructor(
    readonly config: ModelConfig,
    readonly weights: CpuModelWeights,
    readonly shard?: ShardCollectives,
  ) {
    checkConfig(config);
    const d = config.hiddenSize;
    const vocabRows = vocabRowsOf(config, shard);
    if (weights.embed.length !== vocabRows * d)
      throw new QError(
        'E_SHAPE',
        `Expected ${vocabRows * d} values ([${vocabRows}, ${d}]) for model.embed_tokens.weight but received ${weights.embed.length}`,
      );
    if (weights.layers.length !== config.numLayers)
      throw new QError(
        'E_SHAPE',
        `Expected ${config.numLayers} decoder layers but received ${weights.layers.length}`,
      );
    this.rope = new RopeTable(ropeInvFreq(config));
  }

  /**
   * Builds a float model from Hugging Face-named tensors (any float dtype; converted to f32).
   *
   * @example
   * ```ts
   * const { config, weights } = readLlama2cCheckpoint('stories260K.bin');
   * const model = Model.fromFloatWeights(config, weights);
   * ```
   */
  static fromFloatWeights(config: ModelConfig, weights: FloatTensorSource): Model {
    checkConfig(config);
    const get = (name: string, shape: readonly number[]): Float32Array => {
      const t = weights.has(name) ? weights.get(name) : undefined;
      if (t === undefined) throw new QError('E_FORMAT', `Expected a tensor named ${name} but received none`);
      if (t.shape.length !== shape.length || t.shape.some((v, i) => v !== shape[i]))
        throw new QError(
          'E_SHAPE',
          `Expected shape [${shape.join(', ')}] for ${name} but received [${t.shape.join(', ')}]`,
        );
      return t.toFloat32();
    };
    const opt = (name: string, shape: readonly number[]): Float32Array | null =>
      weights.has(name) ? get(name, shape) : null;
    return Model.fromGetters(config, get, (name, n, k, withBias) => {
      if (!weights.has(`${name}.weight`)) return undefined;
      const w = get(`${name}.weight`, [n, k]);
      const b = withBias ? get(`${name}.bias`, [n]) : opt(`${name}.bias`, [n]);
      return new FloatLinear(name, w, n, k, b);
    });
  }

  /**
   * Builds a model from two getters: `vector(name, shape)` for float tensors (embeddings, norms) and
   * `linear(name, n, k, hasBias)` for projections. Used for float and quantized models alike; with `shard`, the
   * embeddings and the classifier are asked for the shard's vocabulary rows only.
   *
   * @example
   * ```ts
   * const model = Model.fromGetters(config, (name) => vectors.get(name)!, (name, n, k) => linears.get(name));
   * ```
   */
  static fromGetters(
    config: ModelConfig,
    vector: (name: string, shape: readonly number[]) => Float32Array,
    linearOrNone: (name: string, n: number, k: number, hasBias: boolean) => Linear | undefined,
    shard?: ShardCollectives,
  ): Model {
    checkConfig(config);
    const linear = (name: string, n: number, k: number, hasBias: boolean): Linear => {
      const l = linearOrNone(name, n, k, hasBias);
      if (l === undefined)
        throw new QError('E_FORMAT', `Expected a tensor named ${name}.weight but received none`);
      if (l.outFeatures !== n || l.inFeatures !== k)
        throw new QError(
          'E_SHAPE',
          `Expected [${n}, ${k}] for ${name}.weight but received [${l.outFeatures}, ${l.inFeatures}]`,
        );
      return l;
    };
    const d = config.hiddenSize;
    const layers: CpuLayerWeights[] = [];
    for (let i = 0; i < config.numLayers; i++) {
      const [q, k, v, o, gate, up, down] = layerLinears(config, i).map((l) =>
        linear(l.name, l.n, l.k, l.bias),
      ) as [Linear, Linear, Linear, Linear, Linear, Linear, Linear];
      const norms = llamaNormNames(i);
      layers.push({
        inputNorm: vector(`${norms.input}.weight`, [d]),
        postNorm: vector(`${norms.post}.weight`, [d]),
        q,
        k,
        v,
        o,
        gate,
        up,
        down,
      });
    }
    const vocabRows = vocabRowsOf(config, shard);
    const embed = vector('model.embed_tokens.weight', [vocabRows, d]);
    // A quantized model may carry its own classifier even when the float one was tied to the embeddings.
    const head = linearOrNone('lm_head', vocabRows, d, false);
    const lmHead =
      head ??
      (config.tieWordEmbeddings
        ? new FloatLinear('lm_head', embed, vocabRows, d)
        : linear('lm_head', vocabRows, d, false));
    return new Model(config, { embed, layers, finalNorm: vector('model.norm.weight', [d]), lmHead }, shard);
  }

  /** Every linear layer by name, in forward order (lm_head last).
   *
   * @example
   * ```ts
   * model.linears().get('model.layers.0.mlp.down_proj')?.format; // 'f32' or 'int4'
   * ```
   */
  linears(): Map<string, Linear> {
    const m = new Map<string, Linear>();
    for (const l of this.weights.layers)
      for (const x of [l.q, l.k, l.v, l.o, l.gate, l.up, l.down]) m.set(x.name, x);
    m.set(this.weights.lmHead.name, this.weights.lmHead);
    return m;
  }

  /** A paged cache for `batch` slots of up to `capacity` positions (default: the model's context). */
  createCache(options: CacheOptions = {}): CpuKVCache {
    this.check();
    return new CpuKVCache(this.config, options);
  }

  /**
   * Runs the decoder over new tokens of each sequence of a batch (sequences may differ in length; sequence i
   * continues slot `slots[i]` at position `cache.lengths[slots[i]]`). Returns logits [rows, vocab]: all new
   * positions of all sequences in order (`'all'`), or one row per sequence (`'last'`).
   */
  async forward(tokens: readonly (readonly number[])[], options: ForwardOptions = {}): Promise<Float32Array> {
    this.check();
    const cfg = this.config;
    const d = cfg.hiddenSize;
    const hd = cfg.headDim;
    const nh = cfg.numHeads;
    const nkv = cfg.numKvHeads;
    const kvd = nkv * hd;
    const groups = nh / nkv;
    let cache: CpuKVCache;
    if (options.cache === undefined)
      cache = new CpuKVCache(cfg, {
        batch: Math.max(1, tokens.length),
        capacity: Math.max(1, ...tokens.map((t) => t.length)),
      });
    else if (options.cache instanceof CpuKVCache) cache = options.cache;
    else
      throw new QError(
        'E_ARG',
        "Expected a cache made by this model's createCache for forward but received one of another backend",
      );
    const slots = options.slots ?? tokens.map((_, i) => i);
    if (slots.length !== tokens.length)
      throw new QError(
        'E_SHAPE',
        `Expected one slot per sequence (${tokens.length}) for forward but received ${slots.length}`,
      );
    const used = new Set<number>();
    for (const s of slots) {
      if (!Number.isInteger(s) || s < 0 || s >= cache.batch || used.has(s))
        throw new QError(
          'E_ARG',
          `Expected distinct cache slots in [0, ${cache.batch}) for forward but received ${JSON.stringify(slots)}`,
        );
      used.add(s);
    }
    const hook = options.hook;
    const starts: number[] = [];
    let rows = 0;
    for (let b = 0; b < tokens.length; b++) {
      const seq = tokens[b] as readonly number[];
      for (const t of seq)
        if (!Number.isInteger(t) || t < 0 || t >= cfg.vocabSize)
          throw new QError('E_ARG', `Expected token ids in [0, ${cfg.vocabSize}) but received ${t}`);
      starts.push(rows);
      rows += seq.length;
    }
    const mode = options.logits ?? 'all';
    if (mode === 'last')
      tokens.forEach((seq, b) => {
        if (seq.length === 0)
          throw new QError('E_ARG', `Expected at least one new token for sequence ${b} but received none`);
      });
    const pool = poolOf(cache);
    pool.reserve(
      slots,
      tokens.map((t) => t.length),
    );
    const past = slots.map((s) => pool.lens[s] as number);
    const shard = this.shard;
    const v0 = shard?.vocab.start ?? 0;
    const v1 = shard?.vocab.end ?? cfg.vocabSize;
    let x: Float32Array = new Float32Array(rows * d);
    {
      let r = 0;
      for (const seq of tokens)
        for (const t of seq) {
          // A shard holds only its vocabulary rows; the other ranks fill the rest and the sum assembles x.
          if (t >= v0 && t < v1) x.set(this.weights.embed.subarray((t - v0) * d, (t - v0 + 1) * d), r * d);
          r++;
        }
    }
    if (shard !== undefined) x = await shard.allReduce('model.embed_tokens', x, rows);
    const reduce = (l: Linear, y: Float32Array): Promise<Float32Array> | Float32Array =>
      shard === undefined ? y : shard.allReduce(l.name, y, rows);
    const run = (l: Linear, input: Float32Array): Promise<Float32Array> => {
      hook?.(l.name, input, rows, l.inFeatures);
      return l.forward(input, rows);
    };
    const scale = 1 / Math.sqrt(hd);
    const ps = cache.pageSize;
    const maxLen = Math.max(0, ...tokens.map((s, b) => (past[b] as number) + s.length));
    const scores = new Float64Array(maxLen);
    for (let li = 0; li < cfg.numLayers; li++) {
      const L = this.weights.layers[li] as CpuLayerWeights;
      const h = rmsNorm(x, rows, d, L.inputNorm, cfg.rmsNormEps);
      const q = await run(L.q, h);
      const k = await run(L.k, h);
      const v = await run(L.v, h);
      const att = new Float32Array(rows * nh * hd);
      for (let b = 0; b < tokens.length; b++) {
        const seqLen = (tokens[b] as readonly number[]).length;
        const start = past[b] as number;
        const [kp, vp] = pool.pagesOf(li, slots[b] as number);
        for (let t = 0; t < seqLen; t++) {
          const r = (starts[b] as number) + t;
          const pos = start + t;
          this.rope.apply(q, r * nh * hd, nh, pos, cfg.ropeStyle);
          this.rope.apply(k, r * kvd, nkv, pos, cfg.ropeStyle);
          const page = Math.floor(pos / ps);
          const off = (pos % ps) * kvd;
          (kp[page] as Float32Array).set(k.subarray(r * kvd, (r + 1) * kvd), off);
          (vp[page] as Float32Array).set(v.subarray(r * kvd, (r + 1) * kvd), off);
        }
        for (let t = 0; t < seqLen; t++) {
          const r = (starts[b] as number) + t;
          const n = start + t + 1;
          for (let hh = 0; hh < nh; hh++) {
            const qo = r * nh * hd + hh * hd;
            const ko = Math.floor(hh / groups) * hd;
            for (let p = 0; p < n; p++) {
              let s = 0;
              const kc = kp[Math.floor(p / ps)] as Float32Array;
              const o = (p % ps) * kvd + ko;
              for (let i = 0; i < hd; i++) s += (q[qo + i] as number) * (kc[o + i] as number);
              scores[p] = s * scale;
            }
            softmaxInPlace(scores, 0, n);
            const ao = r * nh * hd + hh * hd;
            for (let i = 0; i < hd; i++) {
              let s = 0;
              for (let p = 0; p < n; p++) {
                const vc = vp[Math.floor(p / ps)] as Float32Array;
                s += (scores[p] as number) * (vc[(p % ps) * kvd + ko + i] as number);
              }
              att[ao + i] = s;
            }
          }
        }
      }
      const o = await reduce(L.o, await run(L.o, att));
      for (let i = 0; i < x.length; i++) x[i] = (x[i] as number) + (o[i] as number);
      const h2 = rmsNorm(x, rows, d, L.postNorm, cfg.rmsNormEps);
      const g = await run(L.gate, h2);
      const u = await run(L.up, h2);
      for (let i = 0; i < g.length; i++) {
        const a = g[i] as number;
        g[i] = (a / (1 + Math.exp(-a))) * (u[i] as number);
      }
      const dn = await reduce(L.down, await run(L.down, g));
      for (let i = 0; i < x.length; i++) x[i] = (x[i] as number) + (dn[i] as number);
    }
    slots.forEach((s, b) => {
      pool.lens[s] = (pool.lens[s] as number) + (tokens[b] as readonly number[]).length;
    });
    if (mode === 'none') return new Float32Array(0);
    let hin = x;
    let hrows = rows;
    if (mode === 'last') {
      hin = new Float32Array(tokens.length * d);
      hrows = tokens.length;
      for (let b = 0; b < tokens.length; b++) {
        const r = (starts[b] as number) + (tokens[b] as readonly number[]).length - 1;
        hin.set(x.subarray(r * d, (r + 1) * d), b * d);
      }
    }
    const hf = rmsNorm(hin, hrows, d, this.weights.finalNorm, cfg.rmsNormEps);
    hook?.(this.weights.lmHead.name, hf, hrows, d);
    const logits = await this.weights.lmHead.forward(hf, hrows);
    return shard === undefined ? logits : shard.gatherLogits(logits, hrows);
  }

  /** Marks the model disposed (its memory is garbage-collected; the CPU worker threads are shared). */
  async dispose(): Promise<void> {
    this.disposed = true;
  }

  private check(): void {
    if (this.disposed)
      throw new QError('E_DISPOSED', 'Expected a live model but received one that was disposed');
  }
}

function vocabRowsOf(config: ModelConfig, shard: ShardCollectives | undefined): number {
  if (shard === undefined) return config.vocabSize;
  const { start, end } = shard.vocab;
  if (
    !Number.isInteger(start) ||
    !Number.isInteger(end) ||
    start < 0 ||
    end <= start ||
    end > config.vocabSize
  )
    throw new QError(
      'E_ARG',
      `Expected a vocabulary range within [0, ${config.vocabSize}) for shard.vocab but received [${start}, ${end})`,
    );
  return end - start;
}

function checkConfig(c: ModelConfig): void {
  const pos = (v: number, name: string): void => {
    if (!Number.isInteger(v) || v < 1)
      throw new QError('E_ARG', `Expected a positive integer for config.${name} but received ${v}`);
  };
  pos(c.hiddenSize, 'hiddenSize');
  pos(c.intermediateSize, 'intermediateSize');
  pos(c.numLayers, 'numLayers');
  pos(c.numHeads, 'numHeads');
  pos(c.numKvHeads, 'numKvHeads');
  pos(c.headDim, 'headDim');
  pos(c.vocabSize, 'vocabSize');
  if (c.numHeads % c.numKvHeads !== 0)
    throw new QError(
      'E_ARG',
      `Expected numHeads (${c.numHeads}) to be a multiple of numKvHeads for config.numKvHeads but received ${c.numKvHeads}`,
    );
  if (c.headDim % 2 !== 0)
    throw new QError(
      'E_ARG',
      `Expected an even config.headDim (RoPE rotates pairs) but received ${c.headDim}`,
    );
}
