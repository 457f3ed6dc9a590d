/**
 * The shape of the @q/comm addon (csrc/addon.cc). Pointers, streams, events and communicators are bigint handles.
 * Errors thrown by the addon carry a QError code as their message prefix ("E_CUDA: ...").
 */

/** Chunk layout passed to the all-reduce kernels (`WireLayout` plus the rank, dtype and bit width). */
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

export interface CommBinding {
  addonVersion: string;
  deviceCount(): { count: number; error?: string };
  setDevice(device: number): void;
  deviceInfo(device: number): {
    name: string;
    major: number;
    minor: number;
    multiProcessorCount: number;
    pciBusId: string;
  };
  canAccessPeer(a: number, b: number): boolean;
  malloc(bytes: number): bigint;
  free(ptr: bigint): void;
  memset(ptr: bigint, value: number, bytes: number): void;
  copyHtoD(ptr: bigint, src: ArrayBufferView): void;
  copyDtoH(ptr: bigint, dst: ArrayBufferView): void;
  streamCreate(): bigint;
  streamDestroy(stream: bigint): void;
  streamSynchronize(stream: bigint): void;
  eventCreate(): bigint;
  eventDestroy(event: bigint): void;
  eventRecord(event: bigint, stream: bigint): void;
  eventElapsedMs(start: bigint, end: bigint): number;
  ipcGetHandle(ptr: bigint): Uint8Array;
  ipcOpenHandle(handle: Uint8Array): bigint;
  ipcCloseHandle(ptr: bigint): void;
  deviceSynchronize(): void;
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
}

/** Every function the loader checks for. */
export const COMM_BINDING_FUNCTIONS = [
  'deviceCount',
  'setDevice',
  'deviceInfo',
  'canAccessPeer',
  'malloc',
  'free',
  'memset',
  'copyHtoD',
  'copyDtoH',
  'streamCreate',
  'streamDestroy',
  'streamSynchronize',
  'eventCreate',
  'eventDestroy',
  'eventRecord',
  'eventElapsedMs',
  'ipcGetHandle',
  'ipcOpenHandle',
  'ipcCloseHandle',
  'deviceSynchronize',
  'ncclLoad',
  'ncclGetUniqueId',
  'ncclCommInitRank',
  'ncclCommDestroy',
  'ncclCommAbort',
  'ncclAllReduce',
  'ncclAllGather',
  'ncclReduceScatter',
  'ncclBroadcast',
  'ncclAllToAll',
  'syncWatch',
  'arQuantize',
  'arReduce',
  'arDequant',
  'arFused',
  'arConstants',
] as const;
