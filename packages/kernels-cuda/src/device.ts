/**
 * Devices, device memory, streams, events and pinned host buffers. Every handle has one owner with an
 * explicit `dispose()` (and `Symbol.dispose`, for `using`); a FinalizationRegistry frees what a program
 * forgets. Everything that needs a GPU checks for one first and throws `E_NO_DEVICE` naming the numbers.
 */
import {
  allocStorage,
  type DType,
  describeValue,
  byteLength as dtypeByteLength,
  numel,
  Q_ERROR_CODES,
  QError,
  type QErrorCode,
  type Shape,
  type TypedArrayOf,
} from '@q/core';
import type { NativeBinding, NativeDeviceProperties } from './binding';
import { loadNative } from './native';

/**
 * The QError for an error the addon threw: its code is the one the C++ glue set on the error (`E_CUDA`,
 * `E_NCCL`, `E_ARG`, ...); an error without one (a bug) becomes E_INTERNAL. Messages are never parsed.
 *
 * @example
 * ```ts
 * try { binding.ncclGetUniqueId(); } catch (e) { throw nativeError(e, 'ncclGetUniqueId'); }
 * ```
 */
export function nativeError(e: unknown, what: string): QError {
  if (e instanceof QError) return e;
  const code = (e as { code?: unknown } | null)?.code;
  const msg = e instanceof Error ? e.message : String(e);
  const known =
    typeof code === 'string' && (Q_ERROR_CODES as readonly string[]).includes(code)
      ? (code as QErrorCode)
      : 'E_INTERNAL';
  return new QError(known, `${what}: ${msg}`, { cause: e });
}

/**
 * Runs a native call and turns the error it throws (with a q code in `code`) into a QError.
 *
 * @example
 * ```ts
 * const n = callNative('deviceCount', (b) => b.deviceCount().count);
 * ```
 */
export function callNative<T>(what: string, fn: (b: NativeBinding) => T): T {
  const b = loadNative();
  try {
    return fn(b);
  } catch (e) {
    throw nativeError(e, what);
  }
}

// Per thread (each worker loads its own copy of this module, and CUDA's current device is per thread): the
// device count, asked once, and the device this thread last made current through useDevice.
let countCache: { count: number; error?: string } | undefined;
let currentDevice: number | undefined;

function countOnce(): { count: number; error?: string } {
  if (countCache === undefined) {
    const c = callNative('deviceCount', (b) => b.deviceCount());
    countCache = c.error === undefined ? { count: c.count } : { count: 0, error: c.error };
  }
  return countCache;
}

/**
 * Number of CUDA devices; 0 when there is no driver or no device (never throws for that, only when the
 * addon is missing). Asked once per thread.
 *
 * @example
 * ```ts
 * if (deviceCount() > 0) console.log(deviceProperties(0).name);
 * ```
 */
export function deviceCount(): number {
  return countOnce().count;
}

function noDevice(device: number, what: string): QError {
  if (!Number.isInteger(device) || device < 0) {
    return new QError(
      'E_NO_DEVICE',
      `Expected a device index (a non-negative integer) for ${what} but received ${describeValue(device)}`,
    );
  }
  const c = countOnce();
  if (c.error !== undefined) {
    return new QError(
      'E_NO_DEVICE',
      `Expected a usable CUDA driver for ${what} ${device} but the driver reported ${c.error}`,
    );
  }
  return new QError(
    'E_NO_DEVICE',
    `Expected a device index in [0, ${c.count}) for ${what} but received ${device} (${c.count} CUDA device(s) present)`,
  );
}

/**
 * Throws E_NO_DEVICE unless `device` names an existing device; returns it. No native call after the first.
 *
 * @example
 * ```ts
 * checkDevice(0); // 0 on a machine with a GPU
 * checkDevice(3); // throws E_NO_DEVICE: Expected a device index in [0, 1) for device but received 3
 * ```
 */
export function checkDevice(device: number, what = 'device'): number {
  if (device === currentDevice) return device;
  if (!(Number.isInteger(device) && device >= 0 && device < countOnce().count)) throw noDevice(device, what);
  return device;
}

/**
 * Makes `device` current for this thread after checking it exists. Costs one comparison when it already is
 * (the last device this thread chose through here), so kernels call it on every launch.
 *
 * @example
 * ```ts
 * useDevice(1); // later allocations and launches on this thread go to GPU 1
 * ```
 */
export function useDevice(device: number): void {
  if (device === currentDevice) return;
  checkDevice(device);
  callNative('cudaSetDevice', (b) => b.setDevice(device));
  currentDevice = device;
}

/**
 * Properties of one device (name, compute capability, multiprocessors, memory, L2).
 *
 * @example
 * ```ts
 * const p = deviceProperties(0); // { name: 'NVIDIA H100 80GB HBM3', major: 9, minor: 0, ... }
 * ```
 */
export function deviceProperties(device = 0): NativeDeviceProperties {
  checkDevice(device);
  return callNative('deviceProperties', (b) => b.deviceProperties(device));
}

/**
 * Free and total device memory in bytes of the given device.
 *
 * @example
 * ```ts
 * const { free } = memoryInfo(0);
 * ```
 */
export function memoryInfo(device = 0): { free: number; total: number } {
  useDevice(device);
  return callNative('cudaMemGetInfo', (b) => b.memGetInfo());
}

/**
 * Waits for all work on the device.
 *
 * @example
 * ```ts
 * synchronize(0);
 * ```
 */
export function synchronize(device = 0): void {
  useDevice(device);
  callNative('cudaDeviceSynchronize', (b) => b.deviceSynchronize());
}

function disposedError(what: string): QError {
  return new QError('E_DISPOSED', `Expected a live ${what} but it was used after dispose()`);
}

/**
 * A CUDA stream on one device. `Stream.default(device)` is the legacy default stream (handle 0n).
 *
 * @example
 * ```ts
 * const s = Stream.create(0);
 * const t = DeviceTensor.fromHost('f32', [4], Float32Array.of(1, 2, 3, 4));
 * const back = t.download(s);
 * s.dispose();
 * ```
 */
export class Stream {
  readonly device: number;
  #handle: bigint | undefined;
  readonly #owned: boolean;
  private static readonly registry = new FinalizationRegistry<{ handle: bigint; device: number }>((h) => {
    try {
      useDevice(h.device);
      loadNative().streamDestroy(h.handle);
    } catch {
      // Best effort: the process may be shutting down.
    }
  });

  private constructor(device: number, handle: bigint, owned: boolean) {
    this.device = device;
    this.#handle = handle;
    this.#owned = owned;
    if (owned) Stream.registry.register(this, { handle, device }, this);
  }

  /**
   * A new non-blocking stream on `device`.
   *
   * @example
   * ```ts
   * const s = Stream.create(0); // ... s.synchronize(); s.dispose();
   * ```
   */
  static create(device = 0): Stream {
    useDevice(device);
    return new Stream(
      device,
      callNative('cudaStreamCreate', (b) => b.streamCreate()),
      true,
    );
  }

  /** The default stream of `device` (never destroyed). */
  static default(device = 0): Stream {
    return new Stream(device, 0n, false);
  }

  /**
   * A stream someone else created and destroys (e.g. a communicator's); `dispose()` then destroys nothing.
   *
   * @example
   * ```ts
   * const s = Stream.wrap(handle, 0);
   * ```
   */
  static wrap(handle: bigint, device = 0): Stream {
    return new Stream(device, handle, false);
  }

  /**
   * Makes later work on this stream wait, on the device, for `event` (recorded on another stream): no host
   * wait, and it can be captured into a graph.
   *
   * @example
   * ```ts
   * const done = Event.create(0, { timing: false });
   * done.record(compute);
   * comms.waitEvent(done); // the all-reduce starts after the GEMM
   * ```
   */
  waitEvent(event: Event): void {
    const h = this.handle;
    const e = event.handle;
    callNative('cudaStreamWaitEvent', (b) => b.streamWaitEvent(h, e));
  }

  get handle(): bigint {
    if (this.#handle === undefined) throw disposedError('stream');
    return this.#handle;
  }

  /** Blocks until all work queued on the stream is done. */
  synchronize(): void {
    const h = this.handle;
    useDevice(this.device);
    callNative('cudaStreamSynchronize', (b) => b.streamSynchronize(h));
  }

  dispose(): void {
    const h = this.#handle;
    if (h === undefined) return;
    this.#handle = undefined;
    if (!this.#owned) return;
    Stream.registry.unregister(this);
    useDevice(this.device);
    callNative('cudaStreamDestroy', (b) => b.streamDestroy(h));
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

function streamHandle(stream: Stream | undefined): bigint {
  return stream === undefined ? 0n : stream.handle;
}

/**
 * A captured sequence of launches on one stream, replayed as a CUDA graph (no CPU launch cost per kernel).
 *
 * @example
 * ```ts
 * const g = Graph.capture(stream, () => gemmW4A8({ a, aScale, weights, mode: 'group-int', out, stream }));
 * g.launch(stream);
 * ```
 */
export class Graph {
  readonly device: number;
  #handle: bigint | undefined;

  private constructor(device: number, handle: bigint) {
    this.device = device;
    this.#handle = handle;
  }

  /**
   * Records everything `body` launches on `stream` (a stream from `Stream.create`, not the default one).
   *
   * @example
   * ```ts
   * const g = Graph.capture(stream, () => gemmW4A8({ ...args, stream }));
   * g.launch(stream); stream.synchronize(); g.dispose();
   * ```
   */
  static capture(stream: Stream, body: () => void): Graph {
    const h = stream.handle;
    if (h === 0n)
      throw new QError(
        'E_ARG',
        'Expected a created stream for Graph.capture but received the default stream',
      );
    useDevice(stream.device);
    callNative('cudaStreamBeginCapture', (b) => b.streamBeginCapture(h));
    try {
      body();
    } catch (e) {
      try {
        loadNative().streamEndCapture(h);
      } catch {
        // The capture is already invalid; the original error is what matters.
      }
      throw e;
    }
    return new Graph(
      stream.device,
      callNative('cudaStreamEndCapture', (b) => b.streamEndCapture(h)),
    );
  }

  launch(stream: Stream): void {
    const g = this.#handle;
    if (g === undefined) throw disposedError('graph');
    callNative('cudaGraphLaunch', (b) => b.graphLaunch(g, stream.handle));
  }

  dispose(): void {
    const g = this.#handle;
    if (g === undefined) return;
    this.#handle = undefined;
    callNative('cudaGraphExecDestroy', (b) => b.graphDestroy(g));
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

/**
 * A CUDA event, for ordering and for timing (`Event.elapsedMs(start, end)`).
 *
 * @example
 * ```ts
 * const start = Event.create(0);
 * const end = Event.create(0);
 * start.record(stream);
 * // ... launches ...
 * end.record(stream);
 * end.synchronize();
 * console.log(Event.elapsedMs(start, end));
 * ```
 */
export class Event {
  readonly device: number;
  #handle: bigint | undefined;
  private static readonly registry = new FinalizationRegistry<{ handle: bigint; device: number }>((h) => {
    try {
      useDevice(h.device);
      loadNative().eventDestroy(h.handle);
    } catch {
      // Best effort.
    }
  });

  private constructor(device: number, handle: bigint) {
    this.device = device;
    this.#handle = handle;
    Event.registry.register(this, { handle, device }, this);
  }

  /**
   * A new event on `device`. `timing: false` (cudaEventDisableTiming) makes one for ordering only, which is
   * cheaper to record and wait on; `elapsedMs` needs the default, timing events.
   *
   * @example
   * ```ts
   * const a = Event.create(0), b = Event.create(0);
   * a.record(); launch(); b.record(); b.synchronize(); Event.elapsedMs(a, b);
   * const order = Event.create(0, { timing: false });
   * ```
   */
  static create(device = 0, options: { timing?: boolean } = {}): Event {
    useDevice(device);
    const timing = options.timing ?? true;
    return new Event(
      device,
      callNative('cudaEventCreate', (b) => b.eventCreate(timing)),
    );
  }

  get handle(): bigint {
    if (this.#handle === undefined) throw disposedError('event');
    return this.#handle;
  }

  record(stream?: Stream): void {
    const h = this.handle;
    callNative('cudaEventRecord', (b) => b.eventRecord(h, streamHandle(stream)));
  }

  synchronize(): void {
    const h = this.handle;
    callNative('cudaEventSynchronize', (b) => b.eventSynchronize(h));
  }

  /** True when the work recorded before this event has finished (never blocks). */
  query(): boolean {
    const h = this.handle;
    return callNative('cudaEventQuery', (b) => b.eventQuery(h));
  }

  /** Milliseconds between two recorded events (both must have completed). */
  static elapsedMs(start: Event, end: Event): number {
    const s = start.handle;
    const e = end.handle;
    return callNative('cudaEventElapsedTime', (b) => b.eventElapsedTime(s, e));
  }

  dispose(): void {
    const h = this.#handle;
    if (h === undefined) return;
    this.#handle = undefined;
    Event.registry.unregister(this);
    callNative('cudaEventDestroy', (b) => b.eventDestroy(h));
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

/**
 * Page-locked host memory: copies from and to it run truly asynchronously. `bytes` is a view of it; keep the
 * buffer alive until the stream that copies it has synchronized.
 *
 * @example
 * ```ts
 * const host = PinnedBuffer.alloc(1 << 20);
 * const t = DeviceTensor.alloc('u8', [1 << 20]);
 * t.upload(new Uint8Array(host.buffer), stream);
 * ```
 */
export class PinnedBuffer {
  #buffer: ArrayBuffer | undefined;
  readonly byteLength: number;

  private constructor(buffer: ArrayBuffer) {
    this.#buffer = buffer;
    this.byteLength = buffer.byteLength;
  }

  /**
   * Allocates `bytes` of pinned host memory (freed by `dispose()` or, as a safety net, by the GC).
   *
   * @example
   * ```ts
   * const h = PinnedBuffer.alloc(1 << 20); new Float32Array(h.buffer).fill(1); h.dispose();
   * ```
   */
  static alloc(bytes: number, device = 0): PinnedBuffer {
    if (!Number.isInteger(bytes) || bytes < 0)
      throw new QError('E_ARG', `Expected a byte count for bytes but received ${describeValue(bytes)}`);
    useDevice(device);
    return new PinnedBuffer(callNative('cudaHostAlloc', (b) => b.hostAlloc(BigInt(bytes))));
  }

  get buffer(): ArrayBuffer {
    if (this.#buffer === undefined) throw disposedError('pinned buffer');
    return this.#buffer;
  }

  dispose(): void {
    const b = this.#buffer;
    if (b === undefined) return;
    this.#buffer = undefined;
    callNative('cudaFreeHost', (n) => n.hostFree(b));
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

/** Options of `DeviceTensor.alloc`. */
export interface DeviceTensorOptions {
  device?: number;
}

interface Allocation {
  ptr: bigint;
  device: number;
}

const tensorRegistry = new FinalizationRegistry<Allocation>((a) => {
  try {
    useDevice(a.device);
    loadNative().free(a.ptr);
  } catch {
    // Best effort: the context may already be gone at exit.
  }
});

/**
 * A tensor in device memory that owns its allocation. `ptr` is the raw device address (a BigInt) so another
 * addon can use it; after `dispose()` every use throws `E_DISPOSED`.
 *
 * @example
 * ```ts
 * const t = DeviceTensor.fromHost('f32', [2, 2], Float32Array.of(1, 2, 3, 4));
 * const back = t.download(); // Float32Array [1, 2, 3, 4]
 * t.dispose();
 * ```
 */
export class DeviceTensor<D extends DType = DType> {
  readonly dtype: D;
  readonly shape: Shape;
  readonly device: number;
  readonly byteLength: number;
  /**
   * The largest power of two (up to 256) that divides `ptr`, computed once so that kernel calls check
   * alignment with one comparison instead of BigInt arithmetic.
   */
  readonly alignment: number;
  #ptr: bigint | undefined;
  readonly #owned: boolean;

  private constructor(dtype: D, shape: Shape, device: number, ptr: bigint, owned: boolean) {
    this.dtype = dtype;
    this.shape = Object.freeze([...shape]);
    this.device = device;
    this.byteLength = dtypeByteLength(dtype, numel(shape));
    const low = Number(ptr & 0xffn);
    this.alignment = low === 0 ? 256 : low & -low;
    this.#ptr = ptr;
    this.#owned = owned;
    if (owned) tensorRegistry.register(this, { ptr, device }, this);
  }

  /**
   * Allocates an uninitialised tensor on `device`.
   *
   * @example
   * ```ts
   * const t = DeviceTensor.alloc('i8', [16, 4096]); // ... t.dispose();
   * ```
   */
  static alloc<D extends DType>(dtype: D, shape: Shape, options: DeviceTensorOptions = {}): DeviceTensor<D> {
    for (const d of shape) {
      if (!Number.isInteger(d) || d < 0) {
        throw new QError(
          'E_SHAPE',
          `Expected non-negative integer dimensions for shape but received [${shape.join(', ')}]`,
        );
      }
    }
    const device = options.device ?? 0;
    useDevice(device);
    const bytes = dtypeByteLength(dtype, numel(shape));
    const ptr = callNative('cudaMalloc', (b) => b.malloc(BigInt(bytes)));
    return new DeviceTensor(dtype, shape, device, ptr, true);
  }

  /**
   * A tensor over memory someone else owns (another addon's buffer); `dispose()` then frees nothing.
   *
   * @example
   * ```ts
   * const view = DeviceTensor.wrap(ptr, 'f16', [8, 4096], { device: 0 });
   * ```
   */
  static wrap<D extends DType>(
    ptr: bigint,
    dtype: D,
    shape: Shape,
    options: DeviceTensorOptions = {},
  ): DeviceTensor<D> {
    return new DeviceTensor(dtype, shape, options.device ?? 0, ptr, false);
  }

  /**
   * Allocates and uploads host data (synchronously complete when it returns).
   *
   * @example
   * ```ts
   * const w = DeviceTensor.fromHost('f16', [4096, 4096], halfBits);
   * ```
   */
  static fromHost<D extends DType>(
    dtype: D,
    shape: Shape,
    data: ArrayBufferView,
    options: DeviceTensorOptions = {},
  ): DeviceTensor<D> {
    const t = DeviceTensor.alloc(dtype, shape, options);
    try {
      t.upload(data);
      synchronize(t.device);
    } catch (e) {
      t.dispose();
      throw e;
    }
    return t;
  }

  get ptr(): bigint {
    if (this.#ptr === undefined)
      throw disposedError(`device tensor [${this.shape.join(', ')}] ${this.dtype}`);
    return this.#ptr;
  }

  get disposed(): boolean {
    return this.#ptr === undefined;
  }

  get size(): number {
    return numel(this.shape);
  }

  private checkHost(data: ArrayBufferView, what: string): void {
    if (data.byteLength !== this.byteLength) {
      throw new QError(
        'E_SHAPE',
        `Expected ${this.byteLength} bytes for ${what} of ${this.dtype} tensor [${this.shape.join(', ')}] but received ${data.byteLength}`,
      );
    }
  }

  /** Queues a copy from host memory (asynchronous only when `data` lives in a PinnedBuffer). */
  upload(data: ArrayBufferView, stream?: Stream): void {
    const p = this.ptr;
    this.checkHost(data, 'upload');
    useDevice(this.device);
    callNative('upload', (b) => b.memcpyHtoD(p, data, streamHandle(stream)));
  }

  /** Queues a copy into host memory; synchronize the stream before reading `out`. */
  downloadInto(out: ArrayBufferView, stream?: Stream): void {
    const p = this.ptr;
    this.checkHost(out, 'download');
    useDevice(this.device);
    callNative('download', (b) => b.memcpyDtoH(out, p, streamHandle(stream)));
  }

  /**
   * Copies the whole tensor to a new host array and waits for it.
   *
   * @example
   * ```ts
   * const host = t.download(); // Int8Array for an i8 tensor
   * ```
   */
  download(stream?: Stream): TypedArrayOf<D> {
    const out = allocStorage(this.dtype, this.size);
    this.downloadInto(out, stream);
    if (stream) stream.synchronize();
    else synchronize(this.device);
    return out;
  }

  /** Copies `src` (same byte length) into this tensor on the device. */
  copyFrom(src: DeviceTensor, stream?: Stream): void {
    const p = this.ptr;
    const s = src.ptr;
    if (src.byteLength !== this.byteLength) {
      throw new QError(
        'E_SHAPE',
        `Expected ${this.byteLength} bytes for copyFrom source but received ${src.byteLength}`,
      );
    }
    useDevice(this.device);
    callNative('copyFrom', (b) => b.memcpyDtoD(p, s, BigInt(this.byteLength), streamHandle(stream)));
  }

  /** Sets every byte to `value` (tests poison outputs with 0xFF before a kernel). */
  fillBytes(value: number, stream?: Stream): void {
    const p = this.ptr;
    useDevice(this.device);
    callNative('fillBytes', (b) => b.memset(p, value & 0xff, BigInt(this.byteLength), streamHandle(stream)));
  }

  dispose(): void {
    const p = this.#ptr;
    if (p === undefined) return;
    this.#ptr = undefined;
    if (!this.#owned) return;
    tensorRegistry.unregister(this);
    useDevice(this.device);
    callNative('cudaFree', (b) => b.free(p));
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

export { streamHandle };
