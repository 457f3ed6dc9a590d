import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Rng } from './cpu/prng';
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
  it('quantized and float evaluation give bit-identical results on 1 and 2 threads', () => {
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
    saveQuantizedModel(quantizeLoaded(float, { recipe: 'w4a8-rtn', groupSize: 64 }), float, qdir);
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
