import * as fs from 'node:fs';
import * as path from 'node:path';
import { QError, writeFileAtomic } from '@q/core';
import type { Command } from 'commander';
import type { CliIO } from '../cli-main';
import { int } from '../cli-options';
import { startServer } from './app';
import { benchServe, formatBenchServe } from './bench';
import { openModel } from './open-model';

interface EngineFlags {
  device?: string;
  maxBatch?: number;
  maxContext?: number;
  prefillChunk?: number;
  kvPages?: number;
}

const engineOptions = (o: EngineFlags) => ({
  ...(o.maxBatch !== undefined ? { maxBatch: o.maxBatch } : {}),
  ...(o.maxContext !== undefined ? { maxContext: o.maxContext } : {}),
  ...(o.prefillChunk !== undefined ? { prefillChunk: o.prefillChunk } : {}),
  ...(o.kvPages !== undefined ? { pages: o.kvPages } : {}),
});

/** Resolves when `signal` aborts (never without one). */
function aborted(signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) resolve();
    else signal?.addEventListener('abort', () => resolve(), { once: true });
  });
}

/**
 * Adds `q serve` to a program: an OpenAI-compatible server on a model, until `signal` aborts (the `q` binary
 * aborts it on SIGINT or SIGTERM), then a graceful shutdown.
 *
 * @example
 * ```ts
 * addServeCommand(program, io, signal);
 * ```
 */
export function addServeCommand(program: Command, io: CliIO, signal?: AbortSignal): Command {
  return program
    .command('serve')
    .description('an OpenAI-compatible HTTP server with continuous batching and streaming')
    .argument('<model>', 'model or quantized directory, or "demo" for the embedded demo model')
    .option('--host <host>', 'interface to listen on (0.0.0.0 for every interface)', '127.0.0.1')
    .option('--port <n>', 'port (0 picks a free one)', int('--port', 0), 8000)
    .option(
      '--device <device>',
      'where the model runs: cpu, cuda or cuda:N (default: a usable GPU, else cpu)',
    )
    .option('--max-batch <n>', 'sequences decoded together (default 8)', int('--max-batch'))
    .option(
      '--max-context <n>',
      'positions per sequence, prompt and output (default the model context)',
      int('--max-context'),
    )
    .option('--prefill-chunk <n>', 'prompt tokens computed per step (default 512)', int('--prefill-chunk'))
    .option(
      '--kv-pages <n>',
      'KV cache pages of 16 positions in the pool (default: every slot at full context)',
      int('--kv-pages'),
    )
    .option(
      '--max-waiting <n>',
      'requests queued before new ones get 429 (default 256)',
      int('--max-waiting', 0),
    )
    .option(
      '--api-key <key>',
      'require "Authorization: Bearer <key>" on every route but /health (default $Q_API_KEY)',
    )
    .option('--body-limit <bytes>', 'largest request body (default 1048576)', int('--body-limit'))
    .option(
      '--shutdown-timeout <s>',
      'seconds running requests get to finish on SIGTERM (default 30)',
      int('--shutdown-timeout', 0),
      30,
    )
    .addHelpText(
      'after',
      `
Routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health, GET /metrics.

Examples:
  q serve stories260K.bin
  q serve stories260K-fptq --port 8080 --max-batch 16 --api-key "$(cat key.txt)"
  curl http://127.0.0.1:8000/v1/completions -H 'content-type: application/json' \\
    -d '{"model": "stories260K", "prompt": "Once upon a time", "max_tokens": 32}'`,
    )
    .action(
      async (
        modelPath: string,
        o: EngineFlags & {
          host: string;
          port: number;
          maxWaiting?: number;
          apiKey?: string;
          bodyLimit?: number;
          shutdownTimeout: number;
        },
      ) => {
        // The model is built for the server's batch and context (a GPU model sizes its buffers by them).
        const opened = await openModel(modelPath, {
          ...(o.device !== undefined ? { device: o.device } : {}),
          ...(o.maxBatch !== undefined ? { maxBatch: o.maxBatch } : {}),
          ...(o.maxContext !== undefined ? { maxContext: o.maxContext } : {}),
        });
        io.stderr(`${opened.deviceLine}\n`);
        const apiKey = o.apiKey ?? process.env.Q_API_KEY;
        if (apiKey !== undefined && apiKey.length === 0)
          throw new QError('E_ARG', 'Expected a non-empty key for --api-key but received an empty one');
        const server = await startServer({
          model: opened.model,
          tokenizer: opened.tokenizer,
          modelName: opened.name,
          host: o.host,
          port: o.port,
          ...engineOptions(o),
          maxBatch: opened.maxBatch,
          maxContext: opened.maxContext,
          ...(o.maxWaiting !== undefined ? { maxWaiting: o.maxWaiting } : {}),
          ...(apiKey !== undefined ? { apiKey } : {}),
          ...(o.bodyLimit !== undefined ? { bodyLimit: o.bodyLimit } : {}),
          log: (line) => io.stderr(`${line}\n`),
        });
        const s = server.generator.stats;
        io.stderr(
          `q serve: ${opened.name} on ${server.url} (${opened.model.backend}, batch ${s.slots}, context ${server.generator.maxContext}, ${s.pagesTotal} KV pages${apiKey !== undefined ? ', API key required' : ''})\n`,
        );
        await aborted(signal);
        io.stderr(
          `q serve: stopping: finishing running requests (up to ${o.shutdownTimeout} s; a second signal exits at once)\n`,
        );
        try {
          await server.close({ timeoutMs: o.shutdownTimeout * 1000 });
        } finally {
          await opened.model.dispose();
        }
        io.stderr('q serve: stopped\n');
      },
    );
}

/**
 * Adds `serve` to `q bench`: a streaming load generator against a server (`--url`), or against one it
 * starts in-process on `--model`.
 *
 * @example
 * ```ts
 * addBenchServeCommand(bench, io);
 * ```
 */
export function addBenchServeCommand(bench: Command, io: CliIO): Command {
  return bench
    .command('serve')
    .description(
      'load an OpenAI-compatible server: output tokens/s, requests/s, TTFT and inter-token latency',
    )
    .option('--url <url>', 'server to load (e.g. http://127.0.0.1:8000)')
    .option(
      '--model <path>',
      'without --url: start a server in-process on this model ("demo": the demo model)',
    )
    .option('--api-key <key>', 'key for a server started with one (default $Q_API_KEY)')
    .option('--concurrency <n>', 'requests in flight at once', int('--concurrency'), 1)
    .option('--prompt-tokens <n>', 'prompt length in tokens', int('--prompt-tokens'), 128)
    .option('--output-tokens <n>', 'output length in tokens (EOS ignored)', int('--output-tokens'), 64)
    .option('--requests <n>', 'requests in all (default 4 x concurrency)', int('--requests'))
    .option('--device <device>', 'with --model: cpu, cuda or cuda:N (default: a usable GPU, else cpu)')
    .option(
      '--max-batch <n>',
      'with --model: sequences decoded together (default --concurrency)',
      int('--max-batch'),
    )
    .option(
      '--max-context <n>',
      'with --model: positions per sequence (default the model context)',
      int('--max-context'),
    )
    .option(
      '--prefill-chunk <n>',
      'with --model: prompt tokens per step (default 512)',
      int('--prefill-chunk'),
    )
    .option('--kv-pages <n>', 'with --model: KV cache pages in the pool', int('--kv-pages'))
    .option('--json [file]', 'also write the result as JSON (default file: bench-results/serve.json)')
    .addHelpText(
      'after',
      `
Examples:
  q bench serve --url http://127.0.0.1:8000 --concurrency 16 --prompt-tokens 512 --output-tokens 256
  q bench serve --model stories260K.bin --concurrency 4 --prompt-tokens 64 --output-tokens 32 --json`,
    )
    .action(
      async (
        o: EngineFlags & {
          url?: string;
          model?: string;
          apiKey?: string;
          concurrency: number;
          promptTokens: number;
          outputTokens: number;
          requests?: number;
          json?: string | true;
        },
      ) => {
        if ((o.url === undefined) === (o.model === undefined))
          throw new QError(
            'E_ARG',
            `Expected exactly one of --url and --model for q bench serve but received ${o.url === undefined ? 'neither' : 'both'}`,
          );
        const apiKey = o.apiKey ?? process.env.Q_API_KEY;
        const opened =
          o.model !== undefined
            ? await openModel(o.model, {
                ...(o.device !== undefined ? { device: o.device } : {}),
                maxBatch: o.maxBatch ?? o.concurrency,
                ...(o.maxContext !== undefined ? { maxContext: o.maxContext } : {}),
              })
            : undefined;
        if (opened) io.stderr(`${opened.deviceLine}\n`);
        const server = opened
          ? await startServer({
              model: opened.model,
              tokenizer: opened.tokenizer,
              modelName: opened.name,
              port: 0,
              ...engineOptions(o),
              maxBatch: opened.maxBatch,
              maxContext: opened.maxContext,
              ...(apiKey !== undefined ? { apiKey } : {}),
            })
          : undefined;
        try {
          const r = await benchServe({
            url: (server?.url ?? o.url) as string,
            concurrency: o.concurrency,
            promptTokens: o.promptTokens,
            outputTokens: o.outputTokens,
            ...(o.requests !== undefined ? { requests: o.requests } : {}),
            ...(apiKey !== undefined ? { apiKey } : {}),
          });
          io.stdout(formatBenchServe(r));
          const file =
            o.json === undefined
              ? undefined
              : o.json === true
                ? path.join('bench-results', 'serve.json')
                : o.json;
          if (file) {
            fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
            const text = new TextEncoder().encode(`${JSON.stringify(r, null, 2)}\n`);
            writeFileAtomic(file, (write) => write(text));
            io.stderr(`results written to ${file}\n`);
          }
        } finally {
          await server?.close({ timeoutMs: 0 });
          await opened?.model.dispose();
        }
      },
    );
}
