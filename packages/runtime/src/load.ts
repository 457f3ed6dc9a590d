import * as fs from 'node:fs';
import * as path from 'node:path';
import { type ModelConfig, QError, readHfConfig, readLlama2cCheckpoint } from '@q/core';
import type { LayerPlan, QuantizedModel } from '@q/quant';
import { tensorNames } from './names';
import { isQuantizedDir, loadQuantizedModel } from './quantize';
import { findLlama2cTokenizer, loadHfTokenizer, loadLlama2cTokenizer, type TextTokenizer } from './tokenizer';
import { type ModelWeights, safetensorsWeights, weightsFromMap } from './weights';

/** Where a loaded model came from. */
export type ModelSource = 'llama2c' | 'huggingface' | 'quantized';

/** What every loader returns besides the weights. */
interface LoadedCommon {
  /** The path given to the loader, resolved. */
  readonly path: string;
  readonly config: ModelConfig;
  readonly tokenizer: TextTokenizer;
}

/** A float model (llama2.c or Hugging Face): weights read on demand in their stored dtype. */
export interface LoadedFloatModel extends LoadedCommon {
  readonly source: 'llama2c' | 'huggingface';
  readonly weights: ModelWeights;
  readonly recipe?: undefined;
  readonly plans?: undefined;
}

/** A directory written by `q quantize`: the quantized model, its recipe and per-layer plan. */
export interface LoadedQuantizedModel extends LoadedCommon {
  readonly source: 'quantized';
  readonly weights: QuantizedModel;
  /** The name of the recipe it was made with. */
  readonly recipe: string;
  readonly plans: readonly LayerPlan[];
}

/**
 * A loaded model: config, tokenizer and weights, not yet runnable (`createModel` builds it on a backend).
 * `source` tells the two kinds apart.
 */
export type LoadedModel = LoadedFloatModel | LoadedQuantizedModel;

/** Options of `loadModel`. */
export interface LoadOptions {
  /** llama2.c tokenizer file; default `tokenizer.bin` or a `tok*.bin` beside the checkpoint. */
  readonly tokenizer?: string;
}

/**
 * Loads a llama2.c checkpoint (legacy or version 1) with its tokenizer.
 *
 * @example
 * ```ts
 * const m = loadLlama2c('stories260K/stories260K.bin'); // finds tok512.bin beside it
 * ```
 */
export function loadLlama2c(file: string, options: LoadOptions = {}): LoadedFloatModel {
  const tokFile = options.tokenizer ?? findLlama2cTokenizer(file);
  const ckpt = readLlama2cCheckpoint(file);
  const tokenizer = loadLlama2cTokenizer(tokFile, ckpt.config.vocabSize);
  return {
    source: 'llama2c',
    path: path.resolve(file),
    config: ckpt.config,
    tokenizer,
    // The file is small next to what a GPU serves, and llama2.c stores f32: read eagerly.
    weights: weightsFromMap(ckpt.weights, file),
  };
}

/**
 * Loads any model q reads: a llama2.c checkpoint file, a Hugging Face directory (`config.json`, safetensors,
 * `tokenizer.json`), or a directory written by `q quantize`.
 *
 * @example
 * ```ts
 * const loaded = loadModel('models/stories260K/stories260K.bin');
 * const model = await createModel(loaded, { backend: 'cpu' });
 * const ids = await generateIds(model, loaded.tokenizer.encodePrompt('Once'), { maxTokens: 20 });
 * console.log(loaded.tokenizer.decode(ids));
 * ```
 */
export function loadModel(p: string, options: LoadOptions = {}): LoadedModel {
  let st: fs.Stats;
  try {
    st = fs.statSync(p);
  } catch {
    throw new QError(
      'E_IO',
      `Expected a model file or directory for the model path but received ${JSON.stringify(p)}, which does not exist`,
    );
  }
  if (st.isFile()) return loadLlama2c(p, options);
  if (isQuantizedDir(p)) return loadQuantizedModel(p);
  return loadHuggingFace(p);
}

/**
 * Loads a Hugging Face Llama-family directory: `config.json` (llama, mistral, qwen2), `tokenizer.json` (+
 * `tokenizer_config.json` with the chat template) and safetensors weights, single-file or sharded, in any
 * float dtype. Every tensor the config needs is checked to be present; the data is read on demand.
 *
 * @example
 * ```ts
 * const m = loadHuggingFace('models/Qwen2.5-0.5B-Instruct');
 * m.tokenizer.applyChatTemplate?.([{ role: 'user', content: 'Hello' }]);
 * ```
 */
export function loadHuggingFace(dir: string): LoadedFloatModel {
  const cfgFile = path.join(dir, 'config.json');
  if (!fs.existsSync(cfgFile)) {
    throw new QError('E_FORMAT', `Expected a config.json in the model directory ${dir} but received none`);
  }
  const config = readHfConfig(dir);
  const tokenizer = loadHfTokenizer(dir, { bosId: config.bosTokenId, eosIds: config.eosTokenIds });
  const weights = safetensorsWeights(dir);
  try {
    for (const name of tensorNames(config)) {
      if (weights.has(name) || (name === 'lm_head.weight' && config.tieWordEmbeddings)) continue;
      throw new QError(
        'E_FORMAT',
        `Expected a tensor named ${name} in the safetensors of ${dir} but received none`,
      );
    }
  } catch (e) {
    weights.close();
    throw e;
  }
  return { source: 'huggingface', path: path.resolve(dir), config, tokenizer, weights };
}
