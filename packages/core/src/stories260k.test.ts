import * as fs from 'node:fs';
import * as path from 'node:path';
import { readLlama2cCheckpoint, writeLlama2cCheckpoint } from '@q/core';
import { describe, expect, it } from 'vitest';
import { hasShared, sharedDir, tmpDir } from '../test/helpers';

if (!hasShared) console.warn(`skipping stories260K checkpoint tests: ${sharedDir} is absent`);

describe.skipIf(!hasShared)('stories260K.bin (real data)', () => {
  const file = path.join(sharedDir, 'models/stories260K/stories260K.bin');

  it('loads with the shapes of its header', () => {
    const raw = fs.readFileSync(file);
    const header = Array.from({ length: 7 }, (_, i) => raw.readInt32LE(4 * i));
    expect(header).toEqual([64, 172, 5, 8, 4, 512, 512]);
    const { config, format, weights } = readLlama2cCheckpoint(file);
    expect(format).toBe('legacy');
    expect(config).toMatchObject({
      hiddenSize: 64,
      intermediateSize: 172,
      numLayers: 5,
      numHeads: 8,
      numKvHeads: 4,
      headDim: 8,
      vocabSize: 512,
      maxSeqLen: 512,
      tieWordEmbeddings: true,
    });
    expect(weights.size).toBe(2 + 9 * 5);
    expect(weights.has('lm_head.weight')).toBe(false);
    expect(weights.get('model.embed_tokens.weight')?.shape).toEqual([512, 64]);
    for (let l = 0; l < 5; l++) {
      const p = `model.layers.${l}.`;
      expect(weights.get(`${p}self_attn.q_proj.weight`)?.shape).toEqual([64, 64]);
      expect(weights.get(`${p}self_attn.k_proj.weight`)?.shape).toEqual([32, 64]);
      expect(weights.get(`${p}self_attn.v_proj.weight`)?.shape).toEqual([32, 64]);
      expect(weights.get(`${p}self_attn.o_proj.weight`)?.shape).toEqual([64, 64]);
      expect(weights.get(`${p}mlp.gate_proj.weight`)?.shape).toEqual([172, 64]);
      expect(weights.get(`${p}mlp.up_proj.weight`)?.shape).toEqual([172, 64]);
      expect(weights.get(`${p}mlp.down_proj.weight`)?.shape).toEqual([64, 172]);
      expect(weights.get(`${p}input_layernorm.weight`)?.shape).toEqual([64]);
      expect(weights.get(`${p}post_attention_layernorm.weight`)?.shape).toEqual([64]);
    }
    // Spot-check values at offsets computed from the README's order: rms_final follows w3 of every layer.
    const floats = (off: number, n: number) =>
      Array.from({ length: n }, (_, i) => raw.readFloatLE(off + 4 * i));
    const L = 5;
    const before = 512 * 64 + L * 64 + L * 64 * 64 * 2 + L * 32 * 64 * 2 + L * 64 + L * 172 * 64 * 3;
    expect(Array.from(weights.get('model.norm.weight')?.data ?? [])).toEqual(floats(28 + 4 * before, 64));
    const wkOff = 28 + 4 * (512 * 64 + L * 64 + L * 64 * 64 + 2 * 32 * 64);
    expect(Array.from(weights.get('model.layers.2.self_attn.k_proj.weight')?.data ?? [])).toEqual(
      floats(wkOff, 32 * 64),
    );
  });

  it('converts to v1 and back with identical weights', () => {
    const ck = readLlama2cCheckpoint(file);
    const out = path.join(tmpDir(), 'stories260K-v1.bin');
    writeLlama2cCheckpoint(out, ck.config, ck.weights, { format: 'v1' });
    const again = readLlama2cCheckpoint(out);
    expect(again.format).toBe('v1');
    expect(again.config).toEqual(ck.config);
    for (const [n, t] of ck.weights)
      expect(
        Buffer.from(again.weights.get(n)?.data.buffer ?? new ArrayBuffer(0)).equals(
          Buffer.from(t.data.buffer),
        ),
      ).toBe(true);
  });
});
