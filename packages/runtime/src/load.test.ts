import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { isQError, Rng, type Tensor, writeLlama2cCheckpoint } from '@q/core';
import { afterAll, describe, expect, it } from 'vitest';
import { createModel } from './backend';
import { generate } from './generate';
import { loadModel } from './load';
import { bpeTokenizerJson, wordLevelTokenizerJson, writeHfModel } from './testing/hf-fixture';
import { randomWeights, smallConfig, toF64Map } from './testing/random-model';
import { maxAbsDiff, referenceForward } from './testing/reference';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'q-hf-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function toDtype(w: ReadonlyMap<string, Tensor<'f32'>>, dtype: 'f16' | 'bf16' | 'f32'): Map<string, Tensor> {
  return new Map([...w].map(([k, t]) => [k, dtype === 'f32' ? t : t.to(dtype)]));
}

function expectQError(fn: () => unknown, code: string, message: RegExp): void {
  try {
    fn();
  } catch (e) {
    expect(isQError(e)).toBe(true);
    expect((e as { code: string }).code).toBe(code);
    expect((e as Error).message).toMatch(message);
    return;
  }
  throw new Error('expected an error');
}

describe('Hugging Face directories', () => {
  it('llama: sharded safetensors, GQA, llama3 rope scaling, BPE tokenizer and chat template', async () => {
    const config = smallConfig({
      ropeTheta: 500000,
      ropeScaling: {
        type: 'llama3',
        factor: 8,
        lowFreqFactor: 1,
        highFreqFactor: 4,
        originalMaxPositionEmbeddings: 16,
      },
      rmsNormEps: 1e-5,
    });
    const weights = randomWeights(config, 21);
    const dir = path.join(tmp, 'llama');
    writeHfModel(dir, {
      config,
      weights,
      tokenizer: bpeTokenizerJson(),
      tokenizerConfig: {
        bos_token: '<s>',
        eos_token: '</s>',
        chat_template:
          "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}",
      },
      maxShardBytes: 20000,
    });
    expect(
      fs.readdirSync(dir).filter((f) => /^model-\d+-of-\d+\.safetensors$/.test(f)).length,
    ).toBeGreaterThan(1);
    const m = loadModel(dir);
    expect(m.source).toBe('huggingface');
    expect(m.config.numKvHeads).toBe(2);
    expect(m.config.ropeStyle).toBe('half');
    // "the" and "cat" are merged tokens: t h → th, th e → the; c a → ca, ca t → cat.
    expect(m.tokenizer.encode('the cat')).toEqual([30, 32]);
    expect(m.tokenizer.encode('tea')).toEqual([22, 7, 3]);
    expect(m.tokenizer.applyChatTemplate?.([{ role: 'user', content: 'hi' }])).toBe(
      '<s>[user] hi\n[assistant]',
    );
    const toks = [1, ...Array.from({ length: 10 }, (_, i) => (i * 7 + 3) % config.vocabSize)];
    const model = await createModel(m);
    const { diff, scale } = maxAbsDiff(
      await model.forward([toks]),
      referenceForward(config, toF64Map(weights), toks),
    );
    expect(diff).toBeLessThan(1e-4 * scale + 1e-5);
  });

  it('prompts get the special tokens of the tokenizer (BOS from its post-processor), chat prompts none', () => {
    const config = smallConfig();
    const dir = path.join(tmp, 'with-bos');
    const tokenizer = {
      ...bpeTokenizerJson(),
      post_processor: {
        type: 'TemplateProcessing',
        single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
        pair: [
          { SpecialToken: { id: '<s>', type_id: 0 } },
          { Sequence: { id: 'A', type_id: 0 } },
          { Sequence: { id: 'B', type_id: 1 } },
        ],
        special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
      },
    };
    writeHfModel(dir, { config, weights: randomWeights(config, 3), tokenizer });
    const m = loadModel(dir);
    expect(m.tokenizer.encode('the cat')).toEqual([30, 32]);
    expect(m.tokenizer.encodePrompt('the cat')).toEqual([1, 30, 32]);
    expect(m.tokenizer.encodePrompt('the cat', { chat: true })).toEqual([30, 32]);
  });

  it('qwen2: attention bias, tied embeddings, bf16 weights, WordLevel tokenizer', async () => {
    const config = smallConfig({
      architecture: 'qwen2',
      attentionBias: true,
      tieWordEmbeddings: true,
      numKvHeads: 1,
      ropeTheta: 1e6,
      rmsNormEps: 1e-6,
      eosTokenIds: [2],
    });
    const stored = toDtype(randomWeights(config, 33), 'bf16');
    const dir = path.join(tmp, 'qwen2');
    const words = ['hello', 'world', 'the', 'model', 'runs'];
    writeHfModel(dir, { config, weights: stored, tokenizer: wordLevelTokenizerJson(words) });
    const m = loadModel(dir);
    expect(m.config.attentionBias).toBe(true);
    expect(m.config.tieWordEmbeddings).toBe(true);
    expect(m.tokenizer.encode('Hello model')).toEqual([3, 6]);
    const rng = new Rng(5);
    const toks = Array.from({ length: 9 }, () => rng.int(config.vocabSize));
    // The reference sees exactly the bf16-rounded values that were stored.
    // Weights stay bf16 until a backend reads them.
    if (m.source === 'quantized') throw new Error('expected a float model');
    expect(m.weights.info('model.layers.0.mlp.down_proj.weight').dtype).toBe('bf16');
    expect(m.weights.get('model.norm.weight').dtype).toBe('bf16');
    const model = await createModel(m);
    const { diff, scale } = maxAbsDiff(
      await model.forward([toks]),
      referenceForward(config, toF64Map(stored), toks),
    );
    expect(diff).toBeLessThan(1e-4 * scale + 1e-5);
  });

  it('refuses a directory without config.json', () => {
    const dir = path.join(tmp, 'no-config');
    fs.mkdirSync(dir, { recursive: true });
    expectQError(() => loadModel(dir), 'E_FORMAT', /config\.json/);
  });

  it('refuses a garbled config.json', () => {
    const dir = path.join(tmp, 'garbled');
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, 'config.json'), '{"model_type": "llama", "hidden_size": ');
    expectQError(() => loadModel(dir), 'E_FORMAT', /config\.json/);
  });

  it('refuses an unsupported architecture and lists the supported ones', () => {
    const dir = path.join(tmp, 'gpt2');
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ model_type: 'gpt2', n_embd: 64 }));
    expectQError(() => loadModel(dir), 'E_UNSUPPORTED', /llama, mistral, qwen2.*gpt2/);
  });

  it('refuses a Hugging Face directory without a tokenizer', () => {
    const config = smallConfig();
    const dir = path.join(tmp, 'no-tokenizer');
    writeHfModel(dir, { config, weights: randomWeights(config, 1), tokenizer: bpeTokenizerJson() });
    fs.rmSync(path.join(dir, 'tokenizer.json'));
    expectQError(() => loadModel(dir), 'E_TOKENIZER', /tokenizer\.json/);
  });

  it('refuses a llama2.c checkpoint with no tokenizer beside it', () => {
    const config = smallConfig({ ropeStyle: 'interleaved', tieWordEmbeddings: true, numKvHeads: 4 });
    const dir = path.join(tmp, 'llama2c-alone');
    fs.mkdirSync(dir, { recursive: true });
    const file = path.join(dir, 'model.bin');
    writeLlama2cCheckpoint(file, config, randomWeights(config, 4), { format: 'legacy' });
    expectQError(() => loadModel(file), 'E_TOKENIZER', /tokenizer\.bin or tok\*\.bin/);
    expectQError(
      () => loadModel(file, { tokenizer: path.join(dir, 'nope.bin') }),
      'E_TOKENIZER',
      /nope\.bin/,
    );
  });

  it('refuses a prompt longer than the context', async () => {
    const config = smallConfig({ maxSeqLen: 8 });
    const dir = path.join(tmp, 'short-ctx');
    writeHfModel(dir, { config, weights: randomWeights(config, 2), tokenizer: bpeTokenizerJson() });
    const model = await createModel(loadModel(dir));
    expectQError(
      () =>
        generate(
          model,
          Array.from({ length: 9 }, () => 3),
        ),
      'E_ARG',
      /at most 8 tokens.*received 9/,
    );
  });
});
