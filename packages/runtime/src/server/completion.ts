import type { Generator } from '../engine/generator';
import type { SamplingParams } from '../engine/sequence';
import type { TextTokenizer } from '../tokenizer';
import { ApiError } from './errors';
import type { ServerMetrics } from './metrics';
import { StopMatcher } from './stop-strings';

/** One generation request, after validation and templating. */
export interface CompletionJob extends SamplingParams {
  readonly promptIds: readonly number[];
  /** Requested new tokens; absent means as many as the context leaves. */
  readonly maxTokens: number | undefined;
  readonly stop: readonly string[];
  /** Keep generating past EOS (benchmarks with a fixed output length). */
  readonly ignoreEos: boolean;
  /** Which request field held the prompt, for error messages (`messages` or `prompt`). */
  readonly promptParam: string;
}

/** How a generation ended, with OpenAI's usage numbers. */
export interface CompletionResult {
  readonly finishReason: 'stop' | 'length';
  readonly promptTokens: number;
  readonly completionTokens: number;
}

/** A generation ended by a cancel (client gone, shutdown) rather than by its own end. */
export class CompletionAborted extends Error {
  constructor() {
    super('Expected the generation to finish but it was cancelled');
    this.name = 'CompletionAborted';
  }
}

/** A request admitted to the engine: its text comes out of `text`, which returns the result at the end. */
export interface Completion {
  readonly promptTokens: number;
  readonly text: AsyncGenerator<string, CompletionResult>;
  /** Cancels the sequence if it still runs (for a consumer that ends early, even before reading). */
  cancel(): void;
}

/**
 * Admits one request to the engine, synchronously, so that refusals (a prompt that fills the context, a full
 * queue: `E_BUSY`) surface before any response is written. Its text is then yielded as it is decoded, with
 * stop strings applied (text that may still become a stop string is held back), and the result gives the
 * finish reason and token counts. `signal` cancels it (a client that went away): the sequence's slot and
 * pages are freed and `text` throws `CompletionAborted`. `max_tokens` is capped by what the context leaves
 * after the prompt.
 *
 * @example
 * ```ts
 * const c = startCompletion(generator, tokenizer, metrics, job, signal, performance.now());
 * for (let r = await c.text.next(); !r.done; r = await c.text.next()) res.write(r.value);
 * ```
 */
export function startCompletion(
  generator: Generator,
  tokenizer: TextTokenizer,
  metrics: ServerMetrics,
  job: CompletionJob,
  signal: AbortSignal,
  arrivedAt: number,
): Completion {
  const prompt = job.promptIds;
  const room = generator.maxContext - prompt.length;
  if (room < 1)
    throw new ApiError(
      400,
      `Expected a prompt of at most ${generator.maxContext - 1} tokens (the context is ${generator.maxContext}) for ${job.promptParam} but received ${prompt.length} tokens`,
      { param: job.promptParam, code: 'context_length_exceeded' },
    );
  const stopper = new AbortController();
  const seq = generator.add(prompt, {
    maxTokens: Math.min(job.maxTokens ?? room, room),
    ...(job.temperature !== undefined ? { temperature: job.temperature } : {}),
    ...(job.topP !== undefined ? { topP: job.topP } : {}),
    ...(job.topK !== undefined ? { topK: job.topK } : {}),
    ...(job.seed !== undefined ? { seed: job.seed } : {}),
    ...(job.ignoreEos ? { stopTokenIds: [] } : {}),
    signal: stopper.signal,
  });
  metrics.promptTokens.inc(prompt.length);
  const onAbort = () => stopper.abort();
  if (signal.aborted) stopper.abort();
  else signal.addEventListener('abort', onAbort, { once: true });

  async function* text(): AsyncGenerator<string, CompletionResult> {
    try {
      const decoder = tokenizer.streamDecoder();
      // The decoder sees the prompt first, as `q generate`'s does: pieces after BOS or inside a multi-byte
      // character decode as they would in the whole text.
      for (const id of prompt) decoder.push(id);
      const matcher = new StopMatcher(job.stop);
      let last = arrivedAt;
      let count = 0;
      let stopped = false;
      for await (const id of seq) {
        const now = performance.now();
        if (count === 0) metrics.timeToFirstToken.observe((now - arrivedAt) / 1000);
        else metrics.interTokenLatency.observe((now - last) / 1000);
        last = now;
        count++;
        metrics.generatedTokens.inc();
        const r = matcher.push(decoder.push(id));
        if (r.text) yield r.text;
        if (r.stopped) {
          stopped = true;
          break; // leaving the loop cancels the sequence: its slot and pages are freed
        }
      }
      if (!stopped && seq.finishReason === 'abort') {
        metrics.finished.inc({ finish_reason: 'abort' });
        throw new CompletionAborted();
      }
      if (!stopped) {
        const r = matcher.push(decoder.flush());
        stopped = r.stopped;
        const tail = r.text + (r.stopped ? '' : matcher.flush());
        if (tail) yield tail;
      }
      metrics.requestDuration.observe((performance.now() - arrivedAt) / 1000);
      const finishReason = stopped || seq.finishReason === 'stop' ? 'stop' : 'length';
      metrics.finished.inc({ finish_reason: finishReason });
      return { finishReason, promptTokens: prompt.length, completionTokens: count };
    } catch (e) {
      if (!(e instanceof CompletionAborted)) metrics.finished.inc({ finish_reason: 'error' });
      throw e;
    } finally {
      signal.removeEventListener('abort', onAbort);
      // A consumer that stops reading (the response closed) must not leave the sequence running.
      stopper.abort();
    }
  }
  return { promptTokens: prompt.length, text: text(), cancel: () => stopper.abort() };
}
