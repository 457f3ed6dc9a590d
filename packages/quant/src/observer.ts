import { describeValue, QError } from '@q/core';

/**
 * Calibration statistics of linear-layer inputs: per input channel max|X| for every layer, optionally a
 * histogram of |X| per layer for percentiles. Mergeable across batches (same shape: element-wise max, counts
 * summed) and across tensor-parallel shards (channel-sharded layers: concatenation in rank order).
 */

/** Histogram bins per octave of |x|; bin edges are 2^(e / HIST_BINS_PER_OCTAVE). */
export const HIST_BINS_PER_OCTAVE = 8;
/** |x| below 2^HIST_MIN_EXP falls in bin 0; above 2^HIST_MAX_EXP in the last bin. */
export const HIST_MIN_EXP = -24;
export const HIST_MAX_EXP = 24;
const HIST_BINS = (HIST_MAX_EXP - HIST_MIN_EXP) * HIST_BINS_PER_OCTAVE + 1;

export const OBSERVER_FORMAT_VERSION = 1;

export interface ObserverOptions {
  /**
   * Keep a per-layer histogram of |x| (log-spaced, 8 bins per octave) so `percentile()` can answer; costs
   * ~1.5 kB per layer and a log2 per element. Default false.
   */
  readonly histogram?: boolean;
}

/** Statistics of one layer's input. */
export interface LayerStats {
  /** Input channels. */
  readonly k: number;
  /** Rows (tokens) observed. */
  rows: number;
  /** Per-channel max|x| (f32 values, exact). */
  readonly maxAbs: Float32Array;
  /** Histogram counts of |x| when enabled. */
  readonly hist?: Float64Array;
}

/** The JSON form written by `toJSON()`. */
export interface ObserverJSON {
  readonly formatVersion: number;
  readonly options: { readonly histogram: boolean };
  readonly layers: Record<string, { k: number; rows: number; maxAbs: number[]; hist?: number[] }>;
}

function histBin(v: number): number {
  if (v <= 0) return 0;
  const e = Math.floor((Math.log2(v) - HIST_MIN_EXP) * HIST_BINS_PER_OCTAVE);
  return e < 0 ? 0 : e >= HIST_BINS ? HIST_BINS - 1 : e;
}

/**
 * Records per-channel max|X| of every linear input.
 *
 * @example
 * ```ts
 * const obs = new ActivationObserver();
 * obs.observe('model.layers.0.self_attn.q_proj', x, 64); // x: Float32Array [m, 64]
 * obs.maxAbs('model.layers.0.self_attn.q_proj'); // Float32Array [64]
 * ```
 */
export class ActivationObserver {
  readonly options: Required<ObserverOptions>;
  private readonly layers = new Map<string, LayerStats>();

  constructor(options: ObserverOptions = {}) {
    this.options = { histogram: options.histogram ?? false };
  }

  /**
   * Layer names in first-observed order.
   *
   * @example
   * ```ts
   * obs.names() // ['model.layers.0.self_attn.q_proj', …]
   * ```
   */
  names(): string[] {
    return [...this.layers.keys()];
  }

  /**
   * Whether a layer has statistics.
   *
   * @example
   * ```ts
   * obs.has('model.layers.0.mlp.down_proj') // true
   * ```
   */
  has(name: string): boolean {
    return this.layers.has(name);
  }

  /**
   * The statistics of one layer; throws `E_ARG` listing the observed layers when absent.
   *
   * @example
   * ```ts
   * obs.get('model.layers.0.mlp.down_proj').rows // tokens seen
   * ```
   */
  get(name: string): LayerStats {
    const s = this.layers.get(name);
    if (!s) {
      throw new QError(
        'E_ARG',
        `Expected calibration statistics for layer ${name} but received none (observed: ${describeValue(this.names())})`,
      );
    }
    return s;
  }

  /**
   * Per-channel max|X| of one layer.
   *
   * @example
   * ```ts
   * obs.maxAbs('model.layers.0.self_attn.q_proj') // Float32Array [k]
   * ```
   */
  maxAbs(name: string): Float32Array {
    return this.get(name).maxAbs;
  }

  /**
   * The calibration range r = max_j max|X_j| of one layer.
   *
   * @example
   * ```ts
   * obs.range('model.layers.0.mlp.down_proj') // e.g. 9.63
   * ```
   */
  range(name: string): number {
    let r = 0;
    for (const v of this.get(name).maxAbs) r = Math.max(r, v);
    return r;
  }

  /**
   * Feeds rows x[m, k] of layer `name`'s input. Throws `E_NUMERIC` naming the layer on NaN/±Inf and
   * `E_SHAPE` when k changes between calls.
   *
   * @example
   * ```ts
   * obs.observe('model.layers.0.self_attn.q_proj', x, 64); // x: Float32Array [m, 64]
   * ```
   */
  observe(name: string, x: Float32Array, k: number): void {
    if (!Number.isSafeInteger(k) || k < 1 || x.length % k !== 0) {
      throw new QError(
        'E_SHAPE',
        `Expected a whole number of rows of k=${k} for layer ${name} but received ${x.length} values`,
      );
    }
    let s = this.layers.get(name);
    if (!s) {
      s = {
        k,
        rows: 0,
        maxAbs: new Float32Array(k),
        ...(this.options.histogram ? { hist: new Float64Array(HIST_BINS) } : {}),
      };
      this.layers.set(name, s);
    } else if (s.k !== k) {
      throw new QError('E_SHAPE', `Expected k=${s.k} for layer ${name} but received k=${k}`);
    }
    const m = x.length / k;
    const mx = s.maxAbs;
    const hist = s.hist;
    for (let i = 0; i < m; i++) {
      const o = i * k;
      for (let j = 0; j < k; j++) {
        const v = Math.abs(x[o + j] as number);
        if (!(v <= 3.4028234663852886e38)) {
          throw new QError(
            'E_NUMERIC',
            `Expected finite activations for layer ${name} but received ${x[o + j]} at row ${i}, channel ${j}`,
          );
        }
        if (v > (mx[j] as number)) mx[j] = v;
        if (hist) {
          const b = histBin(v);
          hist[b] = (hist[b] as number) + 1;
        }
      }
    }
    s.rows += m;
  }

  /**
   * An upper estimate of the p-th percentile (0..100) of |X| over all elements of one layer's input (the upper
   * edge of the histogram bin, within 9% above the true value). Needs `histogram: true`.
   *
   * @example
   * ```ts
   * createObserver({ histogram: true }).percentile('model.layers.0.mlp.down_proj', 99.9)
   * ```
   */
  percentile(name: string, p: number): number {
    const s = this.get(name);
    if (!s.hist) {
      throw new QError(
        'E_ARG',
        `Expected an observer with histogram: true for percentile of ${name} but received none`,
      );
    }
    if (!(p >= 0 && p <= 100))
      throw new QError('E_ARG', `Expected p in [0, 100] for percentile but received ${p}`);
    let total = 0;
    for (const c of s.hist) total += c;
    const target = (p / 100) * total;
    let acc = 0;
    for (let b = 0; b < s.hist.length; b++) {
      acc += s.hist[b] as number;
      if (acc >= target && acc > 0) {
        return Math.min(this.range(name), 2 ** (HIST_MIN_EXP + (b + 1) / HIST_BINS_PER_OCTAVE));
      }
    }
    return this.range(name);
  }

  /**
   * Merges another observer into this one. `'max'` (default): the same layers over other batches or replicated
   * shards: element-wise max, rows and histograms summed. Layers only in `other` are copied. `'concat'`:
   * channel-sharded shards, see `ActivationObserver.concat`.
   *
   * @example
   * ```ts
   * batch0.merge(batch1); // same layers, more tokens
   * ```
   */
  merge(other: ActivationObserver, mode: 'max' | 'concat' = 'max'): this {
    if (mode === 'concat') {
      const merged = ActivationObserver.concat([this, other]);
      this.layers.clear();
      for (const n of merged.names()) this.layers.set(n, merged.get(n));
      return this;
    }
    if (mode !== 'max')
      throw new QError('E_ARG', `Expected 'max' or 'concat' for merge mode but received ${String(mode)}`);
    for (const [name, o] of other.layers) {
      const s = this.layers.get(name);
      if (!s) {
        this.layers.set(name, cloneStats(o, this.options.histogram));
        continue;
      }
      if (s.k !== o.k) {
        throw new QError(
          'E_SHAPE',
          `Expected k=${s.k} for layer ${name} in the merged observer but received k=${o.k} (use concat for channel-sharded layers)`,
        );
      }
      for (let j = 0; j < s.k; j++) s.maxAbs[j] = Math.max(s.maxAbs[j] as number, o.maxAbs[j] as number);
      s.rows += o.rows;
      if (s.hist && o.hist)
        for (let b = 0; b < s.hist.length; b++) s.hist[b] = (s.hist[b] as number) + (o.hist[b] as number);
    }
    return this;
  }

  /**
   * Joins tensor-parallel shards whose layers are split along the input channels (row-parallel layers such as
   * o_proj and down_proj): per layer, channels are concatenated in the order of `shards`. Every shard must
   * hold the same layer names; rows are the max over shards (they saw the same tokens), histograms summed.
   *
   * @example
   * ```ts
   * const full = ActivationObserver.concat([rank0, rank1]); // k = k0 + k1 per layer
   * ```
   */
  static concat(shards: readonly ActivationObserver[]): ActivationObserver {
    const first = shards[0];
    if (!first)
      throw new QError('E_ARG', 'Expected at least one shard for ActivationObserver.concat but received 0');
    const out = new ActivationObserver(first.options);
    for (const name of first.names()) {
      const parts = shards.map((s, i) => {
        if (!s.has(name)) {
          throw new QError(
            'E_ARG',
            `Expected layer ${name} in shard ${i} for ActivationObserver.concat but received none`,
          );
        }
        return s.get(name);
      });
      const k = parts.reduce((a, p) => a + p.k, 0);
      const maxAbs = new Float32Array(k);
      let off = 0;
      for (const p of parts) {
        maxAbs.set(p.maxAbs, off);
        off += p.k;
      }
      let hist: Float64Array | undefined;
      if (parts.every((p) => p.hist)) {
        hist = new Float64Array(HIST_BINS);
        for (const p of parts)
          for (let b = 0; b < HIST_BINS; b++) hist[b] = (hist[b] as number) + (p.hist?.[b] as number);
      }
      out.layers.set(name, {
        k,
        rows: Math.max(...parts.map((p) => p.rows)),
        maxAbs,
        ...(hist ? { hist } : {}),
      });
    }
    for (let i = 1; i < shards.length; i++) {
      for (const n of shards[i]?.names() ?? []) {
        if (!first.has(n))
          throw new QError(
            'E_ARG',
            `Expected layer ${n} of shard ${i} in shard 0 for ActivationObserver.concat but received none`,
          );
      }
    }
    return out;
  }

  /**
   * A JSON-serialisable object (f32 values survive a JSON round trip exactly).
   *
   * @example
   * ```ts
   * fs.writeFileSync('stats.json', JSON.stringify(obs));
   * ```
   */
  toJSON(): ObserverJSON {
    const layers: ObserverJSON['layers'] = {};
    for (const [name, s] of this.layers) {
      layers[name] = {
        k: s.k,
        rows: s.rows,
        maxAbs: Array.from(s.maxAbs),
        ...(s.hist ? { hist: Array.from(s.hist) } : {}),
      };
    }
    return { formatVersion: OBSERVER_FORMAT_VERSION, options: { histogram: this.options.histogram }, layers };
  }

  /**
   * Rebuilds an observer from `toJSON()` output (an object or its JSON text), validating it: another format
   * version → `E_VERSION`, malformed → `E_FORMAT`, non-finite or negative statistics → `E_NUMERIC` naming the layer.
   *
   * @example
   * ```ts
   * const obs = ActivationObserver.fromJSON(fs.readFileSync('stats.json', 'utf8'));
   * ```
   */
  static fromJSON(json: ObserverJSON | string): ActivationObserver {
    let obj: unknown = json;
    if (typeof json === 'string') {
      try {
        obj = JSON.parse(json);
      } catch (e) {
        throw new QError(
          'E_FORMAT',
          `Expected observer JSON but received text that does not parse (${(e as Error).message})`,
        );
      }
    }
    const o = obj as Partial<ObserverJSON> | null;
    if (typeof o !== 'object' || o === null || typeof o.layers !== 'object' || o.layers === null) {
      throw new QError(
        'E_FORMAT',
        `Expected an observer JSON object with layers but received ${describeValue(obj)}`,
      );
    }
    if (o.formatVersion !== OBSERVER_FORMAT_VERSION) {
      throw new QError(
        'E_VERSION',
        `Expected observer formatVersion ${OBSERVER_FORMAT_VERSION} but received ${describeValue(o.formatVersion)}`,
      );
    }
    const out = new ActivationObserver({ histogram: o.options?.histogram === true });
    for (const [name, l] of Object.entries(o.layers)) {
      if (!l || !Number.isSafeInteger(l.k) || !Array.isArray(l.maxAbs) || l.maxAbs.length !== l.k) {
        throw new QError(
          'E_FORMAT',
          `Expected {k, rows, maxAbs[k]} for observer layer ${name} but received ${describeValue(l)}`,
        );
      }
      const maxAbs = new Float32Array(l.k);
      l.maxAbs.forEach((v, j) => {
        if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) {
          throw new QError(
            'E_NUMERIC',
            `Expected a finite max|X| ≥ 0 for layer ${name} channel ${j} but received ${describeValue(v)}`,
          );
        }
        maxAbs[j] = v;
      });
      const hist =
        Array.isArray(l.hist) && l.hist.length === HIST_BINS ? Float64Array.from(l.hist) : undefined;
      out.layers.set(name, { k: l.k, rows: Number(l.rows) || 0, maxAbs, ...(hist ? { hist } : {}) });
    }
    return out;
  }

  /**
   * Sets a layer's per-channel max|X| directly (statistics computed elsewhere, e.g. on a GPU).
   * Throws `E_NUMERIC` naming the layer on NaN/±Inf/negative values.
   *
   * @example
   * ```ts
   * obs.setMaxAbs('model.layers.0.mlp.down_proj', gpuMaxAbs, 4096);
   * ```
   */
  setMaxAbs(name: string, maxAbs: Float32Array, rows = 0): void {
    for (let j = 0; j < maxAbs.length; j++) {
      const v = maxAbs[j] as number;
      if (!(v >= 0 && v <= 3.4028234663852886e38)) {
        throw new QError(
          'E_NUMERIC',
          `Expected a finite max|X| ≥ 0 for layer ${name} channel ${j} but received ${v}`,
        );
      }
    }
    this.layers.set(name, { k: maxAbs.length, rows, maxAbs: Float32Array.from(maxAbs) });
  }
}

function cloneStats(s: LayerStats, histogram: boolean): LayerStats {
  return {
    k: s.k,
    rows: s.rows,
    maxAbs: Float32Array.from(s.maxAbs),
    ...(histogram && s.hist ? { hist: Float64Array.from(s.hist) } : {}),
  };
}

/**
 * Creates an empty observer.
 *
 * @example
 * ```ts
 * const obs = createObserver({ histogram: true });
 * obs.observe('model.layers.0.mlp.down_proj', x, 172);
 * obs.percentile('model.layers.0.mlp.down_proj', 99.9);
 * ```
 */
export function createObserver(options: ObserverOptions = {}): ActivationObserver {
  return new ActivationObserver(options);
}
