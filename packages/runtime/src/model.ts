import { layerLinearNames, layerLinears, llamaNormNames, type ModelConfig, QError } from '@q/core';
import { FloatLinear, type Linear } from './cpu/linear';
import { RopeTable, rmsNorm, ropeInvFreq, softmaxInPlace } from './cpu/ops';

/** Called with the input of every linear layer before it runs: x is [rows, cols] row-major. */
export type LinearInputHook = (name: string, x: Float32Array, rows: number, cols: number) => void;

/** The weights of one decoder layer. */
export interface LayerWeights {
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

/** Everything a forward pass needs; linears may be float or quantized. */
export interface ModelWeights {
  /** [vocab, hidden]. */
  readonly embed: Float32Array;
  readonly layers: readonly LayerWeights[];
  readonly finalNorm: Float32Array;
  /** The classifier; for tied embeddings a float linear over `embed` unless a recipe quantized it. */
  readonly lmHead: Linear;
}

export { layerLinearNames };

/**
 * Key/value cache for a batch of sequences: per layer, [batch, capacity, kvHeads·headDim] for keys and values,
 * and the number of positions filled for each sequence.
 *
 * @example
 * ```ts
 * const cache = new KVCache(model.config, 2, 256);
 * model.forward([[1, 5, 9], [1, 7]], { cache });
 * cache.lengths; // [3, 2]
 * ```
 */
export class KVCache {
  readonly keys: Float32Array[];
  readonly values: Float32Array[];
  readonly lengths: number[];
  readonly kvDim: number;

  constructor(
    config: ModelConfig,
    readonly batch: number,
    readonly capacity: number,
  ) {
    if (!Number.isInteger(batch) || batch < 1)
      throw new QError('E_ARG', `Expected a positive integer for batch but received ${batch}`);
    if (!Number.isInteger(capacity) || capacity < 1)
      throw new QError('E_ARG', `Expected a positive integer for capacity but received ${capacity}`);
    this.kvDim = config.numKvHeads * config.headDim;
    this.keys = [];
    this.values = [];
    for (let l = 0; l < config.numLayers; l++) {
      this.keys.push(new Float32Array(batch * capacity * this.kvDim));
      this.values.push(new Float32Array(batch * capacity * this.kvDim));
    }
    this.lengths = new Array<number>(batch).fill(0);
  }

  /** Forgets every sequence (keeps the memory). */
  reset(): void {
    this.lengths.fill(0);
  }
}

/** Options of one forward pass. */
export interface ForwardOptions {
  /** Cache to read earlier positions from and append to; a fresh one (sized to the input) when absent. */
  readonly cache?: KVCache;
  /** Which logits to return: every input position (default), the last of each sequence, or none. */
  readonly logits?: 'all' | 'last' | 'none';
  /** Observes every linear layer input (calibration). */
  readonly hook?: LinearInputHook;
}

/**
 * A Llama-family decoder (Llama 2/3, Mistral, Qwen2) on the CPU: RMSNorm, RoPE (interleaved or half, theta,
 * linear or llama3 scaling), grouped-query causal attention with a KV cache, SwiGLU MLP, optional q/k/v bias,
 * tied embeddings. Float32 activations; every projection is a `Linear` (float or quantized).
 *
 * @example
 * ```ts
 * const model = Model.fromFloatWeights(config, weights); // weights: Map<HF name, Tensor>
 * const logits = model.forward([[config.bosTokenId]], { logits: 'last' }); // [1, vocab]
 * ```
 */
export class Model {
  private readonly rope: RopeTable;

  constructor(
    readonly config: ModelConfig,
    readonly weights: ModelWeights,
  ) {
    checkConfig(config);
    const d = config.hiddenSize;
    if (weights.embed.length !== config.vocabSize * d)
      throw new QError(
        'E_SHAPE',
        `Expected ${config.vocabSize * d} values ([${config.vocabSize}, ${d}]) for model.embed_tokens.weight but received ${weights.embed.length}`,
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
  static fromFloatWeights(
    config: ModelConfig,
    weights: ReadonlyMap<string, { toFloat32(): Float32Array; readonly shape: readonly number[] }>,
  ): Model {
    checkConfig(config);
    const get = (name: string, shape: readonly number[]): Float32Array => {
      const t = weights.get(name);
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
   * `linear(name, n, k, hasBias)` for projections. Used for float and quantized models alike.
   */
  static fromGetters(
    config: ModelConfig,
    vector: (name: string, shape: readonly number[]) => Float32Array,
    linearOrNone: (name: string, n: number, k: number, hasBias: boolean) => Linear | undefined,
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
    const layers: LayerWeights[] = [];
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
    const embed = vector('model.embed_tokens.weight', [config.vocabSize, d]);
    // A quantized model may carry its own classifier even when the float one was tied to the embeddings.
    const head = linearOrNone('lm_head', config.vocabSize, d, false);
    const lmHead =
      head ??
      (config.tieWordEmbeddings
        ? new FloatLinear('lm_head', embed, config.vocabSize, d)
        : linear('lm_head', config.vocabSize, d, false));
    return new Model(config, { embed, layers, finalNorm: vector('model.norm.weight', [d]), lmHead });
  }

  /** Every linear layer by name, in forward order (lm_head last). */
  linears(): Map<string, Linear> {
    const m = new Map<string, Linear>();
    for (const l of this.weights.layers)
      for (const x of [l.q, l.k, l.v, l.o, l.gate, l.up, l.down]) m.set(x.name, x);
    m.set(this.weights.lmHead.name, this.weights.lmHead);
    return m;
  }

  /** A cache sized for `batch` sequences of up to `capacity` tokens (default: the model's context). */
  createCache(batch = 1, capacity = this.config.maxSeqLen): KVCache {
    return new KVCache(this.config, batch, capacity);
  }

  /**
   * Runs the decoder over new tokens of each sequence of a batch (sequences may differ in length; sequence b
   * continues at position `cache.lengths[b]`). Returns logits [rows, vocab]: all new positions of all
   * sequences in order (`'all'`), or one row per sequence (`'last'`).
   */
  forward(tokens: readonly (readonly number[])[], options: ForwardOptions = {}): Float32Array {
    const cfg = this.config;
    const d = cfg.hiddenSize;
    const hd = cfg.headDim;
    const nh = cfg.numHeads;
    const nkv = cfg.numKvHeads;
    const kvd = nkv * hd;
    const groups = nh / nkv;
    const cache =
      options.cache ??
      new KVCache(cfg, Math.max(1, tokens.length), Math.max(1, ...tokens.map((t) => t.length)));
    if (tokens.length !== cache.batch)
      throw new QError(
        'E_SHAPE',
        `Expected ${cache.batch} sequences for forward but received ${tokens.length}`,
      );
    const hook = options.hook;
    const starts: number[] = [];
    let rows = 0;
    for (let b = 0; b < tokens.length; b++) {
      const seq = tokens[b] as readonly number[];
      const have = cache.lengths[b] as number;
      if (have + seq.length > cache.capacity)
        throw new QError(
          'E_ARG',
          `Expected at most ${cache.capacity} positions (the context) for sequence ${b} but received ${have + seq.length}`,
        );
      for (const t of seq)
        if (!Number.isInteger(t) || t < 0 || t >= cfg.vocabSize)
          throw new QError('E_ARG', `Expected token ids in [0, ${cfg.vocabSize}) but received ${t}`);
      starts.push(rows);
      rows += seq.length;
    }
    const x = new Float32Array(rows * d);
    {
      let r = 0;
      for (const seq of tokens)
        for (const t of seq) {
          x.set(this.weights.embed.subarray(t * d, (t + 1) * d), r * d);
          r++;
        }
    }
    const run = (l: Linear, input: Float32Array): Float32Array => {
      hook?.(l.name, input, rows, l.inFeatures);
      return l.forward(input, rows);
    };
    const scale = 1 / Math.sqrt(hd);
    const maxLen = Math.max(0, ...tokens.map((s, b) => (cache.lengths[b] as number) + s.length));
    const scores = new Float64Array(maxLen);
    for (let li = 0; li < cfg.numLayers; li++) {
      const L = this.weights.layers[li] as LayerWeights;
      const h = rmsNorm(x, rows, d, L.inputNorm, cfg.rmsNormEps);
      const q = run(L.q, h);
      const k = run(L.k, h);
      const v = run(L.v, h);
      const kc = cache.keys[li] as Float32Array;
      const vc = cache.values[li] as Float32Array;
      const att = new Float32Array(rows * nh * hd);
      for (let b = 0; b < tokens.length; b++) {
        const seqLen = (tokens[b] as readonly number[]).length;
        const past = cache.lengths[b] as number;
        const base = b * cache.capacity * kvd;
        for (let t = 0; t < seqLen; t++) {
          const r = (starts[b] as number) + t;
          const pos = past + t;
          this.rope.apply(q, r * nh * hd, nh, pos, cfg.ropeStyle);
          this.rope.apply(k, r * kvd, nkv, pos, cfg.ropeStyle);
          kc.set(k.subarray(r * kvd, (r + 1) * kvd), base + pos * kvd);
          vc.set(v.subarray(r * kvd, (r + 1) * kvd), base + pos * kvd);
        }
        for (let t = 0; t < seqLen; t++) {
          const r = (starts[b] as number) + t;
          const n = past + t + 1;
          for (let hh = 0; hh < nh; hh++) {
            const qo = r * nh * hd + hh * hd;
            const ko = base + Math.floor(hh / groups) * hd;
            for (let p = 0; p < n; p++) {
              let s = 0;
              const kp = ko + p * kvd;
              for (let i = 0; i < hd; i++) s += (q[qo + i] as number) * (kc[kp + i] as number);
              scores[p] = s * scale;
            }
            softmaxInPlace(scores, 0, n);
            const ao = r * nh * hd + hh * hd;
            for (let i = 0; i < hd; i++) {
              let s = 0;
              for (let p = 0; p < n; p++) s += (scores[p] as number) * (vc[ko + p * kvd + i] as number);
              att[ao + i] = s;
            }
          }
        }
      }
      const o = run(L.o, att);
      for (let i = 0; i < x.length; i++) x[i] = (x[i] as number) + (o[i] as number);
      const h2 = rmsNorm(x, rows, d, L.postNorm, cfg.rmsNormEps);
      const g = run(L.gate, h2);
      const u = run(L.up, h2);
      for (let i = 0; i < g.length; i++) {
        const a = g[i] as number;
        g[i] = (a / (1 + Math.exp(-a))) * (u[i] as number);
      }
      const dn = run(L.down, g);
      for (let i = 0; i < x.length; i++) x[i] = (x[i] as number) + (dn[i] as number);
    }
    for (let b = 0; b < tokens.length; b++)
      cache.lengths[b] = (cache.lengths[b] as number) + (tokens[b] as readonly number[]).length;
    const mode = options.logits ?? 'all';
    if (mode === 'none') return new Float32Array(0);
    let hin = x;
    let hrows = rows;
    if (mode === 'last') {
      hin = new Float32Array(tokens.length * d);
      hrows = 0;
      for (let b = 0; b < tokens.length; b++) {
        const len = (tokens[b] as readonly number[]).length;
        if (len === 0)
          throw new QError('E_ARG', `Expected at least one new token for sequence ${b} but received none`);
        const r = (starts[b] as number) + len - 1;
        hin.set(x.subarray(r * d, (r + 1) * d), b * d);
        hrows++;
      }
    }
    const hf = rmsNorm(hin, hrows, d, this.weights.finalNorm, cfg.rmsNormEps);
    hook?.(this.weights.lmHead.name, hf, hrows, d);
    return this.weights.lmHead.forward(hf, hrows);
  }
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
