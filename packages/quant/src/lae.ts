import { QError } from '@q/core';
import { assertFinite } from './weights';

/**
 * Logarithmic Activation Equalization (FPTQ): per input channel `s_j = max|X_j| / log2(2 + max|X_j|)`;
 * the layer computes `W · x = (W · diag(s)) · (x / s)`, and `x / s` is folded into the preceding norm.
 */

/** Default lower clamp of LAE scales, so a dead channel (max|X| = 0) never divides by zero. */
export const DEFAULT_LAE_MIN_SCALE = 1e-5;

export interface LaeOptions {
  /** Scales below this are raised to it. Default 1e-5. */
  readonly minScale?: number;
  /** Layer name for error messages. */
  readonly name?: string;
}

/**
 * The LAE scales of one input: `s_j = max(minScale, f32(m_j / log2(2 + m_j)))` with m = max|X_j|.
 * Throws `E_NUMERIC` naming the layer for NaN/±Inf/negative statistics.
 *
 * @example
 * ```ts
 * laeScales(Float32Array.of(0, 2, 100)) // [1e-5, 1, 100 / log2(102)]
 * ```
 */
export function laeScales(maxAbs: Float32Array, options: LaeOptions = {}): Float32Array {
  const minScale = options.minScale ?? DEFAULT_LAE_MIN_SCALE;
  const name = options.name ?? 'activations';
  if (!(minScale > 0) || !Number.isFinite(minScale)) {
    throw new QError('E_ARG', `Expected a positive finite LAE minScale for ${name} but received ${minScale}`);
  }
  const s = new Float32Array(maxAbs.length);
  for (let j = 0; j < maxAbs.length; j++) {
    const m = maxAbs[j] as number;
    if (!(m >= 0) || !Number.isFinite(m)) {
      throw new QError(
        'E_NUMERIC',
        `Expected a finite max|X| ≥ 0 for ${name} channel ${j} but received ${m}`,
      );
    }
    s[j] = Math.max(Math.fround(minScale), Math.fround(m / Math.log2(2 + m)));
  }
  return s;
}

/** A norm gain (and optional bias) followed by the linear layers that read its output. */
export interface LaeFoldInput {
  /** Norm gain [k] (RMSNorm weight). */
  readonly normWeight: Float32Array;
  /** Norm bias [k] (LayerNorm-style), if any. */
  readonly normBias?: Float32Array;
  /** Weights [n_i, k] of every layer sharing the input (q/k/v, or gate/up). */
  readonly linears: readonly { readonly name: string; readonly weight: Float32Array }[];
  /** LAE scales [k]. */
  readonly scales: Float32Array;
}

export interface LaeFoldOutput {
  readonly normWeight: Float32Array;
  readonly normBias?: Float32Array;
  /** Weights with column j multiplied by s_j, in the order given. */
  readonly linears: readonly { readonly name: string; readonly weight: Float32Array }[];
}

/**
 * Folds LAE into a norm and the layers after it: gain and bias divided by s, weight columns multiplied by s
 * (in f32). The float model computes the same function up to f32 rounding of the folded parameters. Pure:
 * the inputs are not modified.
 *
 * @example
 * ```ts
 * const s = laeScales(obs.maxAbs('model.layers.0.self_attn.q_proj'));
 * const f = foldLae({ normWeight: g, linears: [{ name: 'q', weight: wq }, { name: 'k', weight: wk }], scales: s });
 * ```
 */
export function foldLae(input: LaeFoldInput): LaeFoldOutput {
  const { normWeight, normBias, linears, scales } = input;
  const k = scales.length;
  if (normWeight.length !== k || (normBias && normBias.length !== k)) {
    throw new QError(
      'E_SHAPE',
      `Expected a norm gain${normBias ? ' and bias' : ''} of length ${k} for LAE folding but received ${normWeight.length}${
        normBias ? ` and ${normBias.length}` : ''
      }`,
    );
  }
  for (let j = 0; j < k; j++) {
    const s = scales[j] as number;
    if (!(s > 0) || !Number.isFinite(s)) {
      throw new QError('E_NUMERIC', `Expected positive finite LAE scales but received ${s} at channel ${j}`);
    }
  }
  const g = new Float32Array(k);
  for (let j = 0; j < k; j++) g[j] = (normWeight[j] as number) / (scales[j] as number);
  let b: Float32Array | undefined;
  if (normBias) {
    b = new Float32Array(k);
    for (let j = 0; j < k; j++) b[j] = (normBias[j] as number) / (scales[j] as number);
  }
  const out = linears.map(({ name, weight }) => {
    if (weight.length % k !== 0) {
      throw new QError(
        'E_SHAPE',
        `Expected a multiple of k=${k} elements for ${name} but received ${weight.length}`,
      );
    }
    assertFinite(weight, name, k);
    const w = new Float32Array(weight.length);
    for (let i = 0; i < weight.length; i++) w[i] = (weight[i] as number) * (scales[i % k] as number);
    return { name, weight: w };
  });
  return b ? { normWeight: g, normBias: b, linears: out } : { normWeight: g, linears: out };
}
