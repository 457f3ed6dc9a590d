import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Tensor } from '@q/core';
import { loadQuantized, type QuantizedModel } from '@q/quant';
import { afterAll, describe, expect, it } from 'vitest';
import { createModel } from './backend';
import { loadModel } from './load';
import { quantizeLoaded, saveQuantizedModel } from './quantize';
import { type QuantizeFileProgress, quantizeFile } from './quantize-file';
import { sharedDir } from './shared-data';
import { bpeTokenizerJson, writeHfModel } from './testing/hf-fixture';
import { randomWeights, smallConfig } from './testing/random-model';

const shared = sharedDir();
const modelFile = shared ? path.join(shared, 'models', 'stories260K', 'stories260K.bin') : '';
const textFile = shared ? path.join(shared, 'data', 'tinystories-valid-sample.txt') : '';
const present = shared !== null && fs.existsSync(modelFile) && fs.existsSync(textFile);
if (!present) console.warn('skipping stories260K quantizeFile tests: ../shared is absent');

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'q-qfile-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Every quantized and float tensor of two models, compared exactly. */
function expectSameModel(got: QuantizedModel, want: QuantizedModel): void {
  expect(got.plans).toEqual(want.plans);
  expect(got.recipe).toEqual(want.recipe);
  expect([...got.linears.keys()]).toEqual([...want.linears.keys()]);
  for (const [n, l] of want.linears) expect(got.linears.get(n), n).toEqual(l);
  expect([...got.tensors.keys()].sort()).toEqual([...want.tensors.keys()].sort());
  for (const [n, t] of want.tensors) expect(got.tensors.get(n)?.data, n).toEqual(t.data);
}

/** A small Hugging Face model stored in f16 (sharded), with outlier channels so LAE and dynamic layers occur. */
function hfModel(name: string, dtype: 'f16' | 'bf16'): string {
  const config = smallConfig({ hiddenSize: 64, intermediateSize: 96, headDim: 16, vocabSize: 36 });
  const w = randomWeights(config, 31);
  for (const [n, t] of w) {
    // A large norm gain channel puts the input of the layers after it in the LAE band of the FPTQ policy.
    if (n.endsWith('layernorm.weight')) t.data[3] = 40;
  }
  const stored = new Map<string, Tensor>([...w].map(([n, t]) => [n, t.to(dtype)]));
  const dir = path.join(tmp, name);
  writeHfModel(dir, { config, weights: stored, tokenizer: bpeTokenizerJson(), maxShardBytes: 20_000 });
  return dir;
}

const text = 'the cat sat on the mat the cat ate the hat and then the cat sat '.repeat(8);

describe('quantizeFile', () => {
  it.skipIf(!present)(
    'stories260K fptq: equal to the in-memory quantizeLoaded output bit for bit',
    async () => {
      const calibText = fs.readFileSync(textFile, 'utf8').slice(0, 6000);
      const float = loadModel(modelFile);
      const run = await quantizeLoaded(float, { recipe: 'fptq', calibText, calibTokens: 600 });
      const memDir = path.join(tmp, 'mem-fptq');
      saveQuantizedModel(memDir, run, { tokenizer: float.tokenizer, sourceFiles: [float.path] });
      const out = path.join(tmp, 'file-fptq');
      const seen: QuantizeFileProgress[] = [];
      const r = await quantizeFile(modelFile, out, {
        recipe: 'fptq',
        calibText,
        calibTokens: 600,
        onProgress: (p) => seen.push(p),
      });
      expect(r.calibTokens).toBe(run.calibTokens);
      expect(r.report).toEqual(run.report);
      expect(seen.filter((p) => p.stage === 'calibrate').at(-1)).toEqual({
        stage: 'calibrate',
        done: 600,
        total: 600,
      });
      expect(seen.filter((p) => p.stage === 'quantize')).toHaveLength(run.report.length);
      const got = loadQuantized(out);
      expectSameModel(got.model, loadQuantized(memDir).model);
      expect(got.manifest.source).toEqual(loadQuantized(memDir).manifest.source);
      expect(fs.readFileSync(path.join(out, 'tokenizer.bin'))).toEqual(
        fs.readFileSync(path.join(memDir, 'tokenizer.bin')),
      );
      expect(Object.keys(got.manifest.sha256 ?? {})).toContain('tokenizer.bin');
      // The directory runs as a model, with the tokenizer it carries.
      const m = loadModel(out);
      const ids = m.tokenizer.encodePrompt('Once upon a time');
      const [a, b] = [await createModel(m), await createModel(loadModel(memDir))];
      expect(await a.forward([ids], { logits: 'last' })).toEqual(await b.forward([ids], { logits: 'last' }));
      await Promise.all([a.dispose(), b.dispose()]);
    },
  );

  for (const dtype of ['f16', 'bf16'] as const) {
    it(`a sharded ${dtype} Hugging Face model: w4a8-rtn and fptq equal the in-memory path`, async () => {
      const dir = hfModel(`hf-${dtype}`, dtype);
      const float = loadModel(dir);
      for (const recipe of ['w4a8-rtn', 'fptq'] as const) {
        const opts = { recipe, groupSize: 32, ...(recipe === 'fptq' ? { calibText: text } : {}) };
        const run = await quantizeLoaded(float, opts);
        if (recipe === 'fptq') expect(run.quantized.plans.some((p) => p.lae)).toBe(true);
        const out = path.join(tmp, `hf-${dtype}-${recipe}`);
        const r = await quantizeFile(dir, out, opts);
        expect(r.report).toEqual(run.report);
        expectSameModel(loadQuantized(out).model, run.quantized);
        expect(fs.existsSync(path.join(out, 'tokenizer.json'))).toBe(true);
      }
    });
  }

  it('a Recipe object goes the same way as its name; one worker equals several', async () => {
    const dir = hfModel('hf-recipe', 'f16');
    const float = loadModel(dir);
    const run = await quantizeLoaded(float, { recipe: 'w4a8-rtn', groupSize: 32 });
    const a = path.join(tmp, 'hf-recipe-a');
    const b = path.join(tmp, 'hf-recipe-b');
    await quantizeFile(dir, a, { recipe: run.recipe, workers: 1 });
    await quantizeFile(dir, b, { recipe: 'w4a8-rtn', groupSize: 32, workers: 2 });
    expect(loadQuantized(a).manifest.sha256).toEqual(loadQuantized(b).manifest.sha256);
    expectSameModel(loadQuantized(b).model, run.quantized);
  });

  it('an abort mid-way leaves nothing under out and no temporary directory', async () => {
    const dir = hfModel('hf-abort', 'f16');
    for (const stage of ['calibrate', 'quantize'] as const) {
      const out = path.join(tmp, 'aborted', stage);
      fs.mkdirSync(path.dirname(out), { recursive: true });
      const ac = new AbortController();
      const p = quantizeFile(dir, out, {
        recipe: 'fptq',
        calibText: text,
        calibSeqLen: 16,
        signal: ac.signal,
        onProgress: (q) => {
          if (q.stage === stage && q.done >= 2) ac.abort(new Error(`stopped in ${stage}`));
        },
      });
      await expect(p).rejects.toThrow(`stopped in ${stage}`);
      expect(fs.readdirSync(path.dirname(out))).toEqual([]);
    }
  });

  it('refuses a non-empty out without force, and a quantized input', async () => {
    const dir = hfModel('hf-refuse', 'f16');
    const out = path.join(tmp, 'busy');
    fs.mkdirSync(out);
    fs.writeFileSync(path.join(out, 'keep.txt'), 'x');
    await expect(quantizeFile(dir, out, { recipe: 'w4a16' })).rejects.toMatchObject({ code: 'E_EXISTS' });
    await quantizeFile(dir, out, { recipe: 'w4a16', groupSize: 32, force: true });
    expect(fs.existsSync(path.join(out, 'keep.txt'))).toBe(false);
    await expect(quantizeFile(out, path.join(tmp, 'again'), { recipe: 'w4a16' })).rejects.toMatchObject({
      code: 'E_ARG',
    });
  });
});
