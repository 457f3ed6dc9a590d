import * as fs from 'node:fs';
import * as path from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createModel } from '../backend';
import { type CliIO, runCli } from '../cli-main';
import { buildDemoModel, demoText } from '../demo-model';
import type { CausalLM } from '../lm';
import { loadModel } from '../load';
import { Model } from '../model';
import { sharedDir } from '../shared-data';
import { generateAlone, generatedText } from '../testing/alone';
import type { TextTokenizer } from '../tokenizer';
import { weightsFromMap } from '../weights';
import { type ServeOptions, type Server, startServer } from './app';

const shared = sharedDir();
const storiesFile = shared ? path.join(shared, 'models', 'stories260K', 'stories260K.bin') : '';
const storiesPresent = shared !== null && fs.existsSync(storiesFile);
if (!storiesPresent)
  console.warn('skipping stories260K server tests: ../shared/models/stories260K is absent');

interface Fixture {
  readonly name: string;
  readonly model: CausalLM;
  readonly tokenizer: TextTokenizer;
  /** Prompts of different lengths. */
  readonly texts: readonly string[];
  /** Tokens per request in the heavier tests (the demo model is 40x larger than stories260K). */
  readonly tokens: number;
  readonly file?: string;
}

async function storiesFixture(): Promise<Fixture> {
  const loaded = loadModel(storiesFile);
  const model = await createModel(loaded);
  const tokenizer = loaded.tokenizer;
  const words =
    'Once upon a time there was a little girl named Lily who loved to play in the park with her dog'.split(
      ' ',
    );
  return {
    name: 'stories260K',
    model,
    tokenizer,
    texts: Array.from({ length: 16 }, (_, i) => words.slice(0, 1 + ((i * 5) % words.length)).join(' ')),
    tokens: 24,
    file: storiesFile,
  };
}

async function demoFixture(): Promise<Fixture> {
  const demo = buildDemoModel();
  return {
    name: 'demo',
    model: Model.fromFloatWeights(demo.config, weightsFromMap(demo.weights)),
    tokenizer: demo.tokenizer,
    // 1 to 4 words (2 to 18 tokens): this model takes about 20 ms a token on the CPU.
    texts: Array.from({ length: 16 }, (_, i) =>
      demoText(40 + i, 1)
        .split(' ')
        .slice(0, 1 + (i % 4))
        .join(' '),
    ),
    tokens: 3,
  };
}

/** The model as the server sees it, recording the largest batch a step ran. */
function spied(lm: CausalLM): { lm: CausalLM; maxBatch: () => number } {
  let max = 0;
  return {
    lm: {
      config: lm.config,
      backend: lm.backend,
      createCache: (o) => lm.createCache(o),
      forward: (tokens, o) => {
        max = Math.max(max, tokens.length);
        return lm.forward(tokens, o);
      },
      dispose: () => lm.dispose(),
    },
    maxBatch: () => max,
  };
}

const memo = new Map<string, { ids: number[]; text: string; finish: string }>();

/** What greedy generation of a prompt gives alone: the ids and the text `q generate` prints after the prompt. */
async function alone(f: Fixture, promptIds: readonly number[], maxTokens: number) {
  const key = `${f.name}:${promptIds.join(',')}:${maxTokens}`;
  let r = memo.get(key);
  if (!r) {
    const ids = await generateAlone(f.model, promptIds, { maxTokens });
    r = {
      ids,
      text: generatedText(f.tokenizer, promptIds, ids),
      finish: ids.length < maxTokens ? 'stop' : 'length',
    };
    memo.set(key, r);
  }
  return r;
}

async function metric(server: Server, name: string, labels = ''): Promise<number> {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  const line = text
    .split('\n')
    .find((l) => l.startsWith(`${name}${labels} `) || (labels === '' && l.startsWith(`${name} `)));
  return line === undefined ? 0 : Number(line.split(' ').pop());
}

async function until(what: string, ok: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!(await ok())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function serve(f: Fixture, over: Partial<ServeOptions> = {}) {
  const spy = spied(f.model);
  const server = await startServer({
    model: spy.lm,
    tokenizer: f.tokenizer,
    modelName: f.name,
    port: 0,
    maxBatch: 16,
    prefillChunk: 32,
    ...over,
  });
  return { server, spy };
}

const fixtures: [string, boolean, () => Promise<Fixture>][] = [
  ['stories260K', storiesPresent, storiesFixture],
  ['demo model', true, demoFixture],
];

for (const [label, present, make] of fixtures) {
  describe.skipIf(!present)(`q serve on ${label}, with the openai client`, () => {
    let f: Fixture;
    let server: Server;
    let spy: ReturnType<typeof spied>;
    let client: OpenAI;

    beforeAll(async () => {
      f = await make();
      ({ server, spy } = await serve(f));
      client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
    });
    afterAll(async () => {
      await server?.close({ timeoutMs: 0 });
    });

    it('text completions, plain and streamed, return exactly what greedy generation returns', async () => {
      const prompt = f.texts[3] as string;
      const ids = f.tokenizer.encodePrompt(prompt);
      const want = await alone(f, ids, f.tokens);
      if (f.file) {
        // The command line itself, for a model that lives in a file.
        let stdout = '';
        const io: CliIO = { stdout: (s) => (stdout += s), stderr: () => {}, isTTY: false };
        const code = await runCli(
          ['generate', f.file, '--prompt', prompt, '--max-tokens', String(f.tokens)],
          io,
        );
        expect(code).toBe(0);
        expect(stdout).toBe(`${prompt}${want.text}\n`);
      }
      const r = await client.completions.create({
        model: f.name,
        prompt,
        max_tokens: f.tokens,
        temperature: 0,
      });
      expect(r.object).toBe('text_completion');
      expect(r.choices[0]?.text).toBe(want.text);
      expect(r.choices[0]?.finish_reason).toBe(want.finish);
      expect(r.usage).toEqual({
        prompt_tokens: ids.length,
        completion_tokens: want.ids.length,
        total_tokens: ids.length + want.ids.length,
      });
      const s = await client.completions.create({
        model: f.name,
        prompt,
        max_tokens: f.tokens,
        temperature: 0,
        stream: true,
        stream_options: { include_usage: true },
      });
      let text = '';
      const finish: (string | null)[] = [];
      let usage: unknown;
      for await (const c of s) {
        text += c.choices[0]?.text ?? '';
        if (c.choices[0]) finish.push(c.choices[0].finish_reason);
        if (c.usage) usage = c.usage;
      }
      expect(text).toBe(want.text);
      expect(finish.at(-1)).toBe(want.finish);
      expect(finish.slice(0, -1).every((x) => x === null)).toBe(true);
      expect(usage).toEqual(r.usage);
      // A prompt given as token ids is the same request.
      const byIds = await client.completions.create({
        model: f.name,
        prompt: ids,
        max_tokens: f.tokens,
        temperature: 0,
      });
      expect(byIds.choices[0]?.text).toBe(want.text);
      // Sampling is seeded per request: the same text as generating alone with that seed.
      const sampling = { temperature: 0.9, topP: 0.95, seed: 17 };
      const sampled = await generateAlone(f.model, ids, { maxTokens: f.tokens, ...sampling });
      const rs = await client.completions.create({
        model: f.name,
        prompt,
        max_tokens: f.tokens,
        temperature: sampling.temperature,
        top_p: sampling.topP,
        seed: sampling.seed,
      });
      expect(rs.choices[0]?.text).toBe(generatedText(f.tokenizer, ids, sampled));
    });

    it('chat completions, plain and streamed, return exactly what greedy generation returns', async () => {
      const content = f.texts[5] as string;
      // The documented plain template (llama2.c tokenizers carry no chat template).
      const ids = f.tokenizer.encodePrompt(`User: ${content}\nAssistant:`);
      const want = await alone(f, ids, f.tokens);
      const r = await client.chat.completions.create({
        model: f.name,
        messages: [{ role: 'user', content }],
        max_tokens: f.tokens,
        temperature: 0,
        // Neutral values common clients send are accepted.
        n: 1,
        presence_penalty: 0,
        frequency_penalty: 0,
        user: 'test',
      });
      expect(r.object).toBe('chat.completion');
      expect(r.choices[0]?.message).toMatchObject({ role: 'assistant', content: want.text });
      expect(r.choices[0]?.finish_reason).toBe(want.finish);
      expect(r.usage?.prompt_tokens).toBe(ids.length);
      expect(r.usage?.completion_tokens).toBe(want.ids.length);
      const s = await client.chat.completions.create({
        model: f.name,
        messages: [{ role: 'user', content }],
        max_completion_tokens: f.tokens,
        temperature: 0,
        stream: true,
      });
      let text = '';
      const roles: string[] = [];
      let finish: string | null = null;
      for await (const c of s) {
        const ch = c.choices[0];
        expect(c.object).toBe('chat.completion.chunk');
        if (ch?.delta.role) roles.push(ch.delta.role);
        text += ch?.delta.content ?? '';
        finish = ch?.finish_reason ?? finish;
        expect(c.usage ?? null).toBe(null);
      }
      expect(roles).toEqual(['assistant']);
      expect(text).toBe(want.text);
      expect(finish).toBe(want.finish);
    });

    it('16 concurrent requests of different prompt lengths each get what they would get alone', async () => {
      const before = spy.maxBatch();
      const jobs = [];
      for (const [i, prompt] of f.texts.entries()) {
        const ids = f.tokenizer.encodePrompt(prompt);
        jobs.push({ prompt, ids, stream: i % 2 === 1, want: await alone(f, ids, f.tokens) });
      }
      expect(new Set(jobs.map((j) => j.ids.length)).size).toBeGreaterThan(4);
      const got = await Promise.all(
        jobs.map(async (j) => {
          if (!j.stream) {
            const r = await client.completions.create({
              model: f.name,
              prompt: j.prompt,
              max_tokens: f.tokens,
              temperature: 0,
            });
            return r.choices[0]?.text;
          }
          let text = '';
          const s = await client.completions.create({
            model: f.name,
            prompt: j.prompt,
            max_tokens: f.tokens,
            temperature: 0,
            stream: true,
          });
          for await (const c of s) text += c.choices[0]?.text ?? '';
          return text;
        }),
      );
      jobs.forEach((j, i) => {
        expect(got[i]).toBe(j.want.text);
      });
      // They did share steps.
      expect(Math.max(before, spy.maxBatch())).toBeGreaterThan(1);
    });

    it('stop strings end the text before the match, streamed or not', async () => {
      const prompt = f.texts[2] as string;
      const ids = f.tokenizer.encodePrompt(prompt);
      const want = await alone(f, ids, f.tokens);
      // A stop string from the middle of the expected text.
      const at = Math.floor(want.text.length / 2);
      const stop = want.text.slice(at, at + 2);
      const cut = want.text.slice(0, want.text.indexOf(stop));
      const r = await client.completions.create({
        model: f.name,
        prompt,
        max_tokens: f.tokens,
        temperature: 0,
        stop: [stop, '\u0000never'],
      });
      expect(r.choices[0]?.text).toBe(cut);
      expect(r.choices[0]?.finish_reason).toBe('stop');
      let text = '';
      let finish: string | null = null;
      const s = await client.completions.create({
        model: f.name,
        prompt,
        max_tokens: f.tokens,
        temperature: 0,
        stop,
        stream: true,
      });
      for await (const c of s) {
        text += c.choices[0]?.text ?? '';
        finish = c.choices[0]?.finish_reason ?? finish;
      }
      expect(text).toBe(cut);
      expect(finish).toBe('stop');
    });

    it('a client that disconnects mid-stream frees its sequence', async () => {
      const aborted = await metric(server, 'q_requests_finished_total', '{finish_reason="abort"}');
      const ctl = new AbortController();
      const s = await client.completions.create(
        {
          model: f.name,
          prompt: f.texts[0] as string,
          max_tokens: 200,
          stream: true,
          ignore_eos: true,
        } as never,
        { signal: ctl.signal },
      );
      let chunks = 0;
      for await (const _ of s as unknown as AsyncIterable<unknown>)
        if (++chunks === 3) {
          ctl.abort();
          break;
        }
      expect(chunks).toBe(3);
      await until('the sequence to be freed', async () => (await metric(server, 'q_requests_running')) === 0);
      expect(await metric(server, 'q_kv_pages_in_use')).toBe(0);
      expect(await metric(server, 'q_requests_finished_total', '{finish_reason="abort"}')).toBe(aborted + 1);
      expect(server.generator.stats.pagesReserved).toBe(0);
    });

    it('lists its model and exposes its metrics', async () => {
      const models = await client.models.list();
      expect(models.data.map((m) => m.id)).toEqual([f.name]);
      const text = await (await fetch(`${server.url}/metrics`)).text();
      for (const name of [
        'q_requests_waiting',
        'q_requests_running',
        'q_kv_pages_in_use',
        'q_kv_pages_total',
        'q_generated_tokens_total',
        'q_prompt_tokens_total',
        'q_time_to_first_token_seconds_bucket',
        'q_inter_token_latency_seconds_bucket',
        'q_requests_total',
      ])
        expect(text).toMatch(new RegExp(`^${name}`, 'm'));
      expect(await metric(server, 'q_generated_tokens_total')).toBeGreaterThan(16 * f.tokens * 0.5);
      expect(await metric(server, 'q_time_to_first_token_seconds_count')).toBeGreaterThan(16);
    });
  });
}

describe('q serve: bad requests, limits and keys', () => {
  let f: Fixture;
  let server: Server;
  const post = (route: string, body: string, headers: Record<string, string> = {}) =>
    fetch(`${server.url}${route}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body,
    });
  /** The server still answers: health and a one-token completion. */
  const alive = async (s: Server, headers: Record<string, string> = {}) => {
    expect((await fetch(`${s.url}/health`)).status).toBe(200);
    const r = await fetch(`${s.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body: JSON.stringify({ model: f.name, prompt: 'The cat', max_tokens: 1 }),
    });
    expect(r.status).toBe(200);
    expect(
      ((await r.json()) as { usage: { completion_tokens: number } }).usage.completion_tokens,
    ).toBeLessThanOrEqual(1);
  };
  const expectOpenAIError = async (r: Response, status: number, param?: string | null) => {
    expect(r.status).toBe(status);
    const body = (await r.json()) as { error: Record<string, unknown> };
    expect(Object.keys(body)).toEqual(['error']);
    expect(Object.keys(body.error).sort()).toEqual(['code', 'message', 'param', 'type']);
    expect(typeof body.error.message).toBe('string');
    if (param !== undefined) expect(body.error.param).toBe(param);
    return body.error;
  };

  beforeAll(async () => {
    // The demo model with one layer keeps these fast; what they test is the HTTP layer.
    const demo = buildDemoModel({ numLayers: 1, hiddenSize: 64, intermediateSize: 128 });
    f = {
      name: 'demo',
      model: Model.fromFloatWeights(demo.config, weightsFromMap(demo.weights)),
      tokenizer: demo.tokenizer,
      texts: [],
      tokens: 4,
    };
    ({ server } = await serve(f, { bodyLimit: 16 * 1024 }));
  });
  afterAll(() => server?.close({ timeoutMs: 0 }));

  it('malformed JSON, n: 3, negative max_tokens and other bad fields are 400 in OpenAI error shape', async () => {
    const chat = (extra: Record<string, unknown>) =>
      JSON.stringify({ model: f.name, messages: [{ role: 'user', content: 'Hi' }], ...extra });
    let e = await expectOpenAIError(
      await post('/v1/chat/completions', '{"model": "demo", "messages": ['),
      400,
      null,
    );
    expect(e.type).toBe('invalid_request_error');
    await alive(server);
    e = await expectOpenAIError(await post('/v1/chat/completions', chat({ n: 3 })), 400, 'n');
    expect(e.message).toMatch(/Expected 1 for n but received 3/);
    await alive(server);
    e = await expectOpenAIError(
      await post('/v1/completions', JSON.stringify({ model: f.name, prompt: 'x', max_tokens: -5 })),
      400,
      'max_tokens',
    );
    expect(e.message).toMatch(/max_tokens but received -5/);
    await alive(server);
    for (const [extra, param] of [
      [{ logprobs: true }, 'logprobs'],
      [{ tools: [{ type: 'function', function: { name: 'f' } }] }, 'tools'],
      [{ temperature: 'hot' }, 'temperature'],
      [{ stop: ['a', 'b', 'c', 'd', 'e'] }, 'stop'],
      [{ frequency_penalty: 0.5 }, 'frequency_penalty'],
      [{ response_format: { type: 'json_object' } }, 'response_format'],
      [{ made_up_option: 1 }, 'made_up_option'],
      [{ messages: [{ role: 'tool', content: 'x' }] }, 'messages[0].role'],
    ] as const) {
      await expectOpenAIError(await post('/v1/chat/completions', chat(extra)), 400, param);
    }
    await expectOpenAIError(
      await post('/v1/completions', JSON.stringify({ model: f.name, prompt: ['a', 'b'] })),
      400,
      'prompt',
    );
    await expectOpenAIError(
      await post('/v1/completions', JSON.stringify({ model: f.name, prompt: 'x', echo: true })),
      400,
      'echo',
    );
    await expectOpenAIError(await post('/v1/completions', '[]'), 400, null);
    await expectOpenAIError(await post('/v1/completions', ''), 400, null);
    // The official client raises them as BadRequestError with the server's message.
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0 });
    await expect(
      client.chat.completions.create({ model: f.name, messages: [{ role: 'user', content: 'Hi' }], n: 3 }),
    ).rejects.toMatchObject({
      status: 400,
      param: 'n',
    });
    // An unknown model is a 404, an unknown route too.
    e = await expectOpenAIError(
      await post('/v1/completions', JSON.stringify({ model: 'gpt-4', prompt: 'x' })),
      404,
      'model',
    );
    expect(e.code).toBe('model_not_found');
    await expectOpenAIError(await fetch(`${server.url}/v1/embeddings`), 404, null);
    await alive(server);
  });

  it('max_tokens is capped by the context; a prompt that fills it is a 400', async () => {
    const ctx = server.generator.maxContext;
    const prompt = Array.from({ length: ctx - 5 }, (_, i) => 3 + (i % 200));
    const r = await post(
      '/v1/completions',
      JSON.stringify({ model: f.name, prompt, max_tokens: 1000, ignore_eos: true }),
    );
    expect(r.status).toBe(200);
    const body = (await r.json()) as {
      usage: { completion_tokens: number };
      choices: { finish_reason: string }[];
    };
    expect(body.usage.completion_tokens).toBe(5);
    expect(body.choices[0]?.finish_reason).toBe('length');
    const full = Array.from({ length: ctx }, (_, i) => 3 + (i % 200));
    const e = await expectOpenAIError(
      await post('/v1/completions', JSON.stringify({ model: f.name, prompt: full })),
      400,
      'prompt',
    );
    expect(e.code).toBe('context_length_exceeded');
    await alive(server);
  });

  it('an oversized body is 413', async () => {
    const big = JSON.stringify({ model: f.name, prompt: 'word '.repeat(8 * 1024) });
    await expectOpenAIError(await post('/v1/completions', big), 413);
    await alive(server);
  });

  it('with an API key, every route but /health needs it; a wrong or missing key is 401', async () => {
    const keyed = (await serve(f, { apiKey: 'sekret-key' })).server;
    try {
      const body = JSON.stringify({ model: f.name, prompt: 'The cat', max_tokens: 1 });
      const at = (route: string, init: RequestInit = {}) => fetch(`${keyed.url}${route}`, init);
      const variants: Record<string, string>[] = [
        {},
        { authorization: 'Bearer wrong' },
        { authorization: 'sekret-key' },
        { authorization: 'Bearer sekret-key2' },
      ];
      for (const headers of variants) {
        await expectOpenAIError(
          await at('/v1/completions', {
            method: 'POST',
            headers: { 'content-type': 'application/json', ...headers },
            body,
          }),
          401,
        );
        await expectOpenAIError(await at('/v1/models', { headers }), 401);
        await expectOpenAIError(await at('/metrics', { headers }), 401);
      }
      const r = await at('/v1/completions', {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: 'Bearer sekret-key' },
        body,
      });
      expect(r.status).toBe(200);
      expect((await at('/health')).status).toBe(200);
      const client = new OpenAI({ baseURL: `${keyed.url}/v1`, apiKey: 'sekret-key', maxRetries: 0 });
      expect((await client.models.list()).data[0]?.id).toBe(f.name);
      const wrong = new OpenAI({ baseURL: `${keyed.url}/v1`, apiKey: 'nope', maxRetries: 0 });
      await expect(wrong.models.list()).rejects.toMatchObject({ status: 401 });
      await alive(keyed, { authorization: 'Bearer sekret-key' });
    } finally {
      await keyed.close({ timeoutMs: 0 });
    }
  });

  it('a full queue is 429 with Retry-After', async () => {
    const tight = (await serve(f, { maxBatch: 1, maxWaiting: 0 })).server;
    try {
      const ctl = new AbortController();
      const busy = await fetch(`${tight.url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({
          model: f.name,
          prompt: 'The cat',
          max_tokens: 200,
          ignore_eos: true,
          stream: true,
        }),
        signal: ctl.signal,
      });
      expect(busy.status).toBe(200);
      const r = await fetch(`${tight.url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: f.name, prompt: 'The dog', max_tokens: 2 }),
      });
      expect(r.headers.get('retry-after')).toBe('1');
      await expectOpenAIError(r, 429);
      ctl.abort();
      await until('the slot to be free', async () => tight.generator.stats.running === 0);
      await alive(tight);
      // Each request counted once; the stream its client left as 499.
      expect(await metric(tight, 'q_requests_total', '{route="/v1/completions",status="200"}')).toBe(1);
      expect(await metric(tight, 'q_requests_total', '{route="/v1/completions",status="499"}')).toBe(1);
      expect(await metric(tight, 'q_requests_total', '{route="/v1/completions",status="429"}')).toBe(1);
    } finally {
      await tight.close({ timeoutMs: 0 });
    }
  });

  it('close() stops admitting, lets running streams finish within the timeout, cancels the rest', async () => {
    const s = (await serve(f, { maxBatch: 2 })).server;
    const client = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: 'unused', maxRetries: 0 });
    const short = await client.completions.create({
      model: f.name,
      prompt: 'The cat',
      max_tokens: 3,
      ignore_eos: true,
      stream: true,
    } as never);
    const long = await client.completions.create({
      model: f.name,
      prompt: 'The dog',
      // Far more than the shutdown timeout lets even a fast machine generate.
      max_tokens: 480,
      ignore_eos: true,
      stream: true,
    } as never);
    const read = async (st: unknown) => {
      let n = 0;
      let finish: string | null = null;
      for await (const c of st as AsyncIterable<{ choices: { finish_reason: string | null }[] }>) {
        n++;
        finish = c.choices[0]?.finish_reason ?? finish;
      }
      return { n, finish };
    };
    const shortDone = read(short);
    const longDone = read(long).then(
      (v) => ({ ...v, error: null as unknown }),
      (error: unknown) => ({ n: -1, finish: null, error }),
    );
    await new Promise((r) => setTimeout(r, 20));
    const closing = s.close({ timeoutMs: 30 });
    expect(await shortDone).toMatchObject({ finish: 'length' });
    const l = await longDone;
    // The long stream was cut by the shutdown: an error event, which the client raises.
    expect(String(l.error)).toMatch(/shut down/);
    await closing;
    await expect(fetch(`${s.url}/health`)).rejects.toThrow();
  });
});
