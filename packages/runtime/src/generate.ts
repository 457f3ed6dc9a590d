import { QError, Rng } from '@q/core';
import type { CausalLM } from './lm';

/** Options of `generate`. Temperature 0 (the default) is greedy decoding. */
export interface GenerateOptions {
  /** New tokens at most (default 64); generation also stops when the context is full. */
  readonly maxTokens?: number;
  /** Softmax temperature; 0 means greedy (argmax). */
  readonly temperature?: number;
  /** Keep only the k most likely tokens before sampling (0 = all). */
  readonly topK?: number;
  /** Nucleus sampling: keep the smallest set of tokens whose probability reaches p (1 = all). */
  readonly topP?: number;
  /** Seed of the sampling PRNG (default 0), so sampled output is reproducible. */
  readonly seed?: number;
  /** Token ids that end generation (not emitted); default the model's EOS ids. */
  readonly stopTokens?: readonly number[];
  /**
   * Stops generation: checked before every forward step, so it takes effect within one step. The iterator then
   * throws `signal.reason` (a `DOMException` named `AbortError` unless the caller gave a reason), as Node's own
   * APIs do; tokens already yielded stay valid.
   */
  readonly signal?: AbortSignal;
}

/** Index of the largest value (lowest index on ties).
 *
 * @example
 * ```ts
 * argmax(Float32Array.of(1, 5, 5)); // 1
 * ```
 */
export function argmax(x: ArrayLike<number>, off = 0, n = x.length - off): number {
  let best = 0;
  let bv = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < n; i++) {
    const v = x[off + i] as number;
    if (v > bv) {
      bv = v;
      best = i;
    }
  }
  return best;
}

function checkOptions(o: GenerateOptions): void {
  const t = o.temperature ?? 0;
  if (!Number.isFinite(t) || t < 0)
    throw new QError('E_ARG', `Expected a temperature >= 0 but received ${t}`);
  const k = o.topK ?? 0;
  if (!Number.isInteger(k) || k < 0)
    throw new QError('E_ARG', `Expected an integer top-k >= 0 but received ${k}`);
  const p = o.topP ?? 1;
  if (!(p > 0 && p <= 1)) throw new QError('E_ARG', `Expected a top-p in (0, 1] but received ${p}`);
  const m = o.maxTokens ?? 64;
  if (!Number.isInteger(m) || m < 0)
    throw new QError('E_ARG', `Expected an integer max tokens >= 0 but received ${m}`);
}

/**
 * Picks the next token from one row of logits: argmax at temperature 0, else a draw from the softmax of
 * logits / temperature restricted by top-k and top-p.
 *
 * @example
 * ```ts
 * sampleToken(logits, { temperature: 0.8, topP: 0.9 }, new Rng(1));
 * ```
 */
export function sampleToken(logits: Float32Array, options: GenerateOptions, rng: Rng): number {
  const t = options.temperature ?? 0;
  if (t === 0) return argmax(logits);
  const v = logits.length;
  let idx = Array.from({ length: v }, (_, i) => i);
  idx.sort((a, b) => (logits[b] as number) - (logits[a] as number) || a - b);
  const k = options.topK ?? 0;
  if (k > 0 && k < v) idx = idx.slice(0, k);
  const max = logits[idx[0] as number] as number;
  let probs = idx.map((i) => Math.exp(((logits[i] as number) - max) / t));
  let z = probs.reduce((a, b) => a + b, 0);
  probs = probs.map((p) => p / z);
  const p = options.topP ?? 1;
  if (p < 1) {
    let cum = 0;
    let cut = probs.length;
    for (let i = 0; i < probs.length; i++) {
      cum += probs[i] as number;
      if (cum >= p) {
        cut = i + 1;
        break;
      }
    }
    probs = probs.slice(0, cut);
    idx = idx.slice(0, cut);
    z = probs.reduce((a, b) => a + b, 0);
    probs = probs.map((q) => q / z);
  }
  const r = rng.next();
  let cum = 0;
  for (let i = 0; i < probs.length; i++) {
    cum += probs[i] as number;
    if (r < cum) return idx[i] as number;
  }
  return idx[idx.length - 1] as number;
}

/**
 * Lets timers, I/O and signal handlers run between forward steps: awaiting a CPU forward pass alone only runs
 * microtasks, so without this a loop of them would hold the event loop until it ends.
 *
 * @example
 * ```ts
 * for (const batch of batches) { await yieldToEventLoop(); await model.forward(batch); }
 * ```
 */
export function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/**
 * Continues a prompt (token ids, BOS included when wanted) and streams the new token ids as an async iterator.
 * Generation ends at a stop token (not yielded), after `maxTokens`, or when the context is full. Options and
 * the prompt are checked when `generate` is called (`E_ARG`, e.g. for a prompt longer than the model's context).
 * Between forward steps the event loop runs, so a server stays responsive; an aborted `signal` makes the
 * iterator throw its reason before the next step. Breaking out of a `for await` releases the cache.
 *
 * @example
 * ```ts
 * for await (const id of generate(model, prompt, { maxTokens: 40, signal: AbortSignal.timeout(5000) }))
 *   process.stdout.write(decoder.push(id));
 * const sampled = await generateIds(model, prompt, { temperature: 0.8, topK: 40, topP: 0.95, seed: 7 });
 * ```
 */
export function generate(
  model: CausalLM,
  prompt: readonly number[],
  options: GenerateOptions = {},
): AsyncGenerator<number, void, undefined> {
  checkOptions(options);
  const ctx = model.config.maxSeqLen;
  if (prompt.length === 0) throw new QError('E_ARG', 'Expected at least one prompt token but received none');
  if (prompt.length > ctx) {
    throw new QError(
      'E_ARG',
      `Expected a prompt of at most ${ctx} tokens (the model's context) but received ${prompt.length} tokens`,
    );
  }
  return run(model, [...prompt], options);
}

async function* run(
  model: CausalLM,
  prompt: readonly number[],
  options: GenerateOptions,
): AsyncGenerator<number, void, undefined> {
  const maxTokens = options.maxTokens ?? 64;
  const stops = new Set(options.stopTokens ?? model.config.eosTokenIds);
  const rng = new Rng(options.seed ?? 0);
  const signal = options.signal;
  signal?.throwIfAborted();
  // Sized to what this call can use, not the model's full context (which can be 128K positions).
  const cache = model.createCache({
    batch: 1,
    capacity: Math.min(model.config.maxSeqLen, prompt.length + maxTokens),
  });
  try {
    let logits = await model.forward([prompt], { cache, logits: 'last' });
    for (let n = 0; n < maxTokens; n++) {
      const next = sampleToken(logits, options, rng);
      if (stops.has(next)) return;
      yield next;
      if ((cache.lengths[0] as number) >= cache.capacity || n + 1 >= maxTokens) return;
      await yieldToEventLoop();
      signal?.throwIfAborted();
      logits = await model.forward([[next]], { cache, logits: 'last' });
    }
  } finally {
    cache.dispose();
  }
}

/**
 * `generate` collected into an array (Node 20 has no `Array.fromAsync`).
 *
 * @example
 * ```ts
 * const ids = await generateIds(model, [model.config.bosTokenId], { maxTokens: 40 }); // greedy
 * ```
 */
export async function generateIds(
  model: CausalLM,
  prompt: readonly number[],
  options: GenerateOptions = {},
): Promise<number[]> {
  const out: number[] = [];
  for await (const id of generate(model, prompt, options)) out.push(id);
  return out;
}
