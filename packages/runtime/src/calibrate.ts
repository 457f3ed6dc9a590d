import { QError } from '@q/core';
import { ActivationObserver } from '@q/quant';
import { yieldToEventLoop } from './generate';
import type { CausalLM } from './lm';

/** Options of `calibrate`. */
export interface CalibrateOptions {
  /** Tokens per forward pass, BOS included (default 256, at most the model's context). */
  readonly seqLen?: number;
  /** Use at most this many tokens of the stream (default: all). */
  readonly maxTokens?: number;
  /** Observer to feed (default a fresh one). */
  readonly observer?: ActivationObserver;
  /** Sequences per forward pass (default 4). */
  readonly batch?: number;
  /** Stops between forward passes; the promise then rejects with `signal.reason`. */
  readonly signal?: AbortSignal;
  readonly onProgress?: (done: number, total: number) => void;
}

/**
 * Runs the model over calibration tokens and records every linear layer's input in `@q/quant`'s
 * `ActivationObserver` (per-channel max|X|): the stream is cut into sequences of seqLen − 1 tokens, each fed
 * after BOS, as in evaluation.
 *
 * @example
 * ```ts
 * const stats = await calibrate(model, tokenizer.encode(calibText), { seqLen: 256, maxTokens: 8192 });
 * stats.range('model.layers.0.mlp.down_proj');
 * ```
 */
export async function calibrate(
  model: CausalLM,
  ids: readonly number[],
  options: CalibrateOptions = {},
): Promise<ActivationObserver> {
  const seqLen = Math.min(options.seqLen ?? 256, model.config.maxSeqLen);
  if (!Number.isInteger(seqLen) || seqLen < 2)
    throw new QError('E_ARG', `Expected an integer calibration length >= 2 but received ${seqLen}`);
  const maxTokens = options.maxTokens ?? ids.length;
  if (!Number.isInteger(maxTokens) || maxTokens < 1)
    throw new QError('E_ARG', `Expected a positive integer for calibration tokens but received ${maxTokens}`);
  const stream = ids.slice(0, maxTokens);
  if (stream.length === 0)
    throw new QError('E_ARG', 'Expected calibration text with at least one token but received none');
  const observer = options.observer ?? new ActivationObserver();
  const bos = model.config.bosTokenId;
  const seqs: number[][] = [];
  for (let s = 0; s < stream.length; s += seqLen - 1) seqs.push([bos, ...stream.slice(s, s + seqLen - 1)]);
  const batch = Math.max(1, options.batch ?? 4);
  let done = 0;
  for (let i = 0; i < seqs.length; i += batch) {
    await yieldToEventLoop();
    options.signal?.throwIfAborted();
    const group = seqs.slice(i, i + batch);
    const cache = model.createCache({ batch: group.length, capacity: seqLen });
    try {
      await model.forward(group, {
        cache,
        logits: 'none',
        hook: (name, x, rows, cols) => observer.observe(name, x.subarray(0, rows * cols), cols),
      });
    } finally {
      cache.dispose();
    }
    for (const g of group) done += g.length - 1;
    options.onProgress?.(done, stream.length);
  }
  return observer;
}
