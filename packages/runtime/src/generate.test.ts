import { Rng } from '@q/core';
import { describe, expect, it } from 'vitest';
import { argmax, generate, generateIds, sampleToken } from './generate';
import type { CacheOptions, CausalLM, ForwardOptions, KVCache } from './lm';
import { Model } from './model';
import { randomWeights, smallConfig } from './testing/random-model';

function logitsOf(values: number[]): Float32Array {
  return Float32Array.from(values);
}

describe('sampling', () => {
  it('temperature 0 is argmax (lowest index on ties)', () => {
    expect(sampleToken(logitsOf([0.5, 2, 2, -1]), { temperature: 0 }, new Rng(1))).toBe(1);
    expect(argmax(logitsOf([3, 1, 3]))).toBe(0);
  });

  it('top-k 1 and a tiny top-p reduce to greedy at any temperature', () => {
    const rng = new Rng(2);
    const l = Float32Array.from({ length: 50 }, () => rng.normal());
    const best = argmax(l);
    for (let s = 0; s < 20; s++) {
      expect(sampleToken(l, { temperature: 1.5, topK: 1 }, new Rng(s))).toBe(best);
      expect(sampleToken(l, { temperature: 1.5, topP: 1e-6 }, new Rng(s))).toBe(best);
    }
  });

  it('samples follow softmax(logits / T) restricted to top-k', () => {
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

  it('top-p keeps the smallest prefix reaching p', () => {
    // probabilities ≈ [0.64, 0.24, 0.09, 0.03]: p = 0.8 keeps the first two.
    const l = logitsOf([2, 1, 0, -1]);
    const rng = new Rng(4);
    const seen = new Set<number>();
    for (let i = 0; i < 2000; i++) seen.add(sampleToken(l, { temperature: 1, topP: 0.8 }, rng));
    expect([...seen].sort()).toEqual([0, 1]);
  });

  it('rejects bad options when generate is called', () => {
    const c = smallConfig();
    const model = Model.fromFloatWeights(c, randomWeights(c, 1));
    expect(() => generate(model, [1], { temperature: -1 })).toThrow(/temperature/);
    expect(() => generate(model, [1], { topP: 0 })).toThrow(/top-p/);
    expect(() => generate(model, [1], { topK: 1.5 })).toThrow(/top-k/);
  });
});

/** A model that counts its forward calls. */
function counting(model: CausalLM): CausalLM & { calls: number } {
  const m = {
    config: model.config,
    backend: model.backend,
    calls: 0,
    createCache: (o?: CacheOptions) => model.createCache(o),
    forward: (t: readonly (readonly number[])[], o?: ForwardOptions) => {
      m.calls++;
      return model.forward(t, o);
    },
    dispose: () => model.dispose(),
  };
  return m;
}

describe('generate', () => {
  const c = smallConfig({ maxSeqLen: 24 });
  const model = Model.fromFloatWeights(c, randomWeights(c, 8));

  it('is reproducible for a seed, and greedy output equals stepwise argmax of full forwards', async () => {
    const a = await generateIds(model, [1, 5], { temperature: 0.9, seed: 11, maxTokens: 10, stopTokens: [] });
    const b = await generateIds(model, [1, 5], { temperature: 0.9, seed: 11, maxTokens: 10, stopTokens: [] });
    expect(a).toEqual(b);
    const greedy = await generateIds(model, [1, 5], { maxTokens: 8, stopTokens: [] });
    const seq = [1, 5];
    for (let i = 0; i < 8; i++) {
      const logits = await model.forward([seq], { logits: 'last' });
      seq.push(argmax(logits));
    }
    expect(greedy).toEqual(seq.slice(2));
  });

  it('streams through for await exactly the ids generateIds collects', async () => {
    const opts = { temperature: 0.8, topK: 10, seed: 3, maxTokens: 12, stopTokens: [] };
    const streamed: number[] = [];
    for await (const id of generate(model, [1, 7, 9], opts)) streamed.push(id);
    expect(streamed.length).toBe(12);
    expect(streamed).toEqual(await generateIds(model, [1, 7, 9], opts));
  });

  it('stops at a stop token without emitting it, and when the context is full', async () => {
    const free = await generateIds(model, [1], { maxTokens: 5, stopTokens: [] });
    const stop = free[2] as number;
    const cut = await generateIds(model, [1], { maxTokens: 5, stopTokens: [stop] });
    expect(cut).toEqual(free.slice(0, free.indexOf(stop)));
    const all = await generateIds(model, [1, 2, 3], { maxTokens: 100, stopTokens: [] });
    expect(all.length).toBe(c.maxSeqLen - 3 + 1);
  });

  it('an aborted signal stops it before the next forward step and throws an AbortError', async () => {
    const m = counting(model);
    const ac = new AbortController();
    const got: number[] = [];
    const run = async () => {
      for await (const id of generate(m, [1], { maxTokens: 20, stopTokens: [], signal: ac.signal })) {
        got.push(id);
        if (got.length === 3) ac.abort();
      }
    };
    await expect(run()).rejects.toMatchObject({ name: 'AbortError' });
    expect(got.length).toBe(3);
    // The prompt pass and one step per token before the abort; none after it.
    expect(m.calls).toBe(3);
    const pre = new AbortController();
    pre.abort(new Error('stopped early'));
    await expect(generateIds(model, [1], { signal: pre.signal })).rejects.toThrow('stopped early');
  });

  it('breaking out of for await releases the cache', async () => {
    const caches: KVCache[] = [];
    const m = {
      ...counting(model),
      createCache: (o?: CacheOptions) => {
        const cache = model.createCache(o);
        caches.push(cache);
        return cache;
      },
    };
    for await (const _ of generate(m, [1], { maxTokens: 10, stopTokens: [] })) break;
    expect(caches.length).toBe(1);
    expect(() => caches[0]?.lengths).toThrow(/disposed/);
  });
});

describe('generate on a model that takes seconds', () => {
  it('keeps the event loop responsive, and a timer abort takes effect within one step', async () => {
    const c = smallConfig({
      hiddenSize: 384,
      intermediateSize: 1024,
      numLayers: 4,
      numHeads: 6,
      numKvHeads: 2,
      headDim: 64,
      vocabSize: 512,
      maxSeqLen: 512,
    });
    const m = counting(Model.fromFloatWeights(c, randomWeights(c, 21)));
    let ticks = 0;
    const timer = setInterval(() => ticks++, 20);
    const t0 = performance.now();
    const ids: number[] = [];
    try {
      // Generate for at least 1.2 s, however fast the machine, so the timer has time to fire many times.
      for await (const id of generate(m, [1, 2, 3], { maxTokens: 500, stopTokens: [] })) {
        ids.push(id);
        if (performance.now() - t0 > 1200) break;
      }
    } finally {
      clearInterval(timer);
    }
    const ms = performance.now() - t0;
    const perStep = ms / m.calls;
    console.log(
      `generation: ${ids.length} tokens in ${ms.toFixed(0)} ms (${perStep.toFixed(1)} ms a step), timer fired ${ticks} times`,
    );
    expect(ids.length).toBeGreaterThanOrEqual(10);
    expect(ms).toBeGreaterThan(1000);
    // A 20 ms timer fires about once per 20 ms or per step, whichever is longer, when nothing blocks longer.
    expect(ticks).toBeGreaterThan((0.5 * ms) / Math.max(20, perStep));

    const ac = new AbortController();
    let callsAtAbort = -1;
    const abortTimer = setTimeout(() => {
      callsAtAbort = m.calls;
      ac.abort();
    }, 300);
    await expect(
      generateIds(m, [1], { maxTokens: 400, stopTokens: [], signal: ac.signal }),
    ).rejects.toMatchObject({ name: 'AbortError' });
    clearTimeout(abortTimer);
    expect(callsAtAbort).toBeGreaterThan(0);
    expect(m.calls - callsAtAbort).toBeLessThanOrEqual(1);
  });
});
