// Generates a Llama-2-7B-shaped Hugging Face model directory with random fp16 weights, for measuring
// `q quantize` on a model of real size: config.json, three safetensors shards with their index (13.5 GB at 32
// layers), and a tokenizer.json with 32000 entries (a word-level vocabulary built from the TinyStories sample,
// so calibration text tokenizes into real ids). The weights are N(0, 0.02) fp16 values; the norm gains are
// 1 ± 0.05 with a few outlier channels, so `fptq` meets static, LAE and dynamic layers.
//
// Build first (the script imports @q/core's dist), then generate and quantize (from the repository root):
//   npx -y pnpm@10.34.8 build
//   node packages/quant/bench/quantize-7b.mjs --dir /tmp/llama-7b-shape [--layers 32]
//   /usr/bin/time -v node packages/runtime/dist/cli.js quantize /tmp/llama-7b-shape --recipe w4a8-rtn --out /tmp/llama-7b-w4a8-rtn
//   /usr/bin/time -v node packages/runtime/dist/cli.js quantize /tmp/llama-7b-shape --recipe fptq \
//     --calib ../shared/data/tinystories-valid-sample.txt --calib-tokens 128 --out /tmp/llama-7b-fptq
//   rm -rf /tmp/llama-7b-shape /tmp/llama-7b-w4a8-rtn /tmp/llama-7b-fptq
// The measured table is in packages/quant/README.md.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createSafetensorsWriter, f32ToF16Bits, llamaTensors, Rng } from '@q/core';

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const arg = (name, fallback) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] !== undefined ? args[i + 1] : fallback;
};
const layers = Number(arg('layers', '32'));
const dir = arg('dir', '/tmp/llama-7b-shape');
const textFile = arg('text', path.join(here, '../../../../shared/data/tinystories-valid-sample.txt'));
if (!Number.isInteger(layers) || layers < 1) throw new Error(`Expected --layers >= 1 but received ${layers}`);
if (fs.existsSync(dir) && fs.readdirSync(dir).length > 0)
  throw new Error(`Expected an empty or new --dir but ${dir} holds files (remove it first)`);
fs.mkdirSync(dir, { recursive: true });

const H = 4096;
const F = 11008;
const V = 32000;

/** transformers' config.json of Llama-2-7b-hf (layers as asked). */
const config = {
  architectures: ['LlamaForCausalLM'],
  model_type: 'llama',
  hidden_size: H,
  intermediate_size: F,
  num_hidden_layers: layers,
  num_attention_heads: 32,
  num_key_value_heads: 32,
  vocab_size: V,
  max_position_embeddings: 4096,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  rope_scaling: null,
  tie_word_embeddings: false,
  attention_bias: false,
  bos_token_id: 1,
  eos_token_id: 2,
  hidden_act: 'silu',
  torch_dtype: 'float16',
};
fs.writeFileSync(path.join(dir, 'config.json'), `${JSON.stringify(config, null, 2)}\n`);

// A word-level tokenizer over the sample's words, most frequent first, padded to exactly V entries.
const special = (id, content) => ({
  id,
  content,
  single_word: false,
  lstrip: false,
  rstrip: false,
  normalized: false,
  special: true,
});
const vocab = { '<unk>': 0, '<s>': 1, '</s>': 2 };
const counts = new Map();
if (fs.existsSync(textFile)) {
  // The same split as the Whitespace pre-tokenizer below, after lowercasing.
  for (const w of fs
    .readFileSync(textFile, 'utf8')
    .toLowerCase()
    .match(/\w+|[^\w\s]+/g) ?? [])
    counts.set(w, (counts.get(w) ?? 0) + 1);
}
let size = Object.keys(vocab).length;
for (const [w] of [...counts].sort((a, b) => b[1] - a[1])) {
  if (size >= V) break;
  if (!(w in vocab)) vocab[w] = size++;
}
for (let i = 0; size < V; i++) vocab[`<unused_${i}>`] = size++;
const tokenizer = {
  version: '1.0',
  truncation: null,
  padding: null,
  added_tokens: [special(0, '<unk>'), special(1, '<s>'), special(2, '</s>')],
  normalizer: { type: 'Lowercase' },
  pre_tokenizer: { type: 'Whitespace' },
  post_processor: null,
  decoder: null,
  model: { type: 'WordLevel', vocab, unk_token: '<unk>' },
};
fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tokenizer));

/** Tensors per shard: embeddings and the first third of the layers, the middle third, the rest and the head. */
const layout = llamaTensors({
  hiddenSize: H,
  intermediateSize: F,
  numLayers: layers,
  numHeads: 32,
  numKvHeads: 32,
  headDim: 128,
  vocabSize: V,
  tieWordEmbeddings: false,
  attentionBias: false,
});
const cuts = [0, Math.ceil(layers / 3), Math.ceil((2 * layers) / 3), layers];
const shards = [0, 1, 2].map((s) => ({
  file: `model-0000${s + 1}-of-00003.safetensors`,
  specs: layout
    .filter((t) =>
      t.layer === undefined
        ? (s === 0) === (t.name === 'model.embed_tokens.weight') && (s === 0 || s === 2)
        : t.layer >= cuts[s] && t.layer < cuts[s + 1],
    )
    .map((t) => ({ name: t.name, dtype: 'f16', shape: [...t.shape] })),
}));

const rng = new Rng(7);
const pool = new Uint16Array(1 << 22);
for (let i = 0; i < pool.length; i++) pool[i] = f32ToF16Bits(rng.normal() * 0.02);

const t0 = performance.now();
const weightMap = {};
let total = 0;
for (const { file, specs } of shards) {
  const w = createSafetensorsWriter(path.join(dir, file), specs, { format: 'pt' });
  for (const s of specs) {
    const count = s.shape.reduce((a, b) => a * b, 1);
    const out = new Uint16Array(count);
    if (s.shape.length === 1) {
      for (let i = 0; i < count; i++) out[i] = f32ToF16Bits(1 + 0.1 * (rng.next() - 0.5));
      // Outlier channels in about a third of the norms: input ranges beyond v0 (LAE) or v1 (dynamic).
      const u = rng.next();
      if (u < 0.33) for (let j = 0; j < 4; j++) out[rng.int(count)] = f32ToF16Bits(u < 0.15 ? 40 : 400);
    } else {
      // Blocks copied from random offsets of a pool of N(0, 0.02) values: random enough, and fast.
      for (let o = 0; o < count; o += 1 << 16) {
        const len = Math.min(1 << 16, count - o);
        const src = rng.int(pool.length - len);
        out.set(pool.subarray(src, src + len), o);
      }
    }
    w.write(s.name, new Uint8Array(out.buffer));
    weightMap[s.name] = file;
    total += count * 2;
  }
  w.close();
}
fs.writeFileSync(
  path.join(dir, 'model.safetensors.index.json'),
  `${JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2)}\n`,
);
console.log(
  `generated ${dir}: ${layers} layers, ${(total / 1e9).toFixed(2)} GB fp16 in 3 shards, in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
);
console.log(
  `quantize: /usr/bin/time -v node packages/runtime/dist/cli.js quantize ${dir} --recipe w4a8-rtn --out ${dir}-w4a8-rtn`,
);
