/**
 * The W4A8 GEMM's measured dispatch table: for a GPU (name and SM count), per layer shape class (N × K), scale
 * mode and token bucket M ∈ {1, 2, 4, …, 4096}, the kernel variant that `q bench gemm --tune` measured fastest.
 * `gemmW4A8` without a `variant` consults it: the entry of the nearest measured (N, K) (log distance) and the
 * bucket M rounds up to (past the last bucket, the last). The choice reaches the native dispatcher as a
 * preference: a variant that does not apply to the call (e.g. a wgmma tile on N % 128 ≠ 0) falls back to the
 * hand-set rules, as does every GPU without a table. Tables live in src/dispatch/*.json.
 */
import { QError } from '@q/core';
import type { GemmScaleMode } from '@q/quant';
import h200 from './dispatch/h200.json';

/** The token buckets of a table: an M is served by the first bucket ≥ M. */
export const DISPATCH_BUCKETS: readonly number[] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096];

/** One shape class and mode: the chosen variant per bucket (0: the hand-set rules). */
export interface GemmDispatchEntry {
  n: number;
  k: number;
  mode: GemmScaleMode;
  variants: number[];
  /** The measured µs of the chosen variant per bucket (documentation only). */
  us?: number[];
  /** The measured µs of the hand-set rules per bucket (documentation only). */
  rulesUs?: number[];
}

/** A measured dispatch table (the JSON that `tuneGemm` writes). */
export interface GemmDispatchTable {
  format: 1;
  /** `deviceProperties().name` of the GPU it was measured on. */
  gpu: string;
  /** Its SM count: a table applies only to a GPU of the same name and SM count. */
  sms: number;
  computeCapability: string;
  /** The group size of the group modes when measured. */
  groupSize: number;
  date: string;
  buckets: number[];
  entries: GemmDispatchEntry[];
}

const KNOWN_VARIANT = (v: number): boolean =>
  v === 0 ||
  v === 1 ||
  v === 2 ||
  v === 4 ||
  v === 8 ||
  v === 16 ||
  v === 18 ||
  (v >= 20 && v <= 25) ||
  (v >= 200 && v <= 1608 && [1, 2, 4, 8].includes(v % 100));

/**
 * Whether `v` names a W4A8 kernel variant: 0 (the rules), 1/2/4/8 (mma.sync token tiles), 16/18 (wgmma),
 * 20…25 (warp-specialized wgmma), 100·S + MT with S in 2…16 and MT in 1/2/4/8 (mma.sync split-K).
 *
 * @example
 * ```ts
 * isGemmVariant(408); // true: split K over 4 blocks, 8 token tiles
 * ```
 */
export function isGemmVariant(v: number): boolean {
  return Number.isInteger(v) && KNOWN_VARIANT(v);
}

/**
 * Checks a parsed table; throws QError('E_ARG') naming the first bad field.
 *
 * @example
 * ```ts
 * const t = parseGemmDispatchTable(JSON.parse(text), 'tune.json');
 * ```
 */
export function parseGemmDispatchTable(x: unknown, name = 'dispatch table'): GemmDispatchTable {
  const bad = (what: string, got: unknown): never => {
    throw new QError(
      'E_ARG',
      `Expected ${what} for ${name} but received ${JSON.stringify(got)?.slice(0, 80)}`,
    );
  };
  if (typeof x !== 'object' || x === null) return bad('an object', x);
  const t = x as Record<string, unknown>;
  if (t.format !== 1) bad('format 1', t.format);
  if (typeof t.gpu !== 'string') bad('a gpu name', t.gpu);
  if (typeof t.sms !== 'number' || !Number.isInteger(t.sms)) bad('an integer sms', t.sms);
  const buckets = t.buckets;
  if (
    !Array.isArray(buckets) ||
    buckets.length !== DISPATCH_BUCKETS.length ||
    buckets.some((b, i) => b !== DISPATCH_BUCKETS[i])
  )
    bad(`buckets ${DISPATCH_BUCKETS.join(',')}`, buckets);
  if (!Array.isArray(t.entries)) bad('an entries array', t.entries);
  for (const e of t.entries as unknown[]) {
    const en = e as Record<string, unknown>;
    if (typeof e !== 'object' || e === null) bad('entry objects', e);
    if (!Number.isInteger(en.n) || !Number.isInteger(en.k) || (en.n as number) <= 0 || (en.k as number) <= 0)
      bad('positive integer n and k in every entry', e);
    if (en.mode !== 'per-channel' && en.mode !== 'group-float' && en.mode !== 'group-int')
      bad('a scale mode in every entry', en.mode);
    const v = en.variants;
    if (
      !Array.isArray(v) ||
      v.length !== DISPATCH_BUCKETS.length ||
      !v.every((x) => typeof x === 'number' && isGemmVariant(x))
    )
      bad(`${DISPATCH_BUCKETS.length} known variants in every entry`, v);
  }
  return x as GemmDispatchTable;
}

/** The tables shipped with the package, one per measured GPU. */
const SHIPPED: readonly GemmDispatchTable[] = [parseGemmDispatchTable(h200, 'src/dispatch/h200.json')];

const MODE_INDEX: Record<GemmScaleMode, number> = { 'per-channel': 0, 'group-float': 1, 'group-int': 2 };

/** A table as the dispatcher reads it: per mode, the entries' (n, k) and variants. */
interface Resolved {
  byMode: GemmDispatchEntry[][];
  /** (n, k, mode) → variants per bucket, filled on first use of a shape. */
  memo: Map<number, Int32Array | null>;
}

let override: { table: GemmDispatchTable | null } | undefined;
const perDevice = new Map<number, Resolved | null>();

function resolve(t: GemmDispatchTable): Resolved {
  const byMode: GemmDispatchEntry[][] = [[], [], []];
  for (const e of t.entries) byMode[MODE_INDEX[e.mode]]?.push(e);
  return { byMode, memo: new Map() };
}

/**
 * Replaces the table the dispatcher uses on every device (null: none, the hand-set rules everywhere;
 * undefined: back to the shipped tables matched by GPU name and SM count).
 *
 * @example
 * ```ts
 * setGemmDispatchTable(parseGemmDispatchTable(JSON.parse(readFileSync('tune.json', 'utf8'))));
 * ```
 */
export function setGemmDispatchTable(table: GemmDispatchTable | null | undefined): void {
  override = table === undefined ? undefined : { table };
  perDevice.clear();
}

/**
 * The shipped table for a GPU, if one was measured on the same name and SM count.
 *
 * @example
 * ```ts
 * shippedGemmDispatchTable('NVIDIA H200', 132)?.entries.length;
 * ```
 */
export function shippedGemmDispatchTable(gpu: string, sms: number): GemmDispatchTable | undefined {
  return SHIPPED.find((t) => t.gpu === gpu && t.sms === sms && t.entries.length > 0);
}

/**
 * The bucket index of M: the first bucket ≥ M, or the last.
 *
 * @example
 * ```ts
 * dispatchBucket(100); // 7 (the bucket 128)
 * ```
 */
export function dispatchBucket(m: number): number {
  const i = m <= 1 ? 0 : 32 - Math.clz32(m - 1);
  return i < DISPATCH_BUCKETS.length ? i : DISPATCH_BUCKETS.length - 1;
}

/**
 * The table's variant for a call (0 where the table has nothing): the entry of the same mode with the nearest
 * (N, K) in log distance, at M's bucket.
 *
 * @example
 * ```ts
 * lookupGemmVariant(table, 4096, 11008, 'group-int', 128);
 * ```
 */
export function lookupGemmVariant(
  table: GemmDispatchTable,
  n: number,
  k: number,
  mode: GemmScaleMode,
  m: number,
): number {
  return variantsFor(resolve(table), n, k, mode)?.[dispatchBucket(m)] ?? 0;
}

function variantsFor(r: Resolved, n: number, k: number, mode: GemmScaleMode): Int32Array | null {
  const mi = MODE_INDEX[mode];
  const key = (n * 4194304 + k) * 4 + mi;
  const hit = r.memo.get(key);
  if (hit !== undefined) return hit;
  let best: GemmDispatchEntry | undefined;
  let bestD = Number.POSITIVE_INFINITY;
  for (const e of r.byMode[mi] ?? []) {
    const d = Math.abs(Math.log(n / e.n)) + Math.abs(Math.log(k / e.k));
    if (d < bestD) {
      bestD = d;
      best = e;
    }
  }
  const v = best ? Int32Array.from(best.variants) : null;
  r.memo.set(key, v);
  return v;
}

/**
 * @internal The variant `gemmW4A8` passes for an automatic call on `device`: the table's choice negated (a
 * preference the native side may decline), or 0.
 */
export function autoGemmVariant(
  device: number,
  n: number,
  k: number,
  mode: GemmScaleMode,
  m: number,
  props: () => { name: string; multiProcessorCount: number },
): number {
  let r = perDevice.get(device);
  if (r === undefined) {
    let t: GemmDispatchTable | null | undefined;
    if (override) t = override.table;
    else {
      const p = props();
      t = shippedGemmDispatchTable(p.name, p.multiProcessorCount);
    }
    r = t ? resolve(t) : null;
    perDevice.set(device, r);
  }
  if (r === null) return 0;
  const v = variantsFor(r, n, k, mode)?.[dispatchBucket(m)] ?? 0;
  return v === 0 ? 0 : -v;
}
