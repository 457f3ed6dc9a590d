export { BlockManager } from './block-manager';
export { Generator, type GeneratorOptions, type GeneratorStats, type StepInfo } from './generator';
export { ModelRunner } from './model-runner';
export { sampleNext } from './sampler';
export { Scheduler, type SchedulerOptions, type StepItem } from './scheduler';
export {
  type FinishReason,
  type SamplingParams,
  Sequence,
  type SequenceHandle,
  type SequenceOptions,
  type SequenceStatus,
} from './sequence';
