import { QError } from '@q/core';
import { quantizeActPerToken, quantizeActStatic } from './activation';
import { INT32_MAX } from './intscale';
import type { GemmScaleMode, Int4Weights, Int8Weights, QuantizedLinear } from './types';
import { dequantizeInt4, dequantizeInt8, unpackInt4Weights } from './weights';

/**
 * The golden (reference) GEMMs: out[m, n] = Σ_k a[m, k] · w[n, k] with int8 activations, integer weights, exact
 * integer accumulation and the f32 epilogues of `types.ts`. `@q/kernels-cuda` is tested against these.
 */

const unpackCache = new WeakMap<Int4Weights, Int8Array>();
const dequantCache = new WeakMap<object, Float32Array>();

/**
 * The effective integer weights `q − zero` as an Int8Array [n, kPadded], unpacked once per weights object.
 * Padded columns are 0.
 */
function effectiveInts(w: Int4Weights): Int8Array {
  let v = unpackCache.get(w);
  if (v) return v;
  v = unpackInt4Weights(w);
  if (w.zeros) {
    const groups = w.kPadded / w.groupSize;
    for (let r = 0; r < w.n; r++) {
      for (let j = 0; j < w.kPadded; j++) {
        const i = r * w.kPadded + j;
        v[i] = (v[i] as number) - (w.zeros[r * groups + Math.floor(j / w.groupSize)] as number);
      }
    }
  }
  unpackCache.set(w, v);
  return v;
}

export interface GemmW4A8Args {
  /** int8 activations, row-major [m, kPadded] (padding columns 0). */
  readonly a: Int8Array;
  /** f32 activation scales: [m] (per token) or [1] (per tensor). */
  readonly aScales: Float32Array;
  readonly m: number;
  readonly weights: Int4Weights;
  readonly mode: GemmScaleMode;
}

/** The exact integer part of a W4A8 GEMM. */
export interface GemmIntResult {
  readonly mode: GemmScaleMode;
  readonly m: number;
  readonly n: number;
  readonly groups: number;
  /**
   * per-channel: Σ_g P_g, [m, n]; group-int: Σ_g q[n, g] · P_g, [m, n]; group-float: the partial sums P_g,
   * [m, n, groups]. Asymmetric weights contribute `q − zero`.
   */
  readonly values: Int32Array;
}

/** The int8 activations [m, k] and their m (per-token) or 1 (per-tensor) scales fit the GEMM's shape. */
function checkActivations(
  what: string,
  a: Int8Array,
  aScales: Float32Array,
  m: number,
  k: number,
  kName: string,
): void {
  if (a.length !== m * k) {
    throw new QError(
      'E_SHAPE',
      `Expected ${m * k} int8 activations (m=${m} × ${kName}=${k}) for ${what} a but received ${a.length}`,
    );
  }
  if (aScales.length !== m && aScales.length !== 1) {
    throw new QError(
      'E_SHAPE',
      `Expected ${m} or 1 activation scales for ${what} aScales but received ${aScales.length}`,
    );
  }
}

function checkArgs(args: GemmW4A8Args): { groups: number } {
  const { a, aScales, m, weights: w, mode } = args;
  if (!Number.isSafeInteger(m) || m < 0)
    throw new QError('E_SHAPE', `Expected m ≥ 0 for gemmW4A8 but received ${m}`);
  checkActivations('gemmW4A8', a, aScales, m, w.kPadded, 'kPadded');
  const groups = w.kPadded / w.groupSize;
  if (mode === 'per-channel' && groups !== 1) {
    throw new QError(
      'E_ARG',
      `Expected per-channel weights (one group) for gemmW4A8 mode 'per-channel' but received ${groups} groups of ${w.groupSize}`,
    );
  }
  if (mode === 'group-int' && !w.intScale) {
    throw new QError(
      'E_ARG',
      `Expected weights with an intScale for gemmW4A8 mode 'group-int' but received none`,
    );
  }
  if (mode === 'group-int' && !w.symmetric) {
    throw new QError(
      'E_ARG',
      `Expected symmetric weights for gemmW4A8 mode 'group-int' but received asymmetric`,
    );
  }
  if (127 * 15 * w.groupSize > INT32_MAX) {
    throw new QError(
      'E_OVERFLOW',
      `Expected a group of at most ${Math.floor(INT32_MAX / (127 * 15))} elements for an int32 partial sum but received ${w.groupSize}`,
    );
  }
  if (mode !== 'per-channel' && mode !== 'group-float' && mode !== 'group-int') {
    throw new QError(
      'E_ARG',
      `Expected one of per-channel, group-float, group-int for gemmW4A8 mode but received ${String(mode)}`,
    );
  }
  return { groups };
}

function overflow(what: string, i: number, c: number, v: number): never {
  throw new QError(
    'E_OVERFLOW',
    `Expected an int32 ${what} for gemmW4A8 output [${i}, ${c}] but received ${v}; the layer's Integer Scale overflow check was bypassed`,
  );
}

/**
 * Integer accumulators: for each (i, c) the group partial sums P_g are formed in `partials[off .. off + groups)`
 * and handed to `visit`, which combines them per the mode. Rows go in blocks of four so that each weight value
 * loaded serves four rows; `| 0` keeps the sums in int32 arithmetic, exact because |P_g| ≤ 127 · 15 · G.
 */
function forEachOutput(
  args: GemmW4A8Args,
  groups: number,
  visit: (i: number, c: number, partials: Int32Array, off: number) => void,
): void {
  const { a, m, weights: w } = args;
  const wv = effectiveInts(w);
  const kp = w.kPadded;
  const gs = w.groupSize;
  const partials = new Int32Array(4 * groups);
  const blocked = m - (m % 4);
  for (let i0 = 0; i0 < blocked; i0 += 4) {
    const rows = 4;
    const a0 = i0 * kp;
    const a1 = a0 + kp;
    const a2 = a1 + kp;
    const a3 = a2 + kp;
    for (let c = 0; c < w.n; c++) {
      const wo = c * kp;
      for (let g = 0; g < groups; g++) {
        let s0 = 0;
        let s1 = 0;
        let s2 = 0;
        let s3 = 0;
        const k0 = g * gs;
        for (let j = k0; j < k0 + gs; j++) {
          const wj = wv[wo + j] as number;
          s0 = (s0 + (a[a0 + j] as number) * wj) | 0;
          s1 = (s1 + (a[a1 + j] as number) * wj) | 0;
          s2 = (s2 + (a[a2 + j] as number) * wj) | 0;
          s3 = (s3 + (a[a3 + j] as number) * wj) | 0;
        }
        partials[g] = s0;
        partials[groups + g] = s1;
        partials[2 * groups + g] = s2;
        partials[3 * groups + g] = s3;
      }
      for (let r = 0; r < rows; r++) visit(i0 + r, c, partials, r * groups);
    }
  }
  // Rows left over after the blocks of four (all of decode's single row) go one at a time, so no row's sums
  // are computed more than once.
  for (let i = blocked; i < m; i++) {
    const ai = i * kp;
    for (let c = 0; c < w.n; c++) {
      const wo = c * kp;
      for (let g = 0; g < groups; g++) {
        let s0 = 0;
        const k0 = g * gs;
        for (let j = k0; j < k0 + gs; j++) s0 = (s0 + (a[ai + j] as number) * (wv[wo + j] as number)) | 0;
        partials[g] = s0;
      }
      visit(i, c, partials, 0);
    }
  }
}

/**
 * The golden W4A8 GEMM. Returns f32 out[m, n] per the epilogue of `mode` (see `types.ts`), or with
 * `returnInt: true` the exact integer accumulators (`GemmIntResult`). Throws `E_OVERFLOW` if an int32
 * accumulator would wrap (which the offline Integer Scale check rules out).
 *
 * @example
 * ```ts
 * const w = withIntegerScale(quantizeInt4(wf, n, k, { groupSize: 128 }));
 * const { q, scales } = quantizeActPerToken(x, m, k, { kPadded: w.kPadded });
 * const out = gemmW4A8Golden({ a: q, aScales: scales, m, weights: w, mode: 'group-int' });
 * ```
 */
export function gemmW4A8Golden(args: GemmW4A8Args & { readonly returnInt: true }): GemmIntResult;
export function gemmW4A8Golden(args: GemmW4A8Args & { readonly returnInt?: false }): Float32Array;
export function gemmW4A8Golden(
  args: GemmW4A8Args & { readonly returnInt?: boolean },
): Float32Array | GemmIntResult {
  if (args.returnInt) return gemmW4A8GoldenInt(args);
  const { groups } = checkArgs(args);
  const { m, weights: w, mode, aScales } = args;
  const out = new Float32Array(m * w.n);
  const perRow = aScales.length === m;
  if (mode === 'group-float') {
    forEachOutput(args, groups, (i, c, partial, off) => {
      let s = 0;
      const so = c * groups;
      for (let g = 0; g < groups; g++) {
        s = Math.fround(s + Math.fround((partial[off + g] as number) * (w.scales[so + g] as number)));
      }
      out[i * w.n + c] = Math.fround(s * (aScales[perRow ? i : 0] as number));
    });
    return out;
  }
  const iq = w.intScale?.q;
  forEachOutput(args, groups, (i, c, partial, off) => {
    let acc = 0;
    if (mode === 'group-int' && iq) {
      const so = c * groups;
      for (let g = 0; g < groups; g++) {
        acc += (iq[so + g] as number) * (partial[off + g] as number);
        if (acc > INT32_MAX || acc < -INT32_MAX - 1) overflow('Integer Scale accumulator', i, c, acc);
      }
    } else {
      for (let g = 0; g < groups; g++) acc += partial[off + g] as number;
    }
    const wScale = mode === 'group-int' ? (w.intScale?.unit[c] as number) : (w.scales[c] as number);
    out[i * w.n + c] = Math.fround(
      Math.fround(Math.fround(acc) * (aScales[perRow ? i : 0] as number)) * wScale,
    );
  });
  return out;
}

/**
 * The exact integer part of the golden W4A8 GEMM (see `GemmIntResult`), for kernel tests.
 *
 * @example
 * ```ts
 * const { values } = gemmW4A8GoldenInt({ a, aScales, m, weights: w, mode: 'group-float' }); // [m, n, groups]
 * ```
 */
export function gemmW4A8GoldenInt(args: GemmW4A8Args): GemmIntResult {
  const { groups } = checkArgs(args);
  const { m, weights: w, mode } = args;
  if (mode === 'group-float') {
    const values = new Int32Array(m * w.n * groups);
    forEachOutput(args, groups, (i, c, partial, off) =>
      values.set(partial.subarray(off, off + groups), (i * w.n + c) * groups),
    );
    return { mode, m, n: w.n, groups, values };
  }
  const values = new Int32Array(m * w.n);
  const iq = w.intScale?.q;
  forEachOutput(args, groups, (i, c, partial, off) => {
    let acc = 0;
    for (let g = 0; g < groups; g++) {
      acc +=
        mode === 'group-int' && iq
          ? (iq[c * groups + g] as number) * (partial[off + g] as number)
          : (partial[off + g] as number);
      if (acc > INT32_MAX || acc < -INT32_MAX - 1) overflow('accumulator', i, c, acc);
    }
    values[i * w.n + c] = acc;
  });
  return { mode, m, n: w.n, groups, values };
}

export interface GemmW8A8Args {
  /** int8 activations, row-major [m, k]. */
  readonly a: Int8Array;
  /** f32 activation scales, [m] or [1]. */
  readonly aScales: Float32Array;
  readonly m: number;
  readonly weights: Int8Weights;
}

/**
 * The golden W8A8 GEMM: `acc = Σ_k a · w` in int32, `out = f32(f32(f32(acc) · aScale[m]) · wScale[n])`.
 *
 * @example
 * ```ts
 * const { q, scales } = quantizeActPerToken(x, m, k);
 * const out = gemmW8A8Golden({ a: q, aScales: scales, m, weights: quantizeInt8(wf, n, k) });
 * ```
 */
export function gemmW8A8Golden(args: GemmW8A8Args): Float32Array {
  const { a, aScales, m, weights: w } = args;
  checkActivations('gemmW8A8', a, aScales, m, w.k, 'k');
  const perRow = aScales.length === m;
  const out = new Float32Array(m * w.n);
  const k = w.k;
  if (127 * 127 * k > INT32_MAX) {
    throw new QError(
      'E_OVERFLOW',
      `Expected K ≤ ${Math.floor(INT32_MAX / (127 * 127))} for an int32 W8A8 accumulation but received K=${k}`,
    );
  }
  const wd = w.data;
  for (let i0 = 0; i0 < m; i0 += 4) {
    const rows = Math.min(4, m - i0);
    const a0 = i0 * k;
    const a1 = (rows > 1 ? i0 + 1 : i0) * k;
    const a2 = (rows > 2 ? i0 + 2 : i0) * k;
    const a3 = (rows > 3 ? i0 + 3 : i0) * k;
    for (let c = 0; c < w.n; c++) {
      const wo = c * k;
      let s0 = 0;
      let s1 = 0;
      let s2 = 0;
      let s3 = 0;
      for (let j = 0; j < k; j++) {
        const wj = wd[wo + j] as number;
        s0 = (s0 + (a[a0 + j] as number) * wj) | 0;
        s1 = (s1 + (a[a1 + j] as number) * wj) | 0;
        s2 = (s2 + (a[a2 + j] as number) * wj) | 0;
        s3 = (s3 + (a[a3 + j] as number) * wj) | 0;
      }
      const acc = [s0, s1, s2, s3];
      for (let r = 0; r < rows; r++) {
        const i = i0 + r;
        const as = aScales[perRow ? i : 0] as number;
        out[i * w.n + c] = Math.fround(
          Math.fround(Math.fround(acc[r] as number) * as) * (w.scales[c] as number),
        );
      }
    }
  }
  return out;
}

/**
 * The scale mode `linearForward` uses for int4 weights: group-int with an intScale, else by group count.
 *
 * @example
 * ```ts
 * gemmModeFor(quantizeInt4(w, n, 4096, { groupSize: 'channel' })) // 'per-channel'
 * ```
 */
export function gemmModeFor(w: Int4Weights): GemmScaleMode {
  if (w.intScale) return 'group-int';
  return w.kPadded === w.groupSize ? 'per-channel' : 'group-float';
}

function floatMatmul(x: Float32Array, m: number, k: number, wf: Float32Array, n: number): Float32Array {
  const out = new Float32Array(m * n);
  for (let i0 = 0; i0 < m; i0 += 4) {
    const rows = Math.min(4, m - i0);
    const x0 = i0 * k;
    const x1 = (rows > 1 ? i0 + 1 : i0) * k;
    const x2 = (rows > 2 ? i0 + 2 : i0) * k;
    const x3 = (rows > 3 ? i0 + 3 : i0) * k;
    for (let c = 0; c < n; c++) {
      const wo = c * k;
      let s0 = 0;
      let s1 = 0;
      let s2 = 0;
      let s3 = 0;
      for (let j = 0; j < k; j++) {
        const wj = wf[wo + j] as number;
        s0 += (x[x0 + j] as number) * wj;
        s1 += (x[x1 + j] as number) * wj;
        s2 += (x[x2 + j] as number) * wj;
        s3 += (x[x3 + j] as number) * wj;
      }
      out[i0 * n + c] = s0;
      if (rows > 1) out[(i0 + 1) * n + c] = s1;
      if (rows > 2) out[(i0 + 2) * n + c] = s2;
      if (rows > 3) out[(i0 + 3) * n + c] = s3;
    }
  }
  return out;
}

function dequantized(w: Int4Weights | Int8Weights): Float32Array {
  let d = dequantCache.get(w);
  if (!d) {
    d = w.format === 'int4' ? dequantizeInt4(w) : dequantizeInt8(w);
    dequantCache.set(w, d);
  }
  return d;
}

/**
 * Runs one quantized linear layer on f32 input x[m, k] and returns f32 y[m, n]: the activation quantizer of
 * `layer.act` then the golden integer GEMM (int4: the mode from `gemmModeFor`; int8: W8A8). With act 'none'
 * or f32 weights it multiplies by the dequantized weights in float64 and rounds once to f32 (the CUDA path
 * there is not bit-specified). The bias, if any, is added in f32.
 *
 * @example
 * ```ts
 * const y = linearForward(x, m, { name: 'q_proj', weights: q, act: 'dynamic' });
 * ```
 */
export function linearForward(x: Float32Array, m: number, layer: QuantizedLinear): Float32Array {
  const w = layer.weights;
  const { k, n } = w;
  if (x.length !== m * k) {
    throw new QError(
      'E_SHAPE',
      `Expected ${m * k} inputs (m=${m} × k=${k}) for layer ${layer.name} but received ${x.length}`,
    );
  }
  let out: Float32Array;
  if (layer.act === 'none' || w.format === 'f32') {
    let xin = x;
    if (layer.act !== 'none') {
      // Float weights with quantized activations: fake-quantize the input.
      xin = new Float32Array(x.length);
      if (layer.act === 'dynamic') {
        const { q, scales } = quantizeActPerToken(x, m, k, { name: layer.name });
        for (let i = 0; i < x.length; i++)
          xin[i] = Math.fround((q[i] as number) * (scales[Math.floor(i / k)] as number));
      } else {
        const s = staticScaleOf(layer);
        const q = quantizeActStatic(x, s, { name: layer.name });
        for (let i = 0; i < x.length; i++) xin[i] = Math.fround((q[i] as number) * s);
      }
    }
    out = floatMatmul(xin, m, k, w.format === 'f32' ? w.data : dequantized(w), n);
  } else {
    const kPadded = w.format === 'int4' ? w.kPadded : k;
    let a: Int8Array;
    let aScales: Float32Array;
    if (layer.act === 'dynamic') {
      const r = quantizeActPerToken(x, m, k, { kPadded, name: layer.name });
      a = r.q;
      aScales = r.scales;
    } else {
      const s = staticScaleOf(layer);
      a = quantizeActStatic(x, s, { m, k, kPadded, name: layer.name });
      aScales = Float32Array.of(s);
    }
    out =
      w.format === 'int4'
        ? gemmW4A8Golden({ a, aScales, m, weights: w, mode: gemmModeFor(w) })
        : gemmW8A8Golden({ a, aScales, m, weights: w });
  }
  if (layer.bias) {
    for (let i = 0; i < m; i++) {
      for (let c = 0; c < n; c++)
        out[i * n + c] = Math.fround((out[i * n + c] as number) + (layer.bias[c] as number));
    }
  }
  return out;
}

function staticScaleOf(layer: QuantizedLinear): number {
  const s = layer.staticScale;
  if (s === undefined || !(s > 0) || !Number.isFinite(s)) {
    throw new QError(
      'E_ARG',
      `Expected a positive static activation scale for layer ${layer.name} but received ${s}`,
    );
  }
  return Math.fround(s);
}
