/**
 * The kernels as typed functions. Every argument is validated here, in TypeScript, before any native call,
 * so that a bad call throws a QError naming the numbers (and is testable without a GPU); the native side
 * only re-checks what would corrupt memory. A call is cheap: the checks are plain comparisons (the messages
 * are built only on failure), the device check is cached per thread (`useDevice`), and the arguments go to
 * the addon in one reused typed array (src/args.ts).
 */
import { type DType, QError } from '@q/core';
import type { GemmScaleMode } from '@q/quant';
import { ARG_F, ARG_I, ARG_P, ARGS } from './args';
import {
  callNative,
  DeviceTensor,
  deviceProperties,
  nativeError,
  type Stream,
  streamHandle,
  useDevice,
} from './device';
import { autoGemmVariant, isGemmVariant } from './dispatch';
import { loadNative } from './native';
import type { PackedGemmWeights } from './pack';

/** @internal Shared argument checks of the kernel wrappers. */
export function shapeText(t: DeviceTensor): string {
  return `[${t.shape.join(', ')}]`;
}

/** @internal Shared argument checks of the kernel wrappers. */
export function needDtype(op: string, name: string, t: DeviceTensor, allowed: readonly DType[]): void {
  if (!allowed.includes(t.dtype)) {
    throw new QError(
      'E_DTYPE',
      `${op}: Expected dtype ${allowed.join(' or ')} for ${name} but received ${t.dtype}`,
    );
  }
}

/** @internal Shared argument checks of the kernel wrappers. */
export function needShape(
  op: string,
  name: string,
  t: DeviceTensor,
  shape: readonly number[],
  hint = '',
): void {
  if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
    throw new QError(
      'E_SHAPE',
      `${op}: Expected shape [${shape.join(', ')}]${hint} for ${name} but received ${shapeText(t)}`,
    );
  }
}

/** @internal Shared argument checks of the kernel wrappers. */
export function needRank2(op: string, name: string, t: DeviceTensor): [number, number] {
  if (t.shape.length !== 2) {
    throw new QError(
      'E_SHAPE',
      `${op}: Expected a 2-D tensor [rows, cols] for ${name} but received ${shapeText(t)}`,
    );
  }
  return [t.shape[0] as number, t.shape[1] as number];
}

/** @internal Shared argument checks of the kernel wrappers. */
export function needAligned(op: string, name: string, t: DeviceTensor, bytes: number): bigint {
  const p = t.ptr;
  if (t.alignment < bytes) {
    throw new QError(
      'E_ARG',
      `${op}: Expected a ${bytes}-byte aligned device pointer for ${name} but received 0x${p.toString(16)}`,
    );
  }
  return p;
}

function otherDevice(op: string, name: string, t: DeviceTensor, first: string, device: number): QError {
  return new QError(
    'E_ARG',
    `${op}: Expected ${name} on device ${device} (where ${first} is) but received device ${t.device}`,
  );
}

function onDevice(op: string, first: string, device: number, name: string, t: DeviceTensor | undefined) {
  if (t !== undefined && t.device !== device) throw otherDevice(op, name, t, first, device);
}

/** @internal Shared argument checks of the kernel wrappers. */
export function sameDevice(op: string, tensors: Record<string, DeviceTensor | undefined>): number {
  let device: number | undefined;
  let first = '';
  for (const [name, t] of Object.entries(tensors)) {
    if (t === undefined) continue;
    if (device === undefined) {
      device = t.device;
      first = name;
    } else if (t.device !== device) {
      throw new QError(
        'E_ARG',
        `${op}: Expected ${name} on device ${device} (where ${first} is) but received device ${t.device}`,
      );
    }
  }
  return device ?? 0;
}

const HALF: readonly DType[] = ['f16', 'bf16'];

/** Options of `quantizeAct`. */
export interface QuantizeActOptions {
  /** fp16/bf16 [M, K]. */
  x: DeviceTensor;
  /** int8 [M, ldq], ldq ≥ K; columns K..ldq-1 are written as 0 (the GEMM's zero padding). */
  out: DeviceTensor;
  /** 'dynamic' (per token, scales written to `scales`) or 'static' (per tensor, `staticScale`). */
  mode: 'dynamic' | 'static';
  /** f32 [M], required for 'dynamic'. */
  scales?: DeviceTensor;
  /** The calibrated f32 scale for 'static' (> 0). */
  staticScale?: number;
  stream?: Stream;
}

/** Options of `rmsNormQuantize`: `quantizeAct` plus the norm. */
export interface RmsNormQuantizeOptions extends QuantizeActOptions {
  /** RMSNorm gain [K] in the dtype of x, with the LAE division already folded in. */
  gain: DeviceTensor;
  /** RMSNorm epsilon (default 1e-5). */
  eps?: number;
}

function actQuant(op: string, o: QuantizeActOptions, gain?: DeviceTensor, eps = 1e-5): void {
  needDtype(op, 'x', o.x, HALF);
  needDtype(op, 'out', o.out, ['i8']);
  const [m, k] = needRank2(op, 'x', o.x);
  const [mo, ldq] = needRank2(op, 'out', o.out);
  if (mo !== m || ldq < k) {
    throw new QError(
      'E_SHAPE',
      `${op}: Expected out of shape [${m}, ≥${k}] for x ${shapeText(o.x)} but received ${shapeText(o.out)}`,
    );
  }
  let staticScale = 0;
  if (o.mode === 'static') {
    const s = o.staticScale;
    if (typeof s !== 'number' || !Number.isFinite(s) || !(Math.fround(s) > 0)) {
      throw new QError(
        'E_ARG',
        `${op}: Expected a positive finite staticScale for mode 'static' but received ${String(s)}`,
      );
    }
    staticScale = Math.fround(s);
  } else if (o.mode === 'dynamic') {
    if (o.scales === undefined)
      throw new QError(
        'E_ARG',
        `${op}: Expected scales (f32 [${m}]) for mode 'dynamic' but received undefined`,
      );
    needDtype(op, 'scales', o.scales, ['f32']);
    needShape(op, 'scales', o.scales, [m]);
  } else {
    throw new QError('E_ARG', `${op}: Expected mode 'dynamic' or 'static' but received ${String(o.mode)}`);
  }
  if (gain !== undefined) {
    if (gain.dtype !== o.x.dtype)
      throw new QError(
        'E_DTYPE',
        `${op}: Expected dtype ${o.x.dtype} (that of x) for gain but received ${gain.dtype}`,
      );
    needShape(op, 'gain', gain, [k]);
    if (!(eps >= 0) || !Number.isFinite(eps))
      throw new QError('E_ARG', `${op}: Expected a finite eps ≥ 0 but received ${eps}`);
  }
  const device = o.x.device;
  onDevice(op, 'x', device, 'out', o.out);
  if (o.mode === 'dynamic') onDevice(op, 'x', device, 'scales', o.scales);
  onDevice(op, 'x', device, 'gain', gain);
  ARG_P[0] = needAligned(op, 'x', o.x, 2);
  ARG_P[1] = gain === undefined ? 0n : gain.ptr;
  ARG_P[2] = o.out.ptr;
  ARG_P[3] = o.mode === 'dynamic' && o.scales ? o.scales.ptr : 0n;
  ARG_P[4] = streamHandle(o.stream);
  ARG_I[0] = m;
  ARG_I[1] = k;
  ARG_I[2] = ldq;
  ARG_I[3] = o.x.dtype === 'bf16' ? 1 : 0;
  ARG_F[0] = eps;
  ARG_F[1] = staticScale;
  const b = loadNative();
  useDevice(device);
  try {
    b.actQuant(ARGS);
  } catch (e) {
    throw nativeError(e, op);
  }
}

/**
 * fp16/bf16 → int8 activation quantization, bit-identical to `@q/quant` (per-token dynamic or per-tensor
 * static). Asynchronous on `stream`.
 *
 * @example
 * ```ts
 * quantizeAct({ x, out: q, scales, mode: 'dynamic' });
 * ```
 */
export function quantizeAct(o: QuantizeActOptions): void {
  actQuant('quantizeAct', o);
}

/**
 * Fused RMSNorm + int8 quantization (`y = x / rms(x) · gain`, then as `quantizeAct`). Matches a float64
 * reference to ±1 code.
 *
 * @example
 * ```ts
 * rmsNormQuantize({ x, gain, eps: 1e-5, out: q, scales, mode: 'dynamic' });
 * ```
 */
export function rmsNormQuantize(o: RmsNormQuantizeOptions): void {
  actQuant('rmsNormQuantize', o, o.gain, o.eps ?? 1e-5);
}

/**
 * W4A8 weights on the device, from `uploadGemmWeights`: the packed int4 tiles, and the group scales (and
 * Integer Scale factors) in the tiled order of `tileScales`.
 *
 * @example
 * ```ts
 * const dw = uploadGemmWeights(quantizeInt4(w, n, k, { groupSize: 128 }));
 * gemmW4A8({ a, aScale, weights: dw, mode: 'group-float', out });
 * dw.dispose();
 * ```
 */
export class DeviceGemmWeights {
  readonly n: number;
  readonly k: number;
  readonly kPadded: number;
  readonly groupSize: number;
  readonly groups: number;
  readonly device: number;
  readonly packed: DeviceTensor<'u8'>;
  readonly scales: DeviceTensor<'f32'>;
  readonly intQ: DeviceTensor<'i32'> | undefined;
  readonly unit: DeviceTensor<'f32'> | undefined;

  constructor(p: {
    n: number;
    k: number;
    kPadded: number;
    groupSize: number;
    groups: number;
    device: number;
    packed: DeviceTensor<'u8'>;
    scales: DeviceTensor<'f32'>;
    intQ?: DeviceTensor<'i32'>;
    unit?: DeviceTensor<'f32'>;
  }) {
    this.n = p.n;
    this.k = p.k;
    this.kPadded = p.kPadded;
    this.groupSize = p.groupSize;
    this.groups = p.groups;
    this.device = p.device;
    this.packed = p.packed;
    this.scales = p.scales;
    this.intQ = p.intQ;
    this.unit = p.unit;
  }

  dispose(): void {
    this.packed.dispose();
    this.scales.dispose();
    this.intQ?.dispose();
    this.unit?.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

/**
 * Group scales [n, groups] → the kernels' tiled order [n/16][groups][16], so that the 16 rows of a weight tile
 * read one group's scales from 64 contiguous bytes (row-major [n, groups] would touch 16 sectors).
 *
 * @example
 * ```ts
 * tileScales(Float32Array.from({ length: 32 * 2 }, (_, i) => i), 32, 2); // [n/16][groups][16] order
 * ```
 */
export function tileScales<T extends Float32Array | Int32Array>(src: T, n: number, groups: number): T {
  if (groups === 1) return src;
  const out = new (src.constructor as new (len: number) => T)(src.length);
  for (let r = 0; r < n; r++) {
    const base = (r >> 4) * groups * 16 + (r & 15);
    for (let gI = 0; gI < groups; gI++) out[base + gI * 16] = src[r * groups + gI] as number;
  }
  return out;
}

/**
 * Copies packed weights (from `packForGemm`) to a device.
 *
 * @example
 * ```ts
 * const w = uploadGemmWeights(packForGemm(int4), { device: 0 });
 * ```
 */
export function uploadGemmWeights(
  p: PackedGemmWeights,
  options: { device?: number } = {},
): DeviceGemmWeights {
  const device = options.device ?? 0;
  const made: DeviceTensor[] = [];
  try {
    const packed = DeviceTensor.fromHost('u8', [p.packed.length], p.packed, { device });
    made.push(packed);
    const scales = DeviceTensor.fromHost('f32', [p.n, p.groups], tileScales(p.scales, p.n, p.groups), {
      device,
    });
    made.push(scales);
    let intQ: DeviceTensor<'i32'> | undefined;
    let unit: DeviceTensor<'f32'> | undefined;
    if (p.intScale) {
      intQ = DeviceTensor.fromHost('i32', [p.n, p.groups], tileScales(p.intScale.q, p.n, p.groups), {
        device,
      });
      made.push(intQ);
      unit = DeviceTensor.fromHost('f32', [p.n], p.intScale.unit, { device });
      made.push(unit);
    }
    return new DeviceGemmWeights({
      n: p.n,
      k: p.k,
      kPadded: p.kPadded,
      groupSize: p.groupSize,
      groups: p.groups,
      device,
      packed,
      scales,
      ...(intQ ? { intQ } : {}),
      ...(unit ? { unit } : {}),
    });
  } catch (e) {
    for (const t of made) t.dispose();
    throw e;
  }
}

/** Options of `gemmW4A8`. */
export interface GemmW4A8Options {
  /** int8 activations [M, K], K = weights.kPadded (zero-padded columns past the layer's k). */
  a: DeviceTensor;
  /** f32 activation scales [M] (per token) or [1] (per tensor). */
  aScale: DeviceTensor;
  weights: DeviceGemmWeights;
  mode: GemmScaleMode;
  /** f16/bf16 [M, N] (scaled output) or i32 [M, N] (the raw integer accumulators, for exact checks). */
  out: DeviceTensor;
  /** f32 [N], added after scaling. */
  bias?: DeviceTensor;
  /** [M, N] in the dtype of out, added last (the residual connection). */
  residual?: DeviceTensor;
  stream?: Stream;
  /**
   * Forces a kernel variant (benchmarks and tests only): 1, 2, 4 or 8 token tiles of 8 per block (mma.sync);
   * 16 / 18 the block-synchronous wgmma kernel with 128 / 256 tokens; 20 the warp-specialized wgmma kernel
   * (sm_90a, N % 128 == 0), 21 / 22 the same with 128 / 192 tokens per tile in every mode, 23 / 24 split
   * accumulators at 160 / 128 tokens, 25 two-CTA clusters; 100·S + MT (S 2…16, MT 1/2/4/8) the mma.sync
   * kernel with MT token tiles and K split over S blocks (a per-stream workspace that grows outside graph
   * capture only: run such a call once before capturing it). Left out or 0: the measured dispatch table
   * (src/dispatch.ts), else the hand-set rules.
   */
  variant?: number;
}

const MODES: Record<GemmScaleMode, number> = { 'per-channel': 0, 'group-float': 1, 'group-int': 2 };

/**
 * The W4A8 GEMM `out[m, n] = Σ_k a[m, k] · w[n, k]` with the scale mode's epilogue (see @q/quant types.ts):
 * per-channel (FastGEMM), group-float, or group-int (Integer Scale, int32 accumulation across groups).
 * With an i32 `out` it writes the integer accumulators: Σ_g P_g (per-channel, group-float) or Σ_g q·P_g
 * (group-int). Asynchronous on `stream`.
 *
 * @example
 * ```ts
 * gemmW4A8({ a: q, aScale: scales, weights: w, mode: 'group-int', out: y, residual: h });
 * ```
 */
export function gemmW4A8(o: GemmW4A8Options): void {
  const op = 'gemmW4A8';
  const w = o.weights;
  const mode = MODES[o.mode];
  if (mode === undefined) {
    throw new QError(
      'E_ARG',
      `${op}: Expected mode per-channel, group-float or group-int but received ${String(o.mode)}`,
    );
  }
  needDtype(op, 'a', o.a, ['i8']);
  const [m, k] = needRank2(op, 'a', o.a);
  if (o.mode !== 'per-channel' && k % w.groupSize !== 0) {
    throw new QError('E_SHAPE', `${op}: k=${k} is not a multiple of groupSize=${w.groupSize}`);
  }
  if (k !== w.kPadded) {
    throw new QError(
      'E_SHAPE',
      `${op}: Expected a of shape [${m}, ${w.kPadded}] (k = the weights' kPadded) but received ${shapeText(o.a)}`,
    );
  }
  if (o.mode === 'per-channel' && w.groups !== 1) {
    throw new QError(
      'E_ARG',
      `${op}: Expected per-channel weights (1 group) for mode per-channel but received ${w.groups} groups of ${w.groupSize}`,
    );
  }
  if (o.mode !== 'per-channel' && w.groupSize % 64 !== 0) {
    throw new QError('E_UNSUPPORTED', `${op}: groupSize=${w.groupSize} is not a multiple of 64`);
  }
  if (o.mode === 'group-int' && (w.intQ === undefined || w.unit === undefined)) {
    throw new QError(
      'E_ARG',
      `${op}: Expected weights with intScale for mode group-int but received weights without it`,
    );
  }
  needDtype(op, 'aScale', o.aScale, ['f32']);
  if (!(o.aScale.shape.length === 1 && (o.aScale.shape[0] === m || o.aScale.shape[0] === 1))) {
    throw new QError(
      'E_SHAPE',
      `${op}: Expected shape [${m}] or [1] for aScale but received ${shapeText(o.aScale)}`,
    );
  }
  needDtype(op, 'out', o.out, ['f16', 'bf16', 'i32']);
  needShape(op, 'out', o.out, [m, w.n]);
  if (o.bias !== undefined) {
    needDtype(op, 'bias', o.bias, ['f32']);
    needShape(op, 'bias', o.bias, [w.n]);
  }
  if (o.residual !== undefined) {
    if (o.out.dtype === 'i32')
      throw new QError('E_ARG', `${op}: Expected no residual with an i32 out (raw accumulators)`);
    if (o.residual.dtype !== o.out.dtype) {
      throw new QError(
        'E_DTYPE',
        `${op}: Expected dtype ${o.out.dtype} (that of out) for residual but received ${o.residual.dtype}`,
      );
    }
    needShape(op, 'residual', o.residual, [m, w.n]);
  }
  if (o.bias !== undefined && o.out.dtype === 'i32')
    throw new QError('E_ARG', `${op}: Expected no bias with an i32 out (raw accumulators)`);
  if (o.variant !== undefined && !isGemmVariant(o.variant))
    throw new QError(
      'E_ARG',
      `${op}: Expected variant 0, 1, 2, 4, 8, 16, 18, 20…25 or 100·S + MT (S 2…16, MT 1/2/4/8) but received ${o.variant}`,
    );
  const device = o.a.device;
  onDevice(op, 'a', device, 'aScale', o.aScale);
  onDevice(op, 'a', device, 'weights', w.packed);
  onDevice(op, 'a', device, 'out', o.out);
  onDevice(op, 'a', device, 'bias', o.bias);
  onDevice(op, 'a', device, 'residual', o.residual);
  ARG_P[0] = needAligned(op, 'a', o.a, 16);
  ARG_P[1] = needAligned(op, 'aScale', o.aScale, 4);
  ARG_P[2] = needAligned(op, 'weights.packed', w.packed, 16);
  ARG_P[3] = w.scales.ptr;
  ARG_P[4] = w.intQ === undefined ? 0n : w.intQ.ptr;
  ARG_P[5] = w.unit === undefined ? 0n : w.unit.ptr;
  ARG_P[6] = o.bias === undefined ? 0n : needAligned(op, 'bias', o.bias, 4);
  ARG_P[7] = o.residual === undefined ? 0n : needAligned(op, 'residual', o.residual, 2);
  ARG_P[8] = needAligned(op, 'out', o.out, o.out.dtype === 'i32' ? 4 : 2);
  ARG_P[9] = o.stream === undefined ? 0n : o.stream.handle;
  ARG_I[0] = k;
  ARG_I[1] = o.aScale.shape[0] === m && m !== 1 ? 1 : 0;
  ARG_I[2] = m;
  ARG_I[3] = w.n;
  ARG_I[4] = k;
  ARG_I[5] = w.groupSize;
  ARG_I[6] = w.groups;
  ARG_I[7] = mode;
  ARG_I[8] = o.out.dtype === 'f16' ? 0 : o.out.dtype === 'bf16' ? 1 : 2;
  ARG_I[9] = o.variant
    ? o.variant
    : autoGemmVariant(device, w.n, k, o.mode, m, () => deviceProperties(device));
  const b = loadNative();
  useDevice(device);
  try {
    b.gemmW4A8(ARGS);
  } catch (e) {
    throw nativeError(e, op);
  }
}

/** Options of `gemmHalf`. */
export interface GemmHalfOptions {
  /** f16/bf16 [M, K]. */
  a: DeviceTensor;
  /** f16/bf16 [N, K] (a linear layer's weight, row-major). */
  w: DeviceTensor;
  /** [M, N] in the dtype of a, or f32 (e.g. the lm_head's logits, with no bf16 rounding). */
  out: DeviceTensor;
  stream?: Stream;
}

/**
 * `out = a · wᵀ` in fp16/bf16 through cuBLAS (f32 accumulation; `out` in the input dtype or f32): the baseline of the benchmarks and the path
 * for unquantized layers. cuBLAS is loaded on first use (Q_CUBLAS_PATH overrides where).
 *
 * @example
 * ```ts
 * gemmHalf({ a: x, w: lmHead, out: logits });
 * ```
 */
export function gemmHalf(o: GemmHalfOptions): void {
  const op = 'gemmHalf';
  needDtype(op, 'a', o.a, HALF);
  const [m, k] = needRank2(op, 'a', o.a);
  if (o.w.dtype !== o.a.dtype)
    throw new QError(
      'E_DTYPE',
      `${op}: Expected dtype ${o.a.dtype} (that of a) for w but received ${o.w.dtype}`,
    );
  const [n, kw] = needRank2(op, 'w', o.w);
  if (kw !== k)
    throw new QError(
      'E_SHAPE',
      `${op}: Expected w of shape [N, ${k}] for a ${shapeText(o.a)} but received ${shapeText(o.w)}`,
    );
  if (o.out.dtype !== o.a.dtype && o.out.dtype !== 'f32')
    throw new QError(
      'E_DTYPE',
      `${op}: Expected dtype ${o.a.dtype} (that of a) or f32 for out but received ${o.out.dtype}`,
    );
  needShape(op, 'out', o.out, [m, n]);
  const device = o.a.device;
  onDevice(op, 'a', device, 'w', o.w);
  onDevice(op, 'a', device, 'out', o.out);
  ARG_P[0] = needAligned(op, 'a', o.a, 2);
  ARG_P[1] = needAligned(op, 'w', o.w, 2);
  ARG_P[2] = needAligned(op, 'out', o.out, o.out.dtype === 'f32' ? 4 : 2);
  ARG_P[3] = o.stream === undefined ? 0n : o.stream.handle;
  ARG_I[0] = m;
  ARG_I[1] = n;
  ARG_I[2] = k;
  ARG_I[3] = o.a.dtype === 'bf16' ? 1 : 0;
  ARG_I[4] = o.out.dtype === 'f32' ? 1 : 0;
  ARG_F[0] = 0;
  const b = loadNative();
  useDevice(device);
  try {
    b.cublasGemm(ARGS);
  } catch (e) {
    throw nativeError(e, op);
  }
}

/** Options of `gemmFp8`. */
export interface GemmFp8Options {
  /** e4m3 bits [M, K] as u8 (K a multiple of 16). */
  a: DeviceTensor;
  /** e4m3 bits [N, K] as u8 (a linear layer's weight, row-major; N a multiple of 16). */
  w: DeviceTensor;
  /** f32 [1]: the per-tensor scale of a. */
  aScale: DeviceTensor;
  /** f32 [1]: the per-tensor scale of w. */
  wScale: DeviceTensor;
  /** bf16 [M, N]. */
  out: DeviceTensor;
  stream?: Stream;
}

/**
 * `out = aScale · wScale · a · wᵀ` with fp8 e4m3 inputs and bf16 output through cuBLASLt (f32 accumulation,
 * per-tensor scales only): the benchmarks' fp8 baseline. cuBLASLt is loaded on first use (Q_CUBLASLT_PATH
 * overrides where); the first call of each shape picks cuBLASLt's heuristic algorithm and allocates a 32 MiB
 * workspace per device, so run a shape once before capturing it in a graph.
 *
 * @example
 * ```ts
 * gemmFp8({ a: xFp8, w: wFp8, aScale, wScale, out });
 * ```
 */
export function gemmFp8(o: GemmFp8Options): void {
  const op = 'gemmFp8';
  needDtype(op, 'a', o.a, ['u8']);
  needDtype(op, 'w', o.w, ['u8']);
  const [m, k] = needRank2(op, 'a', o.a);
  const [n, kw] = needRank2(op, 'w', o.w);
  if (kw !== k || k % 16 !== 0 || n % 16 !== 0)
    throw new QError(
      'E_SHAPE',
      `${op}: Expected w of shape [N, ${k}] with N and K multiples of 16 for a ${shapeText(o.a)} but received ${shapeText(o.w)}`,
    );
  needDtype(op, 'aScale', o.aScale, ['f32']);
  needShape(op, 'aScale', o.aScale, [1]);
  needDtype(op, 'wScale', o.wScale, ['f32']);
  needShape(op, 'wScale', o.wScale, [1]);
  needDtype(op, 'out', o.out, ['bf16']);
  needShape(op, 'out', o.out, [m, n]);
  const device = o.a.device;
  onDevice(op, 'a', device, 'w', o.w);
  onDevice(op, 'a', device, 'aScale', o.aScale);
  onDevice(op, 'a', device, 'wScale', o.wScale);
  onDevice(op, 'a', device, 'out', o.out);
  ARG_P[0] = needAligned(op, 'a', o.a, 16);
  ARG_P[1] = needAligned(op, 'w', o.w, 16);
  ARG_P[2] = needAligned(op, 'aScale', o.aScale, 4);
  ARG_P[3] = needAligned(op, 'wScale', o.wScale, 4);
  ARG_P[4] = needAligned(op, 'out', o.out, 16);
  ARG_P[5] = o.stream === undefined ? 0n : o.stream.handle;
  ARG_I[0] = m;
  ARG_I[1] = n;
  ARG_I[2] = k;
  const b = loadNative();
  if (b.cublasLtFp8 === undefined)
    throw new QError(
      'E_UNSUPPORTED',
      `${op}: Expected an addon with cublasLtFp8 but received an older build`,
    );
  useDevice(device);
  try {
    b.cublasLtFp8(ARGS);
  } catch (e) {
    throw nativeError(e, op);
  }
}

/**
 * Which cuBLAS library was loaded, and its version.
 *
 * @example
 * ```ts
 * cublasInfo() // { path: 'libcublas.so.13', version: 130000 }
 * ```
 */
export function cublasInfo(): { path: string; version: number } {
  return callNative('cublasInfo', (b) => b.cublasInfo());
}
