// Temporary: the bridge from today's synchronous CPU `Model` to the `CausalLM` contract of lm.ts, until the
// CPU model implements that contract itself. When it does, `asCausalLM(model)` becomes `model`,
// `openModel` becomes `createModel(loadModel(path), { backend })`, and this file goes away; nothing else in
// engine/ or server/ changes.
import { type ModelConfig, QError } from '@q/core';
import { buildDemoModel } from '../demo-model';
import type { Backend, CacheOptions, CausalLM, ForwardOptions, KVCache } from '../lm';
import { loadModel } from '../load';
import { KVCache as DenseCache, Model } from '../model';
import type { TextTokenizer } from '../tokenizer';

/** Positions per page of the emulated paged cache (what the GPU cache uses too). */
const PAGE_SIZE = 16;

/**
 * A `KVCache` over the CPU model's dense cache: pages are counted (a slot of n positions holds ⌈n / 16⌉ of
 * them) and the pool is enforced, so the engine's accounting is checked as a real paged cache would check it.
 */
class CountedPagedCache implements KVCache {
  readonly pageSize = PAGE_SIZE;
  readonly pagesTotal: number;
  private disposed = false;

  constructor(
    readonly dense: DenseCache,
    pages: number | undefined,
  ) {
    this.pagesTotal = pages ?? dense.batch * Math.ceil(dense.capacity / PAGE_SIZE);
  }

  get batch(): number {
    return this.dense.batch;
  }
  get capacity(): number {
    return this.dense.capacity;
  }
  get lengths(): readonly number[] {
    return this.dense.lengths;
  }
  get pagesInUse(): number {
    let n = 0;
    for (const len of this.dense.lengths) n += Math.ceil(len / PAGE_SIZE);
    return n;
  }
  reset(slot?: number): void {
    this.check();
    if (slot === undefined) this.dense.lengths.fill(0);
    else this.dense.lengths[slot] = 0;
  }
  dispose(): void {
    this.disposed = true;
  }
  check(): void {
    if (this.disposed) throw new QError('E_DISPOSED', 'Expected a live KV cache but received a disposed one');
  }
}

class CpuCausalLM implements CausalLM {
  readonly backend: Backend = 'cpu';
  constructor(readonly model: Model) {}

  get config(): ModelConfig {
    return this.model.config;
  }

  createCache(options: CacheOptions = {}): KVCache {
    const dense = new DenseCache(this.config, options.batch ?? 1, options.capacity ?? this.config.maxSeqLen);
    return new CountedPagedCache(dense, options.pages);
  }

  async forward(tokens: readonly (readonly number[])[], options: ForwardOptions = {}): Promise<Float32Array> {
    const cache = options.cache ?? this.createCache({ batch: tokens.length });
    if (!(cache instanceof CountedPagedCache))
      throw new QError('E_ARG', 'Expected a cache made by this model for forward but received another one');
    cache.check();
    const slots = options.slots ?? tokens.map((_, i) => i);
    if (slots.length !== tokens.length)
      throw new QError('E_SHAPE', `Expected ${tokens.length} slots for forward but received ${slots.length}`);
    // Every slot of the dense cache gets a row; slots not named get no tokens and are left alone.
    const bySlot: number[][] = Array.from({ length: cache.batch }, () => []);
    let pages = cache.pagesInUse;
    slots.forEach((s, i) => {
      if (!Number.isInteger(s) || s < 0 || s >= cache.batch || (bySlot[s] as number[]).length > 0)
        throw new QError(
          'E_ARG',
          `Expected distinct slots in [0, ${cache.batch}) for forward but received ${s}`,
        );
      const seq = tokens[i] as readonly number[];
      bySlot[s] = [...seq];
      const len = cache.lengths[s] as number;
      pages += Math.ceil((len + seq.length) / PAGE_SIZE) - Math.ceil(len / PAGE_SIZE);
    });
    if (pages > cache.pagesTotal)
      throw new QError(
        'E_ARG',
        `Expected at most ${cache.pagesTotal} KV pages (the pool) for forward but received a batch that needs ${pages}`,
      );
    const mode = options.logits ?? 'all';
    const all = this.model.forward(bySlot, {
      cache: cache.dense,
      logits: mode === 'none' ? 'none' : 'all',
      ...(options.hook ? { hook: options.hook } : {}),
    });
    if (mode === 'none') return all;
    const vocab = this.config.vocabSize;
    const start: number[] = [];
    let row = 0;
    for (const seq of bySlot) {
      start.push(row);
      row += seq.length;
    }
    const rows: [number, number][] = [];
    slots.forEach((s, i) => {
      const n = (tokens[i] as readonly number[]).length;
      const first = start[s] as number;
      if (mode === 'last') {
        if (n === 0)
          throw new QError('E_ARG', `Expected at least one new token for sequence ${i} but received none`);
        rows.push([first + n - 1, 1]);
      } else rows.push([first, n]);
    });
    const out = new Float32Array(rows.reduce((a, [, n]) => a + n, 0) * vocab);
    let o = 0;
    for (const [first, n] of rows) {
      out.set(all.subarray(first * vocab, (first + n) * vocab), o);
      o += n * vocab;
    }
    return out;
  }

  async dispose(): Promise<void> {}
}

/**
 * The CPU `Model` as a `CausalLM` (batched forward over named slots, a cache with counted pages).
 *
 * @example
 * ```ts
 * const lm = asCausalLM(loadModel('stories260K.bin').model);
 * const gen = new Generator(lm, { maxBatch: 4 });
 * ```
 */
export function asCausalLM(model: Model): CausalLM {
  return new CpuCausalLM(model);
}

/** A model ready to serve: the model, its tokenizer and the name clients address it by. */
export interface OpenedModel {
  readonly model: CausalLM;
  readonly tokenizer: TextTokenizer;
  /** The model's id in the API (`/v1/models`). */
  readonly name: string;
}

/**
 * Opens a model for serving: a path `loadModel` reads, or `demo` for the embedded demo model. Only the CPU
 * backend exists so far; `cuda` is refused with `E_UNSUPPORTED`.
 *
 * @example
 * ```ts
 * const { model, tokenizer, name } = openModel('models/stories260K/stories260K.bin');
 * ```
 */
export function openModel(path: string, options: { readonly device?: string } = {}): OpenedModel {
  const device = options.device ?? 'cpu';
  if (device !== 'cpu')
    throw new QError(
      'E_UNSUPPORTED',
      `Expected cpu for --device but received ${JSON.stringify(device)}: the GPU model is not part of this build`,
    );
  if (path === 'demo') {
    const demo = buildDemoModel();
    return {
      model: asCausalLM(Model.fromFloatWeights(demo.config, demo.weights)),
      tokenizer: demo.tokenizer,
      name: 'demo',
    };
  }
  const loaded = loadModel(path);
  const base = loaded.path.split(/[\\/]/).pop() ?? loaded.path;
  return { model: asCausalLM(loaded.model), tokenizer: loaded.tokenizer, name: base.replace(/\.bin$/, '') };
}
