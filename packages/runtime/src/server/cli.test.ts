import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { type CliIO, runCli } from '../cli-main';
import { sharedDir } from '../shared-data';
import type { BenchServeResult } from './bench';

const shared = sharedDir();
const modelFile = shared ? path.join(shared, 'models', 'stories260K', 'stories260K.bin') : '';
const present = shared !== null && fs.existsSync(modelFile);
if (!present)
  console.warn('skipping q serve CLI tests on stories260K: ../shared/models/stories260K is absent');

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'q-serve-cli-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function start(...argv: string[]) {
  const out = { stdout: '', stderr: '' };
  const io: CliIO = { stdout: (s) => (out.stdout += s), stderr: (s) => (out.stderr += s), isTTY: false };
  // What the q binary aborts on SIGINT and SIGTERM.
  const stop = new AbortController();
  return { out, stop, code: runCli(argv, io, stop.signal) };
}

async function q(...argv: string[]) {
  const { out, code } = start(...argv);
  return { code: await code, ...out };
}

describe('q serve and q bench serve', () => {
  it('--help shows usage and examples', async () => {
    for (const argv of [['serve'], ['bench', 'serve']]) {
      const r = await q(...argv, '--help');
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(new RegExp(`Usage: q ${argv.join(' ')}`));
      expect(r.stdout).toMatch(/Examples:\n {2}q /);
    }
  });

  it('refuses what it cannot do, with the reason', async () => {
    let r = await q('bench', 'serve', '--concurrency', '2');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/Expected exactly one of --url and --model .* but received neither/);
    r = await q('serve', 'demo', '--device', 'gpu');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/Expected cpu, cuda or cuda:N for --device but received "gpu"/);
    r = await q('serve', 'demo', '--port', '-1');
    expect(r.code).toBe(2);
  });

  it.skipIf(!present)('q serve answers until the program signal, then shuts down gracefully', async () => {
    const { out, stop, code } = start(
      'serve',
      modelFile,
      '--device',
      'cpu',
      '--port',
      '0',
      '--max-batch',
      '4',
      '--kv-pages',
      '64',
    );
    const deadline = Date.now() + 20_000;
    while (!/on (http:\/\/\S+)/.test(out.stderr)) {
      if (Date.now() > deadline) throw new Error(`q serve did not start: ${out.stderr}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    const url = (/on (http:\/\/\S+)/.exec(out.stderr) as RegExpExecArray)[1] as string;
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(out.stderr).toMatch(/batch 4, context 512, 64 KV pages/);
    const r = await fetch(`${url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'stories260K', prompt: 'Once upon a time', max_tokens: 8 }),
    });
    expect(r.status).toBe(200);
    expect(((await r.json()) as { choices: { text: string }[] }).choices[0]?.text.length).toBeGreaterThan(0);
    stop.abort();
    expect(await code).toBe(0);
    expect(out.stderr).toMatch(/stopping: finishing running requests/);
    expect(out.stderr).toMatch(/stopped/);
    expect(out.stderr).toMatch(/^device: cpu \(asked for\)$/m);
    await expect(fetch(`${url}/health`)).rejects.toThrow();
  });

  it.skipIf(!present)(
    'q bench serve starts a server on --model, reports the table and writes JSON',
    async () => {
      const json = path.join(tmp, 'serve.json');
      const r = await q(
        'bench',
        'serve',
        '--model',
        modelFile,
        '--device',
        'cpu',
        '--concurrency',
        '3',
        '--prompt-tokens',
        '20',
        '--output-tokens',
        '12',
        '--requests',
        '6',
        '--json',
        json,
      );
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(/concurrency 3, prompt 20 tokens, output 12 tokens, 6 requests/);
      expect(r.stdout).toMatch(/\| output tok\/s \| +req\/s \| TTFT p50 ms/);
      const res = JSON.parse(fs.readFileSync(json, 'utf8')) as BenchServeResult;
      expect(res).toMatchObject({
        model: 'stories260K',
        concurrency: 3,
        promptTokens: 20,
        outputTokens: 12,
        requests: 6,
      });
      // ignore_eos: every request produced exactly 12 tokens.
      expect(res.outputTokensPerSecond * res.seconds).toBeCloseTo(6 * 12, 6);
      expect(res.requestsPerSecond * res.seconds).toBeCloseTo(6, 6);
      expect(res.ttftMs.p50).toBeGreaterThan(0);
      expect(res.ttftMs.p99).toBeGreaterThanOrEqual(res.ttftMs.p50);
      expect(res.itlMs.p99).toBeGreaterThanOrEqual(res.itlMs.p50);
    },
  );
});
