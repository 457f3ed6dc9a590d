import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { isQError, type Tensor } from '@q/core';
import { afterAll, describe, expect, it } from 'vitest';
import {
  createQuantizedWriter,
  layerFile,
  loadQuantized,
  MANIFEST_FILE,
  OTHER_FILE,
  readManifest,
  saveQuantized,
  verifyQuantized,
} from './checkpoint';
import { linearForward } from './gemm';
import { quantizeModel } from './model';
import { createObserver } from './observer';
import { linearGroups } from './policy';
import { randn, tinyConfig, tinyWeights } from './testing';
import type { LayerPlan } from './types';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'q-quant-ckpt-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const config = tinyConfig({ attentionBias: true });
const weights = tinyWeights(config, 5);
const obs = createObserver();
linearGroups(config).forEach((g, i) => {
  const k = g.members[0]?.endsWith('down_proj') ? config.intermediateSize : config.hiddenSize;
  const x = randn(8 * k, i + 1, [3, 1, 40, 300][i % 4]);
  for (const m of g.members) obs.observe(m, x, k);
});

describe('quantized checkpoint', () => {
  const src = path.join(tmp, 'source.bin');
  fs.writeFileSync(src, Buffer.from(randn(1000, 9).buffer));

  for (const recipe of ['fptq', 'w8a8', 'w4a16'] as const) {
    it(`round-trips ${recipe} exactly, with the manifest describing everything`, () => {
      const { model, report } = quantizeModel(weights, config, obs, recipe);
      const dir = path.join(tmp, `out-${recipe}`);
      saveQuantized(dir, model, { sourceFiles: [src], report });
      expect(fs.readdirSync(tmp).filter((f) => f.endsWith('.tmp'))).toEqual([]);
      const m = readManifest(dir);
      expect(m.formatVersion).toBe(1);
      expect(m.recipe).toEqual(model.recipe);
      expect(m.config).toEqual(config);
      expect(m.source[0]?.sha256).toBe(createHash('sha256').update(fs.readFileSync(src)).digest('hex'));
      expect(m.layers).toHaveLength(14);
      expect(m.files).toContain('layers-00001.safetensors');
      const { model: back } = loadQuantized(dir);
      expect(back.plans).toEqual(model.plans);
      expect([...back.tensors.keys()].sort()).toEqual([...model.tensors.keys()].sort());
      for (const [n, t] of model.tensors) expect(back.tensors.get(n)?.data).toEqual(t.data);
      const x = randn(3 * 64, 11);
      for (const [name, l] of model.linears) {
        const b = back.linears.get(name);
        expect(b).toEqual(l);
        if (l.weights.k === 64 && b) expect(linearForward(x, 3, b)).toEqual(linearForward(x, 3, l));
      }
    });
  }

  it('streams layer files with createQuantizedWriter and widens f16 float tensors on load', () => {
    const { model, report } = quantizeModel(weights, config, obs, 'fptq');
    const dir = path.join(tmp, 'streamed');
    const w = createQuantizedWriter(dir, { config, recipe: model.recipe });
    for (let i = 0; i < config.numLayers; i++) {
      const ls = [...model.linears.values()].filter((l) => l.name.startsWith(`model.layers.${i}.`));
      const ps = ls.map((l) => model.plans.find((p) => p.name === l.name) as LayerPlan);
      const norms = new Map([...model.tensors].filter(([n]) => n.startsWith(`model.layers.${i}.`)));
      w.writeFile(layerFile(i), ls, ps, norms);
    }
    const emb = model.tensors.get('model.embed_tokens.weight') as Tensor<'f32'>;
    const embF16 = emb.to('f16');
    const rest = new Map<string, Tensor>([...model.tensors].filter(([n]) => !n.startsWith('model.layers.')));
    rest.set('model.embed_tokens.weight', embF16);
    w.writeFile(OTHER_FILE, [], [], rest);
    expect(fs.existsSync(dir)).toBe(false); // nothing visible before commit
    w.commit(report);
    const { model: back } = loadQuantized(dir);
    expect(back.tensors.get('model.embed_tokens.weight')?.data).toEqual(embF16.to('f32').data);
    expect(back.linears.size).toBe(model.linears.size);
  });

  it('refuses a manifest of another format version', () => {
    const { model } = quantizeModel(weights, config, obs, 'w4a8-rtn');
    const dir = path.join(tmp, 'v2');
    saveQuantized(dir, model);
    const file = path.join(dir, MANIFEST_FILE);
    const m = JSON.parse(fs.readFileSync(file, 'utf8'));
    m.formatVersion = 2;
    fs.writeFileSync(file, JSON.stringify(m));
    try {
      loadQuantized(dir);
      expect.unreachable();
    } catch (e) {
      expect(isQError(e, 'E_VERSION')).toBe(true);
      expect((e as Error).message).toMatch(/formatVersion 1.*received 2/);
    }
  });

  it('refuses to overwrite unless asked, and replaces atomically when asked', () => {
    const { model } = quantizeModel(weights, config, obs, 'w4a8-rtn');
    const dir = path.join(tmp, 'exists');
    saveQuantized(dir, model);
    expect(() => saveQuantized(dir, model)).toThrow(/overwrite/);
    saveQuantized(dir, model, { overwrite: true });
    expect(readManifest(dir).recipe.name).toBe('w4a8-rtn');
    expect(fs.readdirSync(tmp).filter((f) => f.includes('.tmp'))).toEqual([]);
  });

  it('refuses a checkpoint with a missing tensor or a bad recipe', () => {
    const { model } = quantizeModel(weights, config, obs, 'w4a8-rtn');
    const dir = path.join(tmp, 'broken');
    saveQuantized(dir, model);
    const file = path.join(dir, MANIFEST_FILE);
    const m = JSON.parse(fs.readFileSync(file, 'utf8'));
    m.layers[0].name = 'model.layers.0.self_attn.nope';
    m.layers[0].plan.name = 'model.layers.0.self_attn.nope';
    fs.writeFileSync(file, JSON.stringify(m));
    expect(() => loadQuantized(dir)).toThrow(/nope\.qweight is missing/);
    m.recipe.weights.bits = 3;
    fs.writeFileSync(file, JSON.stringify(m));
    expect(() => loadQuantized(dir)).toThrow(/weights\.bits/);
  });

  it('records the sha256 of each file as written and names the file a flipped byte changed', () => {
    const { model } = quantizeModel(weights, config, obs, 'fptq');
    const dir = path.join(tmp, 'hashed');
    saveQuantized(dir, model);
    const m = readManifest(dir);
    // Independent check: the recorded hashes are those of the files on disk.
    for (const f of m.files)
      expect(m.sha256?.[f]).toBe(
        createHash('sha256')
          .update(fs.readFileSync(path.join(dir, f)))
          .digest('hex'),
      );
    expect(verifyQuantized(dir)).toEqual({ hashed: true, files: m.files });
    const victim = layerFile(1);
    const file = path.join(dir, victim);
    const bytes = fs.readFileSync(file);
    // A byte inside the tensor data (past the header), so the file still parses and would load silently.
    const at = bytes.length - 1 - Math.floor(bytes.length / 3);
    bytes[at] = (bytes[at] as number) ^ 0x10;
    fs.writeFileSync(file, bytes);
    expect(loadQuantized(dir, { verify: false }).model.linears.size).toBe(model.linears.size);
    for (const f of [() => loadQuantized(dir), () => verifyQuantized(dir)]) {
      try {
        f();
        expect.unreachable();
      } catch (e) {
        expect(isQError(e, 'E_FORMAT')).toBe(true);
        expect((e as Error).message).toContain(victim);
      }
    }
  });

  it('still loads a checkpoint whose manifest predates file hashes, and says nothing was checked', () => {
    const { model } = quantizeModel(weights, config, obs, 'w4a8-rtn');
    const dir = path.join(tmp, 'unhashed');
    saveQuantized(dir, model);
    const file = path.join(dir, MANIFEST_FILE);
    const m = JSON.parse(fs.readFileSync(file, 'utf8'));
    delete m.sha256;
    fs.writeFileSync(file, JSON.stringify(m));
    const { model: back, verified } = loadQuantized(dir);
    expect(verified).toEqual({ hashed: false, files: [] });
    expect(back.linears.size).toBe(model.linears.size);
  });
});
