import { QError, Rng } from '@q/core';

/** Options of `benchServe`. */
export interface BenchServeOptions {
  /** Base URL of a server speaking the OpenAI API, e.g. `http://127.0.0.1:8000`. */
  readonly url: string;
  readonly apiKey?: string;
  /** Model id to request (default: the first one `/v1/models` lists). */
  readonly model?: string;
  /** Requests in flight at once. */
  readonly concurrency: number;
  /** Prompt length in tokens (random token ids below 256, valid in any vocabulary q loads). */
  readonly promptTokens: number;
  /** Output length in tokens: requested with `ignore_eos`, so every request produces exactly this many. */
  readonly outputTokens: number;
  /** Requests in all (default 4 × concurrency). */
  readonly requests?: number;
  /** Seed of the prompt token ids (default 0). */
  readonly seed?: number;
}

/** Percentiles of a latency, in milliseconds. */
export interface LatencyStats {
  readonly p50: number;
  readonly p99: number;
  readonly mean: number;
}

/** What `benchServe` measured. */
export interface BenchServeResult {
  readonly date: string;
  readonly url: string;
  readonly model: string;
  readonly concurrency: number;
  readonly promptTokens: number;
  readonly outputTokens: number;
  readonly requests: number;
  readonly seconds: number;
  /** Generated tokens (from each response's usage) over the wall time of the run. */
  readonly outputTokensPerSecond: number;
  readonly requestsPerSecond: number;
  /** Request sent to first streamed text. */
  readonly ttftMs: LatencyStats;
  /** Between consecutive streamed chunks of a request (one token each, unless a character spans tokens). */
  readonly itlMs: LatencyStats;
}

function stats(values: number[]): LatencyStats {
  if (values.length === 0) return { p50: Number.NaN, p99: Number.NaN, mean: Number.NaN };
  const v = [...values].sort((a, b) => a - b);
  // Nearest rank.
  const at = (q: number) => v[Math.min(v.length - 1, Math.max(0, Math.ceil(q * v.length) - 1))] as number;
  return { p50: at(0.5), p99: at(0.99), mean: v.reduce((a, b) => a + b, 0) / v.length };
}

interface OneRequest {
  readonly ttft: number;
  readonly gaps: number[];
  readonly completionTokens: number;
}

async function oneRequest(
  options: BenchServeOptions,
  model: string,
  prompt: number[],
  maxTokens: number,
): Promise<OneRequest> {
  const t0 = performance.now();
  const res = await fetch(`${options.url}/v1/completions`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      ...(options.apiKey ? { authorization: `Bearer ${options.apiKey}` } : {}),
    },
    body: JSON.stringify({
      model,
      prompt,
      max_tokens: maxTokens,
      temperature: 0,
      ignore_eos: true,
      stream: true,
      stream_options: { include_usage: true },
    }),
  });
  if (!res.ok || res.body === null)
    throw new QError(
      'E_IO',
      `Expected 200 from ${options.url}/v1/completions but received ${res.status}: ${await res.text()}`,
    );
  let ttft = Number.NaN;
  let last = t0;
  const gaps: number[] = [];
  let completionTokens = 0;
  let buffer = '';
  const decoder = new TextDecoder();
  for await (const bytes of res.body as unknown as AsyncIterable<Uint8Array>) {
    buffer += decoder.decode(bytes, { stream: true });
    for (let end = buffer.indexOf('\n\n'); end >= 0; end = buffer.indexOf('\n\n')) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event.startsWith('data: ') ? event.slice(6) : '';
      if (data === '' || data === '[DONE]') continue;
      const msg = JSON.parse(data) as {
        error?: { message: string };
        choices?: { text?: string }[];
        usage?: { completion_tokens: number } | null;
      };
      if (msg.error)
        throw new QError(
          'E_IO',
          `Expected a streamed completion but received an error: ${msg.error.message}`,
        );
      if (msg.usage) completionTokens = msg.usage.completion_tokens;
      if (msg.choices?.[0]?.text) {
        const now = performance.now();
        if (Number.isNaN(ttft)) ttft = now - t0;
        else gaps.push(now - last);
        last = now;
      }
    }
  }
  return { ttft, gaps, completionTokens };
}

/**
 * A load generator for an OpenAI-compatible server: `concurrency` clients each send streaming
 * `/v1/completions` requests of `promptTokens` random token ids and `outputTokens` output (`ignore_eos`), one
 * after another, until `requests` are done. Reports output tokens/s and requests/s over the run, and time to
 * first token and inter-token latency percentiles. One short request warms the server up first.
 *
 * @example
 * ```ts
 * const r = await benchServe({ url: 'http://127.0.0.1:8000', concurrency: 16, promptTokens: 512, outputTokens: 256 });
 * console.log(formatBenchServe(r));
 * ```
 */
export async function benchServe(options: BenchServeOptions): Promise<BenchServeResult> {
  const headers = options.apiKey ? { authorization: `Bearer ${options.apiKey}` } : undefined;
  const listed = await fetch(`${options.url}/v1/models`, headers ? { headers } : {});
  if (!listed.ok)
    throw new QError(
      'E_IO',
      `Expected 200 from ${options.url}/v1/models but received ${listed.status}: ${await listed.text()}`,
    );
  const models = (await listed.json()) as { data: { id: string; max_model_len?: number }[] };
  const entry = options.model ? models.data.find((d) => d.id === options.model) : models.data[0];
  if (!entry)
    throw new QError(
      'E_ARG',
      `Expected a model the server lists (${models.data.map((d) => d.id).join(', ')}) for --model but received ${options.model ?? 'none'}`,
    );
  const ctx = entry.max_model_len;
  if (ctx !== undefined && options.promptTokens + options.outputTokens > ctx)
    throw new QError(
      'E_ARG',
      `Expected prompt + output tokens within the server's context (${ctx}) for --prompt-tokens + --output-tokens but received ${options.promptTokens} + ${options.outputTokens}`,
    );
  const total = options.requests ?? 4 * options.concurrency;
  const rng = new Rng(options.seed ?? 0);
  const prompts = Array.from({ length: total }, () =>
    Array.from({ length: options.promptTokens }, () => 3 + rng.int(253)),
  );
  await oneRequest(options, entry.id, (prompts[0] as number[]).slice(0, 8), 2);
  let next = 0;
  const done: OneRequest[] = [];
  const t0 = performance.now();
  const client = async () => {
    while (next < total) {
      const prompt = prompts[next++] as number[];
      done.push(await oneRequest(options, entry.id, prompt, options.outputTokens));
    }
  };
  await Promise.all(Array.from({ length: Math.min(options.concurrency, total) }, client));
  const seconds = (performance.now() - t0) / 1000;
  const tokens = done.reduce((a, r) => a + r.completionTokens, 0);
  return {
    date: new Date().toISOString(),
    url: options.url,
    model: entry.id,
    concurrency: options.concurrency,
    promptTokens: options.promptTokens,
    outputTokens: options.outputTokens,
    requests: done.length,
    seconds,
    outputTokensPerSecond: tokens / seconds,
    requestsPerSecond: done.length / seconds,
    ttftMs: stats(done.map((r) => r.ttft)),
    itlMs: stats(done.flatMap((r) => r.gaps)),
  };
}

/**
 * The result as a small table.
 *
 * @example
 * ```ts
 * io.stdout(formatBenchServe(await benchServe(options)));
 * ```
 */
export function formatBenchServe(r: BenchServeResult): string {
  const f = (v: number, d = 1) => (Number.isFinite(v) ? v.toFixed(d) : '-');
  const head = ['output tok/s', 'req/s', 'TTFT p50 ms', 'TTFT p99 ms', 'ITL p50 ms', 'ITL p99 ms'];
  const row = [
    f(r.outputTokensPerSecond),
    f(r.requestsPerSecond, 2),
    f(r.ttftMs.p50),
    f(r.ttftMs.p99),
    f(r.itlMs.p50, 2),
    f(r.itlMs.p99, 2),
  ];
  const w = head.map((h, i) => Math.max(h.length, (row[i] as string).length));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padStart(w[i] as number)).join(' | ')} |`;
  return [
    `${r.model} at ${r.url}: concurrency ${r.concurrency}, prompt ${r.promptTokens} tokens, output ${r.outputTokens} tokens, ${r.requests} requests in ${f(r.seconds, 2)} s`,
    line(head),
    `|${w.map((n) => '-'.repeat(n + 2)).join('|')}|`,
    line(row),
    '',
  ].join('\n');
}
