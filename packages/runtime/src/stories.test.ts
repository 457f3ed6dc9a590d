import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { createModel } from './backend';
import { evaluatePerplexity } from './evaluate';
import { generateIds } from './generate';
import { loadLlama2c, loadModel } from './load';
import { sharedDir } from './shared-data';
import { referenceForward } from './testing/reference';

const shared = sharedDir();
const modelFile = shared ? path.join(shared, 'models', 'stories260K', 'stories260K.bin') : '';
const textFile = shared ? path.join(shared, 'data', 'tinystories-valid-sample.txt') : '';
const present = shared !== null && fs.existsSync(modelFile) && fs.existsSync(textFile);
if (!present)
  console.warn('skipping stories260K tests: ../shared/models/stories260K or ../shared/data is absent');

/** The golden ids of the model's README, read from it rather than copied here. */
function goldenIds(): number[] {
  const readme = fs.readFileSync(path.join(path.dirname(modelFile), 'README.md'), 'utf8');
  const m = /Greedy decoding from BOS gives ids ([\d, ]+?), which/.exec(readme);
  if (!m) throw new Error('golden ids not found in README');
  return (m[1] as string).split(',').map((s) => Number(s.trim()));
}

describe.skipIf(!present)('stories260K', () => {
  it('greedy generation from BOS reproduces the golden ids', async () => {
    const loaded = loadModel(modelFile);
    const { tokenizer } = loaded;
    const model = await createModel(loaded);
    const golden = goldenIds();
    const ids = await generateIds(model, [tokenizer.bosId], { maxTokens: golden.length - 1, stopTokens: [] });
    expect([tokenizer.bosId, ...ids]).toEqual(golden);
    expect(tokenizer.decode([tokenizer.bosId, ...ids])).toMatch(
      /^Once upon a time, there was a little girl named Lily/,
    );
  });

  it('FP32 perplexity on the last 60% of lines matches a float64 forward pass within 1e-8 (as the README says)', async () => {
    const loaded = loadLlama2c(modelFile);
    const lines = fs
      .readFileSync(textFile, 'utf8')
      .split(/\r?\n/)
      .filter((l) => l.length > 0);
    const evalText = lines.slice(Math.floor(lines.length * 0.4)).join('\n');
    const ids = loaded.tokenizer.encode(evalText);
    const ctx = 256;
    const r = await evaluatePerplexity(await createModel(loaded), ids, { ctx });
    expect(r.tokens).toBe(ids.length);
    // Independent float64 computation of the same windows.
    const w64 = new Map(
      loaded.weights
        .names()
        .map((n): [string, Float64Array] => [n, Float64Array.from(loaded.weights.get(n).toFloat32())]),
    );
    let nll = 0;
    for (let s = 0; s < ids.length; s += ctx - 1) {
      // Long synchronous work starves the test runner's messages: let its event loop run between windows.
      await new Promise((resolve) => setImmediate(resolve));
      const win = ids.slice(s, s + ctx - 1);
      const logits = referenceForward(loaded.config, w64, [loaded.tokenizer.bosId, ...win.slice(0, -1)]);
      win.forEach((target, t) => {
        const row = logits[t] as number[];
        const mx = Math.max(...row);
        const lse = mx + Math.log(row.reduce((a, v) => a + Math.exp(v - mx), 0));
        nll += lse - (row[target] as number);
      });
    }
    const ppl64 = Math.exp(nll / ids.length);
    console.log(
      `stories260K ppl: f32 ${r.ppl.toFixed(6)}, f64 ${ppl64.toFixed(6)} (relative ${(r.ppl / ppl64 - 1).toExponential(2)}) over ${ids.length} tokens`,
    );
    // The README's claim: equal to a float64 reference within 1e-8 (relative); measured 5.5e-9.
    expect(Math.abs(r.ppl / ppl64 - 1)).toBeLessThan(1e-8);
  });
});
