/**
 * One rank's GPU communicator: NCCL collectives through @q/kernels-cuda's addon (the one native binding of q),
 * and the quantized all-reduce in two forms,
 * (a) over NCCL (quantize kernel → all-to-all → dequantize-sum-requantize kernel → all-gather → dequantize kernel;
 * works across nodes) and (b) a fused intra-node kernel over CUDA IPC peer memory (buffers registered once here,
 * handles exchanged through the rendezvous, flag barriers; one-shot for small messages, two-shot for large).
 * Both give exactly the bits of `allReduceReference` (the NCCL-native 'nccl' algorithm sums in NCCL's order).
 */
import { QError } from '@q/core';
import {
  Event,
  loadNative,
  type NativeArLayout,
  type NativeBinding,
  nativeError,
  Stream,
  useDevice,
} from '@q/kernels-cuda';
import type { ProcessGroup } from './group';
import { ncclCandidates } from './nccl-lib';
import { type PayloadDType, type QuantOptions, schemeOf, wireLayout } from './reference';

/** The part of @q/kernels-cuda's addon a communicator uses (tests pass a stand-in). */
export type CommBinding = Pick<
  NativeBinding,
  | 'deviceCount'
  | 'setDevice'
  | 'deviceProperties'
  | 'malloc'
  | 'free'
  | 'memset'
  | 'memcpyHtoD'
  | 'memcpyDtoH'
  | 'streamCreate'
  | 'streamDestroy'
  | 'streamSynchronize'
  | 'ipcGetHandle'
  | 'ipcOpenHandle'
  | 'ipcCloseHandle'
  | 'ncclLoad'
  | 'ncclGetUniqueId'
  | 'ncclCommInitRank'
  | 'ncclCommDestroy'
  | 'ncclCommAbort'
  | 'ncclAllReduce'
  | 'ncclAllGather'
  | 'ncclReduceScatter'
  | 'ncclBroadcast'
  | 'ncclAllToAll'
  | 'syncWatch'
  | 'arQuantize'
  | 'arReduce'
  | 'arDequant'
  | 'arFused'
  | 'arConstants'
>;

/**
 * The binding with every native error turned into a QError carrying the code the C++ glue set (built once per
 * communicator, so a collective pays no wrapper allocation).
 */
function guarded(b: CommBinding): CommBinding {
  const out: Record<string, unknown> = {};
  for (const name of Object.keys(b) as (keyof CommBinding)[]) {
    const fn = b[name] as unknown;
    if (typeof fn !== 'function') continue;
    out[name] = (...args: unknown[]) => {
      try {
        return (fn as (...a: unknown[]) => unknown)(...args);
      } catch (e) {
        throw nativeError(e, name);
      }
    };
  }
  return out as CommBinding;
}

/** A device buffer: anything with a device pointer and a size (kernels-cuda's DeviceTensor fits). */
export interface DeviceBuffer {
  readonly ptr: bigint;
  readonly byteLength: number;
}

/** A buffer this communicator allocated; `close()` frees it if `free()` was not called. */
export interface OwnedDeviceBuffer extends DeviceBuffer {
  free(): void;
}

/** dtypes of the plain NCCL collectives. */
export type CollectiveDType = 'f16' | 'bf16' | 'f32' | 'i8' | 'u8' | 'i32';

/** How `quantizedAllReduce` runs. 'nccl' is NCCL's own all-reduce of the payload dtype. */
export type AllReduceAlgorithm =
  | 'auto'
  | 'nccl'
  | 'nccl-int8'
  | 'nccl-int4'
  | 'fused'
  | 'fused-int8'
  | 'fused-int4';

/** Options of `quantizedAllReduce`. */
export interface QuantizedAllReduceOptions {
  /** Default 'auto' (see `chooseAlgorithm`). */
  readonly algorithm?: AllReduceAlgorithm;
  /** For 'auto' only: restrict the wire format ('none' keeps the result exact up to the f32 sum). */
  readonly wire?: QuantOptions['wire'];
  /** Default false (asymmetric). */
  readonly symmetric?: boolean;
  /** Fused kernel: read all peers and reduce locally. Default: message ≤ oneShotMaxBytes. */
  readonly oneShot?: boolean;
}

/** Options of `Communicator.create`. */
export interface CommunicatorOptions {
  /** CUDA device of this rank. Default: the group's localRank. */
  readonly device?: number;
  /** Largest payload (bytes, f16/bf16) the fused kernel takes; sizes its registered buffer. Default 128 MiB. */
  readonly maxFusedBytes?: number;
  /** Register IPC buffers for the fused kernel. Default: true when every rank is on this host. */
  readonly fused?: boolean;
  /** Messages up to this size stay unquantized under 'auto' (measured on 2 and 4 H200: below ~4 MiB quantizing gains nothing). Default 4 MiB. */
  readonly smallBytes?: number;
  /** Fused messages up to this size run one-shot. Default 512 KiB. */
  readonly oneShotMaxBytes?: number;
  /** Path of libnccl.so.2 (default: Q_NCCL_LIB, the loader's search, Python NCCL wheels). */
  readonly ncclLib?: string;
  /** Collective and barrier timeout, ms. Default: the group's. */
  readonly timeoutMs?: number;
  /** The addon (default: @q/kernels-cuda's); tests pass a stand-in. */
  readonly binding?: CommBinding;
}

const NCCL_DTYPE: Record<CollectiveDType, number> = { i8: 0, u8: 1, i32: 2, f16: 6, f32: 7, bf16: 9 };
const DTYPE_BYTES: Record<CollectiveDType, number> = { i8: 1, u8: 1, i32: 4, f16: 2, f32: 4, bf16: 2 };
const GPU_GROUP = 128;

function align(b: number, a: number): number {
  return Math.ceil(b / a) * a;
}

/**
 * A communicator over the ranks of a process group, one GPU per rank.
 *
 * @example
 * ```ts
 * const pg = await initProcessGroup();
 * const comm = await Communicator.create(pg);
 * const x = comm.alloc(8192 * 2), y = comm.alloc(8192 * 2);
 * comm.upload(x, bf16Bits);
 * await comm.quantizedAllReduce(x, y, 8192, 'bf16', { algorithm: 'fused-int8' });
 * comm.synchronize();
 * comm.close();
 * pg.close();
 * ```
 */
export class Communicator {
  readonly rank: number;
  readonly world: number;
  readonly device: number;
  /** The stream every collective runs on (owned by the communicator: `close()` destroys it). */
  readonly stream: Stream;
  readonly ncclVersion: number;
  readonly multiProcessorCount: number;
  readonly timeoutMs: number;
  /** True when the fused IPC kernel is set up. */
  readonly fusedAvailable: boolean;
  readonly maxFusedBytes: number;
  /** Why the fused kernel is not set up, when it is not. */
  fusedUnavailableReason = '';
  private readonly b: CommBinding;
  private readonly s: bigint;
  private readonly pg: ProcessGroup;
  private readonly smallBytes: number;
  private readonly oneShotMaxBytes: number;
  private comm: bigint;
  private readonly owned = new Set<bigint>();
  private readonly opened = new Set<bigint>();
  private ipcBase = 0n;
  private dataPtrs: bigint[] = [];
  private sigPtrs: bigint[] = [];
  private epoch = 1;
  private halfBytes = 0;
  private scratch:
    | { bytes: number; send: bigint; recv: bigint; reduced: bigint; gathered: bigint }
    | undefined;
  private readonly checked = new Set<string>();
  private closed = false;

  private constructor(init: {
    b: CommBinding;
    pg: ProcessGroup;
    device: number;
    stream: bigint;
    comm: bigint;
    ncclVersion: number;
    sms: number;
    timeoutMs: number;
    opts: CommunicatorOptions;
  }) {
    this.b = init.b;
    this.pg = init.pg;
    this.rank = init.pg.rank;
    this.world = init.pg.world;
    this.device = init.device;
    this.s = init.stream;
    this.stream = Stream.wrap(init.stream, init.device);
    this.comm = init.comm;
    this.ncclVersion = init.ncclVersion;
    this.multiProcessorCount = init.sms;
    this.timeoutMs = init.timeoutMs;
    this.maxFusedBytes = init.opts.maxFusedBytes ?? 128 * 1024 * 1024;
    this.smallBytes = init.opts.smallBytes ?? 4 * 1024 * 1024;
    this.oneShotMaxBytes = init.opts.oneShotMaxBytes ?? 512 * 1024;
    this.fusedAvailable = false;
  }

  /**
   * Creates the communicator on every rank: selects the device, loads NCCL, shares the NCCL unique id through
   * the rendezvous, and (single host) registers the fused kernel's IPC buffers with every peer.
   *
   * @example
   * ```ts
   * const comm = await Communicator.create(await initProcessGroup(), { maxFusedBytes: 64 << 20 });
   * ```
   */
  static async create(pg: ProcessGroup, opts: CommunicatorOptions = {}): Promise<Communicator> {
    const b = guarded(opts.binding ?? loadNative());
    const device = opts.device ?? pg.localRank;
    const timeoutMs = opts.timeoutMs ?? pg.timeoutMs;
    const count = b.deviceCount();
    if (count.count === 0) {
      throw new QError(
        'E_NO_DEVICE',
        `Expected a CUDA device for rank ${pg.rank} but received none${count.error ? ` (${count.error})` : ''}`,
      );
    }
    if (device < 0 || device >= count.count) {
      throw new QError(
        'E_NO_DEVICE',
        `Expected a device index in [0, ${count.count}) for rank ${pg.rank} but received ${device} (set CUDA_VISIBLE_DEVICES or options.device)`,
      );
    }
    // Through kernels-cuda's useDevice, which caches the current device per thread, unless a stand-in is used.
    if (opts.binding) b.setDevice(device);
    else useDevice(device);
    const info = b.deviceProperties(device);
    const tried: string[] = [];
    let ncclVersion = 0;
    for (const path of opts.ncclLib ? [opts.ncclLib] : ncclCandidates()) {
      try {
        ncclVersion = b.ncclLoad(path);
        break;
      } catch (e) {
        tried.push(`  - ${path}: ${e instanceof Error ? e.message : String(e)}`);
      }
    }
    if (ncclVersion === 0) {
      throw new QError(
        'E_NCCL',
        `Expected libnccl.so.2 (NCCL >= 2.7) but none loaded. Tried:\n${tried.join('\n')}\nPossible solutions:\n  - Set Q_NCCL_LIB to the path of libnccl.so.2 (e.g. from the nvidia-nccl-cu12/cu13 Python wheel).\n  - Install NCCL (libnccl2).`,
      );
    }
    // NVLink SHARP (NVLS) needs multicast objects, which q never uses; keep it off unless the user decides.
    process.env.NCCL_NVLS_ENABLE ??= '0';
    const stream = b.streamCreate();
    // Every rank must pass this exchange before any of them blocks inside ncclCommInitRank, which has no timeout.
    const id = await pg.broadcastBytes('nccl-id', pg.rank === 0 ? b.ncclGetUniqueId() : undefined);
    let comm = 0n;
    try {
      comm = b.ncclCommInitRank(pg.world, id, pg.rank);
    } catch (e) {
      b.streamDestroy(stream);
      throw e;
    }
    const c = new Communicator({
      b,
      pg,
      device,
      stream,
      comm,
      ncclVersion,
      sms: info.multiProcessorCount,
      timeoutMs,
      opts,
    });
    try {
      const wantFused = opts.fused ?? pg.singleHost;
      const constants = b.arConstants();
      // Every rank must decide the same, so the decision itself is exchanged.
      const can = wantFused && pg.singleHost && pg.world <= constants.maxRanks;
      const all = await pg.exchange('fused-ok', new Uint8Array([can ? 1 : 0]));
      if (all.every((v) => v[0] === 1) && pg.world > 1) await c.registerIpc(constants);
      else c.fusedUnavailableReason = pg.world === 1 ? 'one rank' : 'ranks on several hosts, or fused: false';
    } catch (e) {
      c.close();
      throw e;
    }
    return c;
  }

  private async registerIpc(constants: { signalRegion: number; signalBytes: number }): Promise<void> {
    const w = this.world;
    // Largest record set: unquantized payload split in W chunks of C elements, W records plus one reduced record.
    const elems = Math.ceil(this.maxFusedBytes / 2);
    const chunk = align(Math.ceil(elems / w), GPU_GROUP);
    // Two halves, used by epoch parity, so a call never needs a closing barrier (see csrc/allreduce/allreduce.cu).
    this.halfBytes = 2 * w * align(chunk * 2, 16);
    const dataBytes = 2 * this.halfBytes;
    let handle: Uint8Array = new Uint8Array(0);
    let failure = '';
    try {
      this.ipcBase = this.b.malloc(BigInt(constants.signalRegion + dataBytes));
      this.owned.add(this.ipcBase);
      // Zeroed on the communicator's stream (which does not wait for the legacy one) before any peer maps it.
      this.b.memset(this.ipcBase, 0, BigInt(constants.signalRegion), this.s);
      this.b.streamSynchronize(this.s);
      handle = this.b.ipcGetHandle(this.ipcBase);
    } catch (e) {
      failure = e instanceof Error ? e.message : String(e);
    }
    const handles = await this.pg.exchange('ipc-handles', handle);
    let bases: bigint[] = [];
    if (!failure && handles.every((h) => h.length > 0)) {
      try {
        bases = handles.map((h, r) => {
          if (r === this.rank) return this.ipcBase;
          const p = this.b.ipcOpenHandle(h);
          this.opened.add(p);
          return p;
        });
      } catch (e) {
        failure = e instanceof Error ? e.message : String(e);
      }
    } else if (!failure) {
      failure = 'a peer could not export its buffer';
    }
    // Every rank must agree: if one could not map every peer (no P2P between these GPUs), nobody uses the kernel.
    const oks = await this.pg.exchange('ipc-mapped', new TextEncoder().encode(failure));
    const bad = oks.map((b, r) => [r, new TextDecoder().decode(b)] as const).filter(([, m]) => m !== '');
    if (bad.length > 0) {
      for (const p of this.opened) this.b.ipcCloseHandle(p);
      this.opened.clear();
      if (this.ipcBase !== 0n && this.owned.delete(this.ipcBase)) this.b.free(this.ipcBase);
      this.ipcBase = 0n;
      this.fusedUnavailableReason = `CUDA IPC registration failed: ${bad.map(([r, m]) => `rank ${r}: ${m}`).join('; ')}`;
      return;
    }
    this.sigPtrs = bases;
    this.dataPtrs = bases.map((p) => p + BigInt(constants.signalRegion));
    // No rank may launch the fused kernel before every peer has mapped every buffer and zeroed its flags.
    await this.pg.barrier('ipc-registered');
    (this as { fusedAvailable: boolean }).fusedAvailable = true;
  }

  /**
   * Live allocations and opened IPC mappings (both 0 after close).
   *
   * @example
   * ```ts
   * comm.close();
   * comm.resources() // { allocations: 0, ipcHandles: 0 }
   * ```
   */
  resources(): { allocations: number; ipcHandles: number } {
    return { allocations: this.owned.size, ipcHandles: this.opened.size };
  }

  private live(): void {
    if (this.closed)
      throw new QError(
        'E_DISPOSED',
        `Expected an open communicator on rank ${this.rank} but received a closed one`,
      );
  }

  /**
   * Allocates device memory that `close()` frees.
   *
   * @example
   * ```ts
   * const buf = comm.alloc(1 << 20);
   * buf.free();
   * ```
   */
  alloc(bytes: number): OwnedDeviceBuffer {
    this.live();
    if (!Number.isInteger(bytes) || bytes < 1)
      throw new QError('E_ARG', `Expected a positive byte count for alloc but received ${bytes}`);
    const ptr = this.b.malloc(BigInt(bytes));
    this.owned.add(ptr);
    return {
      ptr,
      byteLength: bytes,
      free: () => {
        if (this.owned.delete(ptr)) this.b.free(ptr);
      },
    };
  }

  /**
   * Copies host bytes to the start of `dst` on the communicator's stream, so the collectives queued after it
   * see the data, and waits for the copy (so `src` may be reused at once).
   *
   * @example
   * ```ts
   * comm.upload(buf, new Uint16Array(4096));
   * ```
   */
  upload(dst: DeviceBuffer, src: ArrayBufferView): void {
    this.live();
    if (src.byteLength > dst.byteLength)
      throw new QError(
        'E_SHAPE',
        `Expected at most ${dst.byteLength} bytes for upload but received ${src.byteLength}`,
      );
    this.b.memcpyHtoD(dst.ptr, src, this.s);
    this.b.streamSynchronize(this.s);
  }

  /**
   * Copies the start of `src` into host memory after the communicator's stream finished.
   *
   * @example
   * ```ts
   * const host = new Uint16Array(4096);
   * comm.download(buf, host);
   * ```
   */
  download(src: DeviceBuffer, dst: ArrayBufferView): void {
    this.live();
    if (dst.byteLength > src.byteLength)
      throw new QError(
        'E_SHAPE',
        `Expected at most ${src.byteLength} bytes for download but received ${dst.byteLength}`,
      );
    this.synchronize();
    this.b.memcpyDtoH(dst, src.ptr, this.s);
    this.b.streamSynchronize(this.s);
  }

  /**
   * Waits for the stream; a collective that does not finish within the timeout aborts NCCL and throws E_TIMEOUT.
   *
   * @example
   * ```ts
   * await comm.quantizedAllReduce(x, y, n, 'bf16');
   * comm.synchronize();
   * ```
   */
  synchronize(): void {
    this.live();
    try {
      this.b.syncWatch(this.s, this.comm, this.timeoutMs);
    } catch (e) {
      const q = nativeError(e, `rank ${this.rank} synchronize`);
      // syncWatch aborted the NCCL communicator (which frees it) before throwing these.
      if (q.code === 'E_NCCL' || q.code === 'E_TIMEOUT') this.comm = 0n;
      if (q.code === 'E_CUDA' && this.fusedAvailable) {
        throw new QError(
          'E_COMM',
          `${q.message} (the fused kernel traps when a peer does not reach its flag barrier within ${this.timeoutMs} ms)`,
          { cause: q },
        );
      }
      throw q;
    }
  }

  private need(buf: DeviceBuffer, bytes: number, name: string): void {
    if (typeof buf?.ptr !== 'bigint' || buf.ptr === 0n)
      throw new QError(
        'E_ARG',
        `Expected a device buffer with a bigint ptr for ${name} but received ${String(buf?.ptr)}`,
      );
    if (buf.byteLength < bytes)
      throw new QError(
        'E_SHAPE',
        `Expected at least ${bytes} bytes for ${name} but received ${buf.byteLength}`,
      );
  }

  private count(n: number, name: string): void {
    if (!Number.isInteger(n) || n < 1)
      throw new QError('E_ARG', `Expected a positive element count for ${name} but received ${n}`);
  }

  /** Checks once per new (operation, count, dtype) that every rank passed the same: E_COMM otherwise. */
  private async sameOnAllRanks(signature: string): Promise<void> {
    if (this.checked.has(signature)) return;
    await this.pg.checkSame('collective (operation count dtype)', signature);
    this.checked.add(signature);
  }

  /**
   * NCCL all-reduce (sum) of `count` elements; `recv` may be `send`.
   *
   * @example
   * ```ts
   * await comm.allReduce(x, x, 4096, 'f32');
   * ```
   */
  async allReduce(
    send: DeviceBuffer,
    recv: DeviceBuffer,
    count: number,
    dtype: CollectiveDType,
  ): Promise<void> {
    this.live();
    this.count(count, 'allReduce count');
    this.need(send, count * DTYPE_BYTES[dtype], 'allReduce send');
    this.need(recv, count * DTYPE_BYTES[dtype], 'allReduce recv');
    await this.sameOnAllRanks(`allReduce ${count} ${dtype}`);
    this.b.ncclAllReduce(send.ptr, recv.ptr, count, NCCL_DTYPE[dtype], 0, this.comm, this.s);
  }

  /**
   * NCCL all-gather: `count` elements from every rank, concatenated in rank order into `recv`.
   *
   * @example
   * ```ts
   * await comm.allGather(mine, all, 1024, 'bf16');
   * ```
   */
  async allGather(
    send: DeviceBuffer,
    recv: DeviceBuffer,
    count: number,
    dtype: CollectiveDType,
  ): Promise<void> {
    this.live();
    this.count(count, 'allGather count');
    this.need(send, count * DTYPE_BYTES[dtype], 'allGather send');
    this.need(recv, count * this.world * DTYPE_BYTES[dtype], 'allGather recv');
    await this.sameOnAllRanks(`allGather ${count} ${dtype}`);
    this.b.ncclAllGather(send.ptr, recv.ptr, count, NCCL_DTYPE[dtype], this.comm, this.s);
  }

  /**
   * NCCL reduce-scatter (sum): `send` holds world × `count` elements, `recv` gets this rank's reduced block.
   *
   * @example
   * ```ts
   * await comm.reduceScatter(all, mine, 1024, 'f32');
   * ```
   */
  async reduceScatter(
    send: DeviceBuffer,
    recv: DeviceBuffer,
    count: number,
    dtype: CollectiveDType,
  ): Promise<void> {
    this.live();
    this.count(count, 'reduceScatter count');
    this.need(send, count * this.world * DTYPE_BYTES[dtype], 'reduceScatter send');
    this.need(recv, count * DTYPE_BYTES[dtype], 'reduceScatter recv');
    await this.sameOnAllRanks(`reduceScatter ${count} ${dtype}`);
    this.b.ncclReduceScatter(send.ptr, recv.ptr, count, NCCL_DTYPE[dtype], 0, this.comm, this.s);
  }

  /**
   * All-to-all through grouped NCCL send/recv: block p (`count` elements) of `send` goes to rank p, rank p's block
   * for this rank lands in block p of `recv`.
   *
   * @example
   * ```ts
   * await comm.allToAll(send, recv, 256, 'i8');
   * ```
   */
  async allToAll(
    send: DeviceBuffer,
    recv: DeviceBuffer,
    count: number,
    dtype: CollectiveDType,
  ): Promise<void> {
    this.live();
    this.count(count, 'allToAll count');
    const bytes = count * DTYPE_BYTES[dtype];
    this.need(send, bytes * this.world, 'allToAll send');
    this.need(recv, bytes * this.world, 'allToAll recv');
    await this.sameOnAllRanks(`allToAll ${count} ${dtype}`);
    this.b.ncclAllToAll(send.ptr, recv.ptr, bytes, this.world, this.comm, this.s);
  }

  /**
   * NCCL broadcast of `count` elements from `root` (in place).
   *
   * @example
   * ```ts
   * await comm.broadcast(weights, n, 'bf16', 0);
   * ```
   */
  async broadcast(buf: DeviceBuffer, count: number, dtype: CollectiveDType, root = 0): Promise<void> {
    this.live();
    this.count(count, 'broadcast count');
    if (!Number.isInteger(root) || root < 0 || root >= this.world)
      throw new QError('E_ARG', `Expected a root in [0, ${this.world}) but received ${root}`);
    this.need(buf, count * DTYPE_BYTES[dtype], 'broadcast buffer');
    await this.sameOnAllRanks(`broadcast ${count} ${dtype} ${root}`);
    this.b.ncclBroadcast(buf.ptr, buf.ptr, count, NCCL_DTYPE[dtype], root, this.comm, this.s);
  }

  /**
   * Waits until every rank's GPU work queued so far is done (an NCCL all-reduce of one int, then a synchronize).
   *
   * @example
   * ```ts
   * await comm.barrier();
   * ```
   */
  async barrier(): Promise<void> {
    this.live();
    const s = this.ensureScratch(16);
    this.b.ncclAllReduce(s.reduced, s.reduced, 1, NCCL_DTYPE.i32, 0, this.comm, this.s);
    this.synchronize();
  }

  /**
   * The algorithm 'auto' runs for a message: with the fused kernel (one host, n % 8 == 0, f16/bf16, within
   * maxFusedBytes): unquantized up to smallBytes (4 MiB; below that fewer bytes gain nothing, measured), fused int8
   * above (or the wire format asked for). Across hosts: NCCL up to smallBytes, int8 over NCCL above.
   *
   * @example
   * ```ts
   * comm.chooseAlgorithm(8192 * 8192, 'bf16') // 'fused-int8' on one host
   * ```
   */
  chooseAlgorithm(
    count: number,
    dtype: PayloadDType,
    wire?: QuantOptions['wire'],
  ): Exclude<AllReduceAlgorithm, 'auto'> {
    const bytes = count * (dtype === 'f32' ? 4 : 2);
    const fusedOk = this.fusedAvailable && dtype !== 'f32' && count % 8 === 0 && bytes <= this.maxFusedBytes;
    const quantOk = dtype !== 'f32' && count % 8 === 0;
    const w = wire ?? (bytes <= this.smallBytes ? 'none' : 'int8');
    if (w === 'none' || !quantOk) return fusedOk ? 'fused' : 'nccl';
    if (fusedOk) return w === 'int4' ? 'fused-int4' : 'fused-int8';
    return w === 'int4' ? 'nccl-int4' : 'nccl-int8';
  }

  private ensureScratch(bytes: number) {
    if (this.scratch && this.scratch.bytes >= bytes) return this.scratch;
    if (this.scratch) {
      this.synchronize();
      for (const p of [this.scratch.send, this.scratch.recv, this.scratch.reduced, this.scratch.gathered]) {
        this.owned.delete(p);
        this.b.free(p);
      }
      this.scratch = undefined;
    }
    const size = align(Math.max(bytes, 4096), 4096);
    const a = () => {
      const p = this.b.malloc(BigInt(size));
      this.owned.add(p);
      return p;
    };
    this.scratch = { bytes: size, send: a(), recv: a(), reduced: a(), gathered: a() };
    return this.scratch;
  }

  private layout(count: number, dtype: PayloadDType, bits: 0 | 4 | 8, symmetric: boolean): NativeArLayout {
    const d = dtype === 'f16' ? 0 : 1;
    if (bits === 0) {
      const chunk = align(Math.ceil(count / this.world), GPU_GROUP);
      const rb = align(chunk * 2, 16);
      return {
        n: count,
        world: this.world,
        rank: this.rank,
        chunkElems: chunk,
        recordBytes: rb,
        scalesOffset: rb,
        zerosOffset: rb,
        groupSize: GPU_GROUP,
        bits: 0,
        symmetric: true,
        dtype: d,
      };
    }
    const l = wireLayout(
      count,
      this.world,
      schemeOf({ wire: bits === 8 ? 'int8' : 'int4', symmetric, groupSize: GPU_GROUP }),
    );
    return {
      n: count,
      world: this.world,
      rank: this.rank,
      chunkElems: l.chunkElems,
      recordBytes: l.recordBytes,
      scalesOffset: l.scalesOffset,
      zerosOffset: l.zerosOffset,
      groupSize: GPU_GROUP,
      bits,
      symmetric,
      dtype: d,
    };
  }

  /**
   * The all-reduce (sum) of `count` f16/bf16 elements from `input` into `output` on every rank, by the chosen
   * algorithm; quantized forms follow `allReduceReference` bit for bit. Enqueues on `stream`; call
   * `synchronize()` (or `download`) before reading. Returns the algorithm that ran.
   *
   * @example
   * ```ts
   * const used = await comm.quantizedAllReduce(x, y, n, 'bf16'); // e.g. 'fused-int8'
   * ```
   */
  async quantizedAllReduce(
    input: DeviceBuffer,
    output: DeviceBuffer,
    count: number,
    dtype: PayloadDType,
    opts: QuantizedAllReduceOptions = {},
  ): Promise<Exclude<AllReduceAlgorithm, 'auto'>> {
    this.live();
    this.count(count, 'quantizedAllReduce count');
    const esize = dtype === 'f32' ? 4 : 2;
    this.need(input, count * esize, 'quantizedAllReduce input');
    this.need(output, count * esize, 'quantizedAllReduce output');
    const algo =
      !opts.algorithm || opts.algorithm === 'auto'
        ? this.chooseAlgorithm(count, dtype, opts.wire)
        : opts.algorithm;
    const symmetric = opts.symmetric ?? false;
    await this.sameOnAllRanks(`quantizedAllReduce ${count} ${dtype} ${algo} ${symmetric}`);
    if (algo === 'nccl') {
      this.b.ncclAllReduce(input.ptr, output.ptr, count, NCCL_DTYPE[dtype], 0, this.comm, this.s);
      return algo;
    }
    if (dtype === 'f32')
      throw new QError('E_DTYPE', `Expected f16 or bf16 for ${algo} but received f32 (use algorithm 'nccl')`);
    if (count % 8 !== 0)
      throw new QError('E_SHAPE', `Expected a multiple of 8 elements for ${algo} but received ${count}`);
    const bits = algo.endsWith('int8') ? 8 : algo.endsWith('int4') ? 4 : 0;
    const L = this.layout(count, dtype, bits, symmetric);
    if (algo.startsWith('fused')) {
      if (!this.fusedAvailable) {
        throw new QError(
          'E_UNSUPPORTED',
          `Expected the fused kernel (one host, ≤ 8 ranks, IPC registered) for ${algo} but it is not set up on rank ${this.rank}: ${this.fusedUnavailableReason}`,
        );
      }
      const need = 2 * this.world * L.recordBytes;
      const have =
        2 *
        this.world *
        align(align(Math.ceil(Math.ceil(this.maxFusedBytes / 2) / this.world), GPU_GROUP) * 2, 16);
      if (need > have)
        throw new QError(
          'E_SHAPE',
          `Expected at most ${this.maxFusedBytes} bytes for ${algo} (maxFusedBytes) but received ${count * esize}`,
        );
      const oneShot = opts.oneShot ?? count * esize <= this.oneShotMaxBytes;
      this.b.arFused(
        L,
        input.ptr,
        output.ptr,
        this.dataPtrs,
        this.sigPtrs,
        this.epoch,
        oneShot,
        this.multiProcessorCount,
        this.timeoutMs,
        this.s,
      );
      this.epoch = (this.epoch + 1) >>> 0 || 1;
      return algo;
    }
    const s = this.ensureScratch(this.world * L.recordBytes);
    this.b.arQuantize(L, input.ptr, s.send, this.multiProcessorCount, this.s);
    this.b.ncclAllToAll(s.send, s.recv, L.recordBytes, this.world, this.comm, this.s);
    this.b.arReduce(L, s.recv, s.reduced, this.multiProcessorCount, this.s);
    this.b.ncclAllGather(s.reduced, s.gathered, L.recordBytes, NCCL_DTYPE.u8, this.comm, this.s);
    this.b.arDequant(L, s.gathered, output.ptr, this.multiProcessorCount, this.s);
    return algo;
  }

  /**
   * Records a CUDA event on the communicator's stream: for timing (`elapsedMs`), or, with `timing: false`, for
   * another stream to wait on (`stream.waitEvent(e)`: a GEMM that reads the all-reduce's output).
   *
   * @example
   * ```ts
   * const a = comm.recordEvent();
   * await comm.allReduce(x, x, n, 'bf16');
   * const ms = comm.elapsedMs(a, comm.recordEvent());
   * ```
   */
  recordEvent(options: { timing?: boolean } = {}): Event {
    this.live();
    const e = Event.create(this.device, options);
    e.record(this.stream);
    return e;
  }

  /**
   * Makes the collectives queued after this call wait, on the device, for `event` (recorded on another
   * stream, e.g. after the GEMM that writes the all-reduce's input). No host wait.
   *
   * @example
   * ```ts
   * const done = Event.create(0, { timing: false });
   * gemmW4A8({ ...args, stream: compute });
   * done.record(compute);
   * comm.waitEvent(done);
   * await comm.quantizedAllReduce(y, y, n, 'bf16');
   * ```
   */
  waitEvent(event: Event): void {
    this.live();
    this.stream.waitEvent(event);
  }

  /**
   * Milliseconds between two events from `recordEvent`; waits for `end`, then disposes both.
   *
   * @example
   * ```ts
   * const ms = comm.elapsedMs(start, comm.recordEvent());
   * ```
   */
  elapsedMs(start: Event, end: Event): number {
    try {
      end.synchronize();
      return Event.elapsedMs(start, end);
    } finally {
      start.dispose();
      end.dispose();
    }
  }

  /**
   * Releases everything: the NCCL communicator, IPC mappings, every buffer allocated here, the stream. Safe to
   * call after an error and more than once; errors while releasing are collected, not thrown midway.
   *
   * @example
   * ```ts
   * try { await comm.quantizedAllReduce(x, y, n, 'bf16'); } finally { comm.close(); }
   * ```
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    const errors: string[] = [];
    const attempt = (what: string, f: () => void) => {
      try {
        f();
      } catch (e) {
        errors.push(`${what}: ${e instanceof Error ? e.message : String(e)}`);
      }
    };
    attempt('stream synchronize', () => this.b.streamSynchronize(this.s));
    for (const p of this.opened) attempt('cudaIpcCloseMemHandle', () => this.b.ipcCloseHandle(p));
    this.opened.clear();
    if (this.comm !== 0n) attempt('ncclCommDestroy', () => this.b.ncclCommDestroy(this.comm));
    this.comm = 0n;
    for (const p of this.owned) attempt('cudaFree', () => this.b.free(p));
    this.owned.clear();
    this.scratch = undefined;
    this.stream.dispose();
    attempt('cudaStreamDestroy', () => this.b.streamDestroy(this.s));
    (this as { fusedAvailable: boolean }).fusedAvailable = false;
    if (errors.length > 0 && process.env.Q_COMM_DEBUG)
      console.warn(`Communicator.close on rank ${this.rank}: ${errors.join('; ')}`);
  }
}
