import { Rng } from '@q/core';
import { linearForward, type QuantizedLinear, quantizeInt4, quantizeInt8, withIntegerScale } from '@q/quant';
import { afterAll, describe, expect, it } from 'vitest';
import { gemmRange, matmulT } from './gemm';
import { QuantLinear } from './linear';
import { cpuPool, shutdownThreads, toShared } from './threads';

// Three threads (two workers) whatever the machine, so every split here crosses a worker boundary.
process.env.Q_THREADS = '3';
afterAll(() => shutdownThreads());

function normal(rng: Rng, n: number, scale = 1): Float32Array {
  return Float32Array.from({ length: n }, () => rng.normal() * scale);
}

/** Bitwise equality of two float arrays (NaN-safe, -0 ≠ +0). */
function bits(a: Float32Array): Uint32Array {
  return new Uint32Array(a.buffer, a.byteOffset, a.length);
}

describe('CPU worker threads from TypeScript sources', () => {
  it('start from sources: the pool has Q_THREADS − 1 workers', async () => {
    const pool = await cpuPool();
    expect(pool?.size).toBe(2);
  });

  const n = 320;
  const k = 512;
  const rng = new Rng(21);
  const wf = normal(rng, n * k, 1 / Math.sqrt(k));
  const bias = normal(rng, n, 0.1);
  const int4 = quantizeInt4(wf, n, k, { groupSize: 64 });
  const layers: [string, QuantizedLinear][] = [
    [
      'int4 g64, Integer Scale, dynamic, bias',
      { name: 'l', weights: withIntegerScale(int4), act: 'dynamic', bias },
    ],
    ['int4 g64 float scales, static', { name: 'l', weights: int4, act: 'static', staticScale: 0.05 }],
    [
      'int4 asymmetric per-channel, dynamic',
      {
        name: 'l',
        weights: quantizeInt4(wf, n, k, { groupSize: 'channel', symmetric: false }),
        act: 'dynamic',
      },
    ],
    ['int8, dynamic', { name: 'l', weights: quantizeInt8(wf, n, k), act: 'dynamic' }],
  ];

  for (const [label, layer] of layers) {
    it(`runs a quantized layer bit-identically on the workers (${label}) at 16 rows and at 1 row`, async () => {
      const threaded = new QuantLinear(layer, linearForward, true);
      for (const rows of [16, 1, 16]) {
        const x = normal(rng, rows * k, 2);
        const got = await threaded.forward(x, rows);
        const want = linearForward(x, rows, layer);
        expect(got.length).toBe(rows * n);
        expect(bits(got)).toEqual(bits(want));
      }
    });
  }

  it('uses the workers in decode (one row): the calling thread runs only its column slice', async () => {
    const [dn, dk] = [1024, 2048];
    const w = withIntegerScale(
      quantizeInt4(normal(rng, dn * dk, 1 / Math.sqrt(dk)), dn, dk, { groupSize: 128 }),
    );
    const layer: QuantizedLinear = { name: 'decode', weights: w, act: 'dynamic' };
    const seen: number[] = [];
    const threaded = new QuantLinear(
      layer,
      (x, rows, l) => {
        seen.push(l.weights.n);
        return linearForward(x, rows, l);
      },
      true,
    );
    for (let step = 0; step < 3; step++) {
      const x = normal(rng, dk, 2);
      expect(bits(await threaded.forward(x, 1))).toEqual(bits(linearForward(x, 1, layer)));
    }
    // Three threads: the calling one takes a third of the columns (rounded up to 16), the workers the rest.
    expect(seen).toEqual([352, 352, 352]);
  });

  it('splits the float matmul over the workers with the single-thread result, also for concurrent calls', async () => {
    const m = 24;
    const w1 = toShared(normal(rng, n * k));
    const w2 = toShared(normal(rng, 256 * k));
    const x1 = normal(rng, m * k);
    const x2 = normal(rng, m * k);
    const single = (x: Float32Array, w: Float32Array, nn: number, b: Float32Array | null): Float32Array => {
      const out = new Float32Array(m * nn);
      gemmRange(x, m, k, w, b, out, nn, 0, nn);
      return out;
    };
    // Two different layers in flight at once, as two models (tensor-parallel ranks) in one process would be.
    const [y1, y2] = await Promise.all([matmulT(x1, m, k, w1, n, bias), matmulT(x2, m, k, w2, 256)]);
    expect(bits(y1)).toEqual(bits(single(x1, w1, n, bias)));
    expect(bits(y2)).toEqual(bits(single(x2, w2, 256, null)));
  });

  it('keeps the event loop turning while layers run', async () => {
    const w = toShared(normal(rng, 1024 * 1024, 0.03));
    const x = normal(rng, 8 * 1024);
    let ticks = 0;
    const timer = setInterval(() => ticks++, 0);
    try {
      for (let i = 0; i < 8; i++) await matmulT(x, 8, 1024, w, 1024);
    } finally {
      clearInterval(timer);
    }
    // A matmul that blocked until done would resolve without ever yielding to timers.
    expect(ticks).toBeGreaterThan(0);
  });
});
