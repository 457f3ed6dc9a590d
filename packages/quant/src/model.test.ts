import { isQError, relativeError, Tensor } from '@q/core';
import { describe, expect, it } from 'vitest';
import { linearForward } from './gemm';
import { quantizeModel } from './model';
import { type ActivationObserver, createObserver } from './observer';
import { formatPlanTable, linearGroups } from './policy';
import { getRecipe, RECIPE_NAMES } from './recipes';
import { randn, tinyConfig, tinyWeights } from './testing';

const config = tinyConfig();
const weights = tinyWeights(config, 3);

/** Statistics that put the groups in different policy bands. */
function stats(): ActivationObserver {
  const obs = createObserver();
  const bands = [5, 2, 60, 400]; // q/k/v: static, o: static, gate/up: LAE, down: dynamic
  linearGroups(config).forEach((g, gi) => {
    const k = g.members[0]?.endsWith('down_proj') ? config.intermediateSize : config.hiddenSize;
    const x = randn(16 * k, 50 + gi);
    const band = bands[gi % 4] as number;
    for (let i = 0; i < x.length; i++) x[i] = (x[i] as number) * (i % k === 7 ? band / 3 : 0.5);
    for (const m of g.members) obs.observe(m, x, k);
  });
  return obs;
}

function matvec(w: Float32Array, n: number, k: number, x: Float64Array | Float32Array): number[] {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    let s = 0;
    for (let j = 0; j < k; j++) s += (w[i * k + j] as number) * (x[j] as number);
    out.push(s);
  }
  return out;
}

describe('quantizeModel', () => {
  it('quantizes every linear layer per fptq, folding LAE into the norms, with a report', () => {
    const obs = stats();
    // g32 so that K = 64 and 96 have several groups (a single group runs per-channel, without Integer Scale).
    const { model, report } = quantizeModel(
      weights,
      config,
      obs,
      getRecipe('fptq', { weights: { groupSize: 32 } }),
    );
    expect(model.linears.size).toBe(14);
    expect(report).toHaveLength(14);
    const table = formatPlanTable(model.plans, report);
    console.log(table);
    const q = model.plans.find((p) => p.name === 'model.layers.0.self_attn.q_proj');
    const gate = model.plans.find((p) => p.name === 'model.layers.0.mlp.gate_proj');
    const down = model.plans.find((p) => p.name === 'model.layers.0.mlp.down_proj');
    expect(q).toMatchObject({ act: 'static', lae: false });
    expect(gate).toMatchObject({ act: 'static', lae: true });
    expect(down).toMatchObject({ act: 'dynamic', lae: false });
    for (const r of report) {
      expect(r.weightError).toBeGreaterThan(0);
      expect(r.weightError).toBeLessThan(0.2);
      expect(r.intScaleError).toBeLessThan(1e-2);
      expect(r.amplifierBits).toBe(10);
    }
    // Embeddings and lm_head stay float and untouched; the LAE-folded norm changed, the other did not.
    expect(model.tensors.get('model.embed_tokens.weight')).toBe(weights.get('model.embed_tokens.weight'));
    expect(model.tensors.get('lm_head.weight')).toBe(weights.get('lm_head.weight'));
    expect(model.tensors.get('model.layers.0.input_layernorm.weight')).toBe(
      weights.get('model.layers.0.input_layernorm.weight'),
    );
    const g0 = weights.get('model.layers.0.post_attention_layernorm.weight')?.data as Float32Array;
    const g1 = model.tensors.get('model.layers.0.post_attention_layernorm.weight')?.data as Float32Array;
    expect(g1).not.toEqual(g0);
    // Function check through the folded norm: (g1 ⊙ h) · W'ᵀ ≈ (g0 ⊙ h) · Wᵀ for an input h drawn like the
    // calibration data of gate/up (channel 7 an outlier of band 60, the rest 0.5·N(0, 1)): LAE moves the outlier
    // into the weight columns, which costs precision on inputs the calibration did not describe.
    const h = randn(64, 77).map((v, j) => v * (j === 7 ? 60 / 3 : 0.5));
    const w0 = weights.get('model.layers.0.mlp.up_proj.weight')?.data as Float32Array;
    const ref = matvec(
      w0,
      96,
      64,
      Float64Array.from(h, (v, j) => v * (g0[j] as number)),
    );
    const xin = Float32Array.from(h, (v, j) => v * (g1[j] as number));
    const up = model.linears.get('model.layers.0.mlp.up_proj');
    if (!up) throw new Error('missing up_proj');
    const y = linearForward(xin, 1, up);
    // int4 g32 weights plus static int8 activations cost ~0.1-0.2 here; an unapplied or misapplied fold costs O(1).
    expect(relativeError(y, ref)).toBeLessThan(0.25);
  });

  it('runs every recipe', () => {
    const obs = stats();
    for (const name of RECIPE_NAMES) {
      const { model, report } = quantizeModel(weights, config, obs, getRecipe(name));
      expect(report).toHaveLength(14);
      const l = model.linears.get('model.layers.1.mlp.down_proj');
      expect(l?.weights.format).toBe(name === 'w8a8' ? 'int8' : 'int4');
      if (name === 'w4a16') expect(l?.act).toBe('none');
      if (name === 'w4a8-static') expect(model.plans.every((p) => p.act === 'static')).toBe(true);
      if (name === 'odyssey') expect(l?.weights.format === 'int4' && l.weights.groupSize).toBe(96);
    }
  });

  it('keeps q/k/v biases (Qwen2-style) on the layer', () => {
    const c = tinyConfig({ attentionBias: true, numLayers: 1 });
    const w = tinyWeights(c, 9);
    const { model } = quantizeModel(w, c, undefined, 'w4a8-rtn');
    expect(model.linears.get('model.layers.0.self_attn.k_proj')?.bias).toBe(
      w.get('model.layers.0.self_attn.k_proj.bias')?.data,
    );
    expect(model.tensors.has('model.layers.0.self_attn.k_proj.bias')).toBe(false);
  });

  it('refuses NaN/Inf in weights naming the tensor', () => {
    const w = new Map(weights);
    const bad = Float32Array.from(weights.get('model.layers.1.self_attn.v_proj.weight')?.data ?? []);
    bad[70] = Number.POSITIVE_INFINITY;
    w.set('model.layers.1.self_attn.v_proj.weight', new Tensor('f32', [32, 64], bad));
    try {
      quantizeModel(w, config, stats(), 'fptq');
      expect.unreachable();
    } catch (e) {
      expect(isQError(e, 'E_NUMERIC')).toBe(true);
      expect((e as Error).message).toContain('model.layers.1.self_attn.v_proj');
    }
  });

  it('refuses NaN in statistics naming the layer', () => {
    const obs = stats();
    obs.maxAbs('model.layers.1.mlp.gate_proj')[5] = Number.NaN;
    try {
      quantizeModel(weights, config, obs, 'fptq');
      expect.unreachable();
    } catch (e) {
      expect(isQError(e, 'E_NUMERIC')).toBe(true);
      expect((e as Error).message).toContain('model.layers.1.mlp.gate_proj');
    }
  });

  it('refuses missing statistics for fptq and a missing tensor', () => {
    expect(() => quantizeModel(weights, config, undefined, 'fptq')).toThrow(/statistics/);
    const w = new Map(weights);
    w.delete('model.layers.0.mlp.up_proj.weight');
    expect(() => quantizeModel(w, config, undefined, 'w4a8-rtn')).toThrow(
      /model\.layers\.0\.mlp\.up_proj\.weight/,
    );
  });

  it('refuses padding off when the group does not divide K', () => {
    expect(() =>
      quantizeModel(
        weights,
        config,
        undefined,
        getRecipe('w4a8-rtn', { weights: { groupSize: 64, padK: false } }),
      ),
    ).toThrow(/K=96.*groupSize=64.*padK/);
  });
});
