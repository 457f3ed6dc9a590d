/**
 * The shape of the native addon (csrc/addon.cc), the one native binding of q, so that TypeScript never touches
 * an untyped `require` result. Pointers, streams, events and communicators are BigInt handles; `0n` is the
 * default stream. Every error it throws carries a q error code in `code`, set in C++. The kernels take the
 * reused argument block of src/args.ts.
 */
import type { NativeLlamaBinding } from './llama-binding';

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

/** Chunk layout passed to the all-reduce kernels (@q/comm's `WireLayout` plus the rank, dtype and bit width). */
export interface NativeArLayout {
  n: number;
  world: number;
  rank: number;
  chunkElems: number;
  recordBytes: number;
  scalesOffset: number;
  zerosOffset: number;
  groupSize: number;
  /** 8, 4, or 0 for unquantized. */
  bits: number;
  symmetric: boolean;
  /** 0 f16, 1 bf16. */
  dtype: number;
}

export interface NativeBinding extends NativeLlamaBinding {
  abiVersion: number;
  /** package.json's version at build time. */
  version: string;
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
  /** A timing event (default), or with `timing` false one for ordering only (cudaEventDisableTiming). */
  eventCreate(timing?: boolean): bigint;
  eventQuery(event: bigint): boolean;
  streamWaitEvent(stream: bigint, event: bigint): void;
  canAccessPeer(device: number, peer: number): boolean;
  enablePeerAccess(peer: number): void;
  ipcGetHandle(ptr: bigint): Uint8Array;
  ipcOpenHandle(handle: Uint8Array): bigint;
  ipcCloseHandle(ptr: bigint): void;
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
  /** Argument block: p = [a, w, out, stream], i = [m, n, k, dtype], f = [beta]. */
  cublasGemm(args: BigUint64Array): void;
  /** Argument block: p = [a, w, aScale, wScale, out, stream], i = [m, n, k]. Absent in addons built before it. */
  cublasLtFp8?(args: BigUint64Array): void;
  /** Argument block: p = [x, gain, q, scales, stream], i = [m, k, ldq, dtype], f = [eps, staticScale]. */
  actQuant(args: BigUint64Array): void;
  /**
   * Argument block: p = [a, aScale, w, wScale, qScale, unit, bias, residual, out, stream],
   * i = [lda, aScaleStride, m, n, k, groupSize, groups, mode, outType, variant].
   */
  gemmW4A8(args: BigUint64Array): void;
  lastError(): string | null;
  ncclLoad(path: string): number;
  ncclGetUniqueId(): Uint8Array;
  ncclCommInitRank(world: number, id: Uint8Array, rank: number): bigint;
  ncclCommDestroy(comm: bigint): void;
  ncclCommAbort(comm: bigint): void;
  ncclAllReduce(
    send: bigint,
    recv: bigint,
    count: number,
    dtype: number,
    op: number,
    comm: bigint,
    stream: bigint,
  ): void;
  ncclAllGather(
    send: bigint,
    recv: bigint,
    sendCount: number,
    dtype: number,
    comm: bigint,
    stream: bigint,
  ): void;
  ncclReduceScatter(
    send: bigint,
    recv: bigint,
    recvCount: number,
    dtype: number,
    op: number,
    comm: bigint,
    stream: bigint,
  ): void;
  ncclBroadcast(
    send: bigint,
    recv: bigint,
    count: number,
    dtype: number,
    root: number,
    comm: bigint,
    stream: bigint,
  ): void;
  ncclAllToAll(
    send: bigint,
    recv: bigint,
    bytesPerPeer: number,
    world: number,
    comm: bigint,
    stream: bigint,
  ): void;
  /** Waits for `stream` while watching NCCL's asynchronous error; aborts `comm` on an error or at the deadline. */
  syncWatch(stream: bigint, comm: bigint, timeoutMs: number): void;
  arQuantize(layout: NativeArLayout, input: bigint, send: bigint, sms: number, stream: bigint): void;
  arReduce(layout: NativeArLayout, recv: bigint, reduced: bigint, sms: number, stream: bigint): void;
  arDequant(layout: NativeArLayout, gathered: bigint, out: bigint, sms: number, stream: bigint): void;
  arFused(
    layout: NativeArLayout,
    input: bigint,
    out: bigint,
    data: bigint[],
    signals: bigint[],
    epoch: number,
    oneShot: boolean,
    sms: number,
    timeoutMs: number,
    stream: bigint,
  ): void;
  arConstants(): { maxRanks: number; maxBlocks: number; signalBytes: number; signalRegion: number };
  /** Positional arguments, in the order of csrc/attention/glue.cc (src/attention.ts passes them). */
  attentionPrefill(...args: (bigint | number)[]): void;
  attentionDecode(...args: (bigint | number)[]): void;
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
  'streamWaitEvent',
  'ipcGetHandle',
  'ncclLoad',
  'syncWatch',
  'arFused',
  'llamaSample',
  'fillRandom',
  'addBias',
];
