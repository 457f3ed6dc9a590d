import { llamaTensors, type ModelConfig, Rng, Tensor } from '@q/core';

/**
 * Deterministic test fixtures: a seeded PRNG, Gaussian samples and a tiny Llama-shaped model.
 * Not part of the public API (not exported from index.ts).
 */

/** A seeded uniform source in [0, 1) (@q/core's Rng); plenty for test data. */
export function mulberry32(seed: number): () => number {
  const r = new Rng(seed);
  return () => r.next();
}

/** Standard normal samples (Box-Muller) from a uniform source. */
export function gaussian(rand: () => number): () => number {
  return () => {
    const u = 1 - rand();
    const v = rand();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  };
}

/** A Float32Array of `n` normal values times `scale`. */
export function randn(n: number, seed: number, scale = 1): Float32Array {
  const g = gaussian(mulberry32(seed));
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = g() * scale;
  return out;
}

/** A small Llama-shaped config for unit tests (K = 96 exercises padding at group 64/128). */
export function tinyConfig(overrides: Partial<ModelConfig> = {}): ModelConfig {
  return {
    architecture: 'llama',
    hiddenSize: 64,
    intermediateSize: 96,
    numLayers: 2,
    numHeads: 4,
    numKvHeads: 2,
    headDim: 16,
    vocabSize: 32,
    maxSeqLen: 64,
    rmsNormEps: 1e-5,
    ropeTheta: 10000,
    ropeScaling: { type: 'none' },
    ropeStyle: 'interleaved',
    tieWordEmbeddings: false,
    attentionBias: false,
    bosTokenId: 1,
    eosTokenIds: [2],
    ...overrides,
  };
}

/** Random f32 weights under HF names for `config`. */
export function tinyWeights(config: ModelConfig, seed = 1): Map<string, Tensor<'f32'>> {
  const w = new Map<string, Tensor<'f32'>>();
  let s = seed;
  const mat = (name: string, n: number, k: number): void => {
    w.set(name, new Tensor('f32', [n, k], randn(n * k, s++, 1 / Math.sqrt(k))));
  };
  const vec = (name: string, n: number): void => {
    const v = randn(n, s++, 0.1);
    for (let i = 0; i < n; i++) v[i] = 1 + (v[i] as number);
    w.set(name, new Tensor('f32', [n], v));
  };
  for (const t of llamaTensors(config)) {
    const [n, k] = t.shape as [number, number];
    if (t.role === 'norm') vec(t.name, n);
    else if (t.role === 'bias') w.set(t.name, new Tensor('f32', [n], randn(n, s++, 0.1)));
    else mat(t.name, n, k);
  }
  return w;
}
