import * as fs from 'node:fs';
import * as path from 'node:path';
import { isQError, parseHfConfig, readHfConfig } from '@q/core';
import { describe, expect, it } from 'vitest';
import { tmpDir } from '../test/helpers';

// Abbreviated copies of the published config.json files of these models (fields q reads).
const llama32 = {
  architectures: ['LlamaForCausalLM'],
  attention_bias: false,
  bos_token_id: 128000,
  eos_token_id: 128001,
  head_dim: 64,
  hidden_size: 2048,
  intermediate_size: 8192,
  max_position_embeddings: 131072,
  model_type: 'llama',
  num_attention_heads: 32,
  num_hidden_layers: 16,
  num_key_value_heads: 8,
  rms_norm_eps: 1e-5,
  rope_scaling: {
    factor: 32.0,
    high_freq_factor: 4.0,
    low_freq_factor: 1.0,
    original_max_position_embeddings: 8192,
    rope_type: 'llama3',
  },
  rope_theta: 500000.0,
  tie_word_embeddings: true,
  vocab_size: 128256,
};
const mistral = {
  model_type: 'mistral',
  hidden_size: 4096,
  intermediate_size: 14336,
  num_attention_heads: 32,
  num_hidden_layers: 32,
  num_key_value_heads: 8,
  max_position_embeddings: 32768,
  rms_norm_eps: 1e-5,
  rope_theta: 1000000.0,
  sliding_window: null,
  tie_word_embeddings: false,
  vocab_size: 32768,
  bos_token_id: 1,
  eos_token_id: 2,
};
const qwen2 = {
  model_type: 'qwen2',
  hidden_size: 896,
  intermediate_size: 4864,
  num_attention_heads: 14,
  num_hidden_layers: 24,
  num_key_value_heads: 2,
  max_position_embeddings: 32768,
  rms_norm_eps: 1e-6,
  rope_theta: 1000000.0,
  tie_word_embeddings: true,
  vocab_size: 151936,
  bos_token_id: 151643,
  eos_token_id: 151645,
};

function errorOf(fn: () => unknown): Error & { code?: string } {
  try {
    fn();
  } catch (e) {
    return e as Error;
  }
  throw new Error('expected a throw');
}

describe('Hugging Face config', () => {
  it('normalises Llama 3.2 (GQA, head_dim, llama3 rope scaling, tied embeddings)', () => {
    expect(parseHfConfig(llama32, 'llama/config.json')).toEqual({
      architecture: 'llama',
      hiddenSize: 2048,
      intermediateSize: 8192,
      numLayers: 16,
      numHeads: 32,
      numKvHeads: 8,
      headDim: 64,
      vocabSize: 128256,
      maxSeqLen: 131072,
      rmsNormEps: 1e-5,
      ropeTheta: 500000,
      ropeScaling: {
        type: 'llama3',
        factor: 32,
        lowFreqFactor: 1,
        highFreqFactor: 4,
        originalMaxPositionEmbeddings: 8192,
      },
      ropeStyle: 'half',
      tieWordEmbeddings: true,
      attentionBias: false,
      bosTokenId: 128000,
      eosTokenIds: [128001],
    });
  });

  it('normalises Mistral (head_dim from hidden/heads, untied)', () => {
    const c = parseHfConfig(mistral);
    expect(c.architecture).toBe('mistral');
    expect(c.headDim).toBe(128);
    expect(c.numKvHeads).toBe(8);
    expect(c.tieWordEmbeddings).toBe(false);
    expect(c.ropeScaling).toEqual({ type: 'none' });
    expect(c.ropeTheta).toBe(1e6);
  });

  it('normalises Qwen2 (attention bias always on)', () => {
    const c = parseHfConfig({ ...qwen2, attention_bias: false });
    expect(c.attentionBias).toBe(true);
    expect(c.headDim).toBe(64);
    expect(c.bosTokenId).toBe(151643);
    expect(c.eosTokenIds).toEqual([151645]);
  });

  it('accepts eos lists, linear scaling (old "type" key), JSON text and defaults', () => {
    const c = parseHfConfig(
      JSON.stringify({
        ...llama32,
        eos_token_id: [128001, 128008, 128009],
        rope_scaling: { type: 'linear', factor: 4 },
        num_key_value_heads: undefined,
        head_dim: undefined,
        rope_theta: undefined,
        max_position_embeddings: undefined,
      }),
    );
    expect(c.eosTokenIds).toEqual([128001, 128008, 128009]);
    expect(c.ropeScaling).toEqual({ type: 'linear', factor: 4 });
    expect(c.numKvHeads).toBe(32);
    expect(c.headDim).toBe(64);
    expect(c.ropeTheta).toBe(10000);
    expect(c.maxSeqLen).toBe(2048);
  });

  it('reads config.json from a directory', () => {
    const dir = tmpDir();
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(qwen2));
    expect(readHfConfig(dir).architecture).toBe('qwen2');
    expect(readHfConfig(path.join(dir, 'config.json')).numLayers).toBe(24);
    expect(
      isQError(
        errorOf(() => readHfConfig(path.join(dir, 'nothing'))),
        'E_IO',
      ),
    ).toBe(true);
  });

  it('rejects an unsupported model_type with E_UNSUPPORTED listing the supported ones', () => {
    const e = errorOf(() => parseHfConfig({ ...llama32, model_type: 'gpt2' }, 'x/config.json'));
    expect(isQError(e, 'E_UNSUPPORTED')).toBe(true);
    expect(e.message).toContain('llama, mistral, qwen2');
    expect(e.message).toContain('"gpt2"');
  });

  it('rejects garbled JSON with E_FORMAT', () => {
    const e = errorOf(() => parseHfConfig('{"model_type": "llama", ', 'bad/config.json'));
    expect(isQError(e, 'E_FORMAT')).toBe(true);
    expect(e.message).toContain('bad/config.json');
  });

  it('rejects missing and mistyped fields with E_FORMAT naming the field', () => {
    const cases: [Record<string, unknown>, string][] = [
      [{ ...llama32, hidden_size: undefined }, 'hidden_size'],
      [{ ...llama32, num_hidden_layers: '16' }, 'num_hidden_layers'],
      [{ ...llama32, num_key_value_heads: 5 }, 'num_key_value_heads'],
      [{ ...llama32, rms_norm_eps: -1 }, 'rms_norm_eps'],
      [{ ...llama32, eos_token_id: [] }, 'eos_token_id'],
      [{ ...llama32, tie_word_embeddings: 'yes' }, 'tie_word_embeddings'],
      [{ ...llama32, rope_scaling: { rope_type: 'llama3', factor: 8 } }, 'rope_scaling.low_freq_factor'],
      [{ ...llama32, model_type: undefined }, 'model_type'],
    ];
    for (const [cfg, field] of cases) {
      const e = errorOf(() => parseHfConfig(cfg, 'c.json'));
      expect(isQError(e, 'E_FORMAT'), field).toBe(true);
      expect(e.message).toContain(field);
    }
    expect(
      isQError(
        errorOf(() => parseHfConfig([1, 2])),
        'E_FORMAT',
      ),
    ).toBe(true);
  });

  it('rejects MLP biases and activations other than SiLU with E_UNSUPPORTED', () => {
    for (const cfg of [
      { ...llama32, mlp_bias: true },
      { ...mistral, hidden_act: 'gelu' },
    ]) {
      expect(
        isQError(
          errorOf(() => parseHfConfig(cfg)),
          'E_UNSUPPORTED',
        ),
      ).toBe(true);
    }
    expect(parseHfConfig({ ...llama32, mlp_bias: false, hidden_act: 'silu' }).hiddenSize).toBe(2048);
  });

  it('rejects rope scaling types it does not implement with E_UNSUPPORTED', () => {
    const e = errorOf(() => parseHfConfig({ ...llama32, rope_scaling: { rope_type: 'yarn', factor: 4 } }));
    expect(isQError(e, 'E_UNSUPPORTED')).toBe(true);
  });
});
