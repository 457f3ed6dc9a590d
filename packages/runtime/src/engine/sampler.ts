import { sampleToken } from '../generate';
import type { Sequence } from './sequence';

/**
 * Picks the next token of `seq` from row `row` of a step's logits [rows, vocab], with the sequence's own
 * sampling options and seeded PRNG, so its choice does not depend on which sequences shared the step.
 *
 * @example
 * ```ts
 * const next = sampleNext(logits, 3, vocab, seq); // row 3 belongs to seq
 * ```
 */
export function sampleNext(logits: Float32Array, row: number, vocab: number, seq: Sequence): number {
  const o = seq.options;
  return sampleToken(
    logits.subarray(row * vocab, (row + 1) * vocab),
    {
      ...(o.temperature !== undefined ? { temperature: o.temperature } : {}),
      ...(o.topP !== undefined ? { topP: o.topP } : {}),
      ...(o.topK !== undefined ? { topK: o.topK } : {}),
    },
    seq.rng,
  );
}
