import { QError } from '@q/core';
import type { CausalLM, KVCache } from '../lm';
import { BlockManager } from './block-manager';
import { ModelRunner } from './model-runner';
import { sampleNext } from './sampler';
import { Scheduler } from './scheduler';
import { type FinishReason, Sequence, type SequenceHandle, type SequenceOptions } from './sequence';

/** Options of a `Generator`. */
export interface GeneratorOptions {
  /** Sequences decoded together: the cache's slots (default 8). */
  readonly maxBatch?: number;
  /** Positions per sequence, prompt and output together (default the model's context). */
  readonly maxContext?: number;
  /** KV pages in the pool (default the cache's: every slot at full context). */
  readonly pages?: number;
  /** Prompt tokens computed per step over all prefilling sequences (default 512). */
  readonly prefillChunk?: number;
  /**
   * Requests allowed to wait for a slot beyond those the free slots take at the next step; one more is
   * refused with `E_BUSY` (default 256).
   */
  readonly maxWaiting?: number;
  /** Called after every step (metrics, tracing). */
  readonly onStep?: (info: StepInfo) => void;
}

/** What one step did. */
export interface StepInfo {
  /** Sequences in the batch. */
  readonly batch: number;
  readonly prefillTokens: number;
  readonly decodeTokens: number;
  /** Tokens chosen in this step (a step can end a prompt without choosing, if it was only a chunk). */
  readonly sampled: number;
  readonly seconds: number;
}

/** The engine's state, for metrics and health. */
export interface GeneratorStats {
  readonly waiting: number;
  readonly running: number;
  readonly pagesInUse: number;
  readonly pagesReserved: number;
  readonly pagesTotal: number;
  readonly slots: number;
  readonly generatedTokens: number;
}

/**
 * The batched engine: continuous batching (at iteration level, as Orca and vLLM do) over one `CausalLM` and
 * one paged `KVCache` of `maxBatch` slots. `add` queues a request and returns a handle that streams its
 * tokens; each `step` admits waiting sequences that fit (see `Scheduler` and `BlockManager`), runs one forward
 * pass over every running sequence (decode tokens and prompt chunks together), samples each sequence with its
 * own PRNG, and frees finished or cancelled sequences at once. `start()` runs steps while there is work and
 * sleeps until there is, yielding to the event loop between steps.
 *
 * @example
 * ```ts
 * const gen = new Generator(model, { maxBatch: 16 });
 * gen.start();
 * const seq = gen.add(tokenizer.encodePrompt('Once upon a time'), { maxTokens: 64 });
 * for await (const id of seq) process.stdout.write(tokenizer.decode([id]));
 * console.log(await seq.done); // 'stop' or 'length'
 * await gen.close();
 * ```
 */
export class Generator {
  readonly cache: KVCache;
  readonly maxContext: number;
  private readonly blocks: BlockManager;
  private readonly scheduler: Scheduler;
  private readonly runner: ModelRunner;
  private readonly onStep: ((info: StepInfo) => void) | undefined;
  private nextId = 1;
  private stepping = false;
  private closed = false;
  private loop: Promise<void> | null = null;
  private wake: (() => void) | null = null;
  private generated = 0;

  constructor(
    readonly model: CausalLM,
    options: GeneratorOptions = {},
  ) {
    const ctx = options.maxContext ?? model.config.maxSeqLen;
    const maxBatch = options.maxBatch ?? 8;
    const prefillChunk = options.prefillChunk ?? 512;
    const maxWaiting = options.maxWaiting ?? 256;
    const posInt = (v: number, name: string, min = 1) => {
      if (!Number.isInteger(v) || v < min)
        throw new QError('E_ARG', `Expected an integer >= ${min} for ${name} but received ${v}`);
    };
    posInt(ctx, 'maxContext');
    posInt(maxBatch, 'maxBatch');
    posInt(prefillChunk, 'prefillChunk');
    posInt(maxWaiting, 'maxWaiting', 0);
    if (ctx > model.config.maxSeqLen)
      throw new QError(
        'E_ARG',
        `Expected at most ${model.config.maxSeqLen} (the model's context) for maxContext but received ${ctx}`,
      );
    this.maxContext = ctx;
    this.cache = model.createCache({
      batch: maxBatch,
      capacity: ctx,
      ...(options.pages !== undefined ? { pages: options.pages } : {}),
    });
    this.blocks = new BlockManager(this.cache);
    this.scheduler = new Scheduler(this.blocks, { maxWaiting, prefillChunk });
    this.runner = new ModelRunner(model, this.cache);
    this.onStep = options.onStep;
  }

  /** The engine's state now. */
  get stats(): GeneratorStats {
    return {
      waiting: this.scheduler.waiting.length,
      running: this.scheduler.running.length,
      pagesInUse: this.cache.pagesInUse,
      pagesReserved: this.blocks.pagesReserved,
      pagesTotal: this.cache.pagesTotal,
      slots: this.cache.batch,
      generatedTokens: this.generated,
    };
  }

  /** True when a step would do something. */
  get hasWork(): boolean {
    return this.scheduler.hasWork;
  }

  /**
   * Queues a prompt (token ids, BOS included when wanted). Throws `E_ARG` for a prompt or options that can
   * never run here, `E_BUSY` when the waiting queue is full, `E_DISPOSED` after `close`.
   */
  add(prompt: readonly number[], options: SequenceOptions): SequenceHandle {
    if (this.closed)
      throw new QError('E_DISPOSED', 'Expected an open generator for add but received a closed one');
    this.check(prompt, options);
    const seq = new Sequence(this.nextId++, [...prompt], options, this.model.config.eosTokenIds);
    seq.onCancel = () => this.cancel(seq);
    if (options.maxTokens === 0) {
      seq.finish('length');
      return seq;
    }
    if (options.signal?.aborted) {
      seq.finish('abort');
      return seq;
    }
    this.scheduler.enqueue(seq);
    options.signal?.addEventListener('abort', () => seq.cancel(), { once: true });
    this.wake?.();
    return seq;
  }

  private check(prompt: readonly number[], o: SequenceOptions): void {
    const vocab = this.model.config.vocabSize;
    if (prompt.length === 0)
      throw new QError('E_ARG', 'Expected at least one prompt token but received none');
    for (const t of prompt)
      if (!Number.isInteger(t) || t < 0 || t >= vocab)
        throw new QError('E_ARG', `Expected token ids in [0, ${vocab}) for the prompt but received ${t}`);
    if (!Number.isInteger(o.maxTokens) || o.maxTokens < 0)
      throw new QError('E_ARG', `Expected an integer >= 0 for maxTokens but received ${o.maxTokens}`);
    if (prompt.length + o.maxTokens > this.maxContext)
      throw new QError(
        'E_ARG',
        `Expected at most ${this.maxContext} positions (the context) for prompt + maxTokens but received ${prompt.length} + ${o.maxTokens}`,
      );
    const t = o.temperature ?? 0;
    if (!Number.isFinite(t) || t < 0)
      throw new QError('E_ARG', `Expected a number >= 0 for temperature but received ${t}`);
    const p = o.topP ?? 1;
    if (!(p > 0 && p <= 1))
      throw new QError('E_ARG', `Expected a number in (0, 1] for topP but received ${p}`);
    const k = o.topK ?? 0;
    if (!Number.isInteger(k) || k < 0)
      throw new QError('E_ARG', `Expected an integer >= 0 for topK but received ${k}`);
    const s = o.seed ?? 0;
    if (!Number.isInteger(s)) throw new QError('E_ARG', `Expected an integer for seed but received ${s}`);
    const positions = prompt.length + Math.max(0, o.maxTokens - 1);
    if (!this.blocks.fits(positions))
      throw new QError(
        'E_ARG',
        `Expected at most ${this.cache.pagesTotal} KV pages (the pool) for a request but received one that needs ${this.blocks.pagesFor(positions)}`,
      );
  }

  private cancel(seq: Sequence): void {
    if (seq.status === 'finished') return;
    // A running sequence may be in the batch of the step in flight: its slot is freed when that step ends.
    if (seq.status === 'running' && this.stepping) {
      seq.cancelRequested = true;
      return;
    }
    this.end(seq, 'abort');
  }

  private end(seq: Sequence, reason: FinishReason): void {
    this.scheduler.remove(seq);
    seq.finish(reason);
  }

  /**
   * One iteration: admit, forward once over every running sequence, sample, free the finished. Resolves with
   * what it did, or null when there was nothing to do. Steps never overlap: a second call while one is in
   * flight throws `E_ARG`.
   */
  async step(): Promise<StepInfo | null> {
    if (this.stepping)
      throw new QError('E_ARG', 'Expected no step in flight for step but received a second call');
    this.stepping = true;
    const t0 = performance.now();
    let info: StepInfo | null = null;
    try {
      const items = this.scheduler.schedule();
      if (items.length === 0) return null;
      let logits: Float32Array;
      try {
        logits = await this.runner.run(items);
      } catch (e) {
        // The cache state of these sequences is unknown now: they fail, the others go on.
        for (const { seq } of items) {
          this.scheduler.remove(seq);
          seq.fail(e);
        }
        return null;
      }
      const vocab = this.runner.vocabSize;
      let prefill = 0;
      let decode = 0;
      let sampled = 0;
      for (const [row, item] of items.entries()) {
        const seq = item.seq;
        if (seq.prefilling) prefill += item.tokens.length;
        else decode += item.tokens.length;
        seq.cached += item.tokens.length;
        if (!item.sample || seq.cancelRequested || seq.status !== 'running') continue;
        const next = sampleNext(logits, row, vocab, seq);
        sampled++;
        if (seq.stopTokenIds.has(next)) {
          this.end(seq, 'stop');
          continue;
        }
        seq.push(next);
        this.generated++;
        if (seq.output.length >= seq.maxTokens) this.end(seq, 'length');
      }
      info = {
        batch: items.length,
        prefillTokens: prefill,
        decodeTokens: decode,
        sampled,
        seconds: (performance.now() - t0) / 1000,
      };
      return info;
    } finally {
      this.stepping = false;
      for (const seq of [...this.scheduler.running]) if (seq.cancelRequested) this.end(seq, 'abort');
      if (info) this.onStep?.(info);
    }
  }

  /** Starts the run loop (idempotent): steps while there is work, sleeps until `add` brings some. */
  start(): void {
    if (this.loop || this.closed) return;
    this.loop = this.run();
  }

  private async run(): Promise<void> {
    while (!this.closed) {
      if (!this.scheduler.hasWork) {
        await new Promise<void>((resolve) => {
          this.wake = resolve;
        });
        this.wake = null;
        continue;
      }
      await this.step();
      // One step at most between turns of the event loop: sockets, timers and new requests get their turn.
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
  }

  /**
   * Resolves when no sequence waits or runs, or after `timeoutMs`; then cancels whatever is left. For a
   * graceful shutdown: stop adding first.
   */
  async drain(timeoutMs: number): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    while (this.scheduler.hasWork && performance.now() < deadline) {
      if (!this.loop) await this.step();
      await new Promise<void>((resolve) => setTimeout(resolve, 10));
    }
    this.cancelAll();
  }

  /** Ends every waiting and running sequence with `abort`. */
  cancelAll(): void {
    for (const seq of [...this.scheduler.waiting, ...this.scheduler.running]) this.cancel(seq);
  }

  /** Cancels everything, stops the loop and releases the cache. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.cancelAll();
    this.closed = true;
    this.wake?.();
    await this.loop;
    // Cancels deferred by a step in flight were honoured when it ended, before the loop returned.
    for (const seq of [...this.scheduler.waiting, ...this.scheduler.running]) this.end(seq, 'abort');
    this.cache.dispose();
  }
}
