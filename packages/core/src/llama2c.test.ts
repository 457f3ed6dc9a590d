import * as fs from 'node:fs';
import * as path from 'node:path';
import { isQError, type ModelConfig, readLlama2cCheckpoint, Tensor, writeLlama2cCheckpoint } from '@q/core';
import { describe, expect, it } from 'vitest';
import { randomFloats, tmpDir } from '../test/helpers';

const D = { dim: 16, hidden: 24, layers: 2, heads: 4, kvHeads: 2, vocab: 32, seq: 8 };
const kv = (D.dim / D.heads) * D.kvHeads;
const half = D.dim / D.heads / 2;

type Arr = { key: string; shape: number[]; perLayer: boolean };

/** Arrays of the file in the order llama2.c's export.py writes them, stacked over layers where it does. */
function fileOrder(format: 'legacy' | 'v1', shared: boolean): Arr[] {
  const L = (key: string, shape: number[]): Arr => ({ key, shape, perLayer: true });
  const G = (key: string, shape: number[]): Arr => ({ key, shape, perLayer: false });
  const att = L('input_layernorm', [D.dim]);
  const ffn = L('post_attention_layernorm', [D.dim]);
  const wq = L('self_attn.q_proj', [D.dim, D.dim]);
  const wk = L('self_attn.k_proj', [kv, D.dim]);
  const wv = L('self_attn.v_proj', [kv, D.dim]);
  const wo = L('self_attn.o_proj', [D.dim, D.dim]);
  const w1 = L('mlp.gate_proj', [D.hidden, D.dim]);
  const w2 = L('mlp.down_proj', [D.dim, D.hidden]);
  const w3 = L('mlp.up_proj', [D.hidden, D.dim]);
  const emb = G('model.embed_tokens.weight', [D.vocab, D.dim]);
  const norm = G('model.norm.weight', [D.dim]);
  const head = shared ? [] : [G('lm_head.weight', [D.vocab, D.dim])];
  if (format === 'legacy') {
    const fr = G('', [D.seq, half]);
    return [emb, att, wq, wk, wv, wo, ffn, w1, w2, w3, norm, fr, fr, ...head];
  }
  return [att, ffn, norm, emb, wq, wk, wv, wo, w1, w2, w3, ...head];
}

/** Writes a checkpoint byte by byte from the export.py layout; returns the expected weights by HF name. */
function handMade(
  file: string,
  format: 'legacy' | 'v1',
  shared: boolean,
  seed: number,
): Map<string, Float32Array> {
  const chunks: Uint8Array[] = [];
  if (format === 'v1') {
    const h = Buffer.alloc(256);
    h.writeUInt32LE(0x616b3432, 0);
    h.writeInt32LE(1, 4);
    [D.dim, D.hidden, D.layers, D.heads, D.kvHeads, D.vocab, D.seq].forEach((v, i) => {
      h.writeInt32LE(v, 8 + 4 * i);
    });
    h.writeUInt8(shared ? 1 : 0, 36);
    chunks.push(h);
  } else {
    const h = Buffer.alloc(28);
    [D.dim, D.hidden, D.layers, D.heads, D.kvHeads, shared ? D.vocab : -D.vocab, D.seq].forEach((v, i) => {
      h.writeInt32LE(v, 4 * i);
    });
    chunks.push(h);
  }
  const want = new Map<string, Float32Array>();
  let s = seed;
  for (const a of fileOrder(format, shared)) {
    const n = a.shape.reduce((x, y) => x * y, 1);
    for (let l = 0; l < (a.perLayer ? D.layers : 1); l++) {
      const v = randomFloats(n, s++);
      chunks.push(Buffer.from(v.buffer));
      if (a.key !== '') want.set(a.perLayer ? `model.layers.${l}.${a.key}.weight` : a.key, v);
    }
  }
  fs.writeFileSync(file, Buffer.concat(chunks));
  return want;
}

function errorOf(fn: () => unknown): Error & { code?: string } {
  try {
    fn();
  } catch (e) {
    return e as Error;
  }
  throw new Error('expected a throw');
}

describe('llama2.c checkpoints', () => {
  const dir = tmpDir();

  for (const format of ['legacy', 'v1'] as const) {
    for (const shared of [true, false]) {
      it(`reads a hand-made ${format} file with ${shared ? 'shared' : 'unshared'} classifier`, () => {
        const file = path.join(dir, `${format}-${shared}.bin`);
        const want = handMade(file, format, shared, shared ? 100 : 200);
        const ck = readLlama2cCheckpoint(file);
        expect(ck.format).toBe(format);
        expect(ck.config).toMatchObject({
          architecture: 'llama',
          hiddenSize: D.dim,
          intermediateSize: D.hidden,
          numLayers: D.layers,
          numHeads: D.heads,
          numKvHeads: D.kvHeads,
          headDim: D.dim / D.heads,
          vocabSize: D.vocab,
          maxSeqLen: D.seq,
          ropeStyle: 'interleaved',
          ropeTheta: 10000,
          rmsNormEps: 1e-5,
          tieWordEmbeddings: shared,
          attentionBias: false,
          bosTokenId: 1,
          eosTokenIds: [2],
        });
        expect([...ck.weights.keys()].sort()).toEqual([...want.keys()].sort());
        expect(ck.weights.has('lm_head.weight')).toBe(!shared);
        for (const [name, v] of want) {
          const t = ck.weights.get(name) as Tensor<'f32'>;
          expect(t.dtype).toBe('f32');
          expect(Array.from(t.data), name).toEqual(Array.from(v));
        }
        expect(ck.weights.get('model.layers.1.self_attn.k_proj.weight')?.shape).toEqual([kv, D.dim]);
        expect(ck.weights.get('model.layers.0.mlp.down_proj.weight')?.shape).toEqual([D.dim, D.hidden]);

        // The writer reproduces the same bytes for v1, and the same weights for both formats.
        const out = path.join(dir, `${format}-${shared}-rewritten.bin`);
        writeLlama2cCheckpoint(out, ck.config, ck.weights, { format });
        if (format === 'v1') expect(fs.readFileSync(out).equals(fs.readFileSync(file))).toBe(true);
        else expect(fs.statSync(out).size).toBe(fs.statSync(file).size);
        const again = readLlama2cCheckpoint(out);
        for (const [name, v] of want)
          expect(Array.from(again.weights.get(name)?.data ?? []), name).toEqual(Array.from(v));
      });
    }
  }

  it('rejects a file one byte too long, naming the file, expected and actual bytes', () => {
    const file = path.join(dir, 'long.bin');
    handMade(file, 'legacy', true, 1);
    const size = fs.statSync(file).size;
    fs.appendFileSync(file, Buffer.from([0]));
    const e = errorOf(() => readLlama2cCheckpoint(file));
    expect(isQError(e, 'E_FORMAT')).toBe(true);
    expect(e.message).toContain(file);
    expect(e.message).toContain(`Expected ${size} bytes`);
    expect(e.message).toContain(`received ${size + 1} bytes`);
  });

  it('rejects a truncated v1 file with expected and actual sizes', () => {
    const file = path.join(dir, 'short.bin');
    handMade(file, 'v1', false, 2);
    const size = fs.statSync(file).size;
    fs.truncateSync(file, size - 4);
    const e = errorOf(() => readLlama2cCheckpoint(file));
    expect(isQError(e, 'E_FORMAT')).toBe(true);
    expect(e.message).toMatch(
      new RegExp(`Expected ${size} bytes .*short\\.bin.* but received ${size - 4} bytes`),
    );
  });

  it('rejects a file shorter than the header', () => {
    const file = path.join(dir, 'tiny.bin');
    fs.writeFileSync(file, Buffer.alloc(10));
    const e = errorOf(() => readLlama2cCheckpoint(file));
    expect(isQError(e, 'E_FORMAT')).toBe(true);
    expect(e.message).toMatch(/at least 28 bytes .* received 10 bytes/);
  });

  it('rejects a header with absurd counts without allocating', () => {
    const file = path.join(dir, 'absurd.bin');
    const h = Buffer.alloc(28 + 64);
    [4096, 11008, 2 ** 31 - 1, 32, 32, 32000, 2048].forEach((v, i) => {
      h.writeInt32LE(v, 4 * i);
    });
    fs.writeFileSync(file, h);
    const e = errorOf(() => readLlama2cCheckpoint(file));
    expect(isQError(e, 'E_FORMAT')).toBe(true);
    expect(e.message).toContain('received 92 bytes');
  });

  it('rejects non-positive and inconsistent header fields', () => {
    const file = path.join(dir, 'bad-dims.bin');
    for (const [vals, re] of [
      [[0, 24, 2, 4, 2, 32, 8], /positive dim/],
      [[16, 24, 2, 3, 3, 32, 8], /dim divisible by n_heads/],
      [[16, 24, 2, 4, 3, 32, 8], /n_kv_heads dividing n_heads/],
    ] as [number[], RegExp][]) {
      const h = Buffer.alloc(28);
      vals.forEach((v, i) => {
        h.writeInt32LE(v, 4 * i);
      });
      fs.writeFileSync(file, h);
      const e = errorOf(() => readLlama2cCheckpoint(file));
      expect(isQError(e, 'E_FORMAT')).toBe(true);
      expect(e.message).toMatch(re);
    }
  });

  it('rejects v1 files of another version with E_VERSION', () => {
    const file = path.join(dir, 'v2.bin');
    handMade(file, 'v1', true, 3);
    const b = fs.readFileSync(file);
    b.writeInt32LE(2, 4);
    fs.writeFileSync(file, b);
    const e = errorOf(() => readLlama2cCheckpoint(file));
    expect(isQError(e, 'E_VERSION')).toBe(true);
    expect(e.message).toContain('version 2');
  });

  it('reports a missing file as E_IO', () => {
    expect(
      isQError(
        errorOf(() => readLlama2cCheckpoint(path.join(dir, 'none.bin'))),
        'E_IO',
      ),
    ).toBe(true);
  });

  it('leaves nothing under the final name when a write fails', () => {
    const file = path.join(dir, 'legacy-true.bin');
    const ck = readLlama2cCheckpoint(file);
    const target = path.join(dir, 'failed-write.bin');
    const weights = new Map(ck.weights);
    weights.set('model.norm.weight', Tensor.from('f32', [3], [1, 2, 3]));
    expect(
      isQError(
        errorOf(() => writeLlama2cCheckpoint(target, ck.config, weights)),
        'E_SHAPE',
      ),
    ).toBe(true);
    weights.delete('model.norm.weight');
    expect(
      isQError(
        errorOf(() => writeLlama2cCheckpoint(target, ck.config, weights)),
        'E_ARG',
      ),
    ).toBe(true);
    const badCfg: ModelConfig = { ...ck.config, attentionBias: true };
    expect(
      isQError(
        errorOf(() => writeLlama2cCheckpoint(target, badCfg, ck.weights)),
        'E_UNSUPPORTED',
      ),
    ).toBe(true);
    expect(fs.existsSync(target)).toBe(false);
    expect(fs.readdirSync(dir).filter((f) => f.endsWith('.tmp'))).toEqual([]);
  });
});
