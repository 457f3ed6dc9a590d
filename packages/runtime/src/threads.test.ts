import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Rng } from '@q/core';
import { afterAll, describe, expect, it } from 'vitest';
import { loadModel } from './load';
import { quantizeLoaded, saveQuantizedModel } from './quantize';
import { repoRoot } from './shared-data';
import { bpeTokenizerJson, writeHfModel } from './testing/hf-fixture';
import { randomWeights, smallConfig } from './testing/random-model';

// The quantized path uses worker threads only from a build (see cpu/quant-pool.ts), so this runs the built CLI.
const cli = path.join(repoRoot(), 'packages', 'runtime', 'dist', 'cli.js');
const built = fs.existsSync(cli);
if (!built) console.warn('skipping the worker-thread equality test: packages/runtime/dist is not built');

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'q-threads-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe.skipIf(!built)('worker threads', () => {
  it('quantized and float evaluation give bit-identical results on 1 and 2 threads', async () => {
    const config = smallConfig({
      hiddenSize: 256,
      intermediateSize: 512,
      headDim: 64,
      numHeads: 4,
      numKvHeads: 2,
    });
    const dir = path.join(tmp, 'float');
    writeHfModel(dir, { config, weights: randomWeights(config, 31), tokenizer: bpeTokenizerJson() });
    const float = loadModel(dir);
    const qdir = path.join(tmp, 'w4a8');
    saveQuantizedModel(qdir, await quantizeLoaded(float, { recipe: 'w4a8-rtn', groupSize: 64 }), {
      tokenizer: float.tokenizer,
    });
    const rng = new Rng(6);
    const words = ['the', 'cat', 'tea', 'hat', 'cab'];
    const text = Array.from({ length: 400 }, () => words[rng.int(words.length)]).join(' ');
    const textFile = path.join(tmp, 'text.txt');
    fs.writeFileSync(textFile, text);
    const run = (threads: string) =>
      JSON.parse(
        execFileSync(process.execPath, [cli, 'eval', qdir, '--text', textFile, '--compare', dir, '--json'], {
          encoding: 'utf8',
          env: { ...process.env, Q_THREADS: threads },
        }),
      ) as { ppl: number; kl: number; top1: number; referencePpl: number; tokens: number };
    const one = run('1');
    const two = run('2');
    expect(one.tokens).toBeGreaterThan(300);
    expect(two).toMatchObject({ ppl: one.ppl, kl: one.kl, top1: one.top1, referencePpl: one.referencePpl });
  });
});

describe.skipIf(!built)('q quantize killed by a signal', () => {
  it('never leaves a partial directory under the final name (SIGINT and SIGKILL at several moments)', async () => {
    const { spawn } = await import('node:child_process');
    const config = smallConfig({
      hiddenSize: 256,
      intermediateSize: 512,
      headDim: 64,
      numHeads: 4,
      numKvHeads: 2,
    });
    const dir = path.join(tmp, 'float-signals');
    writeHfModel(dir, { config, weights: randomWeights(config, 32), tokenizer: bpeTokenizerJson() });
    const outcomes: string[] = [];
    for (const signal of ['SIGINT', 'SIGKILL'] as const) {
      for (const delay of [100, 250, 400, 700]) {
        const out = path.join(tmp, `sig-${signal}-${delay}`);
        const child = spawn(process.execPath, [cli, 'quantize', dir, '--recipe', 'odyssey', '--out', out], {
          stdio: 'ignore',
        });
        const timer = setTimeout(() => child.kill(signal), delay);
        await new Promise((resolve) => child.on('exit', resolve));
        clearTimeout(timer);
        if (fs.existsSync(out)) {
          // Present means complete: the manifest, the weights it lists and the tokenizer.
          expect(fs.existsSync(path.join(out, 'manifest.json'))).toBe(true);
          expect(fs.existsSync(path.join(out, 'tokenizer.json'))).toBe(true);
          expect(loadModel(out).source).toBe('quantized');
          outcomes.push('complete');
        } else outcomes.push('absent');
        if (signal === 'SIGINT')
          expect(fs.readdirSync(tmp).filter((n) => n.includes('.partial'))).toEqual([]);
      }
    }
    console.log(`quantize interrupted at 100-700 ms: ${outcomes.join(', ')}`);
  });
});
