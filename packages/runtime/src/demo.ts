import * as fs from 'node:fs';
import { QError } from '@q/core';
import * as kernels from '@q/kernels-cuda';
import { formatPlanTable, type LayerPlan, type LayerReport, RECIPE_NAMES } from '@q/quant';
import { createModel } from './backend';
import { calibrate } from './calibrate';
import { buildDemoModel, demoText } from './demo-model';
import { evaluatePerplexity } from './evaluate';
import { generate } from './generate';
import type { Backend, CausalLM } from './lm';
import { type LoadedModel, type LoadOptions, loadModel } from './load';
import { quantizeLoaded } from './quantize';
import { weightsFromMap } from './weights';

/** The recipes `q demo` compares, FPTQ first. */
export const DEMO_RECIPES = ['fptq', 'w4a8-static', 'w4a8-rtn', 'odyssey', 'w8a8', 'w4a16'] as const;

/** Options of `runDemo`. */
export interface DemoOptions extends LoadOptions {
  /** A real model to run the demo on (llama2.c file or Hugging Face directory); default the synthetic one. */
  readonly model?: string;
  /** Text file for a real model: the first 40% of its lines calibrate, the rest evaluate. */
  readonly text?: string;
  /** Recipes to compare (default `DEMO_RECIPES`). */
  readonly recipes?: readonly string[];
  /** Calibration tokens (default 256). */
  readonly calibTokens?: number;
  /** Evaluation tokens (default 128): each recipe is compared with the float model on these positions. */
  readonly evalTokens?: number;
  /** Context of calibration and evaluation windows (default 129: one window of 128 scored tokens). */
  readonly ctx?: number;
  /** Tokens generated at the end with the FPTQ model (default 24). */
  readonly generateTokens?: number;
  /** Where the models run (default `'cpu'`). */
  readonly backend?: Backend;
  /** Stops between forward passes; the promise then rejects with `signal.reason`. */
  readonly signal?: AbortSignal;
  /** Called when a step starts, and with progress inside long steps. */
  readonly onStep?: (step: string) => void;
  readonly onProgress?: (step: string, done: number, total: number) => void;
  /** Called with each generated piece of text as it is produced. */
  readonly onText?: (text: string) => void;
}

/** One row of the demo table. */
export interface DemoRow {
  readonly recipe: string;
  /** Fraction of positions where the quantized and the float model pick the same next token. */
  readonly top1: number;
  /** Mean KL(float ‖ quantized), nats per position. */
  readonly kl: number;
  readonly ppl: number;
  readonly seconds: number;
}

/** What `runDemo` returns (also the `q demo --json` output). */
export interface DemoResult {
  readonly model: {
    readonly name: string;
    readonly hiddenSize: number;
    readonly numLayers: number;
    readonly intermediateSize: number;
    readonly vocabSize: number;
  };
  readonly calibTokens: number;
  readonly evalTokens: number;
  readonly floatPpl: number;
  readonly rows: readonly DemoRow[];
  /** FPTQ's per-layer plan. */
  readonly plan: readonly LayerPlan[];
  readonly planTable: string;
  readonly generation: {
    readonly prompt: string;
    readonly recipe: string;
    readonly text: string;
    readonly ids: number[];
  };
  readonly gpu: { readonly available: boolean; readonly message: string };
  readonly seconds: number;
}

/** Says whether the GPU part can run, using `@q/kernels-cuda`'s check when it exports one.
 *
 * @example
 * ```ts
 * const { available, message } = gpuAvailability();
 * if (!available) console.log(message); // 'GPU part skipped: ...'
 * ```
 */
export function gpuAvailability(): { available: boolean; message: string } {
  const k = kernels as unknown as Record<string, unknown>;
  if (typeof k.gpuStatus === 'function') {
    try {
      const s = (k.gpuStatus as () => { available: boolean; reason: string })();
      return s.available
        ? {
            available: true,
            message: `GPU detected (${s.reason}); the numbers above come from the CPU reference path, which a GPU run must reproduce`,
          }
        : { available: false, message: `GPU part skipped: ${s.reason}` };
    } catch (e) {
      return { available: false, message: `GPU part skipped: ${(e as Error).message}` };
    }
  }
  return {
    available: false,
    message: 'GPU part skipped: no CUDA addon is available in this build of @q/kernels-cuda',
  };
}

function splitLines(text: string, frac: number): [string, string] {
  const lines = text.split(/\r?\n/).filter((l) => l.trim().length > 0);
  const cut = Math.floor(lines.length * frac);
  return [lines.slice(0, cut).join('\n'), lines.slice(cut).join('\n')];
}

/**
 * The main job on an embedded default: builds the synthetic outlier model (or loads `model`), calibrates it,
 * quantizes it with FPTQ and the baselines, compares each with the float model (top-1 agreement, KL) on
 * held-out text, and generates a few tokens with the FPTQ model.
 *
 * @example
 * ```ts
 * const r = await runDemo();
 * console.log(formatDemoTable(r));
 * ```
 */
export async function runDemo(options: DemoOptions = {}): Promise<DemoResult> {
  const t0 = performance.now();
  const step = (s: string): void => options.onStep?.(s);
  let loaded: LoadedModel;
  let calibText: string;
  let evalText: string;
  let name: string;
  if (options.model === undefined) {
    step('building the synthetic demo model');
    const demo = buildDemoModel();
    loaded = {
      source: 'llama2c',
      path: '(synthetic demo model)',
      config: demo.config,
      tokenizer: demo.tokenizer,
      weights: weightsFromMap(demo.weights),
    };
    calibText = options.text ? splitLines(fs.readFileSync(options.text, 'utf8'), 0.4)[0] : demo.calibText;
    evalText = options.text ? splitLines(fs.readFileSync(options.text, 'utf8'), 0.4)[1] : demo.evalText;
    name = 'synthetic demo (seed 1234)';
  } else {
    step(`loading ${options.model}`);
    loaded = loadModel(options.model, options);
    // Without --text, the synthetic demo text (simple English words) calibrates and evaluates.
    [calibText, evalText] = options.text
      ? splitLines(fs.readFileSync(options.text, 'utf8'), 0.4)
      : [demoText(1235, 60), demoText(1236, 40)];
    name = options.model;
  }
  if (loaded.source === 'quantized') {
    throw new QError(
      'E_ARG',
      `Expected a float model for q demo --model but received the quantized model ${loaded.path}`,
    );
  }
  const backend = { backend: options.backend ?? 'cpu' } as const;
  const signal = options.signal ? { signal: options.signal } : {};
  const ctx = Math.min(options.ctx ?? 129, loaded.config.maxSeqLen);
  const calibIds = loaded.tokenizer.encode(calibText).slice(0, options.calibTokens ?? 256);
  const evalIds = loaded.tokenizer.encode(evalText).slice(0, options.evalTokens ?? 128);
  const recipes = options.recipes ?? DEMO_RECIPES;
  for (const r of recipes)
    if (!(RECIPE_NAMES as readonly string[]).includes(r))
      throw new QError(
        'E_ARG',
        `Expected one of ${RECIPE_NAMES.join(', ')} for recipe but received ${JSON.stringify(r)}`,
      );
  const floatModel = await createModel(loaded, backend);
  const models: CausalLM[] = [floatModel];
  try {
    step(`calibrating on ${calibIds.length} tokens`);
    const stats = await calibrate(floatModel, calibIds, {
      seqLen: ctx,
      ...signal,
      onProgress: (d, t) => options.onProgress?.('calibrate', d, t),
    });
    const float = await evaluatePerplexity(floatModel, evalIds, { ctx, ...signal });
    const rows: DemoRow[] = [];
    let plan: readonly LayerPlan[] = [];
    let report: readonly LayerReport[] = [];
    let genModel: CausalLM = floatModel;
    let genRecipe = 'float';
    for (const recipe of recipes) {
      const r0 = performance.now();
      step(`quantizing with ${recipe} and comparing with the float model`);
      const run = await quantizeLoaded(loaded, { recipe, stats, ...signal });
      const model = await createModel(run.quantized, backend);
      models.push(model);
      const ev = await evaluatePerplexity(model, evalIds, {
        ctx,
        compare: floatModel,
        ...signal,
        onProgress: (d, t) => options.onProgress?.(recipe, d, t),
      });
      rows.push({
        recipe,
        top1: ev.top1 ?? 0,
        kl: ev.kl ?? 0,
        ppl: ev.ppl,
        seconds: (performance.now() - r0) / 1000,
      });
      if (recipe === 'fptq') {
        plan = run.quantized.plans;
        report = run.report;
        genModel = model;
        genRecipe = 'fptq';
      }
    }
    step(`generating with the ${genRecipe} model`);
    const prompt = options.model === undefined ? 'The little' : 'Once upon a time';
    const promptIds = loaded.tokenizer.encodePrompt(prompt);
    const dec = loaded.tokenizer.streamDecoder();
    for (const id of promptIds) dec.push(id);
    let text = '';
    const ids: number[] = [];
    for await (const id of generate(genModel, promptIds, {
      maxTokens: options.generateTokens ?? 24,
      ...signal,
    })) {
      ids.push(id);
      const piece = dec.push(id);
      text += piece;
      if (piece) options.onText?.(piece);
    }
    const tail = dec.flush();
    text += tail;
    if (tail) options.onText?.(tail);
    return {
      model: {
        name,
        hiddenSize: loaded.config.hiddenSize,
        numLayers: loaded.config.numLayers,
        intermediateSize: loaded.config.intermediateSize,
        vocabSize: loaded.config.vocabSize,
      },
      calibTokens: calibIds.length,
      evalTokens: evalIds.length,
      floatPpl: float.ppl,
      rows,
      plan,
      planTable: plan.length ? formatPlanTable(plan, report) : '',
      generation: { prompt, recipe: genRecipe, text, ids },
      gpu: gpuAvailability(),
      seconds: (performance.now() - t0) / 1000,
    };
  } finally {
    for (const m of models) await m.dispose();
    loaded.weights.close();
  }
}
/**
 * The demo's recipe table as text.
 *
 * @example
 * ```ts
 * console.log(formatDemoTable(await runDemo()));
 * ```
 */
export function formatDemoTable(r: Pick<DemoResult, 'rows'>): string {
  const lines = [`${'recipe'.padEnd(12)}  ${'top-1'.padStart(7)}  ${'KL'.padStart(8)}`];
  for (const row of r.rows)
    lines.push(
      `${row.recipe.padEnd(12)}  ${(row.top1 * 100).toFixed(1).padStart(6)}%  ${row.kl.toFixed(4).padStart(8)}`,
    );
  return lines.join('\n');
}
