import type { ModelConfig } from '@q/core';

/** RMSNorm of each row of x [rows, dim] with gain g: out = x / sqrt(mean(x²) + eps) · g.
 *
 * @example
 * ```ts
 * rmsNorm(Float32Array.of(3, 4), 1, 2, Float32Array.of(1, 1), 0); // [0.8485, 1.1314]
 * ```
 */
export function rmsNorm(
  x: Float32Array,
  rows: number,
  dim: number,
  g: Float32Array,
  eps: number,
): Float32Array {
  const out = new Float32Array(rows * dim);
  for (let r = 0; r < rows; r++) {
    const o = r * dim;
    let ss = 0;
    for (let i = 0; i < dim; i++) {
      const v = x[o + i] as number;
      ss += v * v;
    }
    const inv = 1 / Math.sqrt(ss / dim + eps);
    for (let i = 0; i < dim; i++) out[o + i] = (x[o + i] as number) * inv * (g[i] as number);
  }
  return out;
}

/**
 * Inverse frequencies of RoPE, one per rotated pair, with the model's scaling applied (linear divides every
 * frequency by the factor; llama3 divides only the low frequencies and blends the band between, as in
 * Hugging Face's `_compute_llama3_parameters`).
 *
 * @example
 * ```ts
 * ropeInvFreq(config)[0]; // 1 for every config: theta^0
 * ```
 */
export function ropeInvFreq(config: ModelConfig): Float64Array {
  const half = config.headDim / 2;
  const inv = new Float64Array(half);
  const sc = config.ropeScaling;
  for (let i = 0; i < half; i++) {
    let f = 1 / config.ropeTheta ** ((2 * i) / config.headDim);
    if (sc.type === 'linear') f /= sc.factor;
    else if (sc.type === 'llama3') {
      const lowWavelen = sc.originalMaxPositionEmbeddings / sc.lowFreqFactor;
      const highWavelen = sc.originalMaxPositionEmbeddings / sc.highFreqFactor;
      const wavelen = (2 * Math.PI) / f;
      if (wavelen > lowWavelen) f /= sc.factor;
      else if (wavelen >= highWavelen) {
        const smooth =
          (sc.originalMaxPositionEmbeddings / wavelen - sc.lowFreqFactor) /
          (sc.highFreqFactor - sc.lowFreqFactor);
        f = (1 - smooth) * (f / sc.factor) + smooth * f;
      }
    }
    inv[i] = f;
  }
  return inv;
}

/** Cos/sin tables [maxPos, headDim/2], grown on demand.
 *
 * @example
 * ```ts
 * new RopeTable(ropeInvFreq(config)).apply(q, 0, config.numHeads, pos, config.ropeStyle);
 * ```
 */
export class RopeTable {
  private cos = new Float32Array(0);
  private sin = new Float32Array(0);
  private rows = 0;
  private readonly half: number;

  constructor(private readonly invFreq: Float64Array) {
    this.half = invFreq.length;
  }

  private ensure(pos: number): void {
    if (pos < this.rows) return;
    const rows = Math.max(pos + 1, this.rows * 2, 64);
    const cos = new Float32Array(rows * this.half);
    const sin = new Float32Array(rows * this.half);
    for (let p = 0; p < rows; p++) {
      for (let i = 0; i < this.half; i++) {
        const a = p * (this.invFreq[i] as number);
        cos[p * this.half + i] = Math.cos(a);
        sin[p * this.half + i] = Math.sin(a);
      }
    }
    this.cos = cos;
    this.sin = sin;
    this.rows = rows;
  }

  /** Rotates `heads` heads of size 2·half stored at x[off ...] in place for position pos. */
  apply(x: Float32Array, off: number, heads: number, pos: number, style: 'interleaved' | 'half'): void {
    this.ensure(pos);
    const half = this.half;
    const hd = half * 2;
    const base = pos * half;
    for (let h = 0; h < heads; h++) {
      const o = off + h * hd;
      for (let i = 0; i < half; i++) {
        const c = this.cos[base + i] as number;
        const s = this.sin[base + i] as number;
        const ia = style === 'interleaved' ? o + 2 * i : o + i;
        const ib = style === 'interleaved' ? ia + 1 : ia + half;
        const a = x[ia] as number;
        const b = x[ib] as number;
        x[ia] = a * c - b * s;
        x[ib] = a * s + b * c;
      }
    }
  }
}

/** In-place softmax over x[off, off + n).
 *
 * @example
 * ```ts
 * const x = Float64Array.of(0, Math.log(3));
 * softmaxInPlace(x, 0, 2); // [0.25, 0.75]
 * ```
 */
export function softmaxInPlace(x: Float32Array | Float64Array, off: number, n: number): void {
  let max = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < n; i++) if ((x[off + i] as number) > max) max = x[off + i] as number;
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const e = Math.exp((x[off + i] as number) - max);
    x[off + i] = e;
    sum += e;
  }
  for (let i = 0; i < n; i++) x[off + i] = (x[off + i] as number) / sum;
}
