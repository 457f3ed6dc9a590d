import { describe, expect, it } from 'vitest';
import type { ModelConfig } from './config';
import {
  layerLinearGroups,
  layerLinearNames,
  layerLinears,
  linearGroups,
  llamaTensors,
} from './llama-layout';

const config: ModelConfig = {
  architecture: 'qwen2',
  hiddenSize: 24,
  intermediateSize: 40,
  numLayers: 2,
  numHeads: 4,
  numKvHeads: 2,
  headDim: 8,
  vocabSize: 50,
  maxSeqLen: 32,
  rmsNormEps: 1e-6,
  ropeTheta: 10000,
  ropeScaling: { type: 'none' },
  ropeStyle: 'half',
  tieWordEmbeddings: true,
  attentionBias: true,
  bosTokenId: 1,
  eosTokenIds: [2],
};

describe('Llama tensor layout', () => {
  it('gives each projection its [n, k] from the config, with q/k/v biases only under attentionBias', () => {
    const l = layerLinears(config, 1);
    expect(l.map((x) => [x.name, x.n, x.k, x.bias])).toEqual([
      ['model.layers.1.self_attn.q_proj', 32, 24, true],
      ['model.layers.1.self_attn.k_proj', 16, 24, true],
      ['model.layers.1.self_attn.v_proj', 16, 24, true],
      ['model.layers.1.self_attn.o_proj', 24, 32, false],
      ['model.layers.1.mlp.gate_proj', 40, 24, false],
      ['model.layers.1.mlp.up_proj', 40, 24, false],
      ['model.layers.1.mlp.down_proj', 24, 40, false],
    ]);
    expect(layerLinearNames(1)).toEqual(l.map((x) => x.name));
    expect(layerLinears({ ...config, attentionBias: false }, 0).some((x) => x.bias)).toBe(false);
  });

  it('lists every tensor once with a shape whose element count adds up to the parameter count', () => {
    const t = llamaTensors(config);
    expect(new Set(t.map((x) => x.name)).size).toBe(t.length);
    const d = 24;
    const perLayer = 2 * d + (32 + 16 + 16) * d + (32 + 16 + 16) + d * 32 + 3 * 40 * d;
    const total = t.reduce((a, x) => a + x.shape.reduce((p, q) => p * q, 1), 0);
    expect(total).toBe(50 * d + 2 * perLayer + d);
    expect(t.some((x) => x.name === 'lm_head.weight')).toBe(false);
    const untied = llamaTensors(config, { includeTiedHead: true });
    expect(untied.at(-1)).toMatchObject({ name: 'lm_head.weight', shape: [50, d], role: 'linear' });
    expect(t.filter((x) => x.role === 'norm')).toHaveLength(2 * 2 + 1);
    expect(t.filter((x) => x.role === 'bias').map((x) => x.name)).toContain(
      'model.layers.0.self_attn.v_proj.bias',
    );
  });

  it('groups linears that share an input behind their norm, and covers every projection once', () => {
    const g = layerLinearGroups(0);
    expect(g.map((x) => x.members.length)).toEqual([3, 1, 2, 1]);
    expect(g[0]?.norm).toBe('model.layers.0.input_layernorm');
    expect(g[2]?.norm).toBe('model.layers.0.post_attention_layernorm');
    expect(g[1]?.norm).toBeUndefined();
    const all = linearGroups(config).flatMap((x) => x.members);
    expect(all).toEqual([...layerLinearNames(0), ...layerLinearNames(1)]);
  });
});
