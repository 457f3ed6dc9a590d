/**
 * The device API on a real GPU: properties, memory round trips through pinned buffers and device copies,
 * events, cuBLAS fp16/bf16 GEMM against a float64 reference, and bad device indices.
 */
import { bf16BitsToF32, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits, isQError } from '@q/core';
import {
  cublasInfo,
  DeviceTensor,
  deviceCount,
  deviceProperties,
  Event,
  gemmHalf,
  gpuStatus,
  loadNative,
  memoryInfo,
  PinnedBuffer,
  Stream,
  synchronize,
  VERSION,
} from '@q/kernels-cuda';
import { describe, expect, it } from 'vitest';
import { freshSeed, noGpu, rng } from './helpers';

describe.skipIf(noGpu)('device runtime', () => {
  const rand = rng(freshSeed('runtime'));

  it('reports the devices', () => {
    const s = gpuStatus();
    console.log(`gpuStatus: ${JSON.stringify(s)}`);
    expect(s.available).toBe(true);
    const p = deviceProperties(0);
    expect(p.major).toBeGreaterThanOrEqual(8);
    expect(p.multiProcessorCount).toBeGreaterThan(0);
    expect(memoryInfo(0).total).toBeGreaterThan(memoryInfo(0).free * 0.5);
  });

  it('round-trips memory through pinned buffers, device copies and streams', () => {
    const n = 1 << 20;
    const src = new Float32Array(n).map(() => rand() * 2 - 1);
    const stream = Stream.create(0);
    const pin = PinnedBuffer.alloc(n * 4);
    const back = PinnedBuffer.alloc(n * 4);
    const a = DeviceTensor.alloc('f32', [n]);
    const b = DeviceTensor.alloc('f32', [n]);
    try {
      new Float32Array(pin.buffer).set(src);
      a.upload(new Float32Array(pin.buffer), stream);
      b.fillBytes(0xff, stream);
      b.copyFrom(a, stream);
      b.downloadInto(new Float32Array(back.buffer), stream);
      stream.synchronize();
      expect(Buffer.from(back.buffer).equals(Buffer.from(src.buffer))).toBe(true);
    } finally {
      a.dispose();
      b.dispose();
      pin.dispose();
      back.dispose();
      stream.dispose();
    }
    expect(() => pin.buffer).toThrow(/after dispose/);
  });

  it('times with events', () => {
    const e0 = Event.create(0);
    const e1 = Event.create(0);
    const t = DeviceTensor.alloc('u8', [256 << 20]);
    try {
      e0.record();
      t.fillBytes(1);
      e1.record();
      e1.synchronize();
      const ms = Event.elapsedMs(e0, e1);
      expect(ms).toBeGreaterThan(0);
      expect(ms).toBeLessThan(1000);
    } finally {
      t.dispose();
      e0.dispose();
      e1.dispose();
    }
  });

  it('orders two streams on the device with an event that does not time', () => {
    const bytes = 256 << 20;
    const value = 1 + Math.floor(rand() * 254);
    const t = DeviceTensor.alloc('u8', [bytes]);
    const writer = Stream.create(0);
    const reader = Stream.create(0);
    const done = Event.create(0, { timing: false });
    const host = PinnedBuffer.alloc(bytes);
    try {
      t.fillBytes(0);
      synchronize(0);
      t.fillBytes(value, writer);
      done.record(writer);
      reader.waitEvent(done);
      // Without the wait, the copy on `reader` would race the 256 MiB fill on `writer`.
      t.downloadInto(new Uint8Array(host.buffer), reader);
      reader.synchronize();
      expect(done.query()).toBe(true);
      const got = new Uint8Array(host.buffer);
      let bad = 0;
      for (let i = 0; i < got.length; i += 4099) if (got[i] !== value) bad++;
      expect(bad).toBe(0);
      expect(got[got.length - 1]).toBe(value);
      // An ordering-only event cannot time.
      expect(() => Event.elapsedMs(done, done)).toThrow(expect.objectContaining({ code: 'E_CUDA' }));
    } finally {
      host.dispose();
      done.dispose();
      reader.dispose();
      writer.dispose();
      t.dispose();
    }
  });

  it('exports a CUDA IPC handle and reports peer access from the one runtime', () => {
    const b = loadNative();
    const t = DeviceTensor.alloc('u8', [1 << 20]);
    try {
      const h = b.ipcGetHandle(t.ptr);
      expect(h.byteLength).toBe(64);
      expect(h.some((x) => x !== 0)).toBe(true);
      // A process cannot map its own allocation: the error carries the code set natively.
      expect(() => b.ipcOpenHandle(h)).toThrow(expect.objectContaining({ code: 'E_CUDA' }));
      for (let p = 1; p < deviceCount(); p++) expect(typeof b.canAccessPeer(0, p)).toBe('boolean');
      expect(b.version).toBe(VERSION);
    } finally {
      t.dispose();
    }
  });

  it('throws E_NO_DEVICE naming the count for a device index that does not exist', () => {
    const n = deviceCount();
    let err: unknown;
    try {
      DeviceTensor.alloc('f32', [4], { device: n + 3 });
    } catch (e) {
      err = e;
    }
    expect(isQError(err, 'E_NO_DEVICE')).toBe(true);
    expect(String((err as Error).message)).toContain(`[0, ${n})`);
    expect(String((err as Error).message)).toContain(`${n + 3}`);
  });

  it('throws E_CUDA with the CUDA error name when an allocation cannot be satisfied', () => {
    expect(() => DeviceTensor.alloc('u8', [2 ** 50])).toThrow(/cudaErrorMemoryAllocation/);
  });

  for (const dtype of ['f16', 'bf16'] as const) {
    it(`cuBLAS ${dtype} GEMM matches a float64 reference`, () => {
      console.log(`cuBLAS: ${JSON.stringify(cublasInfo())}`);
      const [m, n, k] = [37, 264, 520];
      const toBits = dtype === 'f16' ? f32ToF16Bits : f32ToBf16Bits;
      const toF = dtype === 'f16' ? f16BitsToF32 : bf16BitsToF32;
      const aB = new Uint16Array(m * k).map(() => toBits(rand() * 2 - 1));
      const wB = new Uint16Array(n * k).map(() => toBits(rand() * 2 - 1));
      const a = DeviceTensor.fromHost(dtype, [m, k], aB);
      const w = DeviceTensor.fromHost(dtype, [n, k], wB);
      const out = DeviceTensor.alloc(dtype, [m, n]);
      try {
        out.fillBytes(0xff);
        gemmHalf({ a, w, out });
        const got = out.download() as Uint16Array;
        let num = 0;
        let den = 0;
        for (let i = 0; i < m; i++)
          for (let j = 0; j < n; j++) {
            let s = 0;
            for (let q = 0; q < k; q++) s += toF(aB[i * k + q] as number) * toF(wB[j * k + q] as number);
            const d = toF(got[i * n + j] as number) - s;
            num += d * d;
            den += s * s;
          }
        // Output rounding only: relative Frobenius error near 2^-9 (f16) or 2^-6 (bf16) at most.
        expect(Math.sqrt(num / den)).toBeLessThan(dtype === 'f16' ? 2e-3 : 1e-2);
      } finally {
        a.dispose();
        w.dispose();
        out.dispose();
      }
    });
  }
});
