import { Rng } from '@q/core';
import { describe, expect, it } from 'vitest';
import { argmax, generate, sampleToken } from './generate';
import { Model } from './model';
import { randomWeights, smallConfig } from './testing/random-model';

function logitsOf(values: number[]): Float32Array {
  return Float32Array.from(values);
}

describe('sampling', () => {
  it('temperature 0 is argmax (lowest index on ties)', async () => {
    expect(sampleToken(logitsOf([0.5, 2, 2, -1]), { temperature: 0 }, new Rng(1))).toBe(1);
    expect(argmax(logitsOf([3, 1, 3]))).toBe(0);
  });

  it('top-k 1 and a tiny top-p reduce to greedy at any temperature', async () => {
    const rng = new Rng(2);
    const l = Float32Array.from({ length: 50 }, () => rng.normal());
    const best = argmax(l);
    for (let s = 0; s < 20; s++) {
      expect(sampleToken(l, { temperature: 1.5, topK: 1 }, new Rng(s))).toBe(best);
      expect(sampleToken(l, { temperature: 1.5, topP: 1e-6 }, new Rng(s))).toBe(best);
    }
  });

  it('samples follow softmax(logits / T) restricted to top-k', async () => {
    const l = logitsOf([2, 1, 0, -1, -3]);
    const T = 0.7;
    const rng = new Rng(3);
    const counts = [0, 0, 0, 0, 0];
    const n = 20000;
    for (let i = 0; i < n; i++) {
      const t = sampleToken(l, { temperature: T, topK: 3 }, rng);
      counts[t] = (counts[t] as number) + 1;
    }
    const w = [2, 1, 0].map((v) => Math.exp(v / T));
    const z = w.reduce((a, b) => a + b, 0);
    for (let i = 0; i < 3; i++) {
      const p = (w[i] as number) / z;
      // 5 standard deviations of a binomial count.
      expect(Math.abs((counts[i] as number) / n - p)).toBeLessThan(5 * Math.sqrt((p * (1 - p)) / n));
    }
    expect(counts[3]).toBe(0);
    expect(counts[4]).toBe(0);
  });

  it('top-p keeps the smallest prefix reaching p', async () => {
    // probabilities ≈ [0.64, 0.24, 0.09, 0.03]: p = 0.8 keeps the first two.
    const l = logitsOf([2, 1, 0, -1]);
    const rng = new Rng(4);
    const seen = new Set<number>();
    for (let i = 0; i < 2000; i++) seen.add(sampleToken(l, { temperature: 1, topP: 0.8 }, rng));
    expect([...seen].sort()).toEqual([0, 1]);
  });

  it('rejects bad options', async () => {
    const c = smallConfig();
    const model = Model.fromFloatWeights(c, randomWeights(c, 1));
    await expect(generate(model, [1], { temperature: -1 })).rejects.toThrow(/temperature/);
    await expect(generate(model, [1], { topP: 0 })).rejects.toThrow(/top-p/);
    await expect(generate(model, [1], { topK: 1.5 })).rejects.toThrow(/top-k/);
  });
});

describe('generate', () => {
  const c = smallConfig({ maxSeqLen: 24 });
  const model = Model.fromFloatWeights(c, randomWeights(c, 8));

  it('is reproducible for a seed, and greedy output equals stepwise argmax of full forwards', async () => {
    const a = await generate(model, [1, 5], { temperature: 0.9, seed: 11, maxTokens: 10, stopTokens: [] });
    const b = await generate(model, [1, 5], { temperature: 0.9, seed: 11, maxTokens: 10, stopTokens: [] });
    expect(a).toEqual(b);
    const greedy = await generate(model, [1, 5], { maxTokens: 8, stopTokens: [] });
    const seq = [1, 5];
    for (let i = 0; i < 8; i++) {
      const logits = await model.forward([seq], { logits: 'last' });
      seq.push(argmax(logits));
    }
    expect(greedy).toEqual(seq.slice(2));
  });

  it('stops at a stop token without emitting it, and when the context is full', async () => {
    const free = await generate(model, [1], { maxTokens: 5, stopTokens: [] });
    const stop = free[2] as number;
    const cut = await generate(model, [1], { maxTokens: 5, stopTokens: [stop] });
    expect(cut).toEqual(free.slice(0, free.indexOf(stop)));
    const streamed: number[] = [];
    const all = await generate(model, [1, 2, 3], {
      maxTokens: 100,
      stopTokens: [],
      onToken: (id) => streamed.push(id),
    });
    expect(all.length).toBe(c.maxSeqLen - 3 + 1);
    expect(streamed).toEqual(all);
  });
});
