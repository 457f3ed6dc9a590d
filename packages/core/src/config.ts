/**
 * One normalised description of a Llama-family model, whatever file it came from (llama2.c header or a
 * Hugging Face `config.json` for llama, mistral or qwen2). Everything downstream (quantization, runtime,
 * kernels) reads only this.
 *
 * Weight names follow the Hugging Face Llama convention for every source:
 * `model.embed_tokens.weight`, `model.layers.{i}.input_layernorm.weight`,
 * `model.layers.{i}.self_attn.{q,k,v,o}_proj.weight` (and `.bias` for q/k/v when `attentionBias`),
 * `model.layers.{i}.post_attention_layernorm.weight`, `model.layers.{i}.mlp.{gate,up,down}_proj.weight`,
 * `model.norm.weight`, and `lm_head.weight` unless `tieWordEmbeddings`. Matrices are [out, in].
 */
export type Architecture = 'llama' | 'mistral' | 'qwen2';

export const SUPPORTED_ARCHITECTURES: readonly Architecture[] = ['llama', 'mistral', 'qwen2'];

export type RopeScaling =
  | { readonly type: 'none' }
  | { readonly type: 'linear'; readonly factor: number }
  | {
      readonly type: 'llama3';
      readonly factor: number;
      readonly lowFreqFactor: number;
      readonly highFreqFactor: number;
      readonly originalMaxPositionEmbeddings: number;
    };

export interface ModelConfig {
  readonly architecture: Architecture;
  readonly hiddenSize: number;
  readonly intermediateSize: number;
  readonly numLayers: number;
  readonly numHeads: number;
  /** Key/value heads (grouped-query attention when smaller than numHeads). */
  readonly numKvHeads: number;
  readonly headDim: number;
  readonly vocabSize: number;
  /** Longest context the model was built for. */
  readonly maxSeqLen: number;
  readonly rmsNormEps: number;
  readonly ropeTheta: number;
  readonly ropeScaling: RopeScaling;
  /**
   * How RoPE pairs dimensions: `interleaved` rotates (x[2i], x[2i+1]) as llama2.c does; `half` rotates
   * (x[i], x[i + headDim/2]) as Hugging Face's rotate_half does.
   */
  readonly ropeStyle: 'interleaved' | 'half';
  readonly tieWordEmbeddings: boolean;
  /** q/k/v projections carry a bias (Qwen2). */
  readonly attentionBias: boolean;
  readonly bosTokenId: number;
  readonly eosTokenIds: readonly number[];
}
