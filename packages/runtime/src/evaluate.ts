import { QError } from '@q/core';
import { argmax, yieldToEventLoop } from './generate';
import type { CausalLM } from './lm';

/** Options of `evaluatePerplexity`. */
export interface EvalOptions {
  /** Context length of each forward pass, BOS included (default 256): windows hold ctx − 1 tokens. */
  readonly ctx?: number;
  /** BOS id fed before every window (default the model's). */
  readonly bosId?: number;
  /** A reference model (e.g. the float one) for top-1 agreement and KL on the same windows. */
  readonly compare?: CausalLM;
  /** Windows per forward pass (default 4): batching makes the matmuls larger. */
  readonly batch?: number;
  /** Stops between forward passes; the promise then rejects with `signal.reason`. */
  readonly signal?: AbortSignal;
  /** Called after each batch with (tokens scored so far, total). */
  readonly onProgress?: (done: number, total: number) => void;
}

/** Result of `evaluatePerplexity`. */
export interface EvalResult {
  /** exp(mean negative log-likelihood) over every scored token. */
  readonly ppl: number;
  /** Mean negative log-likelihood (nats). */
  readonly nll: number;
  /** Tokens scored. */
  readonly tokens: number;
  readonly windows: number;
  readonly ctx: number;
  /** With `compare`: fraction of positions where both models' argmax agree. */
  readonly top1?: number;
  /** With `compare`: mean KL(reference ‖ model) in nats per position. */
  readonly kl?: number;
  /** With `compare`: the reference model's perplexity on the same windows. */
  readonly referencePpl?: number;
}

/** log-softmax of one row into a float64 buffer. */
function logSoftmax(x: Float32Array, off: number, n: number, out: Float64Array): void {
  let max = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < n; i++) if ((x[off + i] as number) > max) max = x[off + i] as number;
  let z = 0;
  for (let i = 0; i < n; i++) z += Math.exp((x[off + i] as number) - max);
  const lz = max + Math.log(z);
  for (let i = 0; i < n; i++) out[i] = (x[off + i] as number) - lz;
}

/** Logits of every position of fresh sequences, through a cache released afterwards. */
async function forwardOnce(model: CausalLM, inputs: number[][], ctx: number): Promise<Float32Array> {
  const cache = model.createCache({ batch: inputs.length, capacity: ctx });
  try {
    return await model.forward(inputs, { cache });
  } finally {
    cache.dispose();
  }
}

/**
 * Perplexity of a token stream: the stream is cut into consecutive windows of ctx − 1 tokens (the last may be
 * shorter), each fed as [BOS] + window, and every window token is scored. With `compare`, also top-1
 * agreement and mean KL(reference ‖ model) over the same positions.
 *
 * @example
 * ```ts
 * const ids = tokenizer.encode(fs.readFileSync('valid.txt', 'utf8'));
 * const r = await evaluatePerplexity(quantized, ids, { ctx: 256, compare: float });
 * console.log(r.ppl, r.top1, r.kl);
 * ```
 */
export async function evaluatePerplexity(
  model: CausalLM,
  ids: readonly number[],
  options: EvalOptions = {},
): Promise<EvalResult> {
  const ctx = options.ctx ?? 256;
  if (!Number.isInteger(ctx) || ctx < 2)
    throw new QError('E_ARG', `Expected an integer ctx >= 2 for evaluation but received ${ctx}`);
  if (ctx > model.config.maxSeqLen)
    throw new QError(
      'E_ARG',
      `Expected a ctx of at most ${model.config.maxSeqLen} (the model's context) but received ${ctx}`,
    );
  if (ids.length === 0)
    throw new QError('E_ARG', 'Expected a non-empty token stream for evaluation but received 0 tokens');
  const bos = options.bosId ?? model.config.bosTokenId;
  const ref = options.compare;
  if (ref && ref.config.vocabSize !== model.config.vocabSize)
    throw new QError(
      'E_SHAPE',
      `Expected a reference model with vocabulary ${model.config.vocabSize} for compare but received ${ref.config.vocabSize}`,
    );
  const v = model.config.vocabSize;
  const win = ctx - 1;
  const windows: number[][] = [];
  for (let s = 0; s < ids.length; s += win) windows.push(ids.slice(s, s + win));
  const batch = Math.max(1, options.batch ?? 4);
  const lp = new Float64Array(v);
  const lq = new Float64Array(v);
  let nll = 0;
  let refNll = 0;
  let agree = 0;
  let kl = 0;
  let done = 0;
  for (let w0 = 0; w0 < windows.length; w0 += batch) {
    const group = windows.slice(w0, w0 + batch);
    const inputs = group.map((w) => [bos, ...w.slice(0, w.length - 1)]);
    // [BOS] + window minus its last token predicts every window token.
    await yieldToEventLoop();
    options.signal?.throwIfAborted();
    const logits = await forwardOnce(model, inputs, ctx);
    const refLogits = ref ? await forwardOnce(ref, inputs, ctx) : undefined;
    let row = 0;
    for (const w of group) {
      for (let t = 0; t < w.length; t++, row++) {
        logSoftmax(logits, row * v, v, lp);
        const target = w[t] as number;
        nll -= lp[target] as number;
        if (refLogits) {
          logSoftmax(refLogits, row * v, v, lq);
          refNll -= lq[target] as number;
          if (argmax(logits, row * v, v) === argmax(refLogits, row * v, v)) agree++;
          let d = 0;
          for (let j = 0; j < v; j++) {
            const q = lq[j] as number;
            d += Math.exp(q) * (q - (lp[j] as number));
          }
          kl += d;
        }
      }
      done += w.length;
    }
    options.onProgress?.(done, ids.length);
  }
  const n = ids.length;
  const result: EvalResult = {
    ppl: Math.exp(nll / n),
    nll: nll / n,
    tokens: n,
    windows: windows.length,
    ctx,
  };
  if (!ref) return result;
  return { ...result, top1: agree / n, kl: kl / n, referencePpl: Math.exp(refNll / n) };
}
