/**
 * `benchGemm`: the W4A8 GEMM in each scale mode against cuBLAS bf16 through the same addon, on Llama-2 7B and
 * 70B layer shapes. Timing follows the usual rules: warm-up, CUDA events around a batch of launches, the
 * median of several batches, and weights/activations rotated among enough copies to exceed twice the L2, so
 * each launch reads from device memory as it would in a model.
 */
import { randomFillSync } from 'node:crypto';
import { QError, Rng } from '@q/core';
import type { GemmScaleMode } from '@q/quant';
import { benchWeightSets, fillDevice, randomBf16, timeIt, writeAtomic } from './bench-support';
import { DeviceTensor, deviceProperties, Stream, synchronize } from './device';
import {
  type DeviceGemmWeights,
  type GemmFp8Options,
  type GemmHalfOptions,
  type GemmW4A8Options,
  gemmFp8,
  gemmHalf,
  gemmW4A8,
} from './ops';

/** One layer shape: the GEMM is [M, K] × [K, N]. */
export interface GemmShape {
  model: string;
  layer: string;
  k: number;
  n: number;
}

/** The shapes of the benchmark. */
export const BENCH_SHAPES: readonly GemmShape[] = [
  { model: 'llama2-7b', layer: 'qkv', k: 4096, n: 12288 },
  { model: 'llama2-7b', layer: 'o', k: 4096, n: 4096 },
  { model: 'llama2-7b', layer: 'gate+up', k: 4096, n: 22016 },
  { model: 'llama2-7b', layer: 'down', k: 11008, n: 4096 },
  { model: 'llama2-70b', layer: 'qkv', k: 8192, n: 10240 },
  { model: 'llama2-70b', layer: 'gate+up', k: 8192, n: 57344 },
  { model: 'llama2-70b', layer: 'down', k: 28672, n: 8192 },
];

export const BENCH_MS: readonly number[] = [1, 16, 32, 64, 128, 256, 1024, 2048, 4096, 8192];
const MODES: readonly GemmScaleMode[] = ['per-channel', 'group-float', 'group-int'];

/** Options of `benchGemm`. */
export interface BenchGemmOptions {
  device?: number;
  shapes?: readonly GemmShape[];
  ms?: readonly number[];
  /** Group size of the group modes (default 128). */
  groupSize?: number;
  /** Batches timed per point; the median is reported (default 7). */
  trials?: number;
  /** Target milliseconds per batch (default 10). */
  batchMs?: number;
  /** Write the JSON result here (atomically). */
  json?: string;
  /** Print the table (default true). */
  print?: boolean;
  /** Forces a W4A8 kernel variant (see gemmW4A8). */
  variant?: number;
  /**
   * 'graph' (default): each batch of launches is captured once into a CUDA graph and replayed, as a decode
   * loop would run; 'stream': plain back-to-back launches (CPU launch cost included). Both sides of every
   * comparison are timed the same way.
   */
  timing?: 'graph' | 'stream';
}

/** One measured point. */
export interface BenchGemmRow {
  model: string;
  layer: string;
  m: number;
  k: number;
  n: number;
  /** Median µs per GEMM. */
  cublasBf16Us: number;
  /** cuBLASLt fp8 (e4m3, per-tensor scales, bf16 out) at M ≥ 16; NaN (null in JSON) below or where it failed. */
  cublasFp8Us: number;
  w4a8Us: Record<GemmScaleMode, number>;
  /** cuBLAS time / W4A8 time. */
  speedup: Record<GemmScaleMode, number>;
  /** Bytes the W4A8 GEMM must move (int4 weights, int8 activations, bf16 output, scales) / time. */
  w4a8TBps: Record<GemmScaleMode, number>;
  /** 2·M·N·K / time, in tera-operations per second. */
  w4a8Tops: Record<GemmScaleMode, number>;
  cublasTflops: number;
}

export interface BenchGemmResult {
  gpu: string;
  computeCapability: string;
  date: string;
  groupSize: number;
  timing: 'graph' | 'stream';
  rows: BenchGemmRow[];
  summary: {
    decodeMinSpeedup: Record<GemmScaleMode, number>;
    prefillMinSpeedup: Record<GemmScaleMode, number>;
    /** max over prefill points of group-int time / per-channel time. */
    prefillGroupIntOverPerChannel: number;
  };
}

function fmt(x: number, d = 1): string {
  return Number.isFinite(x) ? x.toFixed(d) : '-';
}

/**
 * Runs the GEMM benchmark on one GPU, prints the table and returns (and optionally writes) the JSON.
 *
 * @example
 * ```ts
 * const r = benchGemm({ json: 'gemm.json' });
 * console.log(r.summary.decodeMinSpeedup['group-int']);
 * ```
 */
export function benchGemm(options: BenchGemmOptions = {}): BenchGemmResult {
  const device = options.device ?? 0;
  const props = deviceProperties(device);
  const shapes = options.shapes ?? BENCH_SHAPES;
  const ms = options.ms ?? BENCH_MS;
  const groupSize = options.groupSize ?? 128;
  const trials = options.trials ?? 7;
  const batchMs = options.batchMs ?? 10;
  const print = options.print ?? true;
  const timing = options.timing ?? 'graph';
  const l2 = props.l2CacheSize;
  const stream = Stream.create(device);
  const rows: BenchGemmRow[] = [];
  const owned: { dispose(): void }[] = [];
  const alloc = <D extends 'u8' | 'f32' | 'i32' | 'i8' | 'bf16'>(
    dtype: D,
    shape: number[],
  ): DeviceTensor<D> => {
    const t = DeviceTensor.alloc(dtype, shape, { device });
    owned.push(t);
    return t;
  };
  const randomSource = alloc('u8', [1 << 24]);
  const rnd = new Uint8Array(1 << 24);
  randomFillSync(rnd);
  randomSource.upload(rnd);
  // e4m3 inputs: the same random bytes with the NaN codes (S.1111.111) moved to the largest finite value.
  const fp8Source = alloc('u8', [1 << 24]);
  fp8Source.upload(rnd.map((x) => ((x & 0x7f) === 0x7f ? x - 1 : x)));
  const fp8Scales = alloc('f32', [2]);
  fp8Scales.upload(Float32Array.of(0.01, 0.002));
  const fp8AScale = DeviceTensor.wrap(fp8Scales.ptr, 'f32', [1], { device });
  const fp8WScale = DeviceTensor.wrap(fp8Scales.ptr + 4n, 'f32', [1], { device });
  let fp8Error: string | undefined;
  const bf16Source = alloc('bf16', [1 << 23]);
  bf16Source.upload(randomBf16(1 << 23));
  synchronize(device);
  if (print) {
    console.log(
      `GEMM benchmark on ${props.name} (sm_${props.major}${props.minor}), group size ${groupSize}, median µs per GEMM (${timing === 'graph' ? 'CUDA-graph replay' : 'stream launches'})`,
    );
    console.log(
      [
        'shape',
        'M',
        'cuBLAS bf16',
        'cuBLASLt fp8',
        'per-channel',
        'group-float',
        'group-int',
        'x per-ch',
        'x g-float',
        'x g-int',
        'TB/s g-int',
        'TOPS g-int',
      ].join(' | '),
    );
  }
  try {
    for (const s of shapes) {
      const groups = s.k / groupSize;
      const hCopies = Math.max(1, Math.min(16, Math.ceil((2 * l2) / (s.n * s.k * 2))));
      const rng = new Rng(s.n * 31 + s.k);
      const shapeOwned: DeviceTensor[] = [];
      const weightSets = benchWeightSets(s, groupSize, device, l2, randomSource, rng, (dtype, shape) => {
        const t = alloc(dtype, shape);
        shapeOwned.push(t);
        return t;
      });
      const hWeights: DeviceTensor[] = [];
      for (let c = 0; c < hCopies; c++) {
        const w = alloc('bf16', [s.n, s.k]);
        fillDevice(w, bf16Source);
        hWeights.push(w);
      }
      const fp8Weights: DeviceTensor[] = [];
      for (let c = 0; c < Math.max(1, Math.min(16, Math.ceil((2 * l2) / (s.n * s.k)))); c++) {
        const w = alloc('u8', [s.n, s.k]);
        fillDevice(w, fp8Source);
        fp8Weights.push(w);
      }
      for (const m of ms) {
        const aCopies = Math.max(1, Math.min(8, Math.ceil((2 * l2) / (m * s.k * 2))));
        const acts: DeviceTensor[] = [];
        const qacts: DeviceTensor[] = [];
        const tmp: DeviceTensor[] = [];
        for (let c = 0; c < aCopies; c++) {
          const x = DeviceTensor.alloc('bf16', [m, s.k], { device });
          fillDevice(x, bf16Source);
          const q = DeviceTensor.alloc('i8', [m, s.k], { device });
          fillDevice(q, randomSource);
          acts.push(x);
          qacts.push(q);
          tmp.push(x, q);
        }
        const aScale = DeviceTensor.alloc('f32', [m], { device });
        aScale.upload(new Float32Array(m).map(() => 0.01 + rng.next() * 0.01));
        const out = DeviceTensor.alloc('bf16', [m, s.n], { device });
        tmp.push(aScale, out);
        synchronize(device);
        try {
          // The options of every rotation are made up front, so that a timed launch is the library call alone
          // (what 'stream' timing measures per call), not the harness building objects.
          const halfCalls: GemmHalfOptions[] = Array.from(
            { length: Math.max(acts.length, hWeights.length) },
            (_, i) => ({
              a: acts[i % acts.length] as DeviceTensor,
              w: hWeights[i % hWeights.length] as DeviceTensor,
              out,
              stream,
            }),
          );
          const cub = timeIt(
            (i) => gemmHalf(halfCalls[i % halfCalls.length] as GemmHalfOptions),
            stream,
            trials,
            batchMs,
            timing,
          );
          // The fp8 baseline from 16 tokens (a prefill and batched-decode choice); a failure is reported once and
          // leaves the column empty rather than stopping the benchmark.
          let fp8 = Number.NaN;
          if (m >= 16 && fp8Error === undefined) {
            const fa: DeviceTensor[] = [];
            try {
              for (let c = 0; c < Math.max(1, Math.min(8, Math.ceil((2 * l2) / (m * s.k)))); c++) {
                const t = DeviceTensor.alloc('u8', [m, s.k], { device });
                fa.push(t);
                fillDevice(t, fp8Source);
              }
              const fp8Calls: GemmFp8Options[] = Array.from(
                { length: Math.max(fa.length, fp8Weights.length) },
                (_, i) => ({
                  a: fa[i % fa.length] as DeviceTensor,
                  w: fp8Weights[i % fp8Weights.length] as DeviceTensor,
                  aScale: fp8AScale,
                  wScale: fp8WScale,
                  out,
                  stream,
                }),
              );
              fp8 = timeIt(
                (i) => gemmFp8(fp8Calls[i % fp8Calls.length] as GemmFp8Options),
                stream,
                trials,
                batchMs,
                timing,
              );
            } catch (e) {
              fp8Error = e instanceof Error ? e.message : String(e);
              if (print) console.log(`cuBLASLt fp8 skipped from here on: ${fp8Error}`);
              try {
                synchronize(device);
              } catch {
                // The next timing reports a lost context itself.
              }
            } finally {
              for (const t of fa) t.dispose();
            }
          }
          const w4 = {} as Record<GemmScaleMode, number>;
          for (const mode of MODES) {
            const calls: GemmW4A8Options[] = Array.from(
              { length: Math.max(qacts.length, weightSets.length) },
              (_, i) => {
                const ws = weightSets[i % weightSets.length] as {
                  pc: DeviceGemmWeights;
                  grp: DeviceGemmWeights;
                };
                return {
                  a: qacts[i % qacts.length] as DeviceTensor,
                  aScale,
                  weights: mode === 'per-channel' ? ws.pc : ws.grp,
                  mode,
                  out,
                  stream,
                  ...(options.variant ? { variant: options.variant } : {}),
                };
              },
            );
            w4[mode] = timeIt(
              (i) => gemmW4A8(calls[i % calls.length] as GemmW4A8Options),
              stream,
              trials,
              batchMs,
              timing,
            );
          }
          const ops = 2 * m * s.n * s.k;
          const bytes = (mode: GemmScaleMode): number =>
            (s.n * s.k) / 2 +
            m * s.k +
            m * s.n * 2 +
            m * 4 +
            (mode === 'per-channel' ? s.n * 4 : s.n * groups * 4);
          const rec = <T>(f: (mode: GemmScaleMode) => T): Record<GemmScaleMode, T> =>
            Object.fromEntries(MODES.map((mo) => [mo, f(mo)])) as Record<GemmScaleMode, T>;
          const row: BenchGemmRow = {
            model: s.model,
            layer: s.layer,
            m,
            k: s.k,
            n: s.n,
            cublasBf16Us: cub,
            cublasFp8Us: fp8,
            w4a8Us: w4,
            speedup: rec((mo) => cub / w4[mo]),
            w4a8TBps: rec((mo) => bytes(mo) / (w4[mo] * 1e-6) / 1e12),
            w4a8Tops: rec((mo) => ops / (w4[mo] * 1e-6) / 1e12),
            cublasTflops: ops / (cub * 1e-6) / 1e12,
          };
          rows.push(row);
          if (print) {
            console.log(
              [
                `${s.model} ${s.layer} ${s.k}x${s.n}`,
                m,
                fmt(cub),
                fmt(fp8),
                fmt(w4['per-channel']),
                fmt(w4['group-float']),
                fmt(w4['group-int']),
                fmt(row.speedup['per-channel'], 2),
                fmt(row.speedup['group-float'], 2),
                fmt(row.speedup['group-int'], 2),
                fmt(row.w4a8TBps['group-int'], 2),
                fmt(row.w4a8Tops['group-int'], 0),
              ].join(' | '),
            );
          }
        } finally {
          for (const t of tmp) t.dispose();
        }
      }
      for (const w of hWeights) w.dispose();
      for (const w of fp8Weights) w.dispose();
      for (const t of shapeOwned) t.dispose();
    }
  } finally {
    for (const t of owned) t.dispose();
    stream.dispose();
  }
  const minOf = (sel: (r: BenchGemmRow) => boolean, mode: GemmScaleMode): number => {
    const xs = rows.filter(sel).map((r) => r.speedup[mode]);
    return xs.length ? Math.min(...xs) : Number.NaN;
  };
  const rec = (sel: (r: BenchGemmRow) => boolean): Record<GemmScaleMode, number> =>
    Object.fromEntries(MODES.map((mo) => [mo, minOf(sel, mo)])) as Record<GemmScaleMode, number>;
  const prefill = rows.filter((r) => r.m >= 2048);
  const result: BenchGemmResult = {
    gpu: props.name,
    computeCapability: `${props.major}.${props.minor}`,
    date: new Date().toISOString(),
    groupSize,
    timing,
    rows,
    summary: {
      decodeMinSpeedup: rec((r) => r.m <= 16),
      prefillMinSpeedup: rec((r) => r.m >= 2048),
      prefillGroupIntOverPerChannel: prefill.length
        ? Math.max(...prefill.map((r) => r.w4a8Us['group-int'] / r.w4a8Us['per-channel']))
        : Number.NaN,
    },
  };
  if (print) {
    const sm = result.summary;
    console.log(
      `decode (M ≤ 16) min speedup vs cuBLAS bf16: per-channel ${fmt(sm.decodeMinSpeedup['per-channel'], 2)}x, group-float ${fmt(sm.decodeMinSpeedup['group-float'], 2)}x, group-int ${fmt(sm.decodeMinSpeedup['group-int'], 2)}x (target ≥ 3.0x)`,
    );
    console.log(
      `prefill (M ≥ 2048) min speedup: per-channel ${fmt(sm.prefillMinSpeedup['per-channel'], 2)}x, group-float ${fmt(sm.prefillMinSpeedup['group-float'], 2)}x, group-int ${fmt(sm.prefillMinSpeedup['group-int'], 2)}x (target ≥ 1.3x); group-int/per-channel time ≤ ${fmt(sm.prefillGroupIntOverPerChannel, 2)} (target ≤ 1.10)`,
    );
  }
  if (options.json !== undefined) {
    try {
      writeAtomic(options.json, `${JSON.stringify(result, null, 2)}\n`);
    } catch (e) {
      throw new QError(
        'E_IO',
        `benchGemm: could not write ${options.json}: ${e instanceof Error ? e.message : String(e)}`,
      );
    }
  }
  return result;
}
