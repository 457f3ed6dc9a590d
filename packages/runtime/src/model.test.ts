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
    // Pages of 4 positions: both sequences cross page boundaries.
    const cache = model.createCache({ batch: 2, capacity: 16, pageSize: 4 });
    const first = await model.forward([a.slice(0, 5), b.slice(0, 2)], { cache });
    expect(cache.lengths).toEqual([5, 2]);
    const v = c.vocabSize;
    // Row 4 is A's 5th position, row 6 is B's 2nd.
    for (let j = 0; j < v; j++) {
      expect(first[4 * v + j]).toBeCloseTo(fullA[4 * v + j] as number, 4);
      expect(first[6 * v + j]).toBeCloseTo(fullB[1 * v + j] as number, 4);
    }
    expect(cache.pagesInUse).toBe(3);
    const last = await model.forward([a.slice(5), b.slice(2)], { cache, logits: 'last' });
    expect(cache.pagesInUse).toBe(3 + 2);
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
    await expect(model.forward([[1, 2, 3]], { cache: model.createCache({ capacity: 2 }) })).rejects.toThrow(
      /at most 2 positions/,
    );
  });
});

describe('the paged KV cache', () => {
  const c = smallConfig({ maxSeqLen: 40 });
  const model = Model.fromFloatWeights(c, randomWeights(c, 2));
  const rng = new Rng(12);

  it('takes pages as sequences grow and gives them back on reset(slot)', async () => {
    const cache = model.createCache({ batch: 3, capacity: 20, pageSize: 8 });
    expect([cache.pagesTotal, cache.pagesInUse]).toEqual([9, 0]);
    await model.forward([randomTokens(rng, 9, c.vocabSize)], { cache, slots: [1] });
    expect(cache.lengths).toEqual([0, 9, 0]);
    expect(cache.pagesInUse).toBe(2);
    await model.forward([randomTokens(rng, 3, c.vocabSize), randomTokens(rng, 8, c.vocabSize)], {
      cache,
      slots: [2, 0],
    });
    expect(cache.lengths).toEqual([8, 9, 3]);
    expect(cache.pagesInUse).toBe(4);
    cache.reset(1);
    expect(cache.lengths).toEqual([8, 0, 3]);
    expect(cache.pagesInUse).toBe(2);
    cache.reset();
    expect(cache.pagesInUse).toBe(0);
    cache.dispose();
    expect(() => cache.lengths).toThrow(/disposed/);
  });

  it('a slot continued after another slot reused freed pages matches a full forward', async () => {
    const cache = model.createCache({ batch: 2, capacity: 24, pageSize: 4, pages: 7 });
    const a = randomTokens(rng, 10, c.vocabSize);
    const b = randomTokens(rng, 12, c.vocabSize);
    await model.forward([randomTokens(rng, 12, c.vocabSize)], { cache, slots: [0] });
    await model.forward([a.slice(0, 6)], { cache, slots: [1] });
    cache.reset(0);
    // Slot 0's pages now hold b, interleaved in the pool with a's.
    await model.forward([b.slice(0, 7)], { cache, slots: [0] });
    const got = await model.forward([a.slice(6), b.slice(7)], { cache, slots: [1, 0], logits: 'last' });
    const fullA = await model.forward([a], { logits: 'last' });
    const fullB = await model.forward([b], { logits: 'last' });
    // Equal up to float32 rounding: the matmul sums rows in blocks of 4, so a different batch shape rounds
    // differently (as in the ragged-batch test above); a page mix-up would be off by O(1).
    const want = Float32Array.from([...fullA, ...fullB]);
    const { diff, scale } = maxAbsDiff(got, [Array.from(want)]);
    expect(diff).toBeLessThan(1e-5 * scale + 1e-6);
  });

  it('refuses a batch that needs more pages than are free, and changes nothing', async () => {
    const cache = model.createCache({ batch: 2, capacity: 16, pageSize: 4, pages: 3 });
    await model.forward([randomTokens(rng, 8, c.vocabSize)], { cache });
    await expect(
      model.forward([randomTokens(rng, 1, c.vocabSize), randomTokens(rng, 5, c.vocabSize)], { cache }),
    ).rejects.toThrow(/free cache pages/);
    expect(cache.lengths).toEqual([8, 0]);
    expect(cache.pagesInUse).toBe(2);
  });

  it('refuses repeated or out-of-range slots', async () => {
    const cache = model.createCache({ batch: 2 });
    await expect(model.forward([[1], [2]], { cache, slots: [1, 1] })).rejects.toThrow(/distinct cache slots/);
    await expect(model.forward([[1]], { cache, slots: [2] })).rejects.toThrow(/distinct cache slots/);
  });

  it('a disposed model refuses to run', async () => {
    const m = Model.fromFloatWeights(c, randomWeights(c, 2));
    await m.dispose();
    await expect(m.forward([[1]])).rejects.toThrow(/disposed/);
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
