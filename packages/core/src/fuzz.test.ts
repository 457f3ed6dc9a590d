import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  isQError,
  type ModelConfig,
  openSafetensors,
  parseHfConfig,
  parseLlama2cTokenizer,
  readLlama2cCheckpoint,
  Tensor,
  writeLlama2cCheckpoint,
  writeSafetensors,
} from '@q/core';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { randomFloats, syntheticVocab, tmpDir, tokenizerFile } from '../test/helpers';

/** Runs `fn`; it may succeed or throw a QError, anything else (TypeError, RangeError, ...) fails. */
function succeedOrQError(fn: () => void): void {
  try {
    fn();
  } catch (e) {
    if (!isQError(e)) throw new Error(`expected a QError but got ${(e as Error)?.stack ?? String(e)}`);
  }
  // Every input here is under 64 KB; a parser that trusted a size field would show up here.
  expect(process.memoryUsage().arrayBuffers).toBeLessThan(512 * 1024 * 1024);
}

/** Random byte edits of a valid file: overwrite bytes, plant extreme int32 values, truncate or extend. */
const mutation = fc.record({
  edits: fc.array(fc.record({ at: fc.nat(), byte: fc.integer({ min: 0, max: 255 }) }), { maxLength: 6 }),
  words: fc.array(
    fc.record({
      at: fc.nat(),
      value: fc.constantFrom(0, -1, 1, 0x7fffffff, -0x80000000, 0x616b3432, 3, 65536),
    }),
    { maxLength: 3 },
  ),
  cut: fc.option(fc.nat(), { nil: undefined }),
  extra: fc.option(fc.uint8Array({ maxLength: 16 }), { nil: undefined }),
});

function mutate(base: Uint8Array, m: MutationValue): Buffer {
  let b = Buffer.from(base);
  for (const w of m.words) {
    const at = (w.at % Math.max(1, b.length - 4)) & ~3;
    if (at + 4 <= b.length) b.writeInt32LE(w.value | 0, at);
  }
  for (const e of m.edits) if (b.length > 0) b[e.at % b.length] = e.byte;
  if (m.cut !== undefined) b = b.subarray(0, m.cut % (b.length + 1));
  if (m.extra !== undefined) b = Buffer.concat([b, m.extra]);
  return b;
}
type MutationValue = {
  edits: { at: number; byte: number }[];
  words: { at: number; value: number }[];
  cut: number | undefined;
  extra: Uint8Array | undefined;
};

describe('parsers never crash on random or mutated bytes', () => {
  const dir = tmpDir();
  const file = path.join(dir, 'fuzz.bin');

  const config: ModelConfig = {
    architecture: 'llama',
    hiddenSize: 8,
    intermediateSize: 12,
    numLayers: 1,
    numHeads: 2,
    numKvHeads: 1,
    headDim: 4,
    vocabSize: 8,
    maxSeqLen: 4,
    rmsNormEps: 1e-5,
    ropeTheta: 10000,
    ropeScaling: { type: 'none' },
    ropeStyle: 'interleaved',
    tieWordEmbeddings: false,
    attentionBias: false,
    bosTokenId: 1,
    eosTokenIds: [2],
  };
  const shapes: Record<string, number[]> = {
    'model.embed_tokens.weight': [8, 8],
    'lm_head.weight': [8, 8],
    'model.norm.weight': [8],
    'model.layers.0.input_layernorm.weight': [8],
    'model.layers.0.post_attention_layernorm.weight': [8],
    'model.layers.0.self_attn.q_proj.weight': [8, 8],
    'model.layers.0.self_attn.k_proj.weight': [4, 8],
    'model.layers.0.self_attn.v_proj.weight': [4, 8],
    'model.layers.0.self_attn.o_proj.weight': [8, 8],
    'model.layers.0.mlp.gate_proj.weight': [12, 8],
    'model.layers.0.mlp.up_proj.weight': [12, 8],
    'model.layers.0.mlp.down_proj.weight': [8, 12],
  };
  const weights = new Map(
    Object.entries(shapes).map(([n, s], i) => [
      n,
      Tensor.from('f32', s, randomFloats(s[0]! * (s[1] ?? 1), i + 1)),
    ]),
  );
  writeLlama2cCheckpoint(file, config, weights, { format: 'legacy' });
  const legacy = fs.readFileSync(file);
  writeLlama2cCheckpoint(file, config, weights, { format: 'v1' });
  const v1 = fs.readFileSync(file);
  writeSafetensors(file, weights, { format: 'pt' });
  const st = fs.readFileSync(file);
  const vocab = syntheticVocab(3, 40);
  const tok = tokenizerFile(vocab.pieces, vocab.scores);

  const readSt = (bytes: Uint8Array) => {
    fs.writeFileSync(file, bytes);
    const r = openSafetensors(file);
    try {
      for (const n of r.names()) r.read(n);
    } finally {
      r.close();
    }
  };
  const readCk = (bytes: Uint8Array) => {
    fs.writeFileSync(file, bytes);
    readLlama2cCheckpoint(file);
  };
  const readTok = (bytes: Uint8Array) => {
    const t = parseLlama2cTokenizer(bytes);
    t.decode(t.encode('a bé😀 c', { bos: true }));
  };

  it('the unmutated inputs parse', () => {
    readSt(st);
    readCk(legacy);
    readCk(v1);
    readTok(tok);
  });

  const runs = { numRuns: 150, seed: 2026 };

  it('safetensors: random bytes', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 256 }), (b) => succeedOrQError(() => readSt(b))),
      runs,
    );
  });

  it('safetensors: random header length with a valid body', () => {
    fc.assert(
      fc.property(fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), (n) => {
        const b = Buffer.from(st);
        b.writeBigUInt64LE(n);
        succeedOrQError(() => readSt(b));
      }),
      runs,
    );
  });

  it('safetensors: mutated files and mutated header JSON', () => {
    const n = Number(st.readBigUInt64LE(0));
    const json = st.subarray(8, 8 + n).toString();
    fc.assert(
      fc.property(mutation, fc.nat(), fc.string({ maxLength: 8 }), (m, at, ins) => {
        succeedOrQError(() => readSt(mutate(st, m)));
        const p = at % json.length;
        const text = Buffer.from(json.slice(0, p) + ins + json.slice(p + ins.length));
        const len = Buffer.alloc(8);
        len.writeBigUInt64LE(BigInt(text.length));
        succeedOrQError(() => readSt(Buffer.concat([len, text, st.subarray(8 + n)])));
      }),
      runs,
    );
  });

  it('llama2.c checkpoints: random bytes', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), (b) => succeedOrQError(() => readCk(b))),
      runs,
    );
  });

  it('llama2.c checkpoints: mutated legacy and v1 files', () => {
    fc.assert(
      fc.property(mutation, (m) => {
        succeedOrQError(() => readCk(mutate(legacy, m)));
        succeedOrQError(() => readCk(mutate(v1, m)));
      }),
      runs,
    );
  });

  it('llama2.c checkpoints: random header fields with any file size', () => {
    fc.assert(
      fc.property(fc.array(fc.integer(), { minLength: 7, maxLength: 7 }), fc.boolean(), (vals, isV1) => {
        const b = Buffer.from(isV1 ? v1 : legacy);
        vals.forEach((v, i) => {
          b.writeInt32LE(v, (isV1 ? 8 : 0) + 4 * i);
        });
        succeedOrQError(() => readCk(b));
      }),
      runs,
    );
  });

  it('tokenizer: random and mutated bytes', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), mutation, (r, m) => {
        succeedOrQError(() => readTok(r));
        succeedOrQError(() => readTok(mutate(tok, m)));
      }),
      runs,
    );
  });

  it('HF config: random JSON values and mutated config text', () => {
    const base = JSON.stringify({
      model_type: 'qwen2',
      hidden_size: 64,
      intermediate_size: 128,
      num_attention_heads: 4,
      num_hidden_layers: 2,
      num_key_value_heads: 2,
      vocab_size: 100,
      eos_token_id: [1, 2],
      rope_scaling: {
        rope_type: 'llama3',
        factor: 8,
        low_freq_factor: 1,
        high_freq_factor: 4,
        original_max_position_embeddings: 64,
      },
    });
    fc.assert(
      fc.property(fc.jsonValue(), fc.nat(), fc.string({ maxLength: 6 }), (v, at, ins) => {
        succeedOrQError(() => parseHfConfig(v));
        succeedOrQError(() => parseHfConfig(JSON.stringify(v)));
        const p = at % base.length;
        succeedOrQError(() => parseHfConfig(base.slice(0, p) + ins + base.slice(p + ins.length)));
      }),
      { numRuns: 300, seed: 2026 },
    );
  });
});
