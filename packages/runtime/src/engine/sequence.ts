import { QError, Rng } from '@q/core';

/** Why a sequence ended: a stop token, its token limit, or a cancel (its signal, `cancel()`, or shutdown). */
export type FinishReason = 'stop' | 'length' | 'abort';

/** Sampling of one sequence. Temperature 0 (the default) is greedy decoding. */
export interface SamplingParams {
  /** Softmax temperature; 0 means greedy (argmax). */
  readonly temperature?: number;
  /** Nucleus sampling: keep the smallest set of tokens whose probability reaches p (1 = all). */
  readonly topP?: number;
  /** Keep only the k most likely tokens before sampling (0 = all). */
  readonly topK?: number;
  /** Seed of this sequence's own PRNG (default 0): its samples do not depend on what else runs. */
  readonly seed?: number;
}

/** Options of `Generator.add`. */
export interface SequenceOptions extends SamplingParams {
  /** New tokens at most; the prompt plus this must fit in the generator's context. */
  readonly maxTokens: number;
  /** Token ids that end the sequence (not emitted); default the model's EOS ids, `[]` for none. */
  readonly stopTokenIds?: readonly number[];
  /** Cancels the sequence: it ends with `abort` and its slot and pages are freed within one step. */
  readonly signal?: AbortSignal;
}

/**
 * What `Generator.add` returns: an async iterator of the new token ids as they are chosen, ending when the
 * sequence finishes. Breaking out of a `for await` loop cancels the sequence.
 */
export interface SequenceHandle extends AsyncIterable<number> {
  /** Unique within its generator. */
  readonly id: number;
  readonly promptTokens: number;
  /** The tokens chosen so far. */
  readonly output: readonly number[];
  /** Null while running. */
  readonly finishReason: FinishReason | null;
  /** Resolves with the finish reason; rejects when the model failed on this sequence. */
  readonly done: Promise<FinishReason>;
  /** Ends the sequence with `abort` (no-op once finished). */
  cancel(): void;
}

/** Lifecycle of a sequence inside the engine. */
export type SequenceStatus = 'waiting' | 'running' | 'finished';

/**
 * One request inside the engine: its prompt, how far it has been computed, its output and its own sampler
 * state. The scheduler and the generator move it through `waiting → running → finished`.
 *
 * @example
 * ```ts
 * const seq = new Sequence(1, [1, 5, 9], { maxTokens: 8 }, [2]);
 * seq.positionsNeeded; // 10: the prompt and 7 generated tokens go through the model, the 8th only is sampled
 * ```
 */
export class Sequence implements SequenceHandle {
  status: SequenceStatus = 'waiting';
  /** Cache slot while running. */
  slot = -1;
  /** Pages reserved for it while running. */
  reservedPages = 0;
  /** Positions already in the cache (prompt first, then generated tokens). */
  cached = 0;
  /** A cancel asked while a step that includes it was in flight: honoured when the step ends. */
  cancelRequested = false;
  readonly rng: Rng;
  readonly stopTokenIds: ReadonlySet<number>;
  private readonly tokens: number[] = [];
  private reason: FinishReason | null = null;
  private failure: unknown = null;
  private wake: (() => void) | null = null;
  private resolveDone!: (r: FinishReason) => void;
  private rejectDone!: (e: unknown) => void;
  readonly done: Promise<FinishReason>;
  /** Set by the generator: how a cancel reaches it. */
  onCancel: (() => void) | null = null;

  constructor(
    readonly id: number,
    readonly prompt: readonly number[],
    readonly options: SequenceOptions,
    defaultStopTokenIds: readonly number[],
  ) {
    this.rng = new Rng(options.seed ?? 0);
    this.stopTokenIds = new Set(options.stopTokenIds ?? defaultStopTokenIds);
    this.done = new Promise<FinishReason>((resolve, reject) => {
      this.resolveDone = resolve;
      this.rejectDone = reject;
    });
    // A caller that only iterates must not see an unhandled rejection; awaiting `done` still rejects.
    this.done.catch(() => {});
  }

  get promptTokens(): number {
    return this.prompt.length;
  }

  get output(): readonly number[] {
    return this.tokens;
  }

  get finishReason(): FinishReason | null {
    return this.reason;
  }

  get maxTokens(): number {
    return this.options.maxTokens;
  }

  /**
   * Positions this sequence can ever hold in the cache: the prompt and every generated token but the last,
   * which is sampled and never fed back.
   */
  get positionsNeeded(): number {
    return this.prompt.length + Math.max(0, this.options.maxTokens - 1);
  }

  /** True while the prompt is not fully in the cache. */
  get prefilling(): boolean {
    return this.cached < this.prompt.length;
  }

  /** The tokens the model has not seen yet: the rest of the prompt, or the last sampled token. */
  pendingTokens(max: number): number[] {
    if (this.prefilling) return this.prompt.slice(this.cached, this.cached + max);
    return [this.tokens[this.tokens.length - 1] as number];
  }

  cancel(): void {
    if (this.status !== 'finished') this.onCancel?.();
  }

  /** Appends a chosen token and wakes the reader. */
  push(token: number): void {
    this.tokens.push(token);
    this.notify();
  }

  /** Marks the sequence finished (the generator has already released its slot). */
  finish(reason: FinishReason): void {
    if (this.status === 'finished') return;
    this.status = 'finished';
    this.reason = reason;
    this.resolveDone(reason);
    this.notify();
  }

  /** Marks the sequence failed: the reader's iteration throws `error`. */
  fail(error: unknown): void {
    if (this.status === 'finished') return;
    this.status = 'finished';
    this.failure = error ?? new QError('E_INTERNAL', 'Expected an error for a failed sequence');
    this.rejectDone(this.failure);
    this.notify();
  }

  private notify(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  [Symbol.asyncIterator](): AsyncIterator<number> {
    let i = 0;
    return {
      next: async (): Promise<IteratorResult<number>> => {
        for (;;) {
          if (i < this.tokens.length) return { value: this.tokens[i++] as number, done: false };
          if (this.failure !== null) throw this.failure;
          if (this.status === 'finished') return { value: undefined, done: true };
          await new Promise<void>((resolve) => {
            const prev = this.wake;
            this.wake = () => {
              prev?.();
              resolve();
            };
          });
        }
      },
      return: async (): Promise<IteratorResult<number>> => {
        this.cancel();
        return { value: undefined, done: true };
      },
    };
  }
}
