/**
 * The shape of the native addon (csrc/addon.cc), so that TypeScript never touches an untyped `require`
 * result. Pointers, streams and events are BigInt handles; `0n` is the default stream.
 */

/** What `deviceCount()` reports; `error` is set when the driver is missing or too old. */
export interface NativeDeviceCount {
  count: number;
  error?: string;
  driverVersion: number;
  runtimeVersion: number;
}

export interface NativeDeviceProperties {
  index: number;
  name: string;
  major: number;
  minor: number;
  multiProcessorCount: number;
  totalGlobalMem: number;
  l2CacheSize: number;
  sharedMemPerBlockOptin: number;
  memoryBusWidth: number;
  clockRateKHz: number;
  memoryClockRateKHz: number;
  pciBusId?: string;
}

export interface NativeActQuantArgs {
  x: bigint;
  gain: bigint;
  eps: number;
  staticScale: number;
  q: bigint;
  scales: bigint;
  m: number;
  k: number;
  ldq: number;
  /** 0 f16, 1 bf16. */
  dtype: number;
  stream: bigint;
}

export interface NativeGemmW4A8Args {
  a: bigint;
  lda: number;
  aScale: bigint;
  aScaleStride: number;
  w: bigint;
  wScale: bigint;
  qScale: bigint;
  unit: bigint;
  bias: bigint;
  residual: bigint;
  out: bigint;
  m: number;
  n: number;
  k: number;
  groupSize: number;
  groups: number;
  /** 0 per-channel, 1 group-float, 2 group-int. */
  mode: number;
  /** 0 f16, 1 bf16, 2 int32. */
  outType: number;
  /** 0 picks the kernel from M; other values force a variant (benchmarks). */
  variant?: number;
  stream: bigint;
}

export interface NativeCublasGemmArgs {
  a: bigint;
  w: bigint;
  out: bigint;
  m: number;
  n: number;
  k: number;
  /** 0 f16, 1 bf16. */
  dtype: number;
  beta?: number;
  stream: bigint;
}

export interface NativeBinding {
  abiVersion: number;
  deviceCount(): NativeDeviceCount;
  deviceProperties(device: number): NativeDeviceProperties;
  setDevice(device: number): void;
  getDevice(): number;
  memGetInfo(): { free: number; total: number };
  malloc(bytes: bigint): bigint;
  free(ptr: bigint): void;
  memcpyHtoD(dst: bigint, src: ArrayBufferView | ArrayBuffer, stream: bigint): void;
  memcpyDtoH(dst: ArrayBufferView | ArrayBuffer, src: bigint, stream: bigint): void;
  memcpyDtoD(dst: bigint, src: bigint, bytes: bigint, stream: bigint): void;
  memset(dst: bigint, value: number, bytes: bigint, stream: bigint): void;
  hostAlloc(bytes: bigint): ArrayBuffer;
  hostFree(buffer: ArrayBuffer): void;
  streamCreate(): bigint;
  streamDestroy(stream: bigint): void;
  streamSynchronize(stream: bigint): void;
  deviceSynchronize(): void;
  eventCreate(): bigint;
  eventDestroy(event: bigint): void;
  eventRecord(event: bigint, stream: bigint): void;
  eventSynchronize(event: bigint): void;
  eventElapsedTime(start: bigint, end: bigint): number;
  l2Flush(scratch: bigint, bytes: bigint, value: number, stream: bigint): void;
  streamBeginCapture(stream: bigint): void;
  streamEndCapture(stream: bigint): bigint;
  graphLaunch(graph: bigint, stream: bigint): void;
  graphDestroy(graph: bigint): void;
  cublasInfo(): { path: string; version: number };
  cublasGemm(args: NativeCublasGemmArgs): void;
  actQuant(args: NativeActQuantArgs): void;
  gemmW4A8(args: NativeGemmW4A8Args): void;
  lastError(): string | null;
  fillRandom(
    ptr: bigint,
    count: number,
    kind: number,
    seed: number,
    lo: number,
    hi: number,
    stream: bigint,
  ): void;
  addBias(out: bigint, bias: bigint, m: number, n: number, stream: bigint): void;
}

/** Function names the loader checks for, so a stale or foreign .node is reported instead of half-working. */
export const BINDING_FUNCTIONS: readonly (keyof NativeBinding)[] = [
  'deviceCount',
  'deviceProperties',
  'setDevice',
  'malloc',
  'free',
  'memcpyHtoD',
  'memcpyDtoH',
  'memcpyDtoD',
  'hostAlloc',
  'streamCreate',
  'eventCreate',
  'cublasGemm',
  'actQuant',
  'gemmW4A8',
  'fillRandom',
  'addBias',
];
