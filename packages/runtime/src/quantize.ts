import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { type ModelConfig, QError, Tensor } from '@q/core';
import {
  type ActivationObserver,
  getRecipe,
  type LayerReport,
  linearForward,
  loadQuantized,
  MANIFEST_FILE,
  type QuantizedModel,
  quantizeModel,
  RECIPE_NAMES,
  type Recipe,
  type RecipeOverrides,
  saveQuantized,
  validateRecipe,
} from '@q/quant';
import { createCpuModel } from './backend';
import { calibrate } from './calibrate';
import { FloatLinear, QuantLinear } from './cpu/linear';
import { yieldToEventLoop } from './generate';
import type { CausalLM } from './lm';
import type { LoadedFloatModel, LoadedModel, LoadedQuantizedModel } from './load';
import { Model } from './model';
import { tensorNames } from './names';
import { loadHfTokenizer, loadLlama2cTokenizer, type TextTokenizer } from './tokenizer';

/**
 * A runnable model over a `@q/quant` QuantizedModel: quantized linears run `linearForward` (exact integer
 * math), the rest (embeddings, folded norms, float layers) in f32.
 *
 * @example
 * ```ts
 * const { model: q } = quantizeModel(weights, config, stats, 'fptq');
 * const runnable = modelFromQuantized(q); // or, on any backend: await createModel(q, { backend })
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
export function loadQuantizedModel(dir: string): LoadedQuantizedModel {
  const { model: q, manifest } = loadQuantized(dir);
  const tokenizer = carriedTokenizer(dir, manifest.config);
  return {
    source: 'quantized',
    path: path.resolve(dir),
    config: manifest.config,
    tokenizer,
    weights: q,
    recipe: manifest.recipe.name,
    plans: q.plans,
  };
}

/** Recipe options `q quantize` exposes. */
export interface RecipeChoice {
  /** A built-in recipe's name, a path to a recipe JSON file, or a `Recipe` object (any name). */
  readonly recipe: string | Recipe;
  /** int4 group size along K (overrides the recipe's). */
  readonly groupSize?: number;
}

function readRecipeFile(file: string): Recipe {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new QError(
      'E_IO',
      `Expected a readable recipe JSON file for --recipe but received ${JSON.stringify(file)}: ${(e as Error).message}`,
    );
  }
  let obj: unknown;
  try {
    obj = JSON.parse(text);
  } catch (e) {
    throw new QError(
      'E_FORMAT',
      `Expected valid JSON in the recipe file ${file} but received text that does not parse: ${(e as Error).message}`,
    );
  }
  if (typeof obj !== 'object' || obj === null || Array.isArray(obj))
    throw new QError(
      'E_FORMAT',
      `Expected a JSON object in the recipe file ${file} but received ${text.slice(0, 40)}`,
    );
  // A file without a name goes by its file name; the description may be left out.
  const named = {
    name: path.basename(file).replace(/\.json$/i, ''),
    description: `custom recipe from ${path.basename(file)}`,
    ...obj,
  };
  try {
    return validateRecipe(named);
  } catch (e) {
    if (e instanceof QError)
      throw new QError(e.code, `In the recipe file ${file}: ${e.message}`, { cause: e });
    throw e;
  }
}

/**
 * The recipe a choice names, validated: a built-in name (unknown names list the valid ones), a JSON file
 * holding a whole `Recipe` (as a manifest records it; `name` defaults to the file name), or a `Recipe` object.
 * Custom recipes take exactly the path built-in ones do.
 *
 * @example
 * ```ts
 * resolveRecipe({ recipe: 'fptq', groupSize: 64 }).weights.groupSize; // 64
 * resolveRecipe({ recipe: './my-recipe.json' }).name; // 'my-recipe', or the name the file gives
 * resolveRecipe({ recipe: { ...RECIPES.fptq, name: 'fptq-g64', weights: { ...RECIPES.fptq.weights, groupSize: 64 } } });
 * ```
 */
export function resolveRecipe(choice: RecipeChoice): Recipe {
  if (choice.groupSize !== undefined && (!Number.isInteger(choice.groupSize) || choice.groupSize < 2))
    throw new QError(
      'E_ARG',
      `Expected an even integer >= 2 for --group-size but received ${choice.groupSize}`,
    );
  const r = choice.recipe;
  let base: Recipe;
  if (typeof r !== 'string') base = validateRecipe(r);
  else if ((RECIPE_NAMES as readonly string[]).includes(r)) return getRecipe(r, groupOverride(choice));
  else if (r.toLowerCase().endsWith('.json') || fs.existsSync(r)) base = readRecipeFile(r);
  else
    throw new QError(
      'E_ARG',
      `Expected one of ${RECIPE_NAMES.join(', ')} or a recipe JSON file for recipe but received ${JSON.stringify(r)}`,
    );
  if (choice.groupSize === undefined) return base;
  return validateRecipe({ ...base, weights: { ...base.weights, groupSize: choice.groupSize } });
}

function groupOverride(choice: RecipeChoice): RecipeOverrides {
  return choice.groupSize !== undefined ? { weights: { groupSize: choice.groupSize } } : {};
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
  /** The float model to calibrate with (any backend); default a CPU model of `loaded`, disposed afterwards. */
  readonly model?: CausalLM;
  /** Stops calibration between forward passes; the promise then rejects with `signal.reason`. */
  readonly signal?: AbortSignal;
  readonly onProgress?: (stage: 'calibrate', done: number, total: number) => void;
}

/** A quantized model in memory, with what it was made from. `createModel(run.quantized)` runs it. */
export interface QuantizedRun {
  readonly recipe: Recipe;
  readonly quantized: QuantizedModel;
  readonly report: readonly LayerReport[];
  readonly stats?: ActivationObserver;
  readonly calibTokens: number;
}

function isF32(t: Tensor): t is Tensor<'f32'> {
  return t.dtype === 'f32';
}

/** Every float tensor a config needs, widened to f32: what `@q/quant`'s quantizeModel takes. */
function floatTensors(loaded: LoadedFloatModel): Map<string, Tensor<'f32'>> {
  const out = new Map<string, Tensor<'f32'>>();
  for (const name of tensorNames(loaded.config)) {
    if (!loaded.weights.has(name)) continue;
    const t = loaded.weights.get(name);
    out.set(name, isF32(t) ? t : new Tensor('f32', t.shape, t.toFloat32()));
  }
  return out;
}

/**
 * Calibrates (when the recipe needs it) and quantizes a float model in memory. The recipe may be a built-in
 * name, a recipe JSON file or any `Recipe` object.
 *
 * @example
 * ```ts
 * const float = loadModel('stories260K.bin');
 * const run = await quantizeLoaded(float, { recipe: 'fptq', calibText });
 * const model = await createModel(run.quantized);
 * await evaluatePerplexity(model, ids, { compare: await createModel(float) });
 * ```
 */
export async function quantizeLoaded(loaded: LoadedModel, options: QuantizeOptions): Promise<QuantizedRun> {
  if (loaded.source === 'quantized')
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
    const model = options.model ?? createCpuModel(loaded);
    try {
      stats = await calibrate(model, ids, {
        maxTokens,
        seqLen: options.calibSeqLen ?? Math.min(256, loaded.config.maxSeqLen),
        ...(options.signal ? { signal: options.signal } : {}),
        ...(options.onProgress ? { onProgress: (d, t) => options.onProgress?.('calibrate', d, t) } : {}),
      });
    } finally {
      if (model !== options.model) await model.dispose();
    }
    calibTokens = maxTokens;
  }
  await yieldToEventLoop();
  options.signal?.throwIfAborted();
  const { model: quantized, report } = quantizeModel(floatTensors(loaded), loaded.config, stats, recipe);
  return { recipe, quantized, report, ...(stats ? { stats } : {}), calibTokens };
}

/** Options of `saveQuantizedModel`. */
export interface SaveQuantizedOptions {
  /** The tokenizer to carry (the float model's), so the directory runs on its own. */
  readonly tokenizer: TextTokenizer;
  /** Replace a non-empty output directory. */
  readonly force?: boolean;
  /** Files the model was made from, recorded in the manifest. */
  readonly sourceFiles?: readonly string[];
  /** Checked between the steps: an aborted signal stops the save, leaves nothing under `dir` and throws its reason. */
  readonly signal?: AbortSignal;
  /** Called between the steps; an exception thrown here aborts and leaves nothing under `dir`. */
  readonly onStep?: (step: 'weights' | 'tokenizer' | 'commit') => void;
}

/**
 * Writes a quantized model and a tokenizer into `dir`, atomically: everything goes to a temporary sibling
 * directory that is renamed to `dir` only when complete, and removed in a `finally` whatever happens, so an
 * interrupted or failed save leaves nothing under the final name. A non-empty `dir` is refused (`E_EXISTS`)
 * unless `force`. Installs no signal handlers: a program that wants Ctrl-C to stop a save passes a `signal`.
 *
 * @example
 * ```ts
 * const run = await quantizeLoaded(float, { recipe: 'w4a8-rtn' });
 * saveQuantizedModel('stories260K-w4a8', run, { tokenizer: float.tokenizer });
 * loadModel('stories260K-w4a8'); // runs on its own, tokenizer included
 * ```
 */
export function saveQuantizedModel(
  dir: string,
  model: { readonly quantized: QuantizedModel; readonly report?: readonly LayerReport[] },
  options: SaveQuantizedOptions,
): string {
  const finalDir = path.resolve(dir);
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
  const step = (s: 'weights' | 'tokenizer' | 'commit'): void => {
    options.signal?.throwIfAborted();
    options.onStep?.(s);
  };
  const tokenizer = options.tokenizer;
  try {
    fs.mkdirSync(tmpParent);
    step('weights');
    saveQuantized(staged, model.quantized, {
      sourceFiles: options.sourceFiles ?? [],
      ...(model.report ? { report: model.report } : {}),
    });
    step('tokenizer');
    if (tokenizer.kind === 'llama2c') {
      const file = tokenizer.files[0];
      if (!file)
        throw new QError(
          'E_TOKENIZER',
          `Expected a tokenizer file to carry for ${finalDir} but received none`,
        );
      fs.copyFileSync(file, path.join(staged, CARRIED_TOKENIZER.llama2c));
    } else {
      for (const f of tokenizer.files) fs.copyFileSync(f, path.join(staged, path.basename(f)));
    }
    step('commit');
    if (fs.existsSync(finalDir)) {
      const old = path.join(tmpParent, 'old');
      fs.renameSync(finalDir, old);
    }
    fs.renameSync(staged, finalDir);
  } finally {
    fs.rmSync(tmpParent, { recursive: true, force: true });
  }
  return finalDir;
}
