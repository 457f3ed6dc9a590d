/**
 * `q bench e2e`: the whole model on one GPU, q W4A8 and q bf16 side by side in one run: time to first token,
 * decode tokens/s by batch and context, output tokens/s of the TensorRT-LLM H200 workload (Llama-3-8B shape,
 * 2048 in / 128 out), peak device memory. Without --model the weights are drawn at random on the device (speed
 * does not depend on the values). Timing: warm-up, CUDA events on the model's stream, median of several runs.
 */
import { type ModelConfig, QError, writeFileAtomic } from '@q/core';
import { deviceProperties, Event, fillRandom, memoryInfo } from '@q/kernels-cuda';
import { CudaModel, type KernelTime } from './cuda/model';
import { SYNTHETIC_FPTQ_PLAN } from './cuda/weights';

/** Model shapes of the benchmark (Llama-2-7B, Llama-3-8B, Llama-2-70B). */
export type E2eShape = 'llama2-7b' | 'llama3-8b' | 'llama2-70b';

const BASE = {
  architecture: 'llama',
  rmsNormEps: 1e-5,
  ropeScaling: { type: 'none' },
  ropeStyle: 'half',
  tieWordEmbeddings: false,
  attentionBias: false,
  bosTokenId: 1,
  eosTokenIds: [2],
} as const;

/** The configs of the shapes. */
export const E2E_SHAPES: Readonly<Record<E2eShape, ModelConfig>> = {
  'llama2-7b': {
    ...BASE,
    hiddenSize: 4096,
    intermediateSize: 11008,
    numLayers: 32,
    numHeads: 32,
    numKvHeads: 32,
    headDim: 128,
    vocabSize: 32000,
    maxSeqLen: 4096,
    ropeTheta: 10000,
  },
  'llama3-8b': {
    ...BASE,
    hiddenSize: 4096,
    intermediateSize: 14336,
    numLayers: 32,
    numHeads: 32,
    numKvHeads: 8,
    headDim: 128,
    vocabSize: 128256,
    maxSeqLen: 8192,
    ropeTheta: 500000,
    bosTokenId: 128000,
    eosTokenIds: [128001],
  },
  'llama2-70b': {
    ...BASE,
    hiddenSize: 8192,
    intermediateSize: 28672,
    numLayers: 80,
    numHeads: 64,
    numKvHeads: 8,
    headDim: 128,
    vocabSize: 32000,
    maxSeqLen: 4096,
    ropeTheta: 10000,
  },
};

/** One figure of the benchmark. */
export interface E2eRow {
  path: 'w4a8' | 'bf16';
  metric: 'ttft_ms' | 'decode_tok_s' | 'request_tok_s' | 'peak_mem_gib';
  shape: string;
  /** Prompt tokens (TTFT, request) or the context decoded at (decode). */
  prompt: number;
  /** Tokens generated per sequence in the measurement. */
  output: number;
  batch: number;
  context: number;
  value: number;
}

/** What `q bench e2e --json` writes. */
export interface E2eResult {
  gpu: string;
  date: string;
  shape: string;
  rows: E2eRow[];
  /** Plain-text notes: the W4A8 plan, paths that did not fit. */
  notes: string[];
  /** With --breakdown: per path, the time per kernel of one decode step and one 2048-token prefill. */
  breakdown?: Record<string, { decode: KernelTime[]; prefill: KernelTime[] }>;
}

/** Options of `benchE2e`. */
export interface BenchE2eOptions {
  readonly shape?: E2eShape;
  /** A model directory or file instead of random weights (runs the path its format implies). */
  readonly model?: string;
  readonly device?: number;
  readonly breakdown?: boolean;
  /** Progress lines (default: none). */
  readonly log?: (line: string) => void;
  /** Fewer points (tests of the harness). */
  readonly quick?: boolean;
}

const TTFT_PROMPTS = [128, 512, 2048];
const DECODE_BATCHES = [1, 8, 32, 64];
const DECODE_CONTEXTS = [512, 2048];
const TRT_BATCHES = [1, 8, 64];
const TRT_IN = 2048;
const TRT_OUT = 128;
const DECODE_STEPS = 16;
const GREEDY = { temperature: 0, topK: 0, topP: 1, seed: 1, step: 0 };

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

function randomTokens(n: number, vocab: number, seed: number): number[] {
  let x = seed >>> 0;
  return Array.from({ length: n }, () => {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    return 3 + (x % (vocab - 3));
  });
}

/** Device milliseconds of `body` on the model's stream (events before and after). */
async function timed(model: CudaModel, body: () => Promise<unknown>): Promise<number> {
  const a = Event.create(model.device);
  const b = Event.create(model.device);
  try {
    model.stream.synchronize();
    a.record(model.stream);
    await body();
    b.record(model.stream);
    b.synchronize();
    return Event.elapsedMs(a, b);
  } finally {
    a.dispose();
    b.dispose();
  }
}

/**
 * Runs the end-to-end benchmark. Both paths run one after the other in the same process (each disposed before
 * the next), so peak memory is per path.
 *
 * @example
 * ```ts
 * const r = await benchE2e({ shape: 'llama2-7b', log: console.error });
 * console.log(formatE2eTable(r));
 * ```
 */
export async function benchE2e(o: BenchE2eOptions = {}): Promise<E2eResult> {
  const device = o.device ?? 0;
  const log = o.log ?? (() => {});
  const shapeName = o.model ?? o.shape ?? 'llama2-7b';
  if (o.model === undefined && !(shapeName in E2E_SHAPES))
    throw new QError(
      'E_ARG',
      `Expected one of ${Object.keys(E2E_SHAPES).join(', ')} for --shape but received ${shapeName}`,
    );
  const props = deviceProperties(device);
  const total = memoryInfo(device).total;
  const result: E2eResult = {
    gpu: props.name,
    date: new Date().toISOString(),
    shape: shapeName,
    rows: [],
    notes: [],
  };
  if (o.model === undefined)
    result.notes.push(
      `W4A8 plan (fptq, int4 group 128 with Integer Scale): q/k/v and gate/up inputs ${SYNTHETIC_FPTQ_PLAN.qkv} (LAE folded), o_proj input ${SYNTHETIC_FPTQ_PLAN.o}, down_proj input ${SYNTHETIC_FPTQ_PLAN.down} per token`,
    );
  const paths: ('w4a8' | 'bf16')[] = o.model === undefined ? ['w4a8', 'bf16'] : ['w4a8'];
  const maxContext = (o.quick ? 512 : 2048) + 128;
  const maxBatch = o.quick ? 8 : 64;
  for (const path of paths) {
    let model: CudaModel;
    try {
      const options = { device, maxBatch, maxContext, prefillChunk: 2048 };
      if (o.model !== undefined) model = await CudaModel.create(o.model, options);
      else model = await CudaModel.synthetic(E2E_SHAPES[shapeName as E2eShape], path, options);
    } catch (e) {
      if (e instanceof QError && e.code === 'E_DEVICE_MEMORY') {
        const note = `${path}: does not fit on ${props.name} (${(total / 2 ** 30).toFixed(0)} GiB): ${e.message}`;
        result.notes.push(note);
        log(note);
        continue;
      }
      throw e;
    }
    const label = o.model !== undefined ? (model.layout.layers[0]?.qkv.kind ?? 'w4a8') : path;
    const rowPath = label === 'bf16' ? 'bf16' : 'w4a8';
    let minFree = memoryInfo(device).free;
    const sample = (): void => {
      minFree = Math.min(minFree, memoryInfo(device).free);
    };
    const shape = shapeName;
    const V = model.config.vocabSize;
    try {
      // Time to first token, batch 1.
      for (const P of o.quick ? [128] : TTFT_PROMPTS) {
        if (P + 1 > model.maxContext) continue;
        const cache = model.createCache({ batch: 1, capacity: P + 1 });
        const prompt = randomTokens(P, V, P);
        const one = async (): Promise<number> => {
          cache.reset(0);
          return timed(model, () => model.forwardSample([prompt], { cache, sampling: [GREEDY] }));
        };
        for (let i = 0; i < 2; i++) await one();
        const ms: number[] = [];
        for (let i = 0; i < 5; i++) ms.push(await one());
        sample();
        cache.dispose();
        const v = median(ms);
        result.rows.push({
          path: rowPath,
          metric: 'ttft_ms',
          shape,
          prompt: P,
          output: 1,
          batch: 1,
          context: P,
          value: v,
        });
        log(`${rowPath} ttft prompt ${P}: ${v.toFixed(2)} ms`);
      }
      // Decode tokens/s: every sequence at `ctx` positions, one token per step, graphs replayed.
      for (const ctx of o.quick ? [512] : DECODE_CONTEXTS)
        for (const B of o.quick ? [1, 8] : DECODE_BATCHES) {
          const cap = ctx + 1 + 3 + DECODE_STEPS;
          const cache = model.createCache({ batch: B, capacity: cap });
          for (const t of [...cache.k, ...cache.v])
            fillRandom({ out: t, dist: 'uniform', lo: -1, hi: 1, seed: ctx + B, stream: model.stream });
          const fill = (): void => {
            for (let s = 0; s < B; s++) {
              cache.reserve(s, ctx);
              cache.lengths[s] = ctx;
            }
          };
          fill();
          let ids = Array.from({ length: B }, (_, i) => [3 + i]);
          const sampling = Array.from({ length: B }, () => GREEDY);
          const step = async (): Promise<void> => {
            const next = await model.forwardSample(ids, { cache, sampling });
            ids = [...next].map((t) => [t]);
          };
          for (let i = 0; i < 3; i++) await step();
          const ms: number[] = [];
          for (let trial = 0; trial < 5; trial++) {
            fill();
            ms.push(
              await timed(model, async () => {
                for (let i = 0; i < DECODE_STEPS; i++) await step();
              }),
            );
          }
          sample();
          cache.dispose();
          const v = (B * DECODE_STEPS) / (median(ms) / 1000);
          result.rows.push({
            path: rowPath,
            metric: 'decode_tok_s',
            shape,
            prompt: ctx,
            output: DECODE_STEPS,
            batch: B,
            context: ctx,
            value: v,
          });
          log(`${rowPath} decode batch ${B} context ${ctx}: ${v.toFixed(1)} tok/s`);
        }
      // The TensorRT-LLM H200 workload: Llama-3-8B shape, 2048 in, 128 out, output tokens/s over the request.
      if (shapeName === 'llama3-8b' && !o.quick)
        for (const B of TRT_BATCHES) {
          const cache = model.createCache({ batch: B, capacity: TRT_IN + TRT_OUT });
          const prompts = Array.from({ length: B }, (_, i) => randomTokens(TRT_IN, V, 77 + i));
          const sampling = Array.from({ length: B }, () => GREEDY);
          const request = async (): Promise<number> => {
            cache.reset();
            return timed(model, async () => {
              let next = await model.forwardSample(prompts, { cache, sampling });
              for (let t = 1; t < TRT_OUT; t++)
                next = await model.forwardSample(
                  [...next].map((x) => [x]),
                  { cache, sampling },
                );
            });
          };
          const runs = B >= 64 ? 1 : 3;
          await request();
          const ms: number[] = [];
          for (let i = 0; i < runs; i++) ms.push(await request());
          sample();
          cache.dispose();
          const v = (B * TRT_OUT) / (median(ms) / 1000);
          result.rows.push({
            path: rowPath,
            metric: 'request_tok_s',
            shape,
            prompt: TRT_IN,
            output: TRT_OUT,
            batch: B,
            context: TRT_IN + TRT_OUT,
            value: v,
          });
          log(`${rowPath} request 2048/128 batch ${B}: ${v.toFixed(1)} output tok/s`);
        }
      if (o.breakdown) {
        const decode = await model.breakdown('decode', { batch: 1, context: 512 });
        const prefill = model.maxContext >= 2048 ? await model.breakdown('prefill', { prompt: 2048 }) : [];
        result.breakdown = { ...(result.breakdown ?? {}), [rowPath]: { decode, prefill } };
      }
      sample();
      const peak = (total - minFree) / 2 ** 30;
      result.rows.push({
        path: rowPath,
        metric: 'peak_mem_gib',
        shape,
        prompt: 0,
        output: 0,
        batch: maxBatch,
        context: maxContext,
        value: peak,
      });
      log(`${rowPath} peak device memory ${peak.toFixed(2)} GiB`);
    } finally {
      await model.dispose();
    }
  }
  return result;
}

function fmt(v: number | undefined, digits: number): string {
  return v === undefined ? '-' : v.toFixed(digits);
}

/**
 * The result as a text table: one line per figure, W4A8 and bf16 side by side with their ratio.
 *
 * @example
 * ```ts
 * console.log(formatE2eTable(await benchE2e({ shape: 'llama3-8b' })));
 * ```
 */
export function formatE2eTable(r: E2eResult): string {
  const key = (x: E2eRow): string => `${x.metric}|${x.prompt}|${x.output}|${x.batch}|${x.context}`;
  const groups = new Map<string, { w?: E2eRow; b?: E2eRow }>();
  for (const x of r.rows) {
    const g = groups.get(key(x)) ?? {};
    if (x.path === 'w4a8') g.w = x;
    else g.b = x;
    groups.set(key(x), g);
  }
  const lines = [
    `q bench e2e: ${r.shape} on ${r.gpu}, ${r.date}`,
    ...r.notes.map((n) => `note: ${n}`),
    '',
    `${'figure'.padEnd(44)}${'w4a8'.padStart(12)}${'bf16'.padStart(12)}${'w4a8/bf16'.padStart(11)}`,
  ];
  for (const g of groups.values()) {
    const x = (g.w ?? g.b) as E2eRow;
    const what =
      x.metric === 'ttft_ms'
        ? `TTFT (ms), prompt ${x.prompt}`
        : x.metric === 'decode_tok_s'
          ? `decode tok/s, batch ${x.batch}, context ${x.context}`
          : x.metric === 'request_tok_s'
            ? `request out tok/s, ${x.prompt}/${x.output}, batch ${x.batch}`
            : 'peak device memory (GiB)';
    const digits = x.metric === 'ttft_ms' || x.metric === 'peak_mem_gib' ? 2 : 1;
    const ratio = g.w && g.b ? fmt(g.w.value / g.b.value, 2) : g.b ? '-' : 'bf16 n/a';
    lines.push(
      `${what.padEnd(44)}${fmt(g.w?.value, digits).padStart(12)}${fmt(g.b?.value, digits).padStart(12)}${ratio.padStart(11)}`,
    );
  }
  if (r.breakdown)
    for (const [path, b] of Object.entries(r.breakdown))
      for (const [what, ks] of [
        ['one decode step, batch 1, context 512', b.decode],
        ['one 2048-token prefill', b.prefill],
      ] as const) {
        const sum = ks.reduce((a, k) => a + k.ms, 0);
        lines.push('', `${path}: ${what}: ${sum.toFixed(3)} ms`);
        for (const k of ks)
          lines.push(
            `  ${k.name.padEnd(24)}${k.ms.toFixed(3).padStart(10)} ms  ${((100 * k.ms) / sum).toFixed(1).padStart(5)}%  ×${k.count}`,
          );
      }
  return lines.join('\n');
}

/** Writes the result as JSON, atomically. */
export function writeE2eJson(file: string, r: E2eResult): void {
  const text = new TextEncoder().encode(`${JSON.stringify(r, null, 2)}\n`);
  writeFileAtomic(file, (write) => write(text));
}
