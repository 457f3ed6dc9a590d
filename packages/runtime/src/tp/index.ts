export { LocalTpGroup, type LocalTpGroupOptions, processGroupCollectives, type TpCollectives } from './group';
export {
  createTensorParallelModel,
  fingerprintPath,
  maxAcrossRanks,
  modelFingerprint,
  type RankIdentity,
  refuseGpuTensorParallel,
  shardCollectives,
  TensorParallelModel,
  type TensorParallelOptions,
  tpHandshake,
} from './model';
export {
  ALLREDUCE_OPTIONS,
  type AllReduceOption,
  AUTO_SMALL_BYTES,
  cpuWire,
  gpuAlgorithm,
  parseAllReduce,
} from './options';
export {
  checkTensorParallel,
  type ShardKind,
  type ShardPlan,
  shardPlan,
  type TensorShard,
  vocabRange,
} from './plan';
export {
  floatShardModel,
  type MaxAcross,
  quantizedShardModel,
  sliceMatrix,
  sliceQuantizedLinear,
} from './shard';
