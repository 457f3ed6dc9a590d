/**
 * `tuneGemm` (`q bench gemm --tune`): measures every applicable W4A8 kernel variant for each benchmark shape,
 * scale mode and token bucket, and writes the dispatch table (src/dispatch.ts) of the fastest. Timing as
 * `benchGemm` ('graph': CUDA-graph replay, inputs rotated past twice the L2), with fewer, shorter batches so
 * that the whole sweep stays within minutes. A variant that throws or does not apply is skipped and listed in
 * the result, never fatal.
 */
import { randomFillSync } from 'node:crypto';
import { QError, Rng } from '@q/core';
import type { GemmScaleMode } from '@q/quant';
import { BENCH_SHAPES, type GemmShape } from './bench';
import { benchWeightSets, fillDevice, timeIt, writeAtomic } from './bench-support';
import { DeviceTensor, deviceProperties, Stream, synchronize } from './device';
import {
  DISPATCH_BUCKETS,
  dispatchBucket,
  type GemmDispatchEntry,
  type GemmDispatchTable,
  setGemmDispatchTable,
} from './dispatch';
import { type GemmW4A8Options, gemmW4A8 } from './ops';

const MODES: readonly GemmScaleMode[] = ['per-channel', 'group-float', 'group-int'];

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** Options of `tuneGemm`. */
export interface TuneGemmOptions {
  device?: number;
  shapes?: readonly GemmShape[];
  /** Token counts (default: the dispatch buckets 1 … 4096). */
  ms?: readonly number[];
  /** Group size of the group modes (default 128). */
  groupSize?: number;
  /** Batches timed per variant; the median is kept (default 3). */
  trials?: number;
  /** Target milliseconds per batch (default 2). */
  batchMs?: number;
  /** Split-K factors tried (default 2, 4, 8). */
  splits?: readonly number[];
  /** A variant replaces the rules only when this much faster (default 0.03: 3 %), so noise does not flip it. */
  margin?: number;
  /** Write the table here (atomically), and every timing beside it in `<name>.detail.json`. */
  json?: string;
  /** Print progress (default true). */
  print?: boolean;
}

/** Every timing of one (shape, mode, M). */
export interface TunePoint {
  n: number;
  k: number;
  mode: GemmScaleMode;
  m: number;
  /** µs per variant ('0' is the hand-set rules). */
  us: Record<string, number>;
  chosen: number;
}

/** What `tuneGemm` returns (and writes: `table` to `json`, the rest beside it). */
export interface TuneGemmResult {
  table: GemmDispatchTable;
  points: TunePoint[];
  /** Variants that threw, with the message (variant -1: the setup of that shape, or of that M, failed). */
  failed: { n: number; k: number; mode: GemmScaleMode; m: number; variant: number; error: string }[];
  seconds: number;
}

/**
 * The variants worth timing for one call (besides 0, the rules), from what each kernel supports and what
 * could pay off: token tiles no wider than twice M, wgmma tiles from 32 tokens on sm_90 with N % 128 == 0,
 * split-K up to 1024 tokens while the unsplit grid is under 16 blocks per SM and every split worker gets a
 * unit of K, the mma.sync kernel up to 1024 tokens.
 *
 * @example
 * ```ts
 * tuneCandidates({ n: 4096, k: 4096, m: 128, mode: 'group-int', groupSize: 128, sms: 132, sm90: true });
 * ```
 */
export function tuneCandidates(c: {
  n: number;
  k: number;
  m: number;
  mode: GemmScaleMode;
  groupSize: number;
  sms: number;
  sm90: boolean;
  splits?: readonly number[];
}): number[] {
  const out: number[] = [];
  const mts = [1, 2, 4, 8].filter((mt) => mt === 1 || 4 * mt < c.m);
  if (c.m <= 1024) out.push(...mts);
  if (c.sm90 && c.m >= 32 && c.n % 128 === 0) {
    out.push(16);
    if (c.mode === 'per-channel') out.push(18, 20, 21, 22, 25);
    else out.push(20, 21, 22, 23, 24);
  }
  if (c.m <= 1024) {
    const units = c.mode === 'per-channel' ? Math.ceil(c.k / 64) : c.k / c.groupSize;
    for (const mt of mts) {
      const blocks = (c.n / 16) * Math.ceil(c.m / (8 * mt));
      if (blocks >= 16 * c.sms) continue;
      for (const s of c.splits ?? [2, 4, 8]) {
        const workers = s * (mt === 1 ? 16 : 8);
        if (units >= workers && s * c.m * c.n * 4 <= 2 ** 30) out.push(100 * s + mt);
      }
    }
  }
  return out;
}

/**
 * Measures the W4A8 variants on this GPU and returns (and optionally writes) the dispatch table. The table the
 * package ships for a GPU is src/dispatch/<gpu>.json; the dispatcher is set back to the shipped tables after.
 *
 * @example
 * ```ts
 * const r = tuneGemm({ json: 'h200.json' });
 * console.log(r.table.entries.length, r.failed.length);
 * ```
 */
export function tuneGemm(options: TuneGemmOptions = {}): TuneGemmResult {
  const t0 = performance.now();
  const device = options.device ?? 0;
  const props = deviceProperties(device);
  const shapes = options.shapes ?? BENCH_SHAPES;
  const ms = options.ms ?? DISPATCH_BUCKETS;
  const groupSize = options.groupSize ?? 128;
  const trials = options.trials ?? 3;
  const batchMs = options.batchMs ?? 2;
  const margin = options.margin ?? 0.03;
  const print = options.print ?? true;
  const sm90 = props.major === 9 && props.minor === 0;
  const l2 = props.l2CacheSize;
  const points: TunePoint[] = [];
  const failed: TuneGemmResult['failed'] = [];
  const entries: GemmDispatchEntry[] = [];
  const stream = Stream.create(device);
  const owned: DeviceTensor[] = [];
  const alloc = <D extends 'u8' | 'f32' | 'i32' | 'i8' | 'bf16'>(
    dtype: D,
    shape: number[],
  ): DeviceTensor<D> => {
    const t = DeviceTensor.alloc(dtype, shape, { device });
    owned.push(t);
    return t;
  };
  if (print)
    console.log(
      `GEMM dispatch tuning on ${props.name} (${props.multiProcessorCount} SMs), group size ${groupSize}, µs per GEMM (CUDA-graph replay)`,
    );
  // Variant 0 must time the hand-set rules, not a table.
  setGemmDispatchTable(null);
  try {
    const randomSource = alloc('u8', [1 << 24]);
    const rnd = new Uint8Array(1 << 24);
    randomFillSync(rnd);
    randomSource.upload(rnd);
    for (const s of shapes) {
      const rng = new Rng(s.n * 31 + s.k);
      const shapeOwned: DeviceTensor[] = [];
      const salloc = <D extends 'u8' | 'f32' | 'i32'>(dtype: D, shape: number[]): DeviceTensor<D> => {
        const t = DeviceTensor.alloc(dtype, shape, { device });
        shapeOwned.push(t);
        return t;
      };
      // Buckets no measured M falls in keep variant 0 (the rules) and -1 µs.
      const blank = () => ({
        variants: DISPATCH_BUCKETS.map(() => 0),
        us: DISPATCH_BUCKETS.map(() => -1),
        rulesUs: DISPATCH_BUCKETS.map(() => -1),
      });
      const perMode: Record<GemmScaleMode, ReturnType<typeof blank>> = {
        'per-channel': blank(),
        'group-float': blank(),
        'group-int': blank(),
      };
      try {
        const weightSets = benchWeightSets(s, groupSize, device, l2, randomSource, rng, salloc);
        for (const m of ms) {
          const aCopies = Math.max(1, Math.min(8, Math.ceil((2 * l2) / (m * s.k))));
          const tmp: DeviceTensor[] = [];
          try {
            const qacts: DeviceTensor[] = [];
            for (let c = 0; c < aCopies; c++) {
              const q = DeviceTensor.alloc('i8', [m, s.k], { device });
              tmp.push(q);
              fillDevice(q, randomSource);
              qacts.push(q);
            }
            const aScale = DeviceTensor.alloc('f32', [m], { device });
            tmp.push(aScale);
            aScale.upload(new Float32Array(m).map(() => 0.01 + rng.next() * 0.01));
            const out = DeviceTensor.alloc('bf16', [m, s.n], { device });
            tmp.push(out);
            synchronize(device);
            for (const mode of MODES) {
              const cands = [
                0,
                ...tuneCandidates({
                  n: s.n,
                  k: s.k,
                  m,
                  mode,
                  groupSize,
                  sms: props.multiProcessorCount,
                  sm90,
                  ...(options.splits ? { splits: options.splits } : {}),
                }),
              ];
              const us: Record<string, number> = {};
              for (const variant of cands) {
                const calls: GemmW4A8Options[] = Array.from(
                  { length: Math.max(qacts.length, weightSets.length) },
                  (_, i) => {
                    const ws = weightSets[i % weightSets.length] as (typeof weightSets)[number];
                    return {
                      a: qacts[i % qacts.length] as DeviceTensor,
                      aScale,
                      weights: mode === 'per-channel' ? ws.pc : ws.grp,
                      mode,
                      out,
                      stream,
                      variant,
                    };
                  },
                );
                try {
                  us[String(variant)] = timeIt(
                    (i) => gemmW4A8(calls[i % calls.length] as GemmW4A8Options),
                    stream,
                    trials,
                    batchMs,
                    'graph',
                  );
                } catch (e) {
                  failed.push({
                    n: s.n,
                    k: s.k,
                    mode,
                    m,
                    variant,
                    error: errorText(e),
                  });
                  // A failed launch or capture may leave work queued; settle before the next variant.
                  try {
                    synchronize(device);
                  } catch {
                    // Reported above; a context that is lost fails every later variant the same way.
                  }
                }
              }
              const rules = us['0'] ?? Number.POSITIVE_INFINITY;
              let chosen = 0;
              let best = rules;
              for (const [v, t] of Object.entries(us)) {
                if (v !== '0' && t < best && t < rules * (1 - margin)) {
                  best = t;
                  chosen = Number(v);
                }
              }
              points.push({ n: s.n, k: s.k, mode, m, us, chosen });
              const pm = perMode[mode];
              const b = dispatchBucket(m);
              pm.variants[b] = chosen;
              pm.us[b] = Number.isFinite(best) ? Number(best.toFixed(2)) : -1;
              pm.rulesUs[b] = Number.isFinite(rules) ? Number(rules.toFixed(2)) : -1;
              if (print)
                console.log(
                  `${s.model} ${s.layer} ${s.k}x${s.n} M=${m} ${mode}: rules ${rules.toFixed(1)} µs, best variant ${chosen} ${best.toFixed(1)} µs (${cands.length} tried, ${((performance.now() - t0) / 1000).toFixed(0)} s)`,
                );
            }
          } catch (e) {
            // Setting up this M failed (e.g. out of memory): its buckets keep the rules; the sweep goes on.
            failed.push({ n: s.n, k: s.k, mode: 'per-channel', m, variant: -1, error: errorText(e) });
          } finally {
            for (const t of tmp) t.dispose();
          }
        }
      } catch (e) {
        failed.push({ n: s.n, k: s.k, mode: 'per-channel', m: 0, variant: -1, error: errorText(e) });
      } finally {
        for (const t of shapeOwned) t.dispose();
      }
      for (const mode of MODES) entries.push({ n: s.n, k: s.k, mode, ...perMode[mode] });
    }
  } finally {
    setGemmDispatchTable(undefined);
    for (const t of owned) t.dispose();
    stream.dispose();
  }
  const table: GemmDispatchTable = {
    format: 1,
    gpu: props.name,
    sms: props.multiProcessorCount,
    computeCapability: `${props.major}.${props.minor}`,
    groupSize,
    date: new Date().toISOString(),
    buckets: [...DISPATCH_BUCKETS],
    entries,
  };
  const result: TuneGemmResult = { table, points, failed, seconds: (performance.now() - t0) / 1000 };
  if (print) {
    console.log(
      `tuned ${points.length} points in ${result.seconds.toFixed(0)} s; ${failed.length} variant runs failed${failed.length ? ':' : ''}`,
    );
    for (const f of failed.slice(0, 20))
      console.log(`  ${f.k}x${f.n} M=${f.m} ${f.mode} variant ${f.variant}: ${f.error}`);
  }
  if (options.json !== undefined) {
    const detail = `${options.json.replace(/\.json$/, '')}.detail.json`;
    try {
      writeAtomic(options.json, `${JSON.stringify(table, null, 1)}\n`);
      writeAtomic(detail, `${JSON.stringify({ ...table, entries: undefined, points, failed }, null, 1)}\n`);
    } catch (e) {
      throw new QError(
        'E_IO',
        `tuneGemm: could not write ${options.json}: ${e instanceof Error ? e.message : String(e)}`,
      );
    }
  }
  return result;
}
