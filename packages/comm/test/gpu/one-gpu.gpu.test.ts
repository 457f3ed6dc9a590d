/**
 * A communicator of one rank on one GPU, through @q/kernels-cuda's addon (the one native binding): uploads on
 * the communicator's stream, the quantized all-reduce over NCCL (quantize → all-to-all → reduce → all-gather →
 * dequantize with W = 1) bit for bit against `allReduceReference`, device-side ordering after a kernel on another
 * stream through `waitEvent`, event timing, and a clean `close()`. Skips with a printed reason without a GPU or
 * without NCCL (set Q_NCCL_LIB to libnccl.so.2).
 */
import {
  allReduceReference,
  Communicator,
  initProcessGroup,
  newJobToken,
  type ProcessGroup,
  StoreServer,
  syntheticActivations,
} from '@q/comm';
import { isQError } from '@q/core';
import { DeviceTensor, Event, gpuStatus, Stream } from '@q/kernels-cuda';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const status = gpuStatus();
if (!status.available) console.warn(`skipping the one-GPU communicator tests: ${status.reason}`);

describe.skipIf(!status.available)('Communicator on one GPU', () => {
  let server: StoreServer;
  let pg: ProcessGroup;
  let comm: Communicator | undefined;
  let why = '';

  beforeAll(async () => {
    const token = newJobToken();
    server = await StoreServer.start({ world: 1, token, timeoutMs: 10_000 });
    pg = await initProcessGroup({
      env: {
        RANK: '0',
        WORLD_SIZE: '1',
        MASTER_ADDR: '127.0.0.1',
        MASTER_PORT: String(server.port),
        Q_JOB_TOKEN: token,
      },
      timeoutMs: 10_000,
    });
    try {
      comm = await Communicator.create(pg, { device: 0 });
    } catch (e) {
      if (!isQError(e, 'E_NCCL')) throw e;
      why = (e as Error).message.split('\n')[0] ?? '';
      console.warn(`skipping the one-GPU communicator tests: ${why}`);
    }
  });

  afterAll(() => {
    comm?.close();
    pg?.close();
    server?.close();
  });

  it('runs the quantized all-reduce over NCCL bit for bit like the reference, after an upload on its stream', async (ctx) => {
    if (!comm) return ctx.skip();
    const seed = (Date.now() ^ (process.pid << 8)) >>> 0;
    console.log(`one-gpu all-reduce: seed ${seed}`);
    const n = 3 * 8192 + 8;
    const x = syntheticActivations(0, n, 'bf16', seed) as Uint16Array;
    const a = comm.alloc(n * 2);
    const b = comm.alloc(n * 2);
    comm.upload(a, x);
    for (const wire of ['int8', 'int4'] as const) {
      const used = await comm.quantizedAllReduce(a, b, n, 'bf16', { algorithm: `nccl-${wire}` });
      expect(used).toBe(`nccl-${wire}`);
      const got = new Uint16Array(n);
      comm.download(b, got);
      const want = allReduceReference([x], 'bf16', { wire, groupSize: 128 }) as Uint16Array;
      let bad = 0;
      for (let i = 0; i < n; i++) if (got[i] !== want[i]) bad++;
      expect(bad, `${wire}: elements differing from allReduceReference`).toBe(0);
    }
    a.free();
    b.free();
  });

  it('orders a collective after a kernel on another stream with waitEvent, and times with events', async (ctx) => {
    if (!comm) return ctx.skip();
    const n = 64 << 20; // 256 MiB of f32: long enough that an unordered read would see the old bytes
    const t = DeviceTensor.alloc('f32', [n]);
    const out = comm.alloc(n * 4);
    const other = Stream.create(0);
    const done = Event.create(0, { timing: false });
    try {
      t.fillBytes(0);
      other.synchronize();
      comm.synchronize();
      const start = comm.recordEvent();
      t.fillBytes(0x3f, other); // every f32 becomes 0x3f3f3f3f
      done.record(other);
      comm.waitEvent(done);
      await comm.allReduce(t, out, n, 'f32'); // one rank: a copy of t, which must see the fill
      const ms = comm.elapsedMs(start, comm.recordEvent());
      expect(ms).toBeGreaterThan(0);
      const got = new Uint32Array(n);
      comm.download(out, new Float32Array(got.buffer));
      let bad = 0;
      for (let i = 0; i < n; i += 997) if (got[i] !== 0x3f3f3f3f) bad++;
      expect(bad).toBe(0);
      expect(got[n - 1]).toBe(0x3f3f3f3f);
    } finally {
      done.dispose();
      other.dispose();
      out.free();
      t.dispose();
    }
  });

  it('leaves nothing allocated or mapped after close()', (ctx) => {
    if (!comm) return ctx.skip();
    comm.close();
    expect(comm.resources()).toEqual({ allocations: 0, ipcHandles: 0 });
    comm = undefined;
  });
});
