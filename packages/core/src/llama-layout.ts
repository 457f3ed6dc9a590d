import type { ModelConfig } from './config';

/**
 * The one description of the Llama-family tensor layout (Hugging Face names, [out, in] matrices) that loaders,
 * quantization, the runtime and test fixtures read: every tensor with its shape and role, the seven projections
 * of a decoder layer in forward order, and which of them share an input.
 */

/** The seven projections of a decoder layer, in forward order. */
export const LLAMA_PROJECTIONS = [
  'q_proj',
  'k_proj',
  'v_proj',
  'o_proj',
  'gate_proj',
  'up_proj',
  'down_proj',
] as const;

export type LlamaProjection = (typeof LLAMA_PROJECTIONS)[number];

/** What a tensor is for. */
export type LlamaTensorRole = 'embedding' | 'norm' | 'linear' | 'bias';

/** One tensor of the layout. */
export interface LlamaTensor {
  /** Full tensor name, e.g. `model.layers.0.self_attn.q_proj.weight`. */
  readonly name: string;
  readonly shape: readonly number[];
  readonly role: LlamaTensorRole;
  /** Decoder layer, or undefined for the embeddings, the final norm and `lm_head`. */
  readonly layer?: number;
  /** For `linear` and `bias`: the linear's name without `.weight`/`.bias`, e.g. `model.layers.0.mlp.up_proj`. */
  readonly linear?: string;
  /** For `linear` and `bias`: the projection (`lm_head` for the classifier). */
  readonly projection?: LlamaProjection | 'lm_head';
}

/** One linear layer of the layout: y [rows, n] = x [rows, k] · Wᵀ (+ b). */
export interface LlamaLinear {
  /** Name without `.weight`, e.g. `model.layers.0.self_attn.q_proj`. */
  readonly name: string;
  readonly layer: number;
  readonly projection: LlamaProjection;
  /** Output features (rows of the weight). */
  readonly n: number;
  /** Input features (columns of the weight). */
  readonly k: number;
  /** Whether a `.bias` tensor goes with it (q/k/v when `attentionBias`). */
  readonly bias: boolean;
}

/** Linear layers that read the same input, and the norm in front of them (if any). */
export interface LinearGroup {
  /** Full names without `.weight`, e.g. `model.layers.0.self_attn.q_proj`. */
  readonly members: readonly string[];
  /** The norm whose output they read (tensor name without `.weight`), or undefined (o_proj, down_proj). */
  readonly norm?: string;
}

/**
 * Name (without `.weight`) of one projection of decoder layer `layer`.
 *
 * @example
 * ```ts
 * llamaLinearName(3, 'up_proj'); // 'model.layers.3.mlp.up_proj'
 * ```
 */
export function llamaLinearName(layer: number, projection: LlamaProjection): string {
  const block =
    projection === 'gate_proj' || projection === 'up_proj' || projection === 'down_proj'
      ? 'mlp'
      : 'self_attn';
  return `model.layers.${layer}.${block}.${projection}`;
}

/**
 * Names (without `.weight`) of the input and post-attention norms of decoder layer `layer`.
 *
 * @example
 * ```ts
 * llamaNormNames(0).input; // 'model.layers.0.input_layernorm'
 * ```
 */
export function llamaNormNames(layer: number): { readonly input: string; readonly post: string } {
  return {
    input: `model.layers.${layer}.input_layernorm`,
    post: `model.layers.${layer}.post_attention_layernorm`,
  };
}

/**
 * Names (without `.weight`) of the seven projections of decoder layer `i`, in forward order.
 *
 * @example
 * ```ts
 * layerLinearNames(0)[6]; // 'model.layers.0.mlp.down_proj'
 * ```
 */
export function layerLinearNames(i: number): string[] {
  return LLAMA_PROJECTIONS.map((p) => llamaLinearName(i, p));
}

/**
 * The seven projections of decoder layer `i` with their shapes, in forward order.
 *
 * @example
 * ```ts
 * layerLinears(config, 0)[0]; // { name: 'model.layers.0.self_attn.q_proj', n: heads·headDim, k: hidden, … }
 * ```
 */
export function layerLinears(config: ModelConfig, i: number): LlamaLinear[] {
  const d = config.hiddenSize;
  const qd = config.numHeads * config.headDim;
  const kvd = config.numKvHeads * config.headDim;
  const ff = config.intermediateSize;
  const shape: Record<LlamaProjection, [number, number]> = {
    q_proj: [qd, d],
    k_proj: [kvd, d],
    v_proj: [kvd, d],
    o_proj: [d, qd],
    gate_proj: [ff, d],
    up_proj: [ff, d],
    down_proj: [d, ff],
  };
  return LLAMA_PROJECTIONS.map((projection) => {
    const [n, k] = shape[projection];
    const bias =
      config.attentionBias && (projection === 'q_proj' || projection === 'k_proj' || projection === 'v_proj');
    return { name: llamaLinearName(i, projection), layer: i, projection, n, k, bias };
  });
}

/**
 * The linear layers of decoder layer `i` grouped by shared input, in forward order: q/k/v read the input norm's
 * output, o alone, gate/up read the post-attention norm's output, down alone.
 *
 * @example
 * ```ts
 * layerLinearGroups(0)[2]; // { members: ['model.layers.0.mlp.gate_proj', '…up_proj'], norm: 'model.layers.0.post_attention_layernorm' }
 * ```
 */
export function layerLinearGroups(i: number): LinearGroup[] {
  const [q, k, v, o, gate, up, down] = layerLinearNames(i) as [
    string,
    string,
    string,
    string,
    string,
    string,
    string,
  ];
  const norms = llamaNormNames(i);
  return [
    { members: [q, k, v], norm: norms.input },
    { members: [o] },
    { members: [gate, up], norm: norms.post },
    { members: [down] },
  ];
}

/**
 * The linear layers of a whole model grouped by shared input, in forward order (`lm_head` not included).
 *
 * @example
 * ```ts
 * linearGroups(config).length; // 4 · numLayers
 * ```
 */
export function linearGroups(config: ModelConfig): LinearGroup[] {
  const out: LinearGroup[] = [];
  for (let i = 0; i < config.numLayers; i++) out.push(...layerLinearGroups(i));
  return out;
}

/** Options of `llamaTensors`. */
export interface LlamaTensorsOptions {
  /** List `lm_head.weight` even when the config ties it to the embeddings (a file may still carry it). */
  readonly includeTiedHead?: boolean;
}

/**
 * Every tensor a config needs, with shape and role, in a stable order: the embeddings, then per layer the input
 * norm, q/k/v (each bias right after its weight), o, the post-attention norm, gate, up, down; then the final norm
 * and `lm_head` (left out when tied, unless `includeTiedHead`).
 *
 * @example
 * ```ts
 * llamaTensors(config).find((t) => t.name === 'model.norm.weight')?.shape; // [hiddenSize]
 * ```
 */
export function llamaTensors(config: ModelConfig, opts: LlamaTensorsOptions = {}): LlamaTensor[] {
  const d = config.hiddenSize;
  const out: LlamaTensor[] = [
    { name: 'model.embed_tokens.weight', shape: [config.vocabSize, d], role: 'embedding' },
  ];
  for (let i = 0; i < config.numLayers; i++) {
    const norms = llamaNormNames(i);
    for (const l of layerLinears(config, i)) {
      if (l.projection === 'q_proj')
        out.push({ name: `${norms.input}.weight`, shape: [d], role: 'norm', layer: i });
      if (l.projection === 'gate_proj')
        out.push({ name: `${norms.post}.weight`, shape: [d], role: 'norm', layer: i });
      const base = { layer: i, linear: l.name, projection: l.projection };
      out.push({ name: `${l.name}.weight`, shape: [l.n, l.k], role: 'linear', ...base });
      if (l.bias) out.push({ name: `${l.name}.bias`, shape: [l.n], role: 'bias', ...base });
    }
  }
  out.push({ name: 'model.norm.weight', shape: [d], role: 'norm' });
  if (!config.tieWordEmbeddings || opts.includeTiedHead === true) {
    out.push({
      name: 'lm_head.weight',
      shape: [config.vocabSize, d],
      role: 'linear',
      linear: 'lm_head',
      projection: 'lm_head',
    });
  }
  return out;
}

/**
 * Names of `llamaTensors(config, opts)`.
 *
 * @example
 * ```ts
 * llamaTensorNames(config)[0]; // 'model.embed_tokens.weight'
 * ```
 */
export function llamaTensorNames(config: ModelConfig, opts: LlamaTensorsOptions = {}): string[] {
  return llamaTensors(config, opts).map((t) => t.name);
}
