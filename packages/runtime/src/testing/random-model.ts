// Test-only: random small Llama-family weights under Hugging Face names, from a seeded PRNG.
import { llamaTensors, type ModelConfig, Rng, Tensor } from '@q/core';

export function smallConfig(over: Partial<ModelConfig> = {}): ModelConfig {
  return {
    architecture: 'llama',
    hiddenSize: 32,
    intermediateSize: 48,
    numLayers: 2,
    numHeads: 4,
    numKvHeads: 2,
    headDim: 8,
    vocabSize: 40,
    maxSeqLen: 64,
    rmsNormEps: 1e-5,
    ropeTheta: 10000,
    ropeScaling: { type: 'none' },
    ropeStyle: 'half',
    tieWordEmbeddings: false,
    attentionBias: false,
    bosTokenId: 1,
    eosTokenIds: [2],
    ...over,
  };
}

/** Shapes of every tensor a config needs, in a stable order. */
export function tensorShapes(c: ModelConfig): [string, number[]][] {
  return llamaTensors(c).map((t) => [t.name, [...t.shape]]);
}

export function randomWeights(c: ModelConfig, seed: number): Map<string, Tensor<'f32'>> {
  const rng = new Rng(seed);
  const m = new Map<string, Tensor<'f32'>>();
  for (const [name, shape] of tensorShapes(c)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const t = new Tensor('f32', shape);
    const isNorm = name.endsWith('norm.weight');
    const fanIn = shape.length === 2 ? (shape[1] as number) : 1;
    for (let i = 0; i < n; i++)
      t.data[i] = isNorm
        ? 0.5 + rng.next()
        : name.endsWith('.bias')
          ? 0.3 * rng.normal()
          : rng.normal() / Math.sqrt(fanIn);
    // Embeddings with unit-scale rows keep activations in a realistic range.
    if (name === 'model.embed_tokens.weight') for (let i = 0; i < n; i++) t.data[i] = rng.normal();
    m.set(name, t);
  }
  return m;
}

export function toF64Map(w: ReadonlyMap<string, Tensor>): Map<string, Float64Array> {
  return new Map([...w].map(([k, t]) => [k, Float64Array.from(t.toFloat32())]));
}
