import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  bf16ArrayToF32,
  f16ArrayToF32,
  type ModelConfig,
  openSafetensorsModel,
  QError,
  readHfConfig,
  readLlama2cCheckpoint,
  type Tensor,
  viewBytes,
} from '@q/core';
import {
  type ActivationObserver,
  createQuantizedWriter,
  describeSources,
  type FloatTensorSource,
  type LayerPlan,
  type LayerReport,
  quantizeJobPool,
  quantizeStream,
  type Recipe,
  validateRecipe,
} from '@q/quant';
import { calibrate } from './calibrate';
import { threadCount } from './cpu/gemm';
import { LazyLinear } from './cpu/lazy-linear';
import { Model } from './model';
import { CARRIED_TOKENIZER, isQuantizedDir, needsCalibration, resolveRecipe } from './quantize';
import { findLlama2cTokenizer, loadHfTokenizer, loadLlama2cTokenizer, type TextTokenizer } from './tokenizer';

/** Progress of `quantizeFile`: calibration counts tokens, quantization counts linear layers. */
export interface QuantizeFileProgress {
  readonly stage: 'calibrate' | 'quantize';
  readonly done: number;
  readonly total: number;
}

/** Options of `quantizeFile`. */
export interface QuantizeFileOptions {
  /** A recipe name (`fptq`, `w4a8-rtn`, …) or a whole `Recipe`. */
  readonly recipe: string | Recipe;
  /** int4 group size along K (overrides the recipe's). */
  readonly groupSize?: number;
  /** Calibration text (recipes with static scales or LAE need it, unless `stats` is given). */
  readonly calibText?: string;
  /** Calibrate on at most this many tokens (default 16384). */
  readonly calibTokens?: number;
  /** Calibration sequence length, BOS included (default min(256, context)). */
  readonly calibSeqLen?: number;
  /** Statistics to use instead of calibrating. */
  readonly stats?: ActivationObserver;
  /** llama2.c tokenizer file (default: beside the checkpoint). */
  readonly tokenizer?: string;
  /** Replace a non-empty `out` (atomically). */
  readonly force?: boolean;
  /** Worker threads that quantize (default: `threadCount()`; 1 quantizes on this thread). */
  readonly workers?: number;
  readonly signal?: AbortSignal;
  readonly onProgress?: (p: QuantizeFileProgress) => void;
}

/** What `quantizeFile` wrote. */
export interface QuantizeFileResult {
  /** The output directory, resolved. */
  readonly out: string;
  readonly recipe: Recipe;
  readonly plans: readonly LayerPlan[];
  readonly report: readonly LayerReport[];
  /** Calibration tokens used (0 when the recipe does not calibrate or `stats` was given). */
  readonly calibTokens: number;
}

/** A float checkpoint opened for streaming: config, tokenizer, tensors read one at a time. */
interface OpenedSource {
  readonly config: ModelConfig;
  readonly tokenizer: TextTokenizer;
  readonly tensors: FloatTensorSource;
  /** Files to hash into the manifest's `source`. */
  readonly hashFiles: readonly string[];
  close(): void;
}

function openSource(input: string, tokenizerFile: string | undefined): OpenedSource {
  let st: fs.Stats;
  try {
    st = fs.statSync(input);
  } catch {
    throw new QError(
      'E_IO',
      `Expected a model file or directory for the model path but received ${JSON.stringify(input)}, which does not exist`,
    );
  }
  if (st.isDirectory()) {
    if (isQuantizedDir(input))
      throw new QError(
        'E_ARG',
        `Expected a float model (llama2.c or Hugging Face) to quantize but received the quantized model ${path.resolve(input)}`,
      );
    if (!fs.existsSync(path.join(input, 'config.json')))
      throw new QError(
        'E_FORMAT',
        `Expected a config.json in the model directory ${input} but received none`,
      );
    const config = readHfConfig(input);
    const tokenizer = loadHfTokenizer(input, { bosId: config.bosTokenId, eosIds: config.eosTokenIds });
    const reader = openSafetensorsModel(input);
    return { config, tokenizer, tensors: reader, hashFiles: [], close: () => reader.close() };
  }
  // llama2.c checkpoints are f32 files of small models: read whole, served tensor by tensor.
  const ckpt = readLlama2cCheckpoint(input);
  const tokenizer = loadLlama2cTokenizer(tokenizerFile ?? findLlama2cTokenizer(input), ckpt.config.vocabSize);
  const w = ckpt.weights as ReadonlyMap<string, Tensor<'f32'>>;
  const get = (n: string): Tensor<'f32'> => {
    const t = w.get(n);
    if (!t) throw new QError('E_FORMAT', `Expected a tensor named ${n} in ${input} but received none`);
    return t;
  };
  const tensors: FloatTensorSource = {
    has: (n) => w.has(n),
    info: (n) => ({ dtype: 'f32', shape: get(n).shape }),
    readBytes: (n) => {
      const d = get(n).contiguous().data;
      return new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
    },
  };
  return { config: ckpt.config, tokenizer, tensors, hashFiles: [input], close: () => {} };
}

function sharedF32(n: number): Float32Array {
  return typeof SharedArrayBuffer === 'undefined'
    ? new Float32Array(n)
    : new Float32Array(new SharedArrayBuffer(n * 4));
}

/**
 * A tensor's stored values widened to f32 on shared memory, so the matmul workers read them in place; into
 * `scratch` when given (a buffer reused by every lazy linear, so calibration allocates one layer's weights once
 * instead of once per layer run, and memory does not wait for the garbage collector).
 */
function readShared(src: FloatTensorSource, name: string, scratch?: { buf: Float32Array }): Float32Array {
  const { dtype } = src.info(name);
  const bytes = src.readBytes(name);
  const n = bytes.byteLength / (dtype === 'f32' ? 4 : 2);
  let out: Float32Array;
  if (scratch) {
    if (scratch.buf.length < n) scratch.buf = sharedF32(n);
    out = scratch.buf.subarray(0, n);
  } else out = sharedF32(n);
  if (dtype === 'f32') out.set(viewBytes('f32', bytes));
  else if (dtype === 'f16') f16ArrayToF32(viewBytes('f16', bytes), out);
  else if (dtype === 'bf16') bf16ArrayToF32(viewBytes('bf16', bytes), out);
  else throw new QError('E_DTYPE', `Expected f32, f16 or bf16 for ${name} but received ${dtype}`);
  return out;
}

/**
 * A CPU model over a float checkpoint whose linear layers read their weights from the file when they run and
 * drop them afterwards (`LazyLinear`); embeddings and norms are held. For calibrating a model larger than
 * memory: the forward pass is the runtime's `Model`.
 */
function lazyModel(config: ModelConfig, src: FloatTensorSource): Model {
  const shapeOf = (name: string, shape: readonly number[]): void => {
    if (!src.has(name)) throw new QError('E_FORMAT', `Expected a tensor named ${name} but received none`);
    const got = src.info(name).shape;
    if (got.length !== shape.length || got.some((v, i) => v !== shape[i]))
      throw new QError(
        'E_SHAPE',
        `Expected shape [${shape.join(', ')}] for ${name} but received [${got.join(', ')}]`,
      );
  };
  const scratch = { buf: sharedF32(0) };
  return Model.fromGetters(
    config,
    (name, shape) => {
      shapeOf(name, shape);
      return readShared(src, name);
    },
    (name, n, k, withBias) => {
      const wName = `${name}.weight`;
      if (!src.has(wName)) return undefined;
      shapeOf(wName, [n, k]);
      const bName = `${name}.bias`;
      const bias = withBias || src.has(bName) ? readShared(src, bName) : null;
      return new LazyLinear(name, n, k, () => readShared(src, wName, scratch), bias);
    },
  );
}

function recipeOf(options: QuantizeFileOptions): Recipe {
  if (typeof options.recipe === 'string')
    return resolveRecipe({
      recipe: options.recipe,
      ...(options.groupSize !== undefined ? { groupSize: options.groupSize } : {}),
    });
  const r = validateRecipe(options.recipe);
  if (options.groupSize === undefined) return r;
  return validateRecipe({ ...r, weights: { ...r.weights, groupSize: options.groupSize } });
}

/**
 * Quantizes a float checkpoint on disk (a Hugging Face directory, single-file or sharded safetensors, or a
 * llama2.c file) into a quantized directory that carries its tokenizer, without holding the model: calibration
 * (when the recipe needs it) runs the CPU model with linears read from the file layer by layer, and the weights
 * are read, quantized on worker threads and written one transformer layer at a time. The directory appears under
 * `out` only when complete (a temporary sibling is renamed); on an error or an abort nothing is left behind.
 * The result equals `quantizeLoaded` + `saveQuantizedModel` on the same model, bit for bit.
 *
 * @example
 * ```ts
 * const ac = new AbortController();
 * const r = await quantizeFile('models/Llama-2-7b-hf', 'llama-7b-w4a8', {
 *   recipe: 'w4a8-rtn',
 *   signal: ac.signal,
 *   onProgress: (p) => console.log(p.stage, p.done, p.total),
 * });
 * loadModel(r.out);
 * ```
 */
export async function quantizeFile(
  input: string,
  out: string,
  options: QuantizeFileOptions,
): Promise<QuantizeFileResult> {
  const recipe = recipeOf(options);
  const signal = options.signal;
  signal?.throwIfAborted();
  const finalDir = path.resolve(out);
  let replace = false;
  if (fs.existsSync(finalDir)) {
    const st = fs.statSync(finalDir);
    const nonEmpty = !st.isDirectory() || fs.readdirSync(finalDir).length > 0;
    if (nonEmpty && !options.force)
      throw new QError(
        'E_EXISTS',
        `Expected an empty or new directory for --out but received ${finalDir}, which is not empty (pass --force to replace it)`,
      );
    replace = true;
  }
  const calibrates = options.stats === undefined && needsCalibration(recipe);
  if (calibrates && options.calibText === undefined)
    throw new QError(
      'E_ARG',
      `Expected calibration text (--calib <file>) for recipe ${recipe.name} (it calibrates activation ranges) but received none`,
    );
  const src = openSource(input, options.tokenizer);
  try {
    let stats = options.stats;
    let calibTokens = 0;
    if (calibrates) {
      const ids = src.tokenizer.encode(options.calibText ?? '');
      calibTokens = Math.min(ids.length, options.calibTokens ?? 16384);
      stats = await calibrate(lazyModel(src.config, src.tensors), ids, {
        maxTokens: calibTokens,
        seqLen: options.calibSeqLen ?? Math.min(256, src.config.maxSeqLen),
        onProgress: (done, total) => {
          signal?.throwIfAborted();
          options.onProgress?.({ stage: 'calibrate', done, total });
        },
      });
      signal?.throwIfAborted();
    }
    fs.mkdirSync(path.dirname(finalDir), { recursive: true });
    const writer = createQuantizedWriter(finalDir, {
      config: src.config,
      recipe,
      source: describeSources(src.hashFiles),
      ...(replace ? { overwrite: true } : {}),
    });
    const workers = options.workers ?? threadCount();
    const pool = workers > 1 ? await quantizeJobPool(workers) : undefined;
    let committed = false;
    try {
      const { plans, report } = await quantizeStream(src.tensors, src.config, recipe, writer, {
        ...(stats ? { stats } : {}),
        ...(pool ? { run: pool.run, concurrency: 2 * pool.size } : {}),
        ...(signal ? { signal } : {}),
        onProgress: (p) => options.onProgress?.({ stage: 'quantize', done: p.done, total: p.total }),
      });
      const tok = src.tokenizer;
      if (tok.kind === 'llama2c') {
        const file = tok.files[0];
        if (!file)
          throw new QError(
            'E_TOKENIZER',
            `Expected a tokenizer file to carry for ${input} but received none`,
          );
        writer.writeExtra(CARRIED_TOKENIZER.llama2c, fs.readFileSync(file));
      } else {
        for (const f of tok.files) writer.writeExtra(path.basename(f), fs.readFileSync(f));
      }
      signal?.throwIfAborted();
      writer.commit(report);
      committed = true;
      return { out: finalDir, recipe, plans, report, calibTokens };
    } finally {
      if (!committed) writer.abort();
      await pool?.terminate();
    }
  } finally {
    src.close();
  }
}
