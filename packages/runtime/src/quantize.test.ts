import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Rng } from '@q/core';
import { type QuantizedLinear, RECIPES } from '@q/quant';
import { afterAll, describe, expect, it } from 'vitest';
import { createCpuModel, createModel } from './backend';
import { loadModel } from './load';
import { quantizeLoaded, resolveRecipe, saveQuantizedModel } from './quantize';
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

/** Round half to even, written here so the reference shares no code with `@q/quant`. */
function rint(v: number): number {
  const f = Math.floor(v);
  const d = v - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/**
 * y = x̂ · ŵᵀ + b in float64 from the stored integers: x̂ the int8 activation values times their scale (per
 * token: f32(max|x| / 127); static: the layer's scale), ŵ the int4 nibbles (low nibble first) or int8 values
 * times their f32 group or channel scale. Also returns Σ|x̂ ŵ| + |b| per output, the scale of the rounding error.
 */
function reference(
  x: Float32Array,
  rows: number,
  layer: QuantizedLinear,
): { y: Float64Array; mag: Float64Array } {
  const w = layer.weights;
  const { n, k } = w;
  const xq = new Float64Array(rows * k);
  for (let r = 0; r < rows; r++) {
    let s: number;
    if (layer.act === 'static') s = Math.fround(layer.staticScale as number);
    else {
      let amax = 0;
      for (let j = 0; j < k; j++) amax = Math.max(amax, Math.abs(x[r * k + j] as number));
      s = Math.fround(amax / 127) || 1;
    }
    for (let j = 0; j < k; j++)
      xq[r * k + j] = Math.min(127, Math.max(-127, rint(Math.fround((x[r * k + j] as number) / s)))) * s;
  }
  const wq = new Float64Array(n * k);
  for (let c = 0; c < n; c++)
    for (let j = 0; j < k; j++) {
      if (w.format === 'int4') {
        const idx = c * w.kPadded + j;
        const byte = w.packed[idx >> 1] as number;
        const nib = idx & 1 ? byte >> 4 : byte & 15;
        const q = nib >= 8 ? nib - 16 : nib;
        wq[c * k + j] = q * (w.scales[c * (w.kPadded / w.groupSize) + Math.floor(j / w.groupSize)] as number);
      } else if (w.format === 'int8') wq[c * k + j] = (w.data[c * k + j] as number) * (w.scales[c] as number);
      else throw new Error(`unexpected ${w.format} weights`);
    }
  const y = new Float64Array(rows * n);
  const mag = new Float64Array(rows * n);
  for (let r = 0; r < rows; r++)
    for (let c = 0; c < n; c++) {
      let acc = layer.bias ? (layer.bias[c] as number) : 0;
      let m = Math.abs(acc);
      for (let j = 0; j < k; j++) {
        const t = (xq[r * k + j] as number) * (wq[c * k + j] as number);
        acc += t;
        m += Math.abs(t);
      }
      y[r * n + c] = acc;
      mag[r * n + c] = m;
    }
  return { y, mag };
}

describe('QuantLinear against a float64 reference of the stored integers', () => {
  for (const recipe of ['w4a8-rtn', 'w8a8', 'w4a8-static'] as const) {
    it(`${recipe}: every quantized layer, fresh random inputs`, async () => {
      const float = loadModel(hfModel(`ref-${recipe}`));
      const calibText = 'the cat ate the hat and the tea '.repeat(8);
      const run = await quantizeLoaded(float, {
        recipe,
        ...(recipe === 'w8a8' ? {} : { groupSize: 32 }),
        calibText,
      });
      const model = createCpuModel(run.quantized);
      const rng = new Rng(17);
      const rows = 5;
      let checked = 0;
      for (const [name, layer] of run.quantized.linears) {
        const lin = model.linears().get(name);
        if (!lin) throw new Error(`missing ${name}`);
        const x = Float32Array.from({ length: rows * layer.weights.k }, () => 3 * rng.normal());
        const got = await lin.forward(x, rows);
        const { y, mag } = reference(x, rows, layer);
        // The integer GEMM is exact; what remains is the f32 epilogue: one rounding per group partial sum and a
        // few more (scale products, bias), each at most 2^-24 of Σ|x̂ ŵ|. Allowed: twice (groups + 4) of those.
        const groups = layer.weights.format === 'int4' ? layer.weights.kPadded / layer.weights.groupSize : 1;
        const tol = 2 * (groups + 4) * 2 ** -24;
        for (let i = 0; i < y.length; i++)
          expect(Math.abs((got[i] as number) - (y[i] as number))).toBeLessThanOrEqual(
            tol * (mag[i] as number),
          );
        checked++;
        expect(layer.act).toBe(recipe === 'w4a8-static' ? 'static' : 'dynamic');
      }
      expect(checked).toBe(7 * float.config.numLayers);
    });
  }
});

describe('quantized models', () => {
  it('a saved Hugging Face quantization carries tokenizer.json and the chat template and runs identically', async () => {
    const float = loadModel(hfModel('qwen'));
    const run = await quantizeLoaded(float, { recipe: 'w4a8-rtn', groupSize: 32 });
    const out = path.join(tmp, 'qwen-w4a8');
    saveQuantizedModel(out, run, { tokenizer: float.tokenizer });
    expect(fs.existsSync(path.join(out, 'tokenizer.json'))).toBe(true);
    const q = loadModel(out);
    expect(q.source).toBe('quantized');
    expect(q.recipe).toBe('w4a8-rtn');
    expect(q.tokenizer.encode('the cat')).toEqual(float.tokenizer.encode('the cat'));
    expect(q.tokenizer.applyChatTemplate?.([{ role: 'user', content: 'hi' }])).toBe('<user>hi');
    const toks = [1, 30, 32, 7, 9, 12];
    // Same integer path from memory and from disk: bit-identical logits.
    const fromDisk = await createModel(q);
    const fromMemory = await createModel(run.quantized);
    expect(await fromDisk.forward([toks])).toEqual(await fromMemory.forward([toks]));
  });

  it('refuses a recipe that needs calibration without calibration text', async () => {
    const float = loadModel(hfModel('qwen-c'));
    await expect(quantizeLoaded(float, { recipe: 'fptq' })).rejects.toThrow(/--calib/);
  });

  it('refuses to quantize a quantized model', async () => {
    const float = loadModel(hfModel('qwen-d'));
    const out = path.join(tmp, 'qwen-d-w4a16');
    saveQuantizedModel(out, await quantizeLoaded(float, { recipe: 'w4a16', groupSize: 32 }), {
      tokenizer: float.tokenizer,
    });
    await expect(quantizeLoaded(loadModel(out), { recipe: 'w4a16' })).rejects.toThrow(/float model/);
  });

  it('a custom recipe object and a recipe JSON file take the path a named recipe takes', async () => {
    const float = loadModel(hfModel('qwen-e'));
    const mine = {
      ...RECIPES['w4a8-rtn'],
      name: 'my-w4a8-g32',
      weights: { ...RECIPES['w4a8-rtn'].weights, groupSize: 32 },
    };
    const file = path.join(tmp, 'my-recipe.json');
    fs.writeFileSync(file, JSON.stringify({ ...mine, name: undefined, description: undefined }));
    const named = await quantizeLoaded(float, { recipe: 'w4a8-rtn', groupSize: 32 });
    const custom = await quantizeLoaded(float, { recipe: mine });
    const fromFile = await quantizeLoaded(float, { recipe: file });
    expect(custom.recipe.name).toBe('my-w4a8-g32');
    expect(fromFile.recipe.name).toBe('my-recipe');
    const toks = [1, 30, 32, 7];
    const want = await (await createModel(named.quantized)).forward([toks]);
    expect(await (await createModel(custom.quantized)).forward([toks])).toEqual(want);
    expect(await (await createModel(fromFile.quantized)).forward([toks])).toEqual(want);
    const out = path.join(tmp, 'qwen-e-custom');
    saveQuantizedModel(out, custom, { tokenizer: float.tokenizer });
    expect(loadModel(out).recipe).toBe('my-w4a8-g32');
  });

  it('a bad recipe file is refused with a message naming the file and the option', () => {
    const bad = path.join(tmp, 'bad-recipe.json');
    fs.writeFileSync(bad, JSON.stringify({ ...RECIPES.fptq, weights: { ...RECIPES.fptq.weights, bits: 3 } }));
    expect(() => resolveRecipe({ recipe: bad })).toThrow(/bad-recipe\.json.*weights\.bits/);
    const garbled = path.join(tmp, 'garbled-recipe.json');
    fs.writeFileSync(garbled, '{"weights": ');
    expect(() => resolveRecipe({ recipe: garbled })).toThrow(/valid JSON/);
    expect(() => resolveRecipe({ recipe: 'fptq2' })).toThrow(/fptq, .* or a recipe JSON file/);
  });
});
