import { QError } from '@q/core';
import { loadNative, nativePath } from '@q/kernels-cuda';
import { describe, expect, it } from 'vitest';
import { type CommBinding, Communicator } from './communicator';
import { initProcessGroup, type ProcessGroup } from './group';
import { ncclCandidates } from './nccl-lib';
import { newJobToken, StoreServer } from './store';

/** An error as the addon throws it: the q code set natively in `code`, never in the message. */
function nativeErr(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}

/** A stand-in addon that records what is allocated, mapped and released. */
function fakeBinding(opts: { syncError?: Error } = {}) {
  let next = 0x1000n;
  const live = new Set<bigint>();
  const mapped = new Set<bigint>();
  const calls: string[] = [];
  const b = {
    deviceCount: () => ({ count: 2, driverVersion: 13000, runtimeVersion: 13000 }),
    setDevice: () => {},
    deviceProperties: (index: number) => ({
      index,
      name: 'fake',
      major: 9,
      minor: 0,
      multiProcessorCount: 132,
      totalGlobalMem: 80e9,
      l2CacheSize: 50e6,
      sharedMemPerBlockOptin: 232448,
      memoryBusWidth: 5120,
      clockRateKHz: 1980000,
      memoryClockRateKHz: 2619000,
    }),
    malloc: () => {
      next += 0x100000n;
      live.add(next);
      return next;
    },
    free: (p: bigint) => {
      if (!live.delete(p)) throw nativeErr('E_CUDA', `double free of ${p}`);
    },
    memset: () => {},
    memcpyHtoD: (_dst: bigint, _src: unknown, stream: bigint) => calls.push(`memcpyHtoD on ${stream}`),
    memcpyDtoH: () => {},
    streamCreate: () => 7n,
    streamDestroy: () => calls.push('streamDestroy'),
    streamSynchronize: () => {},
    ipcGetHandle: () => new Uint8Array(64).fill(1),
    ipcOpenHandle: () => {
      next += 0x100000n;
      mapped.add(next);
      return next;
    },
    ipcCloseHandle: (p: bigint) => {
      mapped.delete(p);
      calls.push('ipcClose');
    },
    ncclLoad: () => 22803,
    ncclGetUniqueId: () => new Uint8Array(128),
    ncclCommInitRank: () => 99n,
    ncclCommDestroy: () => calls.push('ncclCommDestroy'),
    ncclCommAbort: () => calls.push('ncclCommAbort'),
    ncclAllReduce: () => calls.push('ncclAllReduce'),
    ncclAllGather: () => calls.push('ncclAllGather'),
    ncclReduceScatter: () => {},
    ncclBroadcast: () => {},
    ncclAllToAll: () => calls.push('ncclAllToAll'),
    syncWatch: () => {
      if (opts.syncError) throw opts.syncError;
    },
    arQuantize: () => calls.push('arQuantize'),
    arReduce: () => calls.push('arReduce'),
    arDequant: () => calls.push('arDequant'),
    arFused: () => calls.push('arFused'),
    arConstants: () => ({ maxRanks: 8, maxBlocks: 512, signalBytes: 49152, signalRegion: 65536 }),
  } as CommBinding;
  return { b, live, mapped, calls };
}

function fakeGroup(world = 2, rank = 0): ProcessGroup {
  const pg: ProcessGroup = {
    rank,
    world,
    localRank: rank,
    localWorld: world,
    singleHost: true,
    timeoutMs: 1000,
    exchange: async (_n, v) => Array.from({ length: world }, () => v),
    broadcastBytes: async (_n, v) => v ?? new Uint8Array(128),
    barrier: async () => {},
    checkSame: async () => {},
    close: () => {},
  };
  return pg;
}

describe('Communicator (stand-in addon)', () => {
  it('registers one IPC buffer, maps each peer, and releases everything on close', async () => {
    const f = fakeBinding();
    const comm = await Communicator.create(fakeGroup(4), { binding: f.b, maxFusedBytes: 1 << 20 });
    expect(comm.fusedAvailable).toBe(true);
    expect(comm.resources()).toEqual({ allocations: 1, ipcHandles: 3 });
    const x = comm.alloc(8192 * 2);
    comm.alloc(8192 * 2);
    expect(await comm.quantizedAllReduce(x, x, 8192, 'bf16', { algorithm: 'nccl-int8' })).toBe('nccl-int8');
    expect(f.calls.slice(-5)).toEqual([
      'arQuantize',
      'ncclAllToAll',
      'arReduce',
      'ncclAllGather',
      'arDequant',
    ]);
    comm.close();
    expect(f.live.size).toBe(0);
    expect(f.mapped.size).toBe(0);
    expect(comm.resources()).toEqual({ allocations: 0, ipcHandles: 0 });
    expect(f.calls.filter((c) => c === 'ncclCommDestroy').length).toBe(1);
    comm.close(); // twice is harmless
  });

  it('releases buffers and IPC handles after a failed call', async () => {
    const f = fakeBinding();
    const comm = await Communicator.create(fakeGroup(2), { binding: f.b });
    const x = comm.alloc(1000 * 2);
    await expect(comm.quantizedAllReduce(x, x, 1001, 'bf16', { algorithm: 'fused-int8' })).rejects.toThrow(
      QError,
    );
    await expect(comm.quantizedAllReduce(x, x, 1000, 'bf16', { algorithm: 'fused-int8' })).resolves.toBe(
      'fused-int8',
    );
    comm.close();
    expect(f.live.size).toBe(0);
    expect(f.mapped.size).toBe(0);
    await expect(comm.quantizedAllReduce(x, x, 1000, 'bf16')).rejects.toThrow(
      expect.objectContaining({ code: 'E_DISPOSED' }),
    );
  });

  it('turns a collective timeout into E_TIMEOUT and does not destroy the aborted NCCL communicator', async () => {
    const f = fakeBinding({
      syncError: nativeErr('E_TIMEOUT', 'Expected the collective to finish within 1000 ms'),
    });
    const comm = await Communicator.create(fakeGroup(2), { binding: f.b });
    const x = comm.alloc(64);
    await comm.allReduce(x, x, 16, 'f32');
    expect(() => comm.synchronize()).toThrow(expect.objectContaining({ code: 'E_TIMEOUT' }));
    comm.close();
    expect(f.calls).not.toContain('ncclCommDestroy');
    expect(f.live.size).toBe(0);
  });

  it('falls back to NCCL on every rank when a peer buffer cannot be mapped (no P2P)', async () => {
    const f = fakeBinding();
    f.b.ipcOpenHandle = () => {
      throw nativeErr('E_CUDA', 'cudaIpcOpenMemHandle failed: cudaErrorPeerAccessUnsupported');
    };
    const comm = await Communicator.create(fakeGroup(2), { binding: f.b });
    expect(comm.fusedAvailable).toBe(false);
    expect(comm.fusedUnavailableReason).toMatch(/PeerAccessUnsupported/);
    expect(comm.resources()).toEqual({ allocations: 0, ipcHandles: 0 });
    expect(comm.chooseAlgorithm(8192 * 8192, 'bf16')).toBe('nccl-int8');
    const x = comm.alloc(64);
    await expect(comm.quantizedAllReduce(x, x, 16, 'bf16', { algorithm: 'fused' })).rejects.toThrow(
      /not set up/,
    );
    comm.close();
    expect(f.live.size).toBe(0);
  });

  it('chooses unquantized fused for small messages and fused int8 for large ones on one host', async () => {
    const f = fakeBinding();
    const comm = await Communicator.create(fakeGroup(4), { binding: f.b });
    expect(comm.chooseAlgorithm(8192, 'bf16')).toBe('fused');
    expect(comm.chooseAlgorithm(8192 * 8192, 'bf16')).toBe('fused-int8');
    expect(comm.chooseAlgorithm(8192 * 8192, 'bf16', 'int4')).toBe('fused-int4');
    expect(comm.chooseAlgorithm(8192 * 4096, 'f32')).toBe('nccl');
    comm.close();
    const multi = await Communicator.create(
      { ...fakeGroup(4), singleHost: false },
      { binding: fakeBinding().b },
    );
    expect(multi.fusedAvailable).toBe(false);
    expect(multi.chooseAlgorithm(8192 * 8192, 'bf16')).toBe('nccl-int8');
    expect(multi.chooseAlgorithm(8192, 'bf16')).toBe('nccl');
    multi.close();
  });

  it('rejects a buffer that is too small (E_SHAPE) and a bad root (E_ARG)', async () => {
    const comm = await Communicator.create(fakeGroup(2), { binding: fakeBinding().b });
    const x = comm.alloc(64);
    await expect(comm.allReduce(x, x, 17, 'f32')).rejects.toThrow(
      expect.objectContaining({ code: 'E_SHAPE' }),
    );
    await expect(comm.broadcast(x, 4, 'f32', 2)).rejects.toThrow(expect.objectContaining({ code: 'E_ARG' }));
    comm.close();
  });
});

describe('Communicator over a real rendezvous (stand-in addon)', () => {
  it('fails every rank with E_COMM when the ranks pass different message sizes', async () => {
    const token = newJobToken();
    const server = await StoreServer.start({ world: 2, token, timeoutMs: 3000 });
    const env = (rank: number) => ({
      RANK: String(rank),
      WORLD_SIZE: '2',
      MASTER_ADDR: '127.0.0.1',
      MASTER_PORT: String(server.port),
      Q_JOB_TOKEN: token,
    });
    try {
      const pgs = await Promise.all([0, 1].map((r) => initProcessGroup({ env: env(r), timeoutMs: 3000 })));
      const comms = await Promise.all(pgs.map((pg) => Communicator.create(pg, { binding: fakeBinding().b })));
      const bufs = comms.map((c) => c.alloc(8192 * 2));
      const results = await Promise.allSettled(
        comms.map((c, r) =>
          c.quantizedAllReduce(
            bufs[r] as (typeof bufs)[0],
            bufs[r] as (typeof bufs)[0],
            r === 0 ? 4096 : 4104,
            'bf16',
            { algorithm: 'nccl-int8' },
          ),
        ),
      );
      for (const res of results) {
        expect(res.status).toBe('rejected');
        expect((res as PromiseRejectedResult).reason).toMatchObject({ code: 'E_COMM' });
      }
      expect(String((results[0] as PromiseRejectedResult).reason.message)).toMatch(
        /rank 0: quantizedAllReduce 4096 .*rank 1: quantizedAllReduce 4104/,
      );
      for (const c of comms) c.close();
      for (const pg of pgs) pg.close();
    } finally {
      server.close();
    }
  });
});

describe('NCCL library and the one addon', () => {
  it('uploads on the communicator stream, so the collectives queued after it see the data', async () => {
    const f = fakeBinding();
    const comm = await Communicator.create(fakeGroup(2), { binding: f.b });
    const x = comm.alloc(64);
    comm.upload(x, new Uint16Array(32));
    expect(f.calls).toContain('memcpyHtoD on 7');
    expect(comm.stream.handle).toBe(7n);
    expect(() => comm.upload(x, new Uint16Array(33))).toThrow(expect.objectContaining({ code: 'E_SHAPE' }));
    comm.close();
  });

  it('takes the error code the addon set, whatever the message says', async () => {
    const f = fakeBinding({ syncError: nativeErr('E_NCCL', 'E_TIMEOUT: looks like another code') });
    const comm = await Communicator.create(fakeGroup(2), { binding: f.b });
    expect(() => comm.synchronize()).toThrow(expect.objectContaining({ code: 'E_NCCL' }));
    comm.close();
  });

  it('tries Q_NCCL_LIB first, then the loader search', () => {
    const c = ncclCandidates({ Q_NCCL_LIB: '/x/libnccl.so.2' });
    expect(c[0]).toBe('/x/libnccl.so.2');
    expect(c[1]).toBe('libnccl.so.2');
  });

  const built = nativePath() !== undefined;
  if (!built)
    console.warn(
      'skipping the real-addon test: no @q/kernels-cuda addon here (pnpm --filter @q/kernels-cuda build:native)',
    );
  it.skipIf(!built)(
    'the real addon throws E_NCCL, set natively, for a collective before NCCL is loaded',
    () => {
      const b = loadNative();
      expect(typeof b.deviceCount().count).toBe('number');
      expect(() => b.ncclGetUniqueId()).toThrow(expect.objectContaining({ code: 'E_NCCL' }));
    },
  );
});
