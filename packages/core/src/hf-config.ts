import * as fs from 'node:fs';
import * as path from 'node:path';
import { ioError } from './atomic';
import { type Architecture, type ModelConfig, type RopeScaling, SUPPORTED_ARCHITECTURES } from './config';
import { describeValue, QError } from './errors';

/**
 * Hugging Face `config.json` for Llama-family models, normalised into `ModelConfig`. Defaults follow the
 * transformers config classes of each model type where a field is absent.
 */

const MAX_CONFIG_BYTES = 16 * 1024 * 1024;

interface Defaults {
  maxPositionEmbeddings: number;
  rmsNormEps: number;
  ropeTheta: number;
}

const DEFAULTS: Readonly<Record<Architecture, Defaults>> = {
  llama: { maxPositionEmbeddings: 2048, rmsNormEps: 1e-6, ropeTheta: 10000 },
  mistral: { maxPositionEmbeddings: 4096 * 32, rmsNormEps: 1e-6, ropeTheta: 10000 },
  qwen2: { maxPositionEmbeddings: 32768, rmsNormEps: 1e-6, ropeTheta: 10000 },
};

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Normalises a parsed `config.json` object (or its JSON text). `source` names the file in errors.
 *
 * @example
 * ```ts
 * const cfg = parseHfConfig({ model_type: 'llama', hidden_size: 2048, ... }, 'config.json');
 * cfg.numKvHeads // from num_key_value_heads
 * ```
 */
export function parseHfConfig(json: unknown, source = 'config.json'): ModelConfig {
  let obj = json;
  if (typeof json === 'string') {
    try {
      obj = JSON.parse(json);
    } catch (e) {
      throw new QError(
        'E_FORMAT',
        `Expected valid JSON in ${source} but it failed to parse (${(e as Error).message})`,
      );
    }
  }
  if (!isObject(obj)) {
    throw new QError('E_FORMAT', `Expected a JSON object for ${source} but received ${describeValue(obj)}`);
  }
  const c = obj;
  const bad = (field: string, what: string): never => {
    throw new QError(
      'E_FORMAT',
      `Expected ${what} for ${field} in ${source} but received ${describeValue(c[field])}`,
      {
        details: { file: source, field },
      },
    );
  };
  const modelType = c.model_type;
  if (typeof modelType !== 'string') bad('model_type', 'a string');
  if (!(SUPPORTED_ARCHITECTURES as readonly string[]).includes(modelType as string)) {
    throw new QError(
      'E_UNSUPPORTED',
      `Expected model_type ${SUPPORTED_ARCHITECTURES.join(', ')} in ${source} but received ${describeValue(modelType)}`,
      { details: { file: source, supported: SUPPORTED_ARCHITECTURES } },
    );
  }
  const arch = modelType as Architecture;
  const defaults = DEFAULTS[arch];
  const posInt = (field: string, fallback?: number): number => {
    const v = c[field] ?? fallback;
    if (!Number.isSafeInteger(v) || (v as number) <= 0) bad(field, 'a positive integer');
    return v as number;
  };
  const posNum = (field: string, fallback: number, obj: Record<string, unknown> = c): number => {
    const v = obj[field] ?? fallback;
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) bad(field, 'a positive finite number');
    return v as number;
  };
  const tokenId = (field: string, v: unknown): number => {
    if (!Number.isSafeInteger(v) || (v as number) < 0) bad(field, 'a non-negative integer');
    return v as number;
  };

  const hiddenSize = posInt('hidden_size');
  const intermediateSize = posInt('intermediate_size');
  const numLayers = posInt('num_hidden_layers');
  const numHeads = posInt('num_attention_heads');
  const numKvHeads = posInt('num_key_value_heads', numHeads);
  if (numHeads % numKvHeads !== 0) {
    bad('num_key_value_heads', `a divisor of num_attention_heads (${numHeads})`);
  }
  if (c.head_dim == null && hiddenSize % numHeads !== 0) {
    bad('hidden_size', `a multiple of num_attention_heads (${numHeads}) when head_dim is absent`);
  }
  const headDim = posInt('head_dim', hiddenSize / numHeads);
  const vocabSize = posInt('vocab_size');
  const maxSeqLen = posInt('max_position_embeddings', defaults.maxPositionEmbeddings);
  const rmsNormEps = posNum('rms_norm_eps', defaults.rmsNormEps);

  // Newer transformers releases move rope_theta and the scaling into rope_parameters.
  const ropeParams = isObject(c.rope_parameters) ? c.rope_parameters : undefined;
  const ropeTheta =
    ropeParams?.rope_theta !== undefined
      ? posNum('rope_theta', 0, ropeParams)
      : posNum('rope_theta', defaults.ropeTheta);
  const ropeScaling = parseRopeScaling(c.rope_scaling ?? ropeParams, source);

  const tie = c.tie_word_embeddings ?? false;
  if (typeof tie !== 'boolean') bad('tie_word_embeddings', 'a boolean');
  let attentionBias: boolean;
  if (arch === 'qwen2') {
    // Qwen2 always has q/k/v biases (its config has no switch for them).
    attentionBias = true;
  } else {
    const b = c.attention_bias ?? false;
    if (typeof b !== 'boolean') bad('attention_bias', 'a boolean');
    attentionBias = b as boolean;
  }

  // ModelConfig has no room for these, so a model that uses them would run wrongly: refuse it instead.
  if (c.mlp_bias !== undefined && c.mlp_bias !== null && c.mlp_bias !== false) {
    throw new QError(
      'E_UNSUPPORTED',
      `Expected mlp_bias false in ${source} but received ${describeValue(c.mlp_bias)}`,
    );
  }
  const act = c.hidden_act ?? 'silu';
  if (act !== 'silu' && act !== 'swish') {
    throw new QError(
      'E_UNSUPPORTED',
      `Expected hidden_act "silu" in ${source} but received ${describeValue(act)}`,
    );
  }

  const eosRaw = c.eos_token_id ?? (arch === 'qwen2' ? undefined : 2);
  const eosList = Array.isArray(eosRaw) ? eosRaw : [eosRaw];
  if (eosList.length === 0) bad('eos_token_id', 'a token id or a non-empty list of token ids');
  const eosTokenIds = eosList.map((v) => tokenId('eos_token_id', v));
  const bosRaw = c.bos_token_id ?? (arch === 'qwen2' ? eosTokenIds[0] : 1);
  const bosTokenId = tokenId('bos_token_id', bosRaw);

  return {
    architecture: arch,
    hiddenSize,
    intermediateSize,
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    vocabSize,
    maxSeqLen,
    rmsNormEps,
    ropeTheta,
    ropeScaling,
    ropeStyle: 'half',
    tieWordEmbeddings: tie as boolean,
    attentionBias,
    bosTokenId,
    eosTokenIds,
  };
}

function parseRopeScaling(raw: unknown, source: string): RopeScaling {
  if (raw === undefined || raw === null) return { type: 'none' };
  if (!isObject(raw)) {
    throw new QError(
      'E_FORMAT',
      `Expected an object or null for rope_scaling in ${source} but received ${describeValue(raw)}`,
    );
  }
  const type = raw.rope_type ?? raw.type;
  const num = (field: string): number => {
    const v = raw[field];
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
      throw new QError(
        'E_FORMAT',
        `Expected a positive number for rope_scaling.${field} in ${source} but received ${describeValue(v)}`,
      );
    }
    return v;
  };
  if (type === 'default' || type === undefined) return { type: 'none' };
  if (type === 'linear') return { type: 'linear', factor: num('factor') };
  if (type === 'llama3') {
    return {
      type: 'llama3',
      factor: num('factor'),
      lowFreqFactor: num('low_freq_factor'),
      highFreqFactor: num('high_freq_factor'),
      originalMaxPositionEmbeddings: num('original_max_position_embeddings'),
    };
  }
  throw new QError(
    'E_UNSUPPORTED',
    `Expected rope_scaling type linear or llama3 in ${source} but received ${describeValue(type)}`,
  );
}

/**
 * Reads `config.json` from a model directory (or the given file) and normalises it.
 *
 * @example
 * ```ts
 * const cfg = readHfConfig('models/Qwen2.5-0.5B');
 * cfg.attentionBias // true
 * ```
 */
export function readHfConfig(dirOrFile: string): ModelConfig {
  let file = dirOrFile;
  try {
    if (fs.statSync(dirOrFile).isDirectory()) file = path.join(dirOrFile, 'config.json');
    const size = fs.statSync(file).size;
    if (size > MAX_CONFIG_BYTES) {
      throw new QError(
        'E_FORMAT',
        `Expected a config file under ${MAX_CONFIG_BYTES} bytes for ${file} but received ${size} bytes`,
      );
    }
    return parseHfConfig(fs.readFileSync(file, 'utf8'), file);
  } catch (e) {
    throw ioError(e, `read Hugging Face config ${file}`);
  }
}
