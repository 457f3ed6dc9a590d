import type { ModelConfig } from '@q/core';

/**
 * The model contract every backend implements and everything above the model uses (`generate`, `Generator`,
 * `evaluatePerplexity`, `calibrate`, the CLI, the server): a decoder that runs a batch of sequences over a
 * key/value cache. The CPU `Model` is the readable reference; the GPU model mirrors it layer for layer.
 */

/** Where a model runs. */
export type Backend = 'cpu' | 'cuda';

/** Called with the input of every linear layer before it runs: x is [rows, cols] row-major. */
export type LinearInputHook = (name: string, x: Float32Array, rows: number, cols: number) => void;

/**
 * Key/value cache of a batch of sequence slots, in pages of `pageSize` positions taken from a pool of
 * `pagesTotal` as sequences grow and returned by `reset`. A slot holds one sequence of up to `capacity`
 * positions; `lengths[slot]` says how many are filled.
 */
export interface KVCache {
  /** Sequence slots. */
  readonly batch: number;
  /** Positions one slot can hold. */
  readonly capacity: number;
  /** Positions filled, per slot. */
  readonly lengths: readonly number[];
  /** Positions per page. */
  readonly pageSize: number;
  /** Pages in the pool. */
  readonly pagesTotal: number;
  /** Pages held by sequences now. */
  readonly pagesInUse: number;
  /** Forgets slot `slot` (its pages go back to the pool), or every slot when none is given. */
  reset(slot?: number): void;
  /** Releases the cache's memory; using it afterwards throws `E_DISPOSED`. */
  dispose(): void;
}

/** Options of `createCache`. */
export interface CacheOptions {
  /** Sequence slots (default 1). */
  readonly batch?: number;
  /** Positions per slot (default the model's context). */
  readonly capacity?: number;
  /** Pages in the pool (default enough for every slot at full capacity). */
  readonly pages?: number;
  /** Positions per page (default 16). */
  readonly pageSize?: number;
}

/** Options of one forward pass. */
export interface ForwardOptions {
  /** Cache to read earlier positions from and append to; a fresh one (sized to the input) when absent. */
  readonly cache?: KVCache;
  /**
   * The cache slot of each input sequence (default 0, 1, …). Slots not named are left alone, so a server
   * can run any subset of its sequences in one step.
   */
  readonly slots?: readonly number[];
  /** Which logits to return: every input position (default), the last of each sequence, or none. */
  readonly logits?: 'all' | 'last' | 'none';
  /** Observes every linear layer input (calibration). */
  readonly hook?: LinearInputHook;
}

/**
 * How one sequence picks its next token on the device: `temperature` 0 is greedy (argmax, lowest id on ties);
 * otherwise softmax(logits / temperature) restricted to the `topK` most likely ids (0 = all) and to the smallest
 * set whose probability reaches `topP` (1 = all), drawn with a counter-based generator keyed by (`seed`, `step`):
 * the same seed and step give the same token on every run.
 */
export interface SamplingParams {
  readonly temperature: number;
  readonly topK: number;
  readonly topP: number;
  readonly seed: number;
  /** Index of the token being drawn (the counter of the generator). */
  readonly step: number;
}

/**
 * A causal language model on some backend.
 *
 * @example
 * ```ts
 * const cache = model.createCache({ batch: 2, capacity: 256 });
 * const logits = await model.forward([[1, 5, 9], [1, 7]], { cache, logits: 'last' }); // [2, vocab]
 * cache.lengths; // [3, 2]
 * ```
 */
export interface CausalLM {
  readonly config: ModelConfig;
  readonly backend: Backend;
  /** A cache for this model (on its device). */
  createCache(options?: CacheOptions): KVCache;
  /**
   * Runs the decoder over new tokens of each sequence (sequence i continues slot `slots[i]` at position
   * `cache.lengths[slots[i]]`). Returns logits [rows, vocab] as float32 on the host: every new position of every
   * sequence in order (`'all'`), one row per sequence (`'last'`), or an empty array (`'none'`).
   */
  forward(tokens: readonly (readonly number[])[], options?: ForwardOptions): Promise<Float32Array>;
  /**
   * Optional, on backends that sample on the device: runs `forward` and draws one next token per sequence from
   * the logits of its last position with `sampling[i]`, so only token ids cross to the host (decode steps).
   * Returns one id per sequence, in order; the cache advances as with `forward`.
   *
   * @example
   * ```ts
   * const ids = await model.forwardSample?.([[last0], [last1]], {
   *   cache, slots: [0, 1],
   *   sampling: [{ temperature: 0, topK: 0, topP: 1, seed: 1, step: 5 }, { temperature: 0.8, topK: 40, topP: 0.95, seed: 7, step: 9 }],
   * });
   * ```
   */
  forwardSample?(
    tokens: readonly (readonly number[])[],
    options: ForwardOptions & { readonly sampling: readonly SamplingParams[] },
  ): Promise<Int32Array>;
  /** Releases the model's memory (device memory, worker threads); using it afterwards throws `E_DISPOSED`. */
  dispose(): Promise<void>;
}
