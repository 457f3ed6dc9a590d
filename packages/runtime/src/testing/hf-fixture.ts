// Test-only: writes small Hugging Face model directories in the real file formats.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { type ModelConfig, type Tensor, writeSafetensors, writeShardedSafetensors } from '@q/core';

const special = (id: number, content: string) => ({
  id,
  content,
  single_word: false,
  lstrip: false,
  rstrip: false,
  normalized: false,
  special: true,
});

/** A BPE tokenizer.json over lowercase letters with a few merges ("th", "the", "ca", "cat"). */
export function bpeTokenizerJson(): Record<string, unknown> {
  const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  const letters = 'abcdefghijklmnopqrstuvwxyz';
  for (let i = 0; i < letters.length; i++) vocab[letters[i] as string] = 3 + i;
  vocab.th = 29;
  vocab.the = 30;
  vocab.ca = 31;
  vocab.cat = 32;
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [special(0, '<unk>'), special(1, '<s>'), special(2, '</s>')],
    normalizer: null,
    pre_tokenizer: { type: 'Whitespace' },
    post_processor: null,
    decoder: null,
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: '<unk>',
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      vocab,
      merges: ['t h', 'th e', 'c a', 'ca t'],
    },
  };
}

/** A WordLevel tokenizer.json over a small word list. */
export function wordLevelTokenizerJson(words: readonly string[]): Record<string, unknown> {
  const vocab: Record<string, number> = { '<unk>': 0, '<|endoftext|>': 1, '<|im_end|>': 2 };
  words.forEach((w, i) => {
    vocab[w] = 3 + i;
  });
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [special(0, '<unk>'), special(1, '<|endoftext|>'), special(2, '<|im_end|>')],
    normalizer: { type: 'Lowercase' },
    pre_tokenizer: { type: 'Whitespace' },
    post_processor: null,
    decoder: null,
    model: { type: 'WordLevel', vocab, unk_token: '<unk>' },
  };
}

/** config.json text for a ModelConfig, the way transformers writes it. */
export function hfConfigJson(c: ModelConfig): Record<string, unknown> {
  const rs = c.ropeScaling;
  return {
    architectures: [
      c.architecture === 'qwen2'
        ? 'Qwen2ForCausalLM'
        : c.architecture === 'mistral'
          ? 'MistralForCausalLM'
          : 'LlamaForCausalLM',
    ],
    model_type: c.architecture,
    hidden_size: c.hiddenSize,
    intermediate_size: c.intermediateSize,
    num_hidden_layers: c.numLayers,
    num_attention_heads: c.numHeads,
    num_key_value_heads: c.numKvHeads,
    head_dim: c.headDim,
    vocab_size: c.vocabSize,
    max_position_embeddings: c.maxSeqLen,
    rms_norm_eps: c.rmsNormEps,
    rope_theta: c.ropeTheta,
    rope_scaling:
      rs.type === 'none'
        ? null
        : rs.type === 'linear'
          ? { type: 'linear', factor: rs.factor }
          : {
              rope_type: 'llama3',
              factor: rs.factor,
              low_freq_factor: rs.lowFreqFactor,
              high_freq_factor: rs.highFreqFactor,
              original_max_position_embeddings: rs.originalMaxPositionEmbeddings,
            },
    tie_word_embeddings: c.tieWordEmbeddings,
    attention_bias: c.architecture === 'llama' ? c.attentionBias : undefined,
    bos_token_id: c.bosTokenId,
    eos_token_id: c.eosTokenIds.length === 1 ? c.eosTokenIds[0] : c.eosTokenIds,
    torch_dtype: 'float32',
    hidden_act: 'silu',
  };
}

export interface HfFixture {
  readonly config: ModelConfig;
  readonly weights: ReadonlyMap<string, Tensor>;
  readonly tokenizer: Record<string, unknown>;
  readonly tokenizerConfig?: Record<string, unknown>;
  /** Shard size in bytes, or undefined for a single model.safetensors. */
  readonly maxShardBytes?: number;
}

export function writeHfModel(dir: string, f: HfFixture): void {
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(hfConfigJson(f.config), null, 2));
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(f.tokenizer));
  if (f.tokenizerConfig)
    fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify(f.tokenizerConfig));
  if (f.maxShardBytes === undefined) writeSafetensors(path.join(dir, 'model.safetensors'), f.weights);
  else writeShardedSafetensors(dir, f.weights, { maxShardBytes: f.maxShardBytes });
}
