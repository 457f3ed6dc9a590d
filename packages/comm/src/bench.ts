import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { QError, shippedScript } from '@q/core';
import { BENCH_COLUMNS, BENCH_EXTRA_COLUMNS, type BenchRow } from './bench-columns';
import { launch } from './launch';
import { loadCommNative } from './native';

/** Options of `benchAllreduce`. */
export interface BenchAllreduceOptions {
  /** GPU counts to run, each in its own job. Default [2, 4], limited to the GPUs present. */
  readonly worlds?: readonly number[];
  /** Default [1, 8, 32, 128, 512, 1024, 2048, 4096, 8192]. */
  readonly tokens?: readonly number[];
  /** Default 8192. */
  readonly hidden?: number;
  /** Elements at the start of each message whose error against the exact sum is measured. Default 2^20. */
  readonly errorElements?: number;
  /** Rendezvous, collective and fused-kernel timeout of the ranks, ms. Default 30 000. */
  readonly timeoutMs?: number;
  /** Print progress and tables. Default true. */
  readonly print?: boolean;
}

/** One job's results (rank 0's view). */
export interface BenchAllreduceResult {
  readonly world: number;
  readonly gpu: string;
  readonly date: string;
  readonly ncclVersion: number;
  readonly hidden: number;
  readonly errElems: number;
  readonly rows: readonly BenchRow[];
}

const fmtBytes = (b: number) =>
  b >= 1 << 20 ? `${(b / (1 << 20)).toFixed(1)} MiB` : `${(b / 1024).toFixed(0)} KiB`;

/**
 * The benchmark table of one job: latency (median µs, CUDA events, the slowest rank), speed-up over NCCL, bus
 * bandwidth of NCCL and the relative error of each column.
 *
 * @example
 * ```ts
 * console.log(formatBenchTable(result));
 * ```
 */
export function formatBenchTable(r: BenchAllreduceResult): string {
  const cols = BENCH_COLUMNS.map((c) => c.name);
  const head = [
    'tokens',
    'size',
    ...cols.map((c) => `${c} µs`),
    'NCCL busBW',
    ...cols.slice(1).map((c) => `${c} x`),
    'auto ran',
  ];
  const lines = [
    `all-reduce, bf16 [tokens x ${r.hidden}], ${r.world} x ${r.gpu}, NCCL ${r.ncclVersion}, ${r.date}`,
    head.join(' | '),
  ];
  lines.push(head.map(() => '---').join(' | '));
  for (const row of r.rows) {
    const nccl = row.cells.nccl?.us ?? Number.NaN;
    lines.push(
      [
        String(row.tokens),
        fmtBytes(row.bytes),
        ...cols.map((c) => (row.cells[c]?.us ?? Number.NaN).toFixed(1)),
        `${(row.cells.nccl?.busGBs ?? Number.NaN).toFixed(0)} GB/s`,
        ...cols.slice(1).map((c) => `${(nccl / (row.cells[c]?.us ?? Number.NaN)).toFixed(2)}`),
        row.cells.auto?.algorithm ?? '',
      ].join(' | '),
    );
  }
  lines.push(
    '',
    `relative error against the exact float64 sum (first ${r.errElems} elements of each message):`,
  );
  lines.push(['tokens', ...cols].join(' | '));
  lines.push(['---', ...cols.map(() => '---')].join(' | '));
  for (const row of r.rows)
    lines.push(
      [String(row.tokens), ...cols.map((c) => (row.cells[c]?.relErr ?? Number.NaN).toExponential(2))].join(
        ' | ',
      ),
    );
  const extra = BENCH_EXTRA_COLUMNS.map((c) => c.name).filter((c) => r.rows.some((row) => row.cells[c]));
  if (extra.length > 0) {
    lines.push(
      '',
      'extra columns, median µs:',
      ['tokens', ...extra].join(' | '),
      ['---', ...extra.map(() => '---')].join(' | '),
    );
    for (const row of r.rows)
      lines.push(
        [String(row.tokens), ...extra.map((c) => (row.cells[c] ? row.cells[c].us.toFixed(1) : '-'))].join(
          ' | ',
        ),
      );
  }
  const failed = r.rows.flatMap((row) =>
    Object.entries(row.cells)
      .filter(([, c]) => c.error)
      .map(([k, c]) => `${row.tokens} tokens ${k}: ${c.error}`),
  );
  if (failed.length > 0) lines.push('', 'failed cells:', ...failed);
  return lines.join('\n');
}

/**
 * `q bench allreduce`: for each GPU count, starts one rank per GPU (CUDA_VISIBLE_DEVICES = the first N) and times
 * NCCL all-reduce, the unquantized fused kernel, int8 over NCCL, fused int8, fused int4 and the 'auto' choice on
 * bf16 messages of tokens x hidden, all in one run. Returns rank 0's results per job.
 *
 * @example
 * ```ts
 * const results = await benchAllreduce({ worlds: [2, 4] });
 * ```
 */
export async function benchAllreduce(opts: BenchAllreduceOptions = {}): Promise<BenchAllreduceResult[]> {
  const b = loadCommNative();
  const count = b.deviceCount();
  if (count.count < 2) {
    throw new QError(
      'E_NO_DEVICE',
      `Expected at least 2 CUDA devices for the all-reduce benchmark but received ${count.count}${count.error ? ` (${count.error})` : ''}`,
    );
  }
  const gpu = b.deviceInfo(0).name;
  const worlds = (opts.worlds ?? [2, 4]).filter((w) => w <= count.count);
  const script = fileURLToPath(await shippedScript('bench-rank', import.meta.url));
  const results: BenchAllreduceResult[] = [];
  for (const world of worlds) {
    const dir = mkdtempSync(join(tmpdir(), 'q-bench-'));
    const out = join(dir, 'bench.json');
    try {
      const r = await launch({
        nproc: world,
        command: [process.execPath, script],
        timeoutMs: opts.timeoutMs ?? 30_000,
        env: {
          CUDA_VISIBLE_DEVICES: Array.from({ length: world }, (_, i) => i).join(','),
          Q_BENCH_OUT: out,
          Q_BENCH_HIDDEN: String(opts.hidden ?? 8192),
          Q_BENCH_TOKENS: (opts.tokens ?? [1, 8, 32, 128, 512, 1024, 2048, 4096, 8192]).join(','),
          Q_BENCH_ERR_ELEMS: String(opts.errorElements ?? 1 << 20),
        },
      });
      if (!r.ok)
        throw new QError(
          'E_COMM',
          `Expected the ${world}-GPU benchmark job to succeed but received: ${r.failure ?? r.exitCodes.join(', ')}`,
        );
      const raw = JSON.parse(readFileSync(out, 'utf8')) as Omit<BenchAllreduceResult, 'gpu' | 'date'>;
      const res: BenchAllreduceResult = { ...raw, gpu, date: new Date().toISOString().slice(0, 10) };
      results.push(res);
      if (opts.print !== false) console.log(`\n${formatBenchTable(res)}\n`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
  return results;
}
