import type { QuantizedAllReduceOptions } from './communicator';

/** One column of the all-reduce benchmark. */
export interface BenchColumn {
  readonly name: string;
  readonly opts: QuantizedAllReduceOptions;
  /** Measured only for messages up to this size. */
  readonly maxBytes?: number;
}

/** The columns of `q bench allreduce`, in table order. */
export const BENCH_COLUMNS: readonly BenchColumn[] = [
  { name: 'nccl', opts: { algorithm: 'nccl' } },
  { name: 'fused', opts: { algorithm: 'fused' } },
  { name: 'nccl-int8', opts: { algorithm: 'nccl-int8' } },
  { name: 'fused-int8', opts: { algorithm: 'fused-int8' } },
  { name: 'fused-int4', opts: { algorithm: 'fused-int4' } },
  { name: 'auto', opts: { algorithm: 'auto' } },
];

/**
 * Extra columns, in the JSON and a second table: the fused kernels with the shot forced either way and int4 over
 * NCCL, to place the one-shot and 'auto' thresholds.
 */
export const BENCH_EXTRA_COLUMNS: readonly BenchColumn[] = [
  { name: 'fused-1shot', opts: { algorithm: 'fused', oneShot: true }, maxBytes: 16 << 20 },
  { name: 'fused-2shot', opts: { algorithm: 'fused', oneShot: false } },
  { name: 'fused-int8-1shot', opts: { algorithm: 'fused-int8', oneShot: true }, maxBytes: 16 << 20 },
  { name: 'fused-int8-2shot', opts: { algorithm: 'fused-int8', oneShot: false } },
  { name: 'nccl-int4', opts: { algorithm: 'nccl-int4' } },
];

/** One measurement: median latency of the slowest rank, NCCL-style bus bandwidth, error, algorithm run. */
export interface BenchCell {
  readonly us: number;
  readonly busGBs: number;
  readonly relErr: number;
  readonly algorithm: string;
  readonly error?: string;
}

/** One message size. */
export interface BenchRow {
  readonly tokens: number;
  readonly bytes: number;
  readonly cells: Record<string, BenchCell>;
}
