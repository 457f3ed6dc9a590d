import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  type ModelConfig,
  openSafetensorsModel,
  QError,
  readHfConfig,
  readLlama2cCheckpoint,
  Tensor,
} from '@q/core';
import { Model } from './model';
import { tensorNames } from './names';
import { isQuantizedDir, loadQuantizedModel } from './quantize';
import { findLlama2cTokenizer, loadHfTokenizer, loadLlama2cTokenizer, type TextTokenizer } from './tokenizer';

/** Where a loaded model came from. */
export type ModelSource = 'llama2c' | 'huggingface' | 'quantized';

/** A model ready to run, with its tokenizer. */
export interface LoadedModel {
  readonly source: ModelSource;
  /** The path given to `loadModel`, resolved. */
  readonly path: string;
  readonly config: ModelConfig;
  readonly model: Model;
  readonly tokenizer: TextTokenizer;
  /** Float weights under Hugging Face names (float models only): what `quantizeModel` takes. */
  readonly weights?: ReadonlyMap<string, Tensor>;
  /** Quantized models: the recipe they were made with. */
  readonly recipe?: string;
}

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
export function loadLlama2c(file: string, options: LoadOptions = {}): LoadedModel {
  const tokFile = options.tokenizer ?? findLlama2cTokenizer(file);
  const ckpt = readLlama2cCheckpoint(file);
  const tokenizer = loadLlama2cTokenizer(tokFile, ckpt.config.vocabSize);
  return {
    source: 'llama2c',
    path: path.resolve(file),
    config: ckpt.config,
    model: Model.fromFloatWeights(ckpt.config, ckpt.weights),
    tokenizer,
    weights: ckpt.weights,
  };
}

/**
 * Loads any model q reads: a llama2.c checkpoint file, a Hugging Face directory (`config.json`, safetensors,
 * `tokenizer.json`), or a directory written by `q quantize`.
 *
 * @example
 * ```ts
 * const { model, tokenizer } = loadModel('models/stories260K/stories260K.bin');
 * const ids = generate(model, tokenizer.encodePrompt('Once'), { maxTokens: 20 });
 * console.log(tokenizer.decode(ids));
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
 * float dtype (converted to f32).
 *
 * @example
 * ```ts
 * const m = loadHuggingFace('models/Qwen2.5-0.5B-Instruct');
 * m.tokenizer.applyChatTemplate?.([{ role: 'user', content: 'Hello' }]);
 * ```
 */
export function loadHuggingFace(dir: string): LoadedModel {
  const cfgFile = path.join(dir, 'config.json');
  if (!fs.existsSync(cfgFile)) {
    throw new QError('E_FORMAT', `Expected a config.json in the model directory ${dir} but received none`);
  }
  const config = readHfConfig(dir);
  const tokenizer = loadHfTokenizer(dir, { bosId: config.bosTokenId, eosIds: config.eosTokenIds });
  const st = openSafetensorsModel(dir);
  const weights = new Map<string, Tensor<'f32'>>();
  try {
    for (const name of tensorNames(config)) {
      if (!st.has(name)) {
        if (name === 'lm_head.weight' && config.tieWordEmbeddings) continue;
        throw new QError(
          'E_FORMAT',
          `Expected a tensor named ${name} in the safetensors of ${dir} but received none`,
        );
      }
      const t = st.read(name);
      weights.set(name, t.dtype === 'f32' ? (t as Tensor<'f32'>) : new Tensor('f32', t.shape, t.toFloat32()));
    }
  } finally {
    st.close();
  }
  return {
    source: 'huggingface',
    path: path.resolve(dir),
    config,
    model: Model.fromFloatWeights(config, weights),
    tokenizer,
    weights,
  };
}
