// A custom pipeline against the published API: write a small Hugging Face model, load it, calibrate it,
// quantize it with a recipe of our own (FPTQ with int4 groups of 32 under its own name), save the result,
// load it back and generate with it, streaming tokens.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Rng, Tensor, writeSafetensors } from '@q/core';
import { RECIPES, type Recipe } from '@q/quant';
import {
  calibrate,
  createModel,
  evaluatePerplexity,
  generate,
  loadModel,
  quantizeLoaded,
  saveQuantizedModel,
} from '@q/runtime';

const WORDS = ['the', 'cat', 'sat', 'on', 'a', 'mat', 'and', 'dog', 'ran', 'to', 'big', 'red', 'hat', 'sun'];

/** A tiny random Llama model in the files transformers writes: config.json, model.safetensors, tokenizer.json. */
function writeTinyLlama(dir: string, seed: number): void {
  const [hidden, inter, layers, heads, kvHeads, headDim] = [64, 128, 2, 4, 2, 16];
  const vocab = 3 + WORDS.length;
  const rng = new Rng(seed);
  const tensors = new Map<string, Tensor<'f32'>>();
  const add = (name: string, shape: number[], init: () => number): void => {
    tensors.set(
      name,
      Tensor.from('f32', shape, Array.from({ length: shape.reduce((a, b) => a * b, 1) }, init)),
    );
  };
  const dense = (name: string, out: number, inp: number): void =>
    add(name, [out, inp], () => rng.normal() / Math.sqrt(inp));
  const norm = (name: string): void => add(name, [hidden], () => 0.5 + rng.next());
  add('model.embed_tokens.weight', [vocab, hidden], () => rng.normal());
  for (let i = 0; i < layers; i++) {
    const p = `model.layers.${i}`;
    norm(`${p}.input_layernorm.weight`);
    norm(`${p}.post_attention_layernorm.weight`);
    dense(`${p}.self_attn.q_proj.weight`, heads * headDim, hidden);
    dense(`${p}.self_attn.k_proj.weight`, kvHeads * headDim, hidden);
    dense(`${p}.self_attn.v_proj.weight`, kvHeads * headDim, hidden);
    dense(`${p}.self_attn.o_proj.weight`, hidden, heads * headDim);
    dense(`${p}.mlp.gate_proj.weight`, inter, hidden);
    dense(`${p}.mlp.up_proj.weight`, inter, hidden);
    dense(`${p}.mlp.down_proj.weight`, hidden, inter);
  }
  norm('model.norm.weight');
  dense('lm_head.weight', vocab, hidden);
  fs.mkdirSync(dir, { recursive: true });
  writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
  const config = {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_size: hidden,
    intermediate_size: inter,
    num_hidden_layers: layers,
    num_attention_heads: heads,
    num_key_value_heads: kvHeads,
    vocab_size: vocab,
    max_position_embeddings: 128,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: false,
    bos_token_id: 1,
    eos_token_id: 2,
    hidden_act: 'silu',
  };
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
  const special = (id: number, content: string) => ({
    id,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  });
  const wordIds: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  WORDS.forEach((w, i) => {
    wordIds[w] = 3 + i;
  });
  const tokenizer = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [special(0, '<unk>'), special(1, '<s>'), special(2, '</s>')],
    normalizer: null,
    pre_tokenizer: { type: 'Whitespace' },
    post_processor: null,
    decoder: { type: 'WordPiece', prefix: '##', cleanup: true },
    model: { type: 'WordLevel', vocab: wordIds, unk_token: '<unk>' },
  };
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tokenizer));
}

export async function main(): Promise<string[]> {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'q-example-'));
  try {
    const dir = path.join(tmp, 'tiny-llama');
    writeTinyLlama(dir, 7);
    const rng = new Rng(8);
    const text = Array.from({ length: 600 }, () => WORDS[rng.int(WORDS.length)]).join(' ');

    // 1. Load and calibrate the float model.
    const loaded = loadModel(dir);
    const float = await createModel(loaded, { backend: 'cpu' });
    const ids = loaded.tokenizer.encode(text);
    const stats = await calibrate(float, ids.slice(0, 256), { seqLen: 65 });

    // 2. Quantize with a recipe of our own: any Recipe object, under its own name.
    const recipe: Recipe = {
      ...RECIPES.fptq,
      name: 'fptq-g32',
      description: 'FPTQ with int4 groups of 32',
      weights: { ...RECIPES.fptq.weights, groupSize: 32 },
    };
    const run = await quantizeLoaded(loaded, { recipe, stats });

    // 3. Save (atomically, with the tokenizer), load back and run.
    const out = path.join(tmp, 'tiny-llama-fptq-g32');
    saveQuantizedModel(out, run, { tokenizer: loaded.tokenizer });
    const reloaded = loadModel(out);
    const quantized = await createModel(reloaded, { backend: 'cpu' });
    const r = await evaluatePerplexity(quantized, ids.slice(256), { ctx: 65, compare: float });

    // 4. Generate, streaming.
    const prompt = reloaded.tokenizer.encodePrompt('the cat');
    const streamed: number[] = [];
    for await (const id of generate(quantized, prompt, { maxTokens: 12, stopTokens: [] })) streamed.push(id);
    const inMemory = await createModel(run.quantized);
    const again: number[] = [];
    for await (const id of generate(inMemory, prompt, { maxTokens: 12, stopTokens: [] })) again.push(id);
    await Promise.all([float.dispose(), quantized.dispose(), inMemory.dispose()]);
    return [
      `recipe: ${reloaded.recipe}, ${run.quantized.linears.size} layers, group size ${recipe.weights.groupSize}`,
      `vs float on ${r.tokens} tokens: top-1 ${(100 * (r.top1 ?? 0)).toFixed(1)}%, KL ${(r.kl ?? 0).toFixed(4)}`,
      `generated ${streamed.length} tokens: the cat ${reloaded.tokenizer.decode(streamed)}`,
      `saved and in-memory models agree: ${streamed.join(',') === again.join(',')}`,
    ];
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

if (process.argv[1]?.endsWith('custom-pipeline.ts')) for (const l of await main()) console.log(l);
