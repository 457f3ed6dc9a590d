/**
 * The GPU CausalLM against the CPU model: bf16 against the f32 forward, W4A8 against the exact quantized CPU
 * path, decode against prefill, CUDA graphs against eager launches, and the bad inputs. Skips with a printed
 * reason where no GPU (or no shared model) is present.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { type ModelConfig, QError, Rng } from '@q/core';
import { gpuStatus, memoryInfo } from '@q/kernels-cuda';
import { saveQuantized } from '@q/quant';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCpuModel } from '../../src/backend';
import { type CudaModel, createCudaModel } from '../../src/cuda';
import { buildDemoModel } from '../../src/demo-model';
import { type LoadedModel, loadLlama2c } from '../../src/load';
import { Model } from '../../src/model';
import { quantizeLoaded } from '../../src/quantize';
import { sharedDir } from '../../src/shared-data';
import { wordLevelTokenizerJson, writeHfModel } from '../../src/testing/hf-fixture';
import { randomWeights, smallConfig } from '../../src/testing/random-model';
import { weightsFromMap } from '../../src/weights';

const status = gpuStatus();
if (!status.available) console.warn(`GPU model tests skipped: ${status.reason}`);
const noGpu = !status.available;
const shared = sharedDir();
const storiesFile = shared ? path.join(shared, 'models', 'stories260K', 'stories260K.bin') : '';
const textFile = shared ? path.join(shared, 'data', 'tinystories-valid-sample.txt') : '';
const haveStories = shared !== null && fs.existsSync(storiesFile) && fs.existsSync(textFile);
if (!noGpu && !haveStories)
  console.warn('stories260K GPU tests skipped: ../shared/models/stories260K or ../shared/data is absent');

function freshSeed(label: string): number {
  const seed = process.env.Q_TEST_SEED
    ? Number(process.env.Q_TEST_SEED)
    : (Date.now() ^ (process.pid << 8)) >>> 0;
  console.log(`${label}: seed ${seed}`);
  return seed;
}

/**
 * bf16 tolerance against the f32 CPU forward. Weights and every GEMM input are rounded to bf16 (relative 2^-9),
 * accumulations are f32, the residual stream f32: over a few layers that is ≲1% of the logit scale. A layout or
 * indexing bug gives errors of the order of the logits themselves.
 */
const BF16 = { rmsRel: 0.03, maxRel: 0.06 };

interface Diff {
  rmsRel: number;
  maxRel: number;
  /** Per row, max |Δ|. */
  rowMax: Float64Array;
}

function diff(got: Float32Array, ref: Float32Array, V: number): Diff {
  expect(got.length).toBe(ref.length);
  const rows = ref.length / V;
  const rowMax = new Float64Array(rows);
  let se = 0;
  let sr = 0;
  let maxRel = 0;
  for (let r = 0; r < rows; r++) {
    let m = 0;
    let mr = 0;
    for (let j = 0; j < V; j++) {
      const a = got[r * V + j] as number;
      const b = ref[r * V + j] as number;
      expect(Number.isFinite(a), `logit [${r}, ${j}] is ${a}`).toBe(true);
      se += (a - b) ** 2;
      sr += b * b;
      m = Math.max(m, Math.abs(a - b));
      mr = Math.max(mr, Math.abs(b));
    }
    rowMax[r] = m;
    maxRel = Math.max(maxRel, m / Math.max(mr, 1e-6));
  }
  return { rmsRel: Math.sqrt(se / Math.max(sr, 1e-30)), maxRel, rowMax };
}

function argmaxRow(x: Float32Array, r: number, V: number): number {
  let best = 0;
  for (let j = 1; j < V; j++) if ((x[r * V + j] as number) > (x[r * V + best] as number)) best = j;
  return best;
}

/** Mean next-token NLL → perplexity, over the positions of `ids` (logits 'all' of the whole sequence). */
function perplexity(logits: Float32Array, ids: readonly number[], V: number): number {
  let nll = 0;
  for (let t = 0; t + 1 < ids.length; t++) {
    let max = Number.NEGATIVE_INFINITY;
    for (let j = 0; j < V; j++) max = Math.max(max, logits[t * V + j] as number);
    let s = 0;
    for (let j = 0; j < V; j++) s += Math.exp((logits[t * V + j] as number) - max);
    nll += max + Math.log(s) - (logits[t * V + (ids[t + 1] as number)] as number);
  }
  return Math.exp(nll / (ids.length - 1));
}

const GREEDY = { temperature: 0, topK: 0, topP: 1, seed: 0, step: 0 };

/** 32 greedy tokens on the GPU through forwardSample (prefill, then decode steps through the graphs). */
async function gpuGreedy(model: CudaModel, prompt: readonly number[], n: number): Promise<number[]> {
  const cache = model.createCache({ batch: 1, capacity: prompt.length + n });
  try {
    const out: number[] = [];
    let next = (await model.forwardSample([prompt], { cache, sampling: [GREEDY] }))[0] as number;
    out.push(next);
    while (out.length < n) {
      next = (
        await model.forwardSample([[next]], { cache, sampling: [{ ...GREEDY, step: out.length }] })
      )[0] as number;
      out.push(next);
    }
    return out;
  } finally {
    cache.dispose();
  }
}

/** Checks a bf16 GPU model against the CPU f32 model on one prompt, and greedy decoding for 32 tokens. */
async function checkBf16(
  label: string,
  cpu: Model,
  gpu: CudaModel,
  prompt: readonly number[],
): Promise<void> {
  const V = cpu.config.vocabSize;
  const ref = await cpu.forward([prompt]);
  const got = await gpu.forward([prompt]);
  const d = diff(got, ref, V);
  console.log(
    `${label}: bf16 vs f32 logits rms rel ${d.rmsRel.toExponential(2)}, max rel ${d.maxRel.toExponential(2)}`,
  );
  expect(d.rmsRel).toBeLessThanOrEqual(BF16.rmsRel);
  expect(d.maxRel).toBeLessThanOrEqual(BF16.maxRel);
  const gen = await gpuGreedy(gpu, prompt, 32);
  // Teacher-forced CPU logits over the GPU's continuation: every GPU token must be the CPU argmax, except where
  // the CPU's own top two are closer than the bf16 error measured on that very row (a tie within precision).
  const all = [...prompt, ...gen];
  const cpuLogits = await cpu.forward([all]);
  const gpuLogits = await gpu.forward([all]);
  const rowErr = diff(gpuLogits, cpuLogits, V).rowMax;
  let ties = 0;
  gen.forEach((tok, i) => {
    const r = prompt.length - 1 + i;
    const best = argmaxRow(cpuLogits, r, V);
    if (best === tok) return;
    const gap = (cpuLogits[r * V + best] as number) - (cpuLogits[r * V + tok] as number);
    expect(
      gap,
      `${label}: greedy token ${i} is ${tok} on the GPU, ${best} on the CPU (gap ${gap}, bf16 error ${rowErr[r]})`,
    ).toBeLessThanOrEqual(2 * (rowErr[r] as number));
    ties++;
  });
  console.log(
    `${label}: 32 greedy tokens, ${32 - ties} equal to the CPU argmax, ${ties} ties within bf16 error`,
  );
  expect(ties).toBeLessThanOrEqual(1);
}

describe.skipIf(noGpu)('CudaModel bf16 against the CPU f32 model', () => {
  it.skipIf(!haveStories)('stories260K (head dim 8 padded to 64, hidden 172 padded)', async () => {
    const seed = freshSeed('stories bf16');
    const loaded = loadLlama2c(storiesFile);
    const gpu = await createCudaModel(storiesFile, { maxBatch: 4, maxContext: 256 });
    try {
      const rng = new Rng(seed);
      const prompt = [
        loaded.config.bosTokenId,
        ...Array.from({ length: 23 }, () => 3 + rng.int(loaded.config.vocabSize - 3)),
      ];
      await checkBf16('stories260K', createCpuModel(loaded), gpu, prompt);
    } finally {
      await gpu.dispose();
    }
  });

  it('the q demo model', async () => {
    const seed = freshSeed('demo bf16');
    const demo = buildDemoModel();
    const cpu = Model.fromFloatWeights(demo.config, demo.weights);
    const gpu = await createCudaModel(
      { config: demo.config, weights: demo.weights },
      { maxBatch: 4, maxContext: 256 },
    );
    try {
      const ids = demo.tokenizer.encode(demo.evalText).slice(0, 40 + new Rng(seed).int(20));
      await checkBf16('demo', cpu, gpu, [demo.config.bosTokenId, ...ids]);
    } finally {
      await gpu.dispose();
    }
  });

  it('a Hugging Face GQA model with q/k/v bias, read from its directory', async () => {
    const seed = freshSeed('hf gqa bf16');
    const c: ModelConfig = smallConfig({
      hiddenSize: 256,
      intermediateSize: 344,
      numLayers: 2,
      numHeads: 8,
      numKvHeads: 2,
      headDim: 64,
      vocabSize: 300,
      maxSeqLen: 512,
      attentionBias: true,
      ropeTheta: 500000,
    });
    const weights = randomWeights(c, seed);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'q-gpu-hf-'));
    try {
      writeHfModel(dir, { config: c, weights, tokenizer: wordLevelTokenizerJson(['a', 'b']) });
      const gpu = await createCudaModel(dir, { maxBatch: 4, maxContext: 256 });
      try {
        const rng = new Rng(seed + 1);
        await checkBf16(
          'hf-gqa-bias',
          Model.fromFloatWeights(c, weights),
          gpu,
          Array.from({ length: 30 }, () => rng.int(300)),
        );
      } finally {
        await gpu.dispose();
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe.skipIf(noGpu)('decode, ragged batches and CUDA graphs', () => {
  let demo: ReturnType<typeof buildDemoModel>;
  let gpu: CudaModel;
  let eager: CudaModel;
  beforeAll(async () => {
    demo = buildDemoModel();
    gpu = await createCudaModel(
      { config: demo.config, weights: demo.weights },
      { maxBatch: 8, maxContext: 256 },
    );
    eager = await createCudaModel(
      { config: demo.config, weights: demo.weights },
      { maxBatch: 8, maxContext: 256, cudaGraphs: false },
    );
  });
  afterAll(async () => {
    await gpu?.dispose();
    await eager?.dispose();
  });

  it('decode logits equal the prefill logits of the same positions', async () => {
    const seed = freshSeed('decode vs prefill');
    const rng = new Rng(seed);
    const V = demo.config.vocabSize;
    const ids = Array.from({ length: 48 }, () => 3 + rng.int(V - 3));
    const p = 17;
    const full = await gpu.forward([ids]);
    const cache = gpu.createCache({ batch: 1, capacity: ids.length });
    const rows: Float32Array[] = [await gpu.forward([ids.slice(0, p)], { cache, logits: 'last' })];
    for (let t = p; t < ids.length; t++)
      rows.push(await gpu.forward([[ids[t] as number]], { cache, logits: 'last' }));
    cache.dispose();
    const dec = new Float32Array(rows.length * V);
    rows.forEach((r, i) => {
      dec.set(r, i * V);
    });
    const ref = full.subarray((p - 1) * V, ids.length * V);
    const d = diff(dec, ref, V);
    console.log(
      `decode vs prefill: rms rel ${d.rmsRel.toExponential(2)}, max rel ${d.maxRel.toExponential(2)}`,
    );
    // Same weights, same bf16 roundings; only the attention kernel and GEMM tile shapes differ.
    expect(d.rmsRel).toBeLessThanOrEqual(0.01);
    expect(d.maxRel).toBeLessThanOrEqual(0.03);
  });

  it('a ragged batch (lengths 1, 17, 40, page boundaries) equals each sequence alone', async () => {
    const seed = freshSeed('ragged');
    const rng = new Rng(seed);
    const V = demo.config.vocabSize;
    const seqs = [1, 17, 40].map((n) => Array.from({ length: n }, () => 3 + rng.int(V - 3)));
    const cache = gpu.createCache({ batch: 5, capacity: 64 });
    const batch = await gpu.forward(seqs, { cache, slots: [4, 0, 2] });
    expect(cache.lengths).toEqual([17, 0, 40, 0, 1]);
    expect(cache.pagesInUse).toBe(2 + 3 + 1);
    let row = 0;
    for (const s of seqs) {
      const alone = await gpu.forward([s]);
      const d = diff(batch.subarray(row * V, (row + s.length) * V), alone, V);
      expect(d.maxRel, `sequence of ${s.length}`).toBeLessThanOrEqual(0.03);
      row += s.length;
    }
    cache.reset(2);
    expect(cache.pagesInUse).toBe(3);
    expect(cache.lengths[2]).toBe(0);
    cache.dispose();
  });

  it('chunked prefill (chunks of 16 tokens, sequences split across chunks) equals one-chunk prefill', async () => {
    const seed = freshSeed('chunked prefill');
    const rng = new Rng(seed);
    const V = demo.config.vocabSize;
    const seqs = [40, 7, 23].map((n) => Array.from({ length: n }, () => 3 + rng.int(V - 3)));
    const small = await createCudaModel(
      { config: demo.config, weights: demo.weights },
      { maxBatch: 4, maxContext: 256, prefillChunk: 16 },
    );
    try {
      for (const mode of ['all', 'last'] as const) {
        const a = await small.forward(seqs, { logits: mode });
        const b = await gpu.forward(seqs, { logits: mode });
        const d = diff(a, b, V);
        expect(d.maxRel, `logits '${mode}'`).toBeLessThanOrEqual(0.03);
      }
      const ids = await small.forwardSample(seqs, { sampling: seqs.map(() => GREEDY) });
      const last = await small.forward(seqs, { logits: 'last' });
      expect([...ids]).toEqual(seqs.map((_, i) => argmaxRow(last, i, V)));
    } finally {
      await small.dispose();
    }
  });

  it('a CUDA-graph decode step equals the same step without a graph, bit for bit', async () => {
    const seed = freshSeed('graph vs eager');
    const rng = new Rng(seed);
    const V = demo.config.vocabSize;
    const prompts = [5, 9, 3].map((n) => Array.from({ length: n }, () => 3 + rng.int(V - 3)));
    // Batch 3 pads to bucket 4 (a dummy row); 8 steps: the first captures the graph, the rest replay it.
    const steps = Array.from({ length: 8 }, () => prompts.map(() => [3 + rng.int(V - 3)]));
    const run = async (m: CudaModel): Promise<Float32Array[]> => {
      const cache = m.createCache({ batch: 3, capacity: 64 });
      const out: Float32Array[] = [await m.forward(prompts, { cache, logits: 'last' })];
      for (const step of steps) out.push(await m.forward(step, { cache, logits: 'last' }));
      cache.dispose();
      return out;
    };
    const a = await run(gpu);
    const b = await run(eager);
    for (let i = 0; i < a.length; i++) {
      const x = new Uint32Array((a[i] as Float32Array).buffer);
      const y = new Uint32Array((b[i] as Float32Array).buffer);
      let same = x.length === y.length;
      for (let j = 0; same && j < x.length; j++) same = x[j] === y[j];
      expect(same, `step ${i}: graph and eager logits differ`).toBe(true);
    }
  });

  it('device sampling: greedy equals the logits argmax; the same seed and step give the same token', async () => {
    const seed = freshSeed('sampling');
    const rng = new Rng(seed);
    const V = demo.config.vocabSize;
    const prompts = [4, 6].map((n) => Array.from({ length: n }, () => 3 + rng.int(V - 3)));
    const c1 = gpu.createCache({ batch: 2, capacity: 16 });
    const logits = await gpu.forward(prompts, { cache: c1, logits: 'last' });
    const c2 = gpu.createCache({ batch: 2, capacity: 16 });
    const ids = await gpu.forwardSample(prompts, { cache: c2, sampling: [GREEDY, GREEDY] });
    expect([...ids]).toEqual([argmaxRow(logits, 0, V), argmaxRow(logits, 1, V)]);
    const hot = { temperature: 1.5, topK: 50, topP: 0.95, seed: seed | 0, step: 3 };
    const draw = async (): Promise<number[]> => {
      const c = gpu.createCache({ batch: 2, capacity: 16 });
      const r = await gpu.forwardSample(prompts, {
        cache: c,
        sampling: [hot, { ...hot, seed: (seed + 1) | 0 }],
      });
      c.dispose();
      return [...r];
    };
    const first = await draw();
    expect(await draw()).toEqual(first);
    for (const t of first) expect(t >= 0 && t < V).toBe(true);
    c1.dispose();
    c2.dispose();
  });

  it('a context beyond the cache capacity is a clear error and changes nothing', async () => {
    const cache = gpu.createCache({ batch: 1, capacity: 16 });
    await gpu.forward([Array.from({ length: 16 }, (_, i) => 3 + i)], { cache, logits: 'none' });
    const err = await gpu.forward([[5]], { cache }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QError);
    expect((err as QError).code).toBe('E_ARG');
    expect((err as QError).message).toMatch(/at most 16 positions \(the cache capacity\).*received 17/);
    expect(cache.lengths[0]).toBe(16);
    expect(() => gpu.createCache({ capacity: 257 })).toThrow(/maxContext/);
    cache.dispose();
  });
});

function demoLoaded(demo: ReturnType<typeof buildDemoModel>): LoadedModel {
  return {
    source: 'llama2c',
    path: 'demo',
    config: demo.config,
    tokenizer: demo.tokenizer,
    weights: weightsFromMap(demo.weights),
  };
}

/** Tokens of the evaluation text as `n` sequences of `len` (BOS first). */
function evalBatches(ids: readonly number[], bos: number, n: number, len: number): number[][] {
  const out: number[][] = [];
  for (let i = 0; i < n; i++) out.push([bos, ...ids.slice(i * (len - 1), (i + 1) * (len - 1))]);
  return out;
}

async function checkW4A8(
  label: string,
  loaded: Parameters<typeof quantizeLoaded>[0],
  calibText: string,
  evalIds: readonly number[],
  seqLen: number,
): Promise<void> {
  const run = await quantizeLoaded(loaded, { recipe: 'fptq', groupSize: 64, calibText, calibTokens: 4096 });
  const cpuModel = createCpuModel(run.quantized);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `q-gpu-${label}-`));
  const out = path.join(dir, 'fptq');
  try {
    // The checkpoint format on disk, read back by the GPU loader (tensor by tensor).
    saveQuantized(out, run.quantized);
    const plans = run.quantized.plans;
    console.log(
      `${label}: fptq g64 plans: ${plans.filter((p) => p.act === 'static').length} static, ${plans.filter((p) => p.act === 'dynamic').length} dynamic, ${plans.filter((p) => p.lae).length} with LAE`,
    );
    const gpu = await createCudaModel(out, { maxBatch: 4, maxContext: seqLen });
    try {
      const V = loaded.config.vocabSize;
      const seqs = evalBatches(evalIds, loaded.config.bosTokenId, 4, seqLen);
      const gpuLogits = await gpu.forward(seqs);
      let agree = 0;
      let total = 0;
      let row = 0;
      let nllCpu = 0;
      let nllGpu = 0;
      for (const s of seqs) {
        const cpu = await cpuModel.forward([s]);
        const g = gpuLogits.subarray(row * V, (row + s.length) * V);
        for (let t = 0; t < s.length; t++) {
          agree += argmaxRow(cpu, t, V) === argmaxRow(g, t, V) ? 1 : 0;
          total++;
        }
        nllCpu += Math.log(perplexity(cpu, s, V)) * (s.length - 1);
        nllGpu += Math.log(perplexity(g, s, V)) * (s.length - 1);
        row += s.length;
      }
      const n = seqs.reduce((a, s) => a + s.length - 1, 0);
      const pplCpu = Math.exp(nllCpu / n);
      const pplGpu = Math.exp(nllGpu / n);
      console.log(
        `${label}: W4A8 GPU vs exact CPU: top-1 agreement ${((100 * agree) / total).toFixed(2)}% over ${total} positions, perplexity ${pplGpu.toFixed(4)} vs ${pplCpu.toFixed(4)}`,
      );
      expect(agree / total).toBeGreaterThanOrEqual(0.99);
      expect(Math.abs(pplGpu / pplCpu - 1)).toBeLessThanOrEqual(0.005);
    } finally {
      await gpu.dispose();
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

describe.skipIf(noGpu)('CudaModel W4A8 against the exact CPU quantized path (fptq, group 64)', () => {
  it.skipIf(!haveStories)('stories260K', async () => {
    const loaded = loadLlama2c(storiesFile);
    const text = fs.readFileSync(textFile, 'utf8');
    const half = Math.floor(text.length / 2);
    const evalIds = loaded.tokenizer.encode(text.slice(half));
    await checkW4A8('stories260K', loaded, text.slice(0, half), evalIds, 256);
  });

  it('the q demo model', async () => {
    const demo = buildDemoModel();
    const loaded = demoLoaded(demo);
    await checkW4A8('demo', loaded, demo.calibText, demo.tokenizer.encode(demo.evalText), 256);
  });
});

describe.skipIf(noGpu)('bad input', () => {
  let dir: string;
  let cfg: ModelConfig;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'q-gpu-bad-'));
    cfg = smallConfig({
      hiddenSize: 64,
      intermediateSize: 128,
      headDim: 64,
      numHeads: 2,
      numKvHeads: 1,
      maxSeqLen: 1 << 24,
    });
  });
  afterAll(() => {
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('a cache that does not fit: E_DEVICE_MEMORY with bytes needed and free, before allocating', async () => {
    const weights = randomWeights(cfg, 1);
    const before = memoryInfo(0).free;
    const err = await createCudaModel({ config: cfg, weights }, { maxBatch: 128, maxContext: 1 << 24 }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(QError);
    const q = err as QError;
    expect(q.code).toBe('E_DEVICE_MEMORY');
    expect(q.message).toMatch(/needs \d+ bytes/);
    expect(q.message).toMatch(/\d+ bytes free/);
    const det = q.details as { needed: number; free: number };
    expect(det.needed).toBeGreaterThan(det.free);
    // Nothing (beyond allocator noise) was allocated and kept.
    expect(Math.abs(memoryInfo(0).free - before)).toBeLessThan(64 << 20);
  });

  it('dispose gives the device memory back', async () => {
    // Warm up first: cuBLAS and the CUDA context keep their own allocations for the life of the process.
    const warm = await createCudaModel(
      { config: cfg, weights: randomWeights(cfg, 3) },
      { maxBatch: 1, maxContext: 64 },
    );
    await warm.forward([[1, 2]]);
    await warm.forward([[3]]);
    await warm.dispose();
    const before = memoryInfo(0).free;
    const m = await createCudaModel(
      { config: cfg, weights: randomWeights(cfg, 2) },
      { maxBatch: 8, maxContext: 4096 },
    );
    const c = m.createCache({ batch: 8, capacity: 4096 });
    await m.forward([[1, 2, 3]], { cache: c });
    await m.dispose();
    expect(() => c.reset()).toThrow(/dispose/);
    await expect(m.forward([[1]])).rejects.toThrow(/dispose/);
    expect(before - memoryInfo(0).free).toBeLessThan(64 << 20);
  });

  it('a manifest whose shapes do not match its tensors is E_FORMAT', async () => {
    const demo = buildDemoModel({ numLayers: 1 });
    const loaded = demoLoaded(demo);
    const run = await quantizeLoaded(loaded, { recipe: 'w4a8-rtn', groupSize: 128 });
    const out = path.join(dir, 'rtn');
    saveQuantized(out, run.quantized);
    const file = path.join(out, 'manifest.json');
    const man = JSON.parse(fs.readFileSync(file, 'utf8')) as { layers: { name: string; kPadded: number }[] };
    const l0 = man.layers[0] as { name: string; kPadded: number };
    l0.kPadded += 128;
    fs.writeFileSync(file, JSON.stringify(man));
    const err = await createCudaModel(out).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QError);
    expect((err as QError).code).toBe('E_FORMAT');
    expect((err as QError).message).toContain(l0.name);
  });

  for (const recipe of ['w4a16', 'w8a8']) {
    it(`recipe ${recipe} has no GPU kernel: a clear error naming it`, async () => {
      const demo = buildDemoModel({ numLayers: 1 });
      const loaded = demoLoaded(demo);
      const run = await quantizeLoaded(loaded, { recipe });
      const out = path.join(dir, recipe);
      saveQuantized(out, run.quantized);
      const before = memoryInfo(0).free;
      const err = await createCudaModel(out).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(QError);
      expect((err as QError).code).toBe('E_UNSUPPORTED');
      expect((err as QError).message).toContain(`no GPU kernel for recipe ${recipe}`);
      expect(Math.abs(memoryInfo(0).free - before)).toBeLessThan(64 << 20);
    });
  }
});
