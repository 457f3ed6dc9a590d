import { createHash, randomBytes, randomInt, timingSafeEqual } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { Generator } from '../engine/generator';
import type { CausalLM } from '../lm';
import type { TextTokenizer } from '../tokenizer';
import { chatPromptIds } from './chat-template';
import {
  type Completion,
  CompletionAborted,
  type CompletionJob,
  type CompletionResult,
  startCompletion,
} from './completion';
import { ApiError, RETRY_AFTER_SECONDS, toApiError } from './errors';
import { ServerMetrics } from './metrics';
import {
  type ChatRequest,
  type CompletionRequest,
  chatRequestSchema,
  completionRequestSchema,
  parseRequest,
} from './schema';

/** Options of `startServer`. */
export interface ServeOptions {
  readonly model: CausalLM;
  readonly tokenizer: TextTokenizer;
  /** The model's id in the API: what `/v1/models` lists and requests must name. */
  readonly modelName: string;
  /** Interface to listen on (default 127.0.0.1: loopback only). */
  readonly host?: string;
  /** Port (default 8000; 0 picks a free one). */
  readonly port?: number;
  /** When set, every route but `/health` needs `Authorization: Bearer <apiKey>`. */
  readonly apiKey?: string;
  /** Sequences decoded together (default 8). */
  readonly maxBatch?: number;
  /** Positions per sequence, prompt and output together (default the model's context). */
  readonly maxContext?: number;
  /** Prompt tokens computed per engine step (default 512). */
  readonly prefillChunk?: number;
  /** Requests allowed to wait for a slot before new ones get 429 (default 256). */
  readonly maxWaiting?: number;
  /** KV pages in the pool (default every slot at full context). */
  readonly pages?: number;
  /** Largest request body in bytes; larger ones get 413 (default 1 MiB). */
  readonly bodyLimit?: number;
  /** Where unexpected errors are reported (default none). */
  readonly log?: (line: string) => void;
}

/** A running server. */
export interface Server {
  /** `http://host:port`. */
  readonly url: string;
  readonly generator: Generator;
  readonly metrics: ServerMetrics;
  readonly app: FastifyInstance;
  /**
   * Graceful shutdown: stops admitting (503 with `Retry-After`), lets running requests finish for up to
   * `timeoutMs` (default 30 s), cancels the rest, closes the listener and releases the engine's cache. The
   * model stays the caller's.
   */
  close(options?: { readonly timeoutMs?: number }): Promise<void>;
}

const sha256 = (s: string): Buffer => createHash('sha256').update(s, 'utf8').digest();

/**
 * Starts an OpenAI-compatible server over a model: `POST /v1/chat/completions`, `POST /v1/completions`,
 * `GET /v1/models`, `GET /health`, `GET /metrics`, with continuous batching (`Generator`), server-sent-event
 * streaming, Prometheus metrics, an optional API key, and graceful `close()`.
 *
 * @example
 * ```ts
 * const { model, tokenizer, name } = await openModel('models/stories260K/stories260K.bin');
 * const server = await startServer({ model, tokenizer, modelName: name, port: 8000 });
 * // curl http://127.0.0.1:8000/v1/completions -H 'content-type: application/json' \
 * //   -d '{"model": "stories260K", "prompt": "Once upon a time", "max_tokens": 32}'
 * await server.close();
 * ```
 */
export async function startServer(options: ServeOptions): Promise<Server> {
  const { tokenizer, modelName } = options;
  let metrics: ServerMetrics | undefined;
  const generator = new Generator(options.model, {
    ...(options.maxBatch !== undefined ? { maxBatch: options.maxBatch } : {}),
    ...(options.maxContext !== undefined ? { maxContext: options.maxContext } : {}),
    ...(options.prefillChunk !== undefined ? { prefillChunk: options.prefillChunk } : {}),
    ...(options.maxWaiting !== undefined ? { maxWaiting: options.maxWaiting } : {}),
    ...(options.pages !== undefined ? { pages: options.pages } : {}),
    onStep: (info) => metrics?.onStep(info),
  });
  const m = new ServerMetrics(generator);
  metrics = m;
  const keyDigest = options.apiKey !== undefined ? sha256(options.apiKey) : null;
  const created = Math.floor(Date.now() / 1000);
  const active = new Set<Promise<void>>();
  let draining = false;

  const app = Fastify({ bodyLimit: options.bodyLimit ?? 1024 * 1024, logger: false });

  app.addHook('onRequest', async (request) => {
    if (keyDigest === null || request.url.split('?')[0] === '/health') return;
    const header = request.headers.authorization;
    const match = typeof header === 'string' ? /^Bearer\s+(\S.*)$/i.exec(header.trim()) : null;
    // Digests have equal length whatever the key, so timingSafeEqual compares in constant time.
    if (match === null || !timingSafeEqual(sha256(match[1] as string), keyDigest))
      throw new ApiError(
        401,
        `Expected an Authorization header "Bearer <api key>" with the server's key but received ${match === null ? 'none' : 'another key'}`,
        { code: 'invalid_api_key', headers: { 'www-authenticate': 'Bearer' } },
      );
  });
  // Responses that complete are counted here; those whose client left first, where they notice it (499).
  app.addHook('onResponse', async (request, reply) => {
    m.requests.inc({ route: request.routeOptions.url ?? 'unknown', status: String(reply.statusCode) });
  });
  const clientLeft = (request: FastifyRequest) =>
    m.requests.inc({ route: request.routeOptions.url ?? 'unknown', status: '499' });
  app.setErrorHandler((error, _request, reply) => {
    const e = toApiError(error);
    if (e.status >= 500)
      options.log?.(`q serve: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
    return reply.code(e.status).headers(e.headers).send(e.body);
  });
  app.setNotFoundHandler((request, reply) =>
    reply
      .code(404)
      .send(
        new ApiError(
          404,
          `Expected one of POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health, GET /metrics but received ${request.method} ${request.url.split('?')[0]}`,
          { code: 'unknown_route' },
        ).body,
      ),
  );

  const modelObject = () => ({
    id: modelName,
    object: 'model',
    created,
    owned_by: 'q',
    /** As vLLM reports it: positions per sequence, prompt and output together. */
    max_model_len: generator.maxContext,
  });
  app.get('/health', async (_request, reply) =>
    draining ? reply.code(503).send({ status: 'draining' }) : { status: 'ok' },
  );
  app.get('/metrics', async (_request, reply) =>
    reply.type(m.registry.contentType).send(await m.registry.metrics()),
  );
  app.get('/v1/models', async () => ({ object: 'list', data: [modelObject()] }));
  app.get<{ Params: { id: string } }>('/v1/models/:id', async (request) => {
    checkModel(request.params.id, 'id');
    return modelObject();
  });

  function checkModel(name: string, param: string): void {
    if (name !== modelName)
      throw new ApiError(
        404,
        `Expected the model ${JSON.stringify(modelName)} (the one this server serves) for ${param} but received ${JSON.stringify(name)}`,
        { param, code: 'model_not_found' },
      );
  }

  function chatJob(body: ChatRequest): CompletionJob {
    const messages = body.messages.map((msg) => ({
      role: msg.role,
      content: typeof msg.content === 'string' ? msg.content : msg.content.map((p) => p.text).join(''),
    }));
    return {
      ...sampling(body),
      promptIds: chatPromptIds(tokenizer, messages),
      maxTokens: body.max_completion_tokens ?? body.max_tokens ?? undefined,
      promptParam: 'messages',
    };
  }

  function textJob(body: CompletionRequest): CompletionJob {
    const p = body.prompt;
    const first = Array.isArray(p) ? p[0] : p;
    const promptIds =
      typeof p === 'string'
        ? tokenizer.encodePrompt(p)
        : typeof first === 'string'
          ? tokenizer.encodePrompt(first)
          : typeof first === 'number'
            ? (p as number[])
            : (first as number[]);
    // OpenAI's default for this route.
    return { ...sampling(body), promptIds, maxTokens: body.max_tokens ?? 16, promptParam: 'prompt' };
  }

  function sampling(
    body: ChatRequest | CompletionRequest,
  ): Omit<CompletionJob, 'promptIds' | 'maxTokens' | 'promptParam'> {
    // top_p 0 keeps only the most likely token: greedy, as a (0, 1] sampler sees it.
    const topP = body.top_p === 0 ? Number.MIN_VALUE : body.top_p;
    // OpenAI's defaults: temperature 1, and without a seed a different draw every time.
    return {
      temperature: body.temperature ?? 1,
      ...(topP != null ? { topP } : {}),
      ...(body.top_k != null ? { topK: Math.max(0, body.top_k) } : {}),
      seed: body.seed ?? randomInt(2 ** 31),
      stop: body.stop == null ? [] : typeof body.stop === 'string' ? [body.stop] : body.stop,
      ignoreEos: body.ignore_eos ?? false,
    };
  }

  async function complete(
    kind: 'chat' | 'text',
    request: FastifyRequest,
    reply: FastifyReply,
  ): Promise<void> {
    const arrivedAt = performance.now();
    if (draining)
      throw new ApiError(
        503,
        'Expected a server that admits requests but received one that is shutting down',
        {
          code: 'server_shutting_down',
          headers: { 'retry-after': String(RETRY_AFTER_SECONDS) },
        },
      );
    const body =
      kind === 'chat'
        ? parseRequest(chatRequestSchema, request.body)
        : parseRequest(completionRequestSchema, request.body);
    checkModel(body.model, 'model');
    const job = kind === 'chat' ? chatJob(body as ChatRequest) : textJob(body as CompletionRequest);
    const client = new AbortController();
    // 'close' before the response is complete: the client went away. Its sequence is cancelled at once.
    reply.raw.on('close', () => {
      if (!reply.raw.writableFinished) client.abort();
    });
    const completion = startCompletion(generator, tokenizer, m, job, client.signal, arrivedAt);
    const id = `${kind === 'chat' ? 'chatcmpl' : 'cmpl'}-${randomBytes(12).toString('hex')}`;
    const done = (body.stream ? stream : respond)(kind, id, body, completion, client.signal, reply).finally(
      () => completion.cancel(),
    );
    active.add(done);
    try {
      await done;
    } finally {
      active.delete(done);
    }
  }

  async function respond(
    kind: 'chat' | 'text',
    id: string,
    _body: ChatRequest | CompletionRequest,
    completion: Completion,
    clientGone: AbortSignal,
    reply: FastifyReply,
  ): Promise<void> {
    let text = '';
    let result: CompletionResult;
    try {
      for (let r = await completion.text.next(); ; r = await completion.text.next()) {
        if (r.done) {
          result = r.value;
          break;
        }
        text += r.value;
      }
    } catch (e) {
      if (e instanceof CompletionAborted && !clientGone.aborted)
        throw new ApiError(503, 'Expected the request to finish but the server shut down first', {
          code: 'server_shutting_down',
          headers: { 'retry-after': String(RETRY_AFTER_SECONDS) },
        });
      if (e instanceof CompletionAborted) {
        // Nobody to answer: the socket is closed already.
        clientLeft(reply.request);
        reply.hijack();
        reply.raw.destroy();
        return;
      }
      throw e;
    }
    const usage = {
      prompt_tokens: result.promptTokens,
      completion_tokens: result.completionTokens,
      total_tokens: result.promptTokens + result.completionTokens,
    };
    const now = Math.floor(Date.now() / 1000);
    await reply.send(
      kind === 'chat'
        ? {
            id,
            object: 'chat.completion',
            created: now,
            model: modelName,
            choices: [
              {
                index: 0,
                message: { role: 'assistant', content: text, refusal: null },
                logprobs: null,
                finish_reason: result.finishReason,
              },
            ],
            usage,
          }
        : {
            id,
            object: 'text_completion',
            created: now,
            model: modelName,
            choices: [{ index: 0, text, logprobs: null, finish_reason: result.finishReason }],
            usage,
          },
    );
  }

  async function stream(
    kind: 'chat' | 'text',
    id: string,
    body: ChatRequest | CompletionRequest,
    completion: Completion,
    clientGone: AbortSignal,
    reply: FastifyReply,
  ): Promise<void> {
    const includeUsage = body.stream_options?.include_usage === true;
    const now = Math.floor(Date.now() / 1000);
    const object = kind === 'chat' ? 'chat.completion.chunk' : 'text_completion';
    const chunk = (text: string | null, finish: string | null, first = false) => ({
      id,
      object,
      created: now,
      model: modelName,
      choices: [
        kind === 'chat'
          ? {
              index: 0,
              delta: first
                ? { role: 'assistant', content: text ?? '' }
                : text === null
                  ? {}
                  : { content: text },
              logprobs: null,
              finish_reason: finish,
            }
          : { index: 0, text: text ?? '', logprobs: null, finish_reason: finish },
      ],
      ...(includeUsage ? { usage: null } : {}),
    });
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      connection: 'keep-alive',
    });
    const send = (data: unknown) => {
      if (!res.destroyed) res.write(`data: ${JSON.stringify(data)}\n\n`);
    };
    try {
      if (kind === 'chat') send(chunk('', null, true));
      let result: CompletionResult;
      for (let r = await completion.text.next(); ; r = await completion.text.next()) {
        if (r.done) {
          result = r.value;
          break;
        }
        send(chunk(r.value, null));
      }
      send(chunk(kind === 'chat' ? null : '', result.finishReason));
      if (includeUsage)
        send({
          id,
          object,
          created: now,
          model: modelName,
          choices: [],
          usage: {
            prompt_tokens: result.promptTokens,
            completion_tokens: result.completionTokens,
            total_tokens: result.promptTokens + result.completionTokens,
          },
        });
    } catch (e) {
      // A client that went away gets nothing more.
      if (clientGone.aborted) clientLeft(reply.request);
      else {
        // Headers are gone: the error travels as an event, which OpenAI's clients raise as an error.
        const err =
          e instanceof CompletionAborted
            ? new ApiError(503, 'Expected the request to finish but the server shut down first', {
                code: 'server_shutting_down',
              })
            : toApiError(e);
        if (err.status >= 500 && !(e instanceof CompletionAborted))
          options.log?.(`q serve: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
        send(err.body);
      }
    } finally {
      if (!res.destroyed) res.end('data: [DONE]\n\n');
    }
  }

  app.post('/v1/chat/completions', (request, reply) => complete('chat', request, reply));
  app.post('/v1/completions', (request, reply) => complete('text', request, reply));

  generator.start();
  try {
    await app.listen({ host: options.host ?? '127.0.0.1', port: options.port ?? 8000 });
  } catch (e) {
    await generator.close();
    throw e;
  }
  const addr = app.server.address() as AddressInfo;
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;

  return {
    url: `http://${host}:${addr.port}`,
    generator,
    metrics: m,
    app,
    async close(closeOptions = {}) {
      if (draining) return;
      draining = true;
      await generator.drain(closeOptions.timeoutMs ?? 30_000);
      await Promise.allSettled([...active]);
      await app.close();
      await generator.close();
    },
  };
}
