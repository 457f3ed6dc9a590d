import { isQError, Rng } from '@q/core';
import { describe, expect, it } from 'vitest';
import type { CausalLM } from '../lm';
import { Model } from '../model';
import { generateAlone } from '../testing/alone';
import { randomWeights, smallConfig } from '../testing/random-model';
import { weightsFromMap } from '../weights';
import { Generator, type GeneratorOptions } from './generator';
import type { SequenceHandle } from './sequence';

const config = smallConfig({ maxSeqLen: 96, vocabSize: 48 });
const model = Model.fromFloatWeights(config, weightsFromMap(randomWeights(config, 11)));
const lm: CausalLM = model;

function prompts(count: number, seed: number, minLen = 1, maxLen = 24): number[][] {
  const rng = new Rng(seed);
  return Array.from({ length: count }, (_, i) => {
    // Lengths spread over the whole range, in shuffled order.
    const len = minLen + ((i * 7 + rng.int(3)) % (maxLen - minLen + 1));
    return [config.bosTokenId, ...Array.from({ length: len - 1 }, () => 3 + rng.int(config.vocabSize - 3))];
  });
}

async function collect(h: SequenceHandle): Promise<number[]> {
  const out: number[] = [];
  for await (const t of h) out.push(t);
  return out;
}

/** Steps by hand until every handle has finished; checks the page invariants after every step. */
async function runAll(gen: Generator, handles: SequenceHandle[]): Promise<number> {
  let steps = 0;
  while (handles.some((h) => h.finishReason === null)) {
    await gen.step();
    steps++;
    const s = gen.stats;
    expect(s.pagesInUse).toBeLessThanOrEqual(s.pagesReserved);
    expect(s.pagesReserved).toBeLessThanOrEqual(s.pagesTotal);
    expect(s.running).toBeLessThanOrEqual(s.slots);
    if (steps > 10_000) throw new Error('runaway');
  }
  return steps;
}

function generator(options: GeneratorOptions = {}, m: CausalLM = lm): Generator {
  return new Generator(m, { maxBatch: 16, ...options });
}

describe('Generator', () => {
  it('batching does not change results: 16 prompts of different lengths, greedy, each equals generating it alone', async () => {
    const ps = prompts(16, 1);
    expect(new Set(ps.map((p) => p.length)).size).toBeGreaterThan(10);
    const maxTokens = 12;
    for (const maxBatch of [16, 5]) {
      const gen = generator({ maxBatch, prefillChunk: 64 });
      const hs = ps.map((p) => gen.add(p, { maxTokens, stopTokenIds: [] }));
      const outs = hs.map(collect);
      await runAll(gen, hs);
      const got = await Promise.all(outs);
      for (const [i, p] of ps.entries()) {
        expect(got[i]).toEqual(await generateAlone(model, p, { maxTokens, stopTokens: [] }));
        expect(hs[i]?.finishReason).toBe('length');
      }
      expect(gen.stats.pagesInUse).toBe(0);
      await gen.close();
    }
  });

  it('sampled sequences equal their own seeded generation, whatever else runs', async () => {
    const ps = prompts(8, 2);
    const opts = (i: number) => ({ temperature: 0.9, topK: 20, topP: 0.95, seed: 100 + i });
    const gen = generator({ maxBatch: 8, prefillChunk: 5 });
    const hs = ps.map((p, i) => gen.add(p, { maxTokens: 10, ...opts(i) }));
    const outs = hs.map(collect);
    await runAll(gen, hs);
    const got = await Promise.all(outs);
    for (const [i, p] of ps.entries()) {
      expect(got[i]).toEqual(await generateAlone(model, p, { maxTokens: 10, ...opts(i) }));
    }
    await gen.close();
  });

  it('stops at a stop token (not emitted) as generate does', async () => {
    const ps = prompts(12, 3);
    // Make the stop token the one greedy decoding picks second for each prompt, where there is one.
    const gen = generator();
    const expected = await Promise.all(
      ps.map(async (p) => {
        const free = await generateAlone(model, p, { maxTokens: 6, stopTokens: [] });
        const stop = free[3] as number;
        return { stop, ids: await generateAlone(model, p, { maxTokens: 6, stopTokens: [stop] }) };
      }),
    );
    const hs = ps.map((p, i) => gen.add(p, { maxTokens: 6, stopTokenIds: [expected[i]?.stop as number] }));
    const outs = hs.map(collect);
    await runAll(gen, hs);
    const got = await Promise.all(outs);
    ps.forEach((_, i) => {
      expect(got[i]).toEqual(expected[i]?.ids);
      expect(hs[i]?.finishReason).toBe((expected[i]?.ids.length as number) < 6 ? 'stop' : 'length');
    });
    expect(hs.some((h) => h.finishReason === 'stop')).toBe(true);
    await gen.close();
  });

  it('chunked prefill equals unchunked, and a long prompt does not stall the others', async () => {
    const ps = prompts(6, 4, 30, 60);
    const results: number[][][] = [];
    for (const chunk of [1, 7, 4096]) {
      const gen = generator({ prefillChunk: chunk });
      const hs = ps.map((p) => gen.add(p, { maxTokens: 8, stopTokenIds: [] }));
      const outs = hs.map(collect);
      const steps = await runAll(gen, hs);
      // Unchunked, all prompts go in one step; chunked, the prompt tokens take at least total / chunk steps.
      const total = ps.reduce((a, p) => a + p.length, 0);
      expect(steps).toBeGreaterThanOrEqual(Math.ceil(total / chunk));
      results.push(await Promise.all(outs));
      await gen.close();
    }
    expect(results[0]).toEqual(results[2]);
    expect(results[1]).toEqual(results[2]);
    for (const [i, p] of ps.entries()) {
      expect(results[1]?.[i]).toEqual(await generateAlone(model, p, { maxTokens: 8, stopTokens: [] }));
    }

    // A decoding sequence gets a token in every step while a 60-token prompt is prefilled 4 tokens a step.
    const gen = generator({ prefillChunk: 4 });
    const short = gen.add([config.bosTokenId, 5], { maxTokens: 30, stopTokenIds: [] });
    await gen.step();
    expect(short.output.length).toBe(1);
    const long = gen.add(prompts(1, 5, 60, 60)[0] as number[], { maxTokens: 4, stopTokenIds: [] });
    for (let s = 0; s < 14; s++) {
      await gen.step();
      expect(short.output.length).toBe(2 + s);
      expect(long.output.length).toBe(0);
    }
    await gen.step();
    expect(short.output.length).toBe(16);
    expect(long.output.length).toBe(1);
    await gen.close();
  });

  it('a cancelled sequence ends with abort and frees its slot and pages at once', async () => {
    const gen = generator({ maxBatch: 3 });
    const ps = prompts(4, 6, 20, 40);
    const ctl = new AbortController();
    const hs = ps.map((p, i) =>
      gen.add(p, { maxTokens: 30, stopTokenIds: [], ...(i === 1 ? { signal: ctl.signal } : {}) }),
    );
    for (let s = 0; s < 3; s++) await gen.step();
    expect(gen.stats.running).toBe(3);
    expect(gen.stats.waiting).toBe(1);
    const before = gen.stats.pagesInUse;
    const reservedBefore = gen.stats.pagesReserved;
    const len1 = (hs[1]?.promptTokens as number) + (hs[1]?.output.length as number) - 1;
    ctl.abort();
    expect(await hs[1]?.done).toBe('abort');
    expect(gen.stats.pagesInUse).toBe(before - Math.ceil(len1 / gen.cache.pageSize));
    expect(gen.stats.pagesReserved).toBeLessThan(reservedBefore);
    expect(gen.stats.running).toBe(2);
    // The waiting sequence takes the freed slot at the next step.
    await gen.step();
    expect(gen.stats.running).toBe(3);
    expect(gen.stats.waiting).toBe(0);
    // Breaking out of a reader cancels too.
    for await (const _ of hs[0] as SequenceHandle) break;
    expect(await hs[0]?.done).toBe('abort');
    await runAll(gen, hs);
    for (const i of [2, 3]) {
      expect(hs[i]?.output).toEqual(
        await generateAlone(model, ps[i] as number[], { maxTokens: 30, stopTokens: [] }),
      );
    }
    expect(gen.stats.pagesInUse).toBe(0);
    expect(gen.stats.pagesReserved).toBe(0);
    await gen.close();
  });

  it('a cancel during a step in flight frees the slot when that step ends', async () => {
    const gen = generator({ maxBatch: 2 });
    const h = gen.add(prompts(1, 7)[0] as number[], { maxTokens: 20, stopTokenIds: [] });
    await gen.step();
    const inFlight = gen.step();
    h.cancel();
    expect(h.finishReason).toBe(null);
    await inFlight;
    expect(h.finishReason).toBe('abort');
    expect(gen.stats.pagesInUse).toBe(0);
    await gen.close();
  });

  it('admits by free pages: never more reserved than the pool, the rest waits in FIFO order', async () => {
    // 8 pages of 16 positions; each request reserves ceil((20 + 11) / 16) = 2 pages, so 4 run at once.
    const gen = generator({ maxBatch: 8, pages: 8 });
    const ps = prompts(7, 8, 20, 20);
    const hs = ps.map((p) => gen.add(p, { maxTokens: 12, stopTokenIds: [] }));
    await gen.step();
    expect(gen.stats.running).toBe(4);
    expect(gen.stats.waiting).toBe(3);
    expect(gen.stats.pagesReserved).toBe(8);
    await runAll(gen, hs);
    for (const [i, p] of ps.entries()) {
      expect(hs[i]?.output).toEqual(await generateAlone(model, p, { maxTokens: 12, stopTokens: [] }));
    }
    await gen.close();
    // A request that could never fit the pool is refused up front.
    const small = generator({ pages: 4 });
    expect(() => small.add(prompts(1, 9, 90, 90)[0] as number[], { maxTokens: 6 })).toThrow(/KV pages/);
    await small.close();
  });

  it('refuses with E_BUSY when the waiting queue is full, E_ARG for requests that cannot run', async () => {
    // One free slot and two waiting places: the fourth request is one too many.
    const gen = generator({ maxBatch: 1, maxWaiting: 2 });
    const p = [config.bosTokenId, 4, 5];
    gen.add(p, { maxTokens: 4 });
    gen.add(p, { maxTokens: 4 });
    gen.add(p, { maxTokens: 4 });
    let err: unknown;
    try {
      gen.add(p, { maxTokens: 4 });
    } catch (e) {
      err = e;
    }
    expect(isQError(err, 'E_BUSY')).toBe(true);
    expect(() => gen.add([], { maxTokens: 4 })).toThrow(/at least one prompt token/);
    expect(() => gen.add([config.vocabSize], { maxTokens: 4 })).toThrow(/token ids/);
    expect(() => gen.add(p, { maxTokens: config.maxSeqLen })).toThrow(/context/);
    expect(() => gen.add(p, { maxTokens: -1 })).toThrow(/maxTokens/);
    expect(() => gen.add(p, { maxTokens: 4, temperature: -1 })).toThrow(/temperature/);
    // maxTokens 0 ends at once without using the model.
    const zero = gen.add(p, { maxTokens: 0 });
    expect(await zero.done).toBe('length');
    await gen.close();
    expect(() => gen.add(p, { maxTokens: 1 })).toThrow(/closed/);
  });

  it('the run loop serves requests that arrive at any time and yields to the event loop between steps', async () => {
    let turns = 0;
    let live = true;
    const spin = () => {
      turns++;
      if (live) setImmediate(spin);
    };
    setImmediate(spin);
    const seen: number[] = [];
    const gen = generator({ maxBatch: 4, prefillChunk: 8, onStep: () => seen.push(turns) });
    gen.start();
    const ps = prompts(6, 10);
    const hs: SequenceHandle[] = [];
    for (const p of ps) {
      hs.push(gen.add(p, { maxTokens: 10, stopTokenIds: [] }));
      await new Promise((r) => setTimeout(r, 2));
    }
    const got = await Promise.all(hs.map(collect));
    live = false;
    for (const [i, p] of ps.entries()) {
      expect(got[i]).toEqual(await generateAlone(model, p, { maxTokens: 10, stopTokens: [] }));
    }
    expect(seen.length).toBeGreaterThan(10);
    // The event loop turned between every two steps: the engine never holds it for more than one step.
    for (let i = 1; i < seen.length; i++) expect(seen[i]).toBeGreaterThan(seen[i - 1] as number);
    // Idle now; a late request still runs.
    const late = gen.add(ps[0] as number[], { maxTokens: 3, stopTokenIds: [] });
    expect(await collect(late)).toEqual(got[0]?.slice(0, 3));
    await gen.close();
  });

  it('drain finishes running work within the timeout and cancels what is left', async () => {
    // 5 ms a step: the short request ends in 2 steps, the long one would need 80.
    const slowLm: CausalLM = {
      backend: lm.backend,
      config: lm.config,
      createCache: (o) => lm.createCache(o),
      forward: async (t, o) => {
        await new Promise((r) => setTimeout(r, 5));
        return lm.forward(t, o);
      },
      dispose: () => lm.dispose(),
    };
    const gen = generator({ maxBatch: 2 }, slowLm);
    gen.start();
    const quick = gen.add([config.bosTokenId, 3], { maxTokens: 2, stopTokenIds: [] });
    const slow = gen.add([config.bosTokenId, 4], { maxTokens: 80, stopTokenIds: [] });
    await gen.drain(100);
    expect(await quick.done).toBe('length');
    expect(await slow.done).toBe('abort');
    expect(slow.output.length).toBeGreaterThan(0);
    expect(slow.output.length).toBeLessThan(80);
    await gen.close();
    expect(gen.stats.pagesInUse).toBe(0);
  });

  it('a model that fails fails the sequences of that step, and the engine goes on', async () => {
    let fail = true;
    const flaky: CausalLM = {
      config: lm.config,
      backend: 'cpu',
      createCache: (o) => lm.createCache(o),
      forward: (t, o) => {
        if (fail) {
          fail = false;
          return Promise.reject(new Error('device lost'));
        }
        return lm.forward(t, o);
      },
      dispose: () => lm.dispose(),
    };
    const gen = generator({}, flaky);
    const bad = gen.add([config.bosTokenId, 3], { maxTokens: 2 });
    await gen.step();
    await expect(bad.done).rejects.toThrow(/device lost/);
    await expect(collect(bad)).rejects.toThrow(/device lost/);
    expect(gen.stats.pagesReserved).toBe(0);
    const good = gen.add([config.bosTokenId, 3], { maxTokens: 2, stopTokenIds: [] });
    await runAll(gen, [good]);
    expect(good.output).toEqual(
      await generateAlone(model, [config.bosTokenId, 3], { maxTokens: 2, stopTokens: [] }),
    );
    await gen.close();
  });
});
