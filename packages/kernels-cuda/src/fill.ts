/**
 * Device-side fills and the bias add: random weights drawn on the GPU for benchmarks (no multi-GB file and
 * no host copy), and `out += bias` for the bf16 path's q/k/v bias (cuBLAS GEMMs carry none).
 */
import { QError } from '@q/core';
import { callNative, type DeviceTensor, type Stream, streamHandle, useDevice } from './device';

const KINDS = { bytes: 0, uniform: 1, int: 3 } as const;

/** Options of `fillRandom`. */
export interface FillRandomOptions {
  /** The tensor to fill: any dtype for 'bytes'; f32 or bf16 for 'uniform'; i32 for 'int'. */
  out: DeviceTensor;
  /** 'bytes': every byte random; 'uniform': values in [lo, hi); 'int': integers in [lo, hi]. */
  dist: keyof typeof KINDS;
  lo?: number;
  hi?: number;
  /** The same seed fills the same values (a counter-based hash of the element index). */
  seed: number;
  stream?: Stream;
}

/**
 * Fills a device tensor with random values on the device. Asynchronous on `stream`.
 *
 * @example
 * ```ts
 * fillRandom({ out: w, dist: 'uniform', lo: -0.02, hi: 0.02, seed: 1 }); // bf16 weights for a benchmark
 * ```
 */
export function fillRandom(o: FillRandomOptions): void {
  const op = 'fillRandom';
  const t = o.out;
  let kind: number = KINDS[o.dist];
  if (kind === undefined)
    throw new QError('E_ARG', `${op}: Expected dist bytes, uniform or int but received ${String(o.dist)}`);
  let count = t.byteLength;
  const lo = o.lo ?? 0;
  const hi = o.hi ?? 1;
  if (o.dist === 'uniform') {
    if (t.dtype !== 'f32' && t.dtype !== 'bf16')
      throw new QError(
        'E_DTYPE',
        `${op}: Expected dtype f32 or bf16 for out (uniform) but received ${t.dtype}`,
      );
    kind = t.dtype === 'f32' ? 1 : 2;
    count = t.size;
  } else if (o.dist === 'int') {
    if (t.dtype !== 'i32')
      throw new QError('E_DTYPE', `${op}: Expected dtype i32 for out (int) but received ${t.dtype}`);
    if (!Number.isInteger(lo) || !Number.isInteger(hi) || hi < lo)
      throw new QError('E_ARG', `${op}: Expected integers lo ≤ hi for dist int but received ${lo}, ${hi}`);
    count = t.size;
  }
  if (!(hi >= lo) || !Number.isFinite(lo) || !Number.isFinite(hi))
    throw new QError('E_ARG', `${op}: Expected finite lo ≤ hi but received ${lo}, ${hi}`);
  if (!Number.isInteger(o.seed))
    throw new QError('E_ARG', `${op}: Expected an integer seed but received ${o.seed}`);
  const ptr = t.ptr;
  useDevice(t.device);
  callNative(op, (b) => b.fillRandom(ptr, count, kind, o.seed >>> 0, lo, hi, streamHandle(o.stream)));
}

/** Options of `addBias`. */
export interface AddBiasOptions {
  /** bf16 [M, N], updated in place. */
  out: DeviceTensor;
  /** f32 [N]. */
  bias: DeviceTensor;
  stream?: Stream;
}

/**
 * `out[m, n] += bias[n]` on a bf16 matrix (f32 add, one rounding to bf16). Asynchronous on `stream`.
 *
 * @example
 * ```ts
 * gemmHalf({ a: h, w, out: qkv, stream });
 * addBias({ out: qkv, bias, stream });
 * ```
 */
export function addBias(o: AddBiasOptions): void {
  const op = 'addBias';
  if (o.out.dtype !== 'bf16' || o.out.shape.length !== 2)
    throw new QError(
      'E_DTYPE',
      `${op}: Expected a bf16 [M, N] out but received ${o.out.dtype} [${o.out.shape.join(', ')}]`,
    );
  const [m, n] = o.out.shape as [number, number];
  if (o.bias.dtype !== 'f32' || o.bias.shape.length !== 1 || o.bias.shape[0] !== n)
    throw new QError(
      'E_SHAPE',
      `${op}: Expected an f32 bias of shape [${n}] but received ${o.bias.dtype} [${o.bias.shape.join(', ')}]`,
    );
  if (o.bias.device !== o.out.device)
    throw new QError(
      'E_ARG',
      `${op}: Expected bias on device ${o.out.device} but received device ${o.bias.device}`,
    );
  const out = o.out.ptr;
  const bias = o.bias.ptr;
  useDevice(o.out.device);
  callNative(op, (b) => b.addBias(out, bias, m, n, streamHandle(o.stream)));
}
