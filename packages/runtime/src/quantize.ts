import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { type ModelConfig, QError, type Tensor } from '@q/core';
import {
  type ActivationObserver,
  getRecipe,
  type LayerPlan,
  type LayerReport,
  linearForward,
  loadQuantized,
  MANIFEST_FILE,
  type QuantizedModel,
  quantizeModel,
  type Recipe,
  saveQuantized,
} from '@q/quant';
import { calibrate } from './calibrate';
import { FloatLinear, QuantLinear } from './cpu/linear';
import type { LoadedModel } from './load';
import { Model } from './model';
import { loadHfTokenizer, loadLlama2cTokenizer, type TextTokenizer } from './tokenizer';

/**
 * A runnable model over a `@q/quant` QuantizedModel: quantized linears run `linearForward` (exact integer
 * math), the rest (embeddings, folded norms, float layers) in f32.
 *
 * @example
 * ```ts
 * const { model: q } = quantizeModel(weights, config, stats, 'fptq');
 * const runnable = modelFromQuantized(q);
 * ```
 */
export function modelFromQuantized(q: QuantizedModel): Model {
  const vec = (name: string, shape: readonly number[]): Float32Array => {
    const t = q.tensors.get(name);
    if (!t)
      throw new QError(
        'E_FORMAT',
        `Expected a tensor named ${name} in the quantized model but received none`,
      );
    if (t.size !== shape.reduce((a, b) => a * b, 1))
      throw new QError(
        'E_SHAPE',
        `Expected shape [${shape.join(', ')}] for ${name} but received [${t.shape.join(', ')}]`,
      );
    return t.toFloat32();
  };
  return Model.fromGetters(q.config, vec, (name, n, k) => {
    const l = q.linears.get(name);
    if (l) return new QuantLinear(l, linearForward, true);
    const w = q.tensors.get(`${name}.weight`);
    if (!w) return undefined;
    const b = q.tensors.get(`${name}.bias`);
    return new FloatLinear(name, vec(`${name}.weight`, [n, k]), n, k, b ? b.toFloat32() : null);
  });
}

/** True when a directory holds a `q quantize` checkpoint.
 *
 * @example
 * ```ts
 * isQuantizedDir('stories260K-fptq'); // true once q quantize wrote it
 * ```
 */
export function isQuantizedDir(dir: string): boolean {
  return fs.existsSync(path.join(dir, MANIFEST_FILE));
}

/** File names a quantized directory uses for the tokenizer it carries. */
export const CARRIED_TOKENIZER = {
  llama2c: 'tokenizer.bin',
  hf: ['tokenizer.json', 'tokenizer_config.json'],
} as const;

function carriedTokenizer(dir: string, config: ModelConfig): TextTokenizer {
  if (fs.existsSync(path.join(dir, 'tokenizer.json')))
    return loadHfTokenizer(dir, { bosId: config.bosTokenId, eosIds: config.eosTokenIds });
  const bin = path.join(dir, CARRIED_TOKENIZER.llama2c);
  if (fs.existsSync(bin)) return loadLlama2cTokenizer(bin, config.vocabSize);
  throw new QError(
    'E_TOKENIZER',
    `Expected tokenizer.json or tokenizer.bin in the quantized directory ${dir} for the tokenizer but received neither`,
  );
}

/**
 * Loads a directory written by `q quantize` (or `saveQuantizedModel`), with the tokenizer it carries.
 *
 * @example
 * ```ts
 * const m = loadQuantizedModel('stories260K-fptq');
 * m.recipe; // 'fptq'
 * ```
 */
export function loadQuantizedModel(dir: string): LoadedModel & { readonly plans: readonly LayerPlan[] } {
  const { model: q, manifest } = loadQuantized(dir);
  const tokenizer = carriedTokenizer(dir, manifest.config);
  return {
    source: 'quantized',
    path: path.resolve(dir),
    config: manifest.config,
    model: modelFromQuantized(q),
    tokenizer,
    recipe: manifest.recipe.name,
    plans: q.plans,
  };
}

/** Recipe options `q quantize` exposes. */
export interface RecipeChoice {
  readonly recipe: string;
  /** int4 group size along K (overrides the recipe's). */
  readonly groupSize?: number;
}

/** The recipe a choice names, validated (unknown names list the valid ones).
 *
 * @example
 * ```ts
 * resolveRecipe({ recipe: 'fptq', groupSize: 64 }).weights.groupSize; // 64
 * ```
 */
export function resolveRecipe(choice: RecipeChoice): Recipe {
  if (choice.groupSize !== undefined && (!Number.isInteger(choice.groupSize) || choice.groupSize < 2))
    throw new QError(
      'E_ARG',
      `Expected an even integer >= 2 for --group-size but received ${choice.groupSize}`,
    );
  return getRecipe(
    choice.recipe,
    choice.groupSize !== undefined ? { weights: { groupSize: choice.groupSize } } : {},
  );
}

/** True when a recipe needs calibration statistics (static scales or LAE).
 *
 * @example
 * ```ts
 * needsCalibration(resolveRecipe({ recipe: 'w4a16' })); // false
 * ```
 */
export function needsCalibration(r: Recipe): boolean {
  return r.activations.policy === 'fptq' || r.activations.policy === 'static' || r.activations.lae;
}

/** Options of `quantizeLoaded`. */
export interface QuantizeOptions extends RecipeChoice {
  /** Calibration text (needed by recipes with static scales or LAE). */
  readonly calibText?: string;
  /** Calibrate on at most this many tokens (default 16384). */
  readonly calibTokens?: number;
  /** Calibration sequence length, BOS included (default min(256, context)). */
  readonly calibSeqLen?: number;
  /** Reuse statistics instead of calibrating. */
  readonly stats?: ActivationObserver;
  readonly onProgress?: (stage: 'calibrate', done: number, total: number) => void;
}

/** A quantized model in memory, with what it was made from. */
export interface QuantizedRun {
  readonly recipe: Recipe;
  readonly quantized: QuantizedModel;
  readonly report: readonly LayerReport[];
  readonly model: Model;
  readonly stats?: ActivationObserver;
  readonly calibTokens: number;
}

/**
 * Calibrates (when the recipe needs it) and quantizes a float model in memory.
 *
 * @example
 * ```ts
 * const float = loadModel('stories260K.bin');
 * const run = await quantizeLoaded(float, { recipe: 'fptq', calibText });
 * await evaluatePerplexity(run.model, ids, { compare: float.model });
 * ```
 */
export async function quantizeLoaded(loaded: LoadedModel, options: QuantizeOptions): Promise<QuantizedRun> {
  if (!loaded.weights)
    throw new QError(
      'E_ARG',
      `Expected a float model (llama2.c or Hugging Face) to quantize but received the ${loaded.source} model ${loaded.path}`,
    );
  const recipe = resolveRecipe(options);
  let stats = options.stats;
  let calibTokens = 0;
  if (!stats && needsCalibration(recipe)) {
    if (options.calibText === undefined)
      throw new QError(
        'E_ARG',
        `Expected calibration text (--calib <file>) for recipe ${recipe.name} (it calibrates activation ranges) but received none`,
      );
    const ids = loaded.tokenizer.encode(options.calibText);
    const maxTokens = Math.min(ids.length, options.calibTokens ?? 16384);
    stats = await calibrate(loaded.model, ids, {
      maxTokens,
      seqLen: options.calibSeqLen ?? Math.min(256, loaded.config.maxSeqLen),
      ...(options.onProgress ? { onProgress: (d, t) => options.onProgress?.('calibrate', d, t) } : {}),
    });
    calibTokens = maxTokens;
  }
  const { model: quantized, report } = quantizeModel(
    loaded.weights as ReadonlyMap<string, Tensor<'f32'>>,
    loaded.config,
    stats,
    recipe,
  );
  return {
    recipe,
    quantized,
    report,
    model: modelFromQuantized(quantized),
    ...(stats ? { stats } : {}),
    calibTokens,
  };
}

/** Options of `saveQuantizedModel`. */
export interface SaveQuantizedOptions {
  /** Replace a non-empty output directory. */
  readonly force?: boolean;
  /** Called between the steps; an exception thrown here aborts and leaves nothing under `out`. */
  readonly onStep?: (step: 'weights' | 'tokenizer' | 'commit') => void;
}

/**
 * Writes a quantized model and the source's tokenizer into `out`, atomically: everything goes to a temporary
 * sibling directory that is renamed to `out` only when complete, so an interrupted run leaves nothing under the
 * final name. A non-empty `out` is refused (`E_EXISTS`) unless `force`.
 *
 * @example
 * ```ts
 * saveQuantizedModel(run, float, 'stories260K-fptq');
 * loadModel('stories260K-fptq'); // runs on its own, tokenizer included
 * ```
 */
export function saveQuantizedModel(
  run: QuantizedRun,
  source: LoadedModel,
  out: string,
  options: SaveQuantizedOptions = {},
): string {
  const finalDir = path.resolve(out);
  if (fs.existsSync(finalDir)) {
    const st = fs.statSync(finalDir);
    const nonEmpty = !st.isDirectory() || fs.readdirSync(finalDir).length > 0;
    if (nonEmpty && !options.force)
      throw new QError(
        'E_EXISTS',
        `Expected an empty or new directory for --out but received ${finalDir}, which is not empty (pass --force to replace it)`,
      );
  }
  fs.mkdirSync(path.dirname(finalDir), { recursive: true });
  const tmpParent = path.join(
    path.dirname(finalDir),
    `.${path.basename(finalDir)}.${process.pid}.${randomBytes(6).toString('hex')}.partial`,
  );
  const staged = path.join(tmpParent, 'model');
  const cleanup = (): void => fs.rmSync(tmpParent, { recursive: true, force: true });
  const onSignal = (): void => {
    cleanup();
    process.exit(130);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    fs.mkdirSync(tmpParent);
    options.onStep?.('weights');
    saveQuantized(staged, run.quantized, {
      sourceFiles: source.source === 'llama2c' ? [source.path] : [],
      report: run.report,
    });
    options.onStep?.('tokenizer');
    if (source.tokenizer.kind === 'llama2c') {
      const file = source.tokenizer.files[0];
      if (!file)
        throw new QError(
          'E_TOKENIZER',
          `Expected a tokenizer file to carry for ${source.path} but received none`,
        );
      fs.copyFileSync(file, path.join(staged, CARRIED_TOKENIZER.llama2c));
    } else {
      for (const f of source.tokenizer.files) fs.copyFileSync(f, path.join(staged, path.basename(f)));
    }
    options.onStep?.('commit');
    if (fs.existsSync(finalDir)) {
      const old = path.join(tmpParent, 'old');
      fs.renameSync(finalDir, old);
    }
    fs.renameSync(staged, finalDir);
  } finally {
    cleanup();
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
  }
  return finalDir;
}
