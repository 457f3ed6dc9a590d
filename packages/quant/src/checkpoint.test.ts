import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { isQError } from '@q/core';
import { afterAll, describe, expect, it } from 'vitest';
import { loadQuantized, MANIFEST_FILE, readManifest, saveQuantized } from './checkpoint';
import { linearForward } from './gemm';
import { quantizeModel } from './model';
import { createObserver } from './observer';
import { linearGroups } from './policy';
import { randn, tinyConfig, tinyWeights } from './testing';

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
});
