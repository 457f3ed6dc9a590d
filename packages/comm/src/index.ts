export { allReduceThreads, type CpuAllReduceOptions } from './cpu';
export { initProcessGroup, type ProcessGroup, type ProcessGroupOptions } from './group';
export { type LaunchOptions, type LaunchResult, launch, launchCli } from './launch';
export * from './quantize';
export * from './reference';
export {
  newJobToken,
  StoreClient,
  type StoreClientOptions,
  StoreServer,
  type StoreServerOptions,
} from './store';
