export {
  type BenchAllreduceOptions,
  type BenchAllreduceResult,
  benchAllreduce,
  formatBenchTable,
} from './bench';
export {
  BENCH_COLUMNS,
  BENCH_EXTRA_COLUMNS,
  type BenchCell,
  type BenchColumn,
  type BenchRow,
} from './bench-columns';
export {
  type AllReduceAlgorithm,
  type CollectiveDType,
  type CommBinding,
  Communicator,
  type CommunicatorOptions,
  type DeviceBuffer,
  type OwnedDeviceBuffer,
  type QuantizedAllReduceOptions,
} from './communicator';
export { allReduceThreads, type CpuAllReduceOptions } from './cpu';
export { initProcessGroup, type ProcessGroup, type ProcessGroupOptions } from './group';
export { type LaunchOptions, type LaunchResult, launch, launchCli } from './launch';
export { ncclCandidates } from './nccl-lib';
export * from './quantize';
export * from './reference';
export {
  newJobToken,
  StoreClient,
  type StoreClientOptions,
  StoreServer,
  type StoreServerOptions,
} from './store';
export { syntheticActivations } from './synthetic';
