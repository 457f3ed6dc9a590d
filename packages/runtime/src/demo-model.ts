import { Llama2cTokenizer, llamaTensors, type ModelConfig, Rng, Tensor } from '@q/core';
import { type TextTokenizer, wrapLlama2cTokenizer } from './tokenizer';

/** Knobs of the synthetic demo model; the defaults are what `q demo` runs. */
export interface DemoModelOptions {
  readonly seed?: number;
  readonly hiddenSize?: number;
  readonly intermediateSize?: number;
  readonly numLayers?: number;
  /** Residual channels that carry a near-constant large value (real LLMs' "massive activation" channels). */
  readonly outlierChannels?: number;
  /** RMSNorm gain on those channels: how much larger they are than the rest after the norms. */
  readonly outlierGain?: readonly [number, number];
  /** Intermediate (down_proj input) channels with a heavy-tailed, token-dependent magnitude. */
  readonly heavyTailChannels?: number;
  /** Gain of the heavy-tailed channels: their gate and up rows are this many times a shared direction. */
  readonly heavyTailGain?: number;
  /** Scale of what each layer writes into the residual stream (o_proj and down_proj weights). */
  readonly residualScale?: number;
}

/** A synthetic model with its tokenizer and texts. */
export interface DemoModel {
  readonly config: ModelConfig;
  readonly weights: Map<string, Tensor<'f32'>>;
  readonly tokenizer: TextTokenizer;
  /** Text to calibrate on. */
  readonly calibText: string;
  /** Held-out text to compare the recipes on. */
  readonly evalText: string;
}

const WORDS = (
  'the a little big small red blue green happy sad cat dog bird fish tree house park sun moon star ' +
  'girl boy mom dad friend ball toy cake book box door window garden flower river hill road day night ' +
  'ran saw found liked wanted played jumped looked said went came made gave took helped smiled laughed ' +
  'and but so then when because with to in on at under over near after before very too all one two three'
).split(' ');

/** Sentences from a fixed word list, drawn with a seeded PRNG: deterministic text for any length.
 *
 * @example
 * ```ts
 * demoText(1, 2); // two short sentences from the demo word list, the same for seed 1 everywhere
 * ```
 */
export function demoText(seed: number, sentences: number): string {
  const rng = new Rng(seed);
  const out: string[] = [];
  for (let s = 0; s < sentences; s++) {
    const n = 5 + rng.int(8);
    const words: string[] = [];
    for (let i = 0; i < n; i++) words.push(WORDS[rng.int(WORDS.length)] as string);
    const first = words[0] as string;
    words[0] = first.charAt(0).toUpperCase() + first.slice(1);
    out.push(`${words.join(' ')}${rng.next() < 0.2 ? '!' : '.'}`);
  }
  return out.join(' ');
}

/**
 * A 512-piece llama2.c-style tokenizer: <unk>, BOS, EOS, the 256 byte-fallback pieces, printable ASCII, then
 * frequent pieces of the demo word list (scored so that longer merges win), so text encodes to a few tokens a
 * word as with a real BPE vocabulary.
 *
 * @example
 * ```ts
 * const tok = demoTokenizer();
 * tok.decode(tok.encode(' The little cat')); // ' The little cat'
 * ```
 */
export function demoTokenizer(vocabSize = 512): TextTokenizer {
  const enc = new TextEncoder();
  const pieces = demoPieces(vocabSize);
  const scores = new Float32Array(pieces.length);
  pieces.forEach((p, i) => {
    scores[i] = i < 259 ? 0 : p.length * 10 - i * 1e-3;
  });
  const maxLen = Math.max(...pieces.map((p) => enc.encode(p).length));
  return wrapLlama2cTokenizer(
    new Llama2cTokenizer(
      pieces.map((p) => enc.encode(p)),
      scores,
      maxLen,
    ),
    [],
  );
}

/** The pieces of `demoTokenizer`, by id.
 *
 * @example
 * ```ts
 * demoPieces()[1]; // '\n<s>\n' (BOS)
 * ```
 */
export function demoPieces(vocabSize = 512): string[] {
  const pieces: string[] = ['<unk>', '\n<s>\n', '\n</s>\n'];
  for (let b = 0; b < 256; b++) pieces.push(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
  for (let c = 32; c < 127; c++) pieces.push(String.fromCharCode(c));
  const seen = new Set(pieces);
  const candidates: string[] = [];
  // Every prefix of " word" and "word" (lengths ≥ 2), so merges can build each word step by step.
  for (const w of WORDS)
    for (const form of [` ${w}`, w, ` ${w.charAt(0).toUpperCase()}${w.slice(1)}`])
      for (let l = 2; l <= form.length; l++) candidates.push(form.slice(0, l));
  for (const c of candidates) {
    if (pieces.length >= vocabSize) break;
    if (!seen.has(c)) {
      seen.add(c);
      pieces.push(c);
    }
  }
  while (pieces.length < vocabSize) pieces.push(`<extra_${pieces.length}>`);
  return pieces;
}

/**
 * Builds the deterministic synthetic Llama-style model of `q demo` (seeded; dim 512, 4 layers by default) with
 * the activation outliers of real LLMs:
 * - a few residual channels hold a near-constant value that no layer writes to, and every RMSNorm has a gain
 *   of 60–90 there, so after each norm those channels are ~50–100x the others (LAE territory: 15 ≤ r < 150);
 * - a few MLP channels have gate and up rows along one shared direction, so their product (the down_proj
 *   input) grows with the square of a Gaussian: small for most tokens, very large for a few (r ≥ 150, where a
 *   per-tensor static scale loses every ordinary channel and a per-token dynamic scale does not).
 *
 * @example
 * ```ts
 * const demo = buildDemoModel();
 * const model = Model.fromFloatWeights(demo.config, demo.weights);
 * ```
 */
export function buildDemoModel(options: DemoModelOptions = {}): DemoModel {
  const seed = options.seed ?? 1234;
  const d = options.hiddenSize ?? 512;
  const ff = options.intermediateSize ?? 1024;
  const layers = options.numLayers ?? 4;
  const nOut = options.outlierChannels ?? 4;
  const [gLo, gHi] = options.outlierGain ?? [70, 120];
  const nHeavy = options.heavyTailChannels ?? 8;
  const heavyGain = options.heavyTailGain ?? 8;
  const residualScale = options.residualScale ?? 0.4;
  const tokenizer = demoTokenizer(512);
  const pieces = demoPieces(512);
  const unreadable = (v: number): boolean =>
    v === 0 || (v >= 3 && v < 259) || (pieces[v] ?? '').startsWith('<extra_');
  const config: ModelConfig = {
    architecture: 'llama',
    hiddenSize: d,
    intermediateSize: ff,
    numLayers: layers,
    numHeads: 8,
    numKvHeads: 4,
    headDim: d / 8,
    vocabSize: tokenizer.vocabSize,
    maxSeqLen: 256,
    rmsNormEps: 1e-5,
    ropeTheta: 10000,
    ropeScaling: { type: 'none' },
    ropeStyle: 'half',
    tieWordEmbeddings: false,
    attentionBias: false,
    bosTokenId: 1,
    eosTokenIds: [2],
  };
  const rng = new Rng(seed);
  const outliers: number[] = [];
  while (outliers.length < nOut) {
    const c = rng.int(d);
    if (!outliers.includes(c)) outliers.push(c);
  }
  const isOutlier = new Uint8Array(d);
  for (const c of outliers) isOutlier[c] = 1;
  const weights = new Map<string, Tensor<'f32'>>();
  const shapes = new Map<string, number[]>();
  for (const t of llamaTensors(config, { includeTiedHead: true })) shapes.set(t.name, [...t.shape]);
  for (const [name, shape] of shapes) {
    const t = new Tensor('f32', shape);
    const w = t.data;
    const fanIn = shape.length === 2 ? (shape[1] as number) : 1;
    if (name.endsWith('norm.weight')) {
      for (let i = 0; i < d; i++)
        w[i] = isOutlier[i] ? gLo + (gHi - gLo) * rng.next() : 0.8 + 0.4 * rng.next();
      if (name === 'model.norm.weight') for (const c of outliers) w[c] = 1;
    } else if (name === 'model.embed_tokens.weight') {
      for (let v = 0; v < config.vocabSize; v++)
        for (let i = 0; i < d; i++) w[v * d + i] = isOutlier[i] ? 1 + 0.05 * rng.normal() : rng.normal();
    } else {
      // Layers write small updates into a residual stream dominated by the embeddings, as in trained models.
      const writesResidual = name.includes('o_proj') || name.includes('down_proj');
      const std = (name === 'lm_head.weight' ? 3 : writesResidual ? residualScale : 1) / Math.sqrt(fanIn);
      for (let i = 0; i < w.length; i++) w[i] = std * rng.normal();
      // Outlier channels of the residual stream stay constant: no layer writes to them, and no
      // projection reads them strongly (as in real models, where they act like a bias).
      if (writesResidual) for (const c of outliers) w.fill(0, c * fanIn, (c + 1) * fanIn);
      else if (shape[1] === d)
        for (let r = 0; r < (shape[0] as number); r++)
          for (const c of outliers) w[r * d + c] = (w[r * d + c] as number) * 0.01;
    }
    // Byte-fallback and filler pieces never win: generated text stays readable and valid UTF-8.
    if (name === 'lm_head.weight')
      for (let v = 0; v < config.vocabSize; v++) if (unreadable(v)) w.fill(0, v * d, (v + 1) * d);
    weights.set(name, t);
  }
  // Heavy-tailed down_proj inputs: gate and up rows of a few channels along one shared direction u.
  for (let l = 0; l < layers; l++) {
    const u = new Float64Array(d);
    let nrm = 0;
    for (let i = 0; i < d; i++) {
      u[i] = isOutlier[i] ? 0 : rng.normal();
      nrm += (u[i] as number) ** 2;
    }
    nrm = Math.sqrt(nrm);
    const gate = weights.get(`model.layers.${l}.mlp.gate_proj.weight`)?.data as Float32Array;
    const up = weights.get(`model.layers.${l}.mlp.up_proj.weight`)?.data as Float32Array;
    const down = weights.get(`model.layers.${l}.mlp.down_proj.weight`)?.data as Float32Array;
    for (let h = 0; h < nHeavy; h++) {
      const r = rng.int(ff);
      for (let i = 0; i < d; i++) {
        gate[r * d + i] = (heavyGain * (u[i] as number)) / nrm;
        up[r * d + i] = (heavyGain * (u[i] as number)) / nrm;
      }
      // Their down_proj columns are small so the residual stream stays in range.
      for (let o = 0; o < d; o++) down[o * ff + r] = (down[o * ff + r] as number) * 0.01;
    }
  }
  const calibText = demoText(seed + 1, 60);
  return { config, weights, tokenizer, calibText, evalText: demoText(seed + 2, 40) };
}
