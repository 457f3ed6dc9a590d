import type { ModelConfig } from '@q/core';
import { Rng } from '@q/core';
import { describe, expect, it } from 'vitest';
import { matmulT } from './cpu/gemm';
import { shutdownThreads } from './cpu/threads';
import { Model } from './model';
import { randomWeights, smallConfig, toF64Map } from './testing/random-model';
import { maxAbsDiff, referenceForward } from './testing/reference';

function randomTokens(rng: Rng, n: number, vocab: number): number[] {
  return Array.from({ length: n }, () => rng.int(vocab));
}

const variants: [string, Partial<ModelConfig>][] = [
  [
    'llama2 interleaved rope, MHA, tied',
    { ropeStyle: 'interleaved', numKvHeads: 4, tieWordEmbeddings: true },
  ],
  [
    'llama3 GQA, half rope, llama3 scaling',
    {
      ropeTheta: 500000,
      ropeScaling: {
        type: 'llama3',
        factor: 8,
        lowFreqFactor: 1,
        highFreqFactor: 4,
        originalMaxPositionEmbeddings: 16,
      },
    },
  ],
  [
    'qwen2 attention bias, GQA 4:1',
    { architecture: 'qwen2', attentionBias: true, numKvHeads: 1, ropeTheta: 1e6 },
  ],
  ['mistral linear rope scaling', { architecture: 'mistral', ropeScaling: { type: 'linear', factor: 2 } }],
];

describe('Model.forward against a float64 reference', () => {
  for (const [label, over] of variants) {
    it(label, async () => {
      const c = smallConfig(over);
      const w = randomWeights(c, 11);
      const model = Model.fromFloatWeights(c, w);
      const toks = randomTokens(new Rng(3), 12, c.vocabSize);
      const got = await model.forward([toks]);
      const { diff, scale } = maxAbsDiff(got, referenceForward(c, toF64Map(w), toks));
      // float32 activations over 2 layers: relative error well below 1e-4 of the logit scale.
      expect(diff).toBeLessThan(1e-4 * scale + 1e-5);
    });
  }

  it('incremental decoding with a KV cache and ragged batches matches full forwards', async () => {
    const c = smallConfig({ attentionBias: true });
    const w = randomWeights(c, 5);
    const model = Model.fromFloatWeights(c, w);
    const rng = new Rng(9);
    const a = randomTokens(rng, 9, c.vocabSize);
    const b = randomTokens(rng, 6, c.vocabSize);
    const fullA = await model.forward([a]);
    const fullB = await model.forward([b]);
    const cache = model.createCache(2, 16);
    const first = await model.forward([a.slice(0, 5), b.slice(0, 2)], { cache });
    expect(cache.lengths).toEqual([5, 2]);
    const v = c.vocabSize;
    // Row 4 is A's 5th position, row 6 is B's 2nd.
    for (let j = 0; j < v; j++) {
      expect(first[4 * v + j]).toBeCloseTo(fullA[4 * v + j] as number, 4);
      expect(first[6 * v + j]).toBeCloseTo(fullB[1 * v + j] as number, 4);
    }
    const last = await model.forward([a.slice(5), b.slice(2)], { cache, logits: 'last' });
    for (let j = 0; j < v; j++) {
      expect(last[j]).toBeCloseTo(fullA[8 * v + j] as number, 4);
      expect(last[v + j]).toBeCloseTo(fullB[5 * v + j] as number, 4);
    }
  });

  it('reports every linear input to the hook with its shape', async () => {
    const c = smallConfig();
    const model = Model.fromFloatWeights(c, randomWeights(c, 1));
    const seen = new Map<string, [number, number]>();
    await model.forward([[1, 2, 3]], { hook: (name, _x, rows, cols) => seen.set(name, [rows, cols]) });
    expect(seen.size).toBe(7 * c.numLayers + 1);
    expect(seen.get('model.layers.1.mlp.down_proj')).toEqual([3, c.intermediateSize]);
    expect(seen.get('lm_head')).toEqual([3, c.hiddenSize]);
  });

  it('refuses a sequence longer than the cache', async () => {
    const c = smallConfig();
    const model = Model.fromFloatWeights(c, randomWeights(c, 1));
    await expect(model.forward([[1, 2, 3]], { cache: model.createCache(1, 2) })).rejects.toThrow(
      /at most 2 positions/,
    );
  });
});

describe('matmulT', () => {
  it('matches float64 on the single-thread and the worker path', async () => {
    const rng = new Rng(77);
    for (const [m, k, n] of [
      [1, 7, 5],
      [5, 33, 17],
      [9, 20, 11],
      [64, 256, 160],
    ] as const) {
      const x = Float32Array.from({ length: m * k }, () => rng.normal());
      const wArr = Float32Array.from({ length: n * k }, () => rng.normal());
      const shared = new Float32Array(new SharedArrayBuffer(wArr.byteLength));
      shared.set(wArr);
      const bias = Float32Array.from({ length: n }, () => rng.normal());
      for (const w of [wArr, shared]) {
        const y = await matmulT(x, m, k, w, n, bias);
        for (let i = 0; i < m; i++)
          for (let j = 0; j < n; j++) {
            let s = bias[j] as number;
            for (let t = 0; t < k; t++) s += (x[i * k + t] as number) * (wArr[j * k + t] as number);
            expect(Math.abs((y[i * n + j] as number) - s)).toBeLessThan(1e-5 * Math.sqrt(k) * 4);
          }
      }
    }
    await shutdownThreads();
  });
});
