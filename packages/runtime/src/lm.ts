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
  /** Releases the model's memory (device memory, worker threads); using it afterwards throws `E_DISPOSED`. */
  dispose(): Promise<void>;
}
