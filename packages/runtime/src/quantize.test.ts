import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Rng } from '@q/core';
import { linearForward } from '@q/quant';
import { afterAll, describe, expect, it } from 'vitest';
import { loadModel } from './load';
import { quantizeLoaded, saveQuantizedModel } from './quantize';
import { bpeTokenizerJson, writeHfModel } from './testing/hf-fixture';
import { randomWeights, smallConfig } from './testing/random-model';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'q-quant-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function hfModel(name: string) {
  const config = smallConfig({
    architecture: 'qwen2',
    attentionBias: true,
    hiddenSize: 64,
    intermediateSize: 96,
    headDim: 16,
  });
  const dir = path.join(tmp, name);
  writeHfModel(dir, {
    config,
    weights: randomWeights(config, 12),
    tokenizer: bpeTokenizerJson(),
    tokenizerConfig: { chat_template: '{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}' },
  });
  return dir;
}

describe('quantized models', () => {
  it('a saved Hugging Face quantization carries tokenizer.json and the chat template and runs identically', async () => {
    const float = loadModel(hfModel('qwen'));
    const run = await quantizeLoaded(float, { recipe: 'w4a8-rtn', groupSize: 32 });
    const out = path.join(tmp, 'qwen-w4a8');
    saveQuantizedModel(run, float, out);
    expect(fs.existsSync(path.join(out, 'tokenizer.json'))).toBe(true);
    const q = loadModel(out);
    expect(q.source).toBe('quantized');
    expect(q.recipe).toBe('w4a8-rtn');
    expect(q.tokenizer.encode('the cat')).toEqual(float.tokenizer.encode('the cat'));
    expect(q.tokenizer.applyChatTemplate?.([{ role: 'user', content: 'hi' }])).toBe('<user>hi');
    const toks = [1, 30, 32, 7, 9, 12];
    // Same integer path from memory and from disk: bit-identical logits.
    expect(await q.model.forward([toks])).toEqual(await run.model.forward([toks]));
  });

  it('quantized layers run linearForward on exactly the input the float path would see', async () => {
    const float = loadModel(hfModel('qwen-b'));
    const run = await quantizeLoaded(float, { recipe: 'w8a8' });
    const rng = new Rng(4);
    const toks = Array.from({ length: 7 }, () => rng.int(float.config.vocabSize));
    const seen = new Map<string, Float32Array>();
    await run.model.forward([toks], {
      hook: (name, x, rows, cols) => seen.set(name, x.slice(0, rows * cols)),
    });
    // Re-running the recorded input of a layer through @q/quant's reference gives what the layer computes.
    const name = 'model.layers.1.mlp.down_proj';
    const layer = run.quantized.linears.get(name);
    const x = seen.get(name);
    if (!layer || !x) throw new Error('missing layer');
    const viaModel = await run.model.linears().get(name)?.forward(x, 7);
    expect(viaModel).toEqual(linearForward(x, 7, layer));
  });

  it('refuses a recipe that needs calibration without calibration text', async () => {
    const float = loadModel(hfModel('qwen-c'));
    await expect(quantizeLoaded(float, { recipe: 'fptq' })).rejects.toThrow(/--calib/);
  });

  it('refuses to quantize a quantized model', async () => {
    const float = loadModel(hfModel('qwen-d'));
    const out = path.join(tmp, 'qwen-d-w4a16');
    saveQuantizedModel(await quantizeLoaded(float, { recipe: 'w4a16', groupSize: 32 }), float, out);
    await expect(quantizeLoaded(loadModel(out), { recipe: 'w4a16' })).rejects.toThrow(/float model/);
  });
});
