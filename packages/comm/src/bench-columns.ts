import type { QuantizedAllReduceOptions } from './communicator';

/** One column of the all-reduce benchmark. */
export interface BenchColumn {
  readonly name: string;
  readonly opts: QuantizedAllReduceOptions;
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
