import type { CausalLM, KVCache } from '../lm';
import type { StepItem } from './scheduler';

/**
 * Runs one step's batch through the model: every item's tokens continue its slot, and one row of logits comes
 * back per item (its last position), or none when no item samples. This is where a backend's own batching
 * (CUDA-graph buckets, device sampling) plugs in; the scheduler and the sampler do not see the model.
 *
 * @example
 * ```ts
 * const runner = new ModelRunner(model, cache);
 * const logits = await runner.run(items); // [items.length, vocab]
 * ```
 */
export class ModelRunner {
  constructor(
    readonly model: CausalLM,
    readonly cache: KVCache,
  ) {}

  get vocabSize(): number {
    return this.model.config.vocabSize;
  }

  async run(items: readonly StepItem[]): Promise<Float32Array> {
    return this.model.forward(
      items.map((i) => i.tokens),
      {
        cache: this.cache,
        slots: items.map((i) => i.seq.slot),
        logits: items.some((i) => i.sample) ? 'last' : 'none',
      },
    );
  }
}
