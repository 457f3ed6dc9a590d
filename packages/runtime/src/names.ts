import type { ModelConfig } from '@q/core';

/** Every tensor name a config needs, Hugging Face convention, in a stable order.
 *
 * @example
 * ```ts
 * tensorNames(config).includes('model.norm.weight'); // true
 * ```
 */
export function tensorNames(c: ModelConfig): string[] {
  const out = ['model.embed_tokens.weight'];
  for (let i = 0; i < c.numLayers; i++) {
    const p = `model.layers.${i}`;
    out.push(`${p}.input_layernorm.weight`);
    for (const n of ['q_proj', 'k_proj', 'v_proj']) {
      out.push(`${p}.self_attn.${n}.weight`);
      if (c.attentionBias) out.push(`${p}.self_attn.${n}.bias`);
    }
    out.push(`${p}.self_attn.o_proj.weight`, `${p}.post_attention_layernorm.weight`);
    for (const n of ['gate_proj', 'up_proj', 'down_proj']) out.push(`${p}.mlp.${n}.weight`);
  }
  out.push('model.norm.weight', 'lm_head.weight');
  return out;
}
