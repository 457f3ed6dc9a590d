#!/usr/bin/env node
import { Rng } from '@q/core';
// A small end-to-end pass over every kernel, meant to run under
//   compute-sanitizer --tool memcheck --error-exitcode 1 node packages/kernels-cuda/test/gpu/memcheck.mjs
// Shapes are chosen to hit the edges: M not a multiple of 8, K not a multiple of the 64-wide tile, ldq > K.
// (On sm_90 the last two shapes take the warp-specialized wgmma path.)
import {
  addRmsNorm,
  DeviceTensor,
  embedding,
  gemmHalf,
  gemmW4A8,
  gpuStatus,
  packForGemm,
  quantizeAct,
  rmsNormQuantize,
  ropeKvWrite,
  sample,
  siluMul,
  synchronize,
  uploadGemmWeights,
} from '@q/kernels-cuda';
import { quantizeInt4, withIntegerScale } from '@q/quant';

const s = gpuStatus();
if (!s.available) {
  console.log(`memcheck skipped: ${s.reason}`);
  process.exit(0);
}
const rng = new Rng(12345);
const rand = () => rng.next();
const free = [];
const T = (t) => {
  free.push(t);
  return t;
};
for (const [m, n, k, gs] of [
  [3, 48, 272, 'channel'],
  [19, 32, 256, 64],
  [70, 16, 384, 128],
  // Above 64 tokens with N % 128 == 0: the warp-specialized wgmma kernel (TMA past M and K, odd k tiles).
  [130, 128, 336, 'channel'],
  [200, 256, 640, 64],
]) {
  const w = quantizeInt4(
    new Float32Array(n * k).map(() => rand() - 0.5),
    n,
    k,
    { groupSize: gs },
  );
  const wi = gs === 'channel' ? w : withIntegerScale(w);
  const dw = uploadGemmWeights(packForGemm(wi));
  const x = T(
    DeviceTensor.fromHost(
      'bf16',
      [m, k],
      new Uint16Array(m * k).map(() => 0x3f00 + Math.floor(rand() * 200)),
    ),
  );
  const q = T(DeviceTensor.alloc('i8', [m, wi.kPadded]));
  const sc = T(DeviceTensor.alloc('f32', [m]));
  quantizeAct({ x, out: q, scales: sc, mode: 'dynamic' });
  const gain = T(DeviceTensor.fromHost('bf16', [k], new Uint16Array(k).fill(0x3f80)));
  rmsNormQuantize({ x, gain, out: q, scales: sc, mode: 'dynamic' });
  quantizeAct({ x, out: q, mode: 'static', staticScale: 0.01 });
  const out = T(DeviceTensor.alloc('bf16', [m, n]));
  const outI = T(DeviceTensor.alloc('i32', [m, n]));
  const bias = T(DeviceTensor.fromHost('f32', [n], new Float32Array(n).fill(0.5)));
  const modes = gs === 'channel' ? ['per-channel'] : ['group-float', 'group-int'];
  for (const mode of modes) {
    gemmW4A8({ a: q, aScale: sc, weights: dw, mode, out, bias, residual: out });
    gemmW4A8({ a: q, aScale: sc, weights: dw, mode, out: outI });
    // Split-K (K over 3 and 4 blocks, partial token tiles): the workspace writes and the reduce kernel.
    gemmW4A8({ a: q, aScale: sc, weights: dw, mode, out, bias, residual: out, variant: 304 });
    gemmW4A8({ a: q, aScale: sc, weights: dw, mode, out: outI, variant: 401 });
  }
  const wh = T(DeviceTensor.fromHost('bf16', [n, k], new Uint16Array(n * k).fill(0x3c00)));
  gemmHalf({ a: x, w: wh, out });
  synchronize(0);
  dw.dispose();
}
// The Llama-layer kernels, at a vector shape (d % 8 == 0) and a scalar one, with padded int8 outputs.
const bits = (n) => new Uint16Array(n).map(() => 0x3e00 + Math.floor(rand() * 512));
for (const [t, d] of [
  [5, 256],
  [3, 100],
]) {
  const ids = T(
    DeviceTensor.fromHost(
      'i32',
      [t],
      Int32Array.from({ length: t }, (_, i) => (i * 7) % 50),
    ),
  );
  const x = T(DeviceTensor.alloc('f32', [t, d]));
  embedding({ ids, table: T(DeviceTensor.fromHost('bf16', [50, d], bits(50 * d))), out: x });
  const r = T(DeviceTensor.fromHost('bf16', [t, d], bits(t * d)));
  const gain = T(DeviceTensor.fromHost('f32', [d], new Float32Array(d).fill(1)));
  const q = T(DeviceTensor.alloc('i8', [t, d + 8]));
  const sc = T(DeviceTensor.alloc('f32', [t]));
  addRmsNorm({ x, r, gain, eps: 1e-5, out: T(DeviceTensor.alloc('bf16', [t, d])) });
  addRmsNorm({ x, r, gain, eps: 1e-5, out: q, mode: 'dynamic', scales: sc });
  addRmsNorm({ x, gain, eps: 1e-5, out: q, mode: 'static', staticScale: 0.01 });
  const gu = T(DeviceTensor.fromHost('bf16', [t, 2 * d], bits(t * 2 * d)));
  siluMul({ gateUp: gu, out: T(DeviceTensor.alloc('bf16', [t, d])) });
  siluMul({ gateUp: gu, out: q, mode: 'dynamic', scales: sc });
  siluMul({ gateUp: gu, out: q, mode: 'static', staticScale: 0.01 });
}
for (const style of ['interleaved', 'half']) {
  const [t, nh, nkv, hd, pages, pageSize] = [20, 4, 2, 64, 4, 16];
  const pageTable = T(DeviceTensor.fromHost('i32', [2, 2], Int32Array.of(3, 0, 1, -1)));
  ropeKvWrite({
    qkv: T(DeviceTensor.fromHost('bf16', [t, (nh + 2 * nkv) * hd], bits(t * (nh + 2 * nkv) * hd))),
    positions: T(
      DeviceTensor.fromHost(
        'i32',
        [t],
        Int32Array.from({ length: t }, (_, i) => (i < 18 ? i : i + 20)),
      ),
    ),
    seqOfToken: T(
      DeviceTensor.fromHost(
        'i32',
        [t],
        Int32Array.from({ length: t }, (_, i) => (i < 18 ? 0 : 1)),
      ),
    ),
    pageTable,
    k: T(DeviceTensor.alloc('bf16', [pages, pageSize, nkv, hd])),
    v: T(DeviceTensor.alloc('bf16', [pages, pageSize, nkv, hd])),
    invFreq: T(
      DeviceTensor.fromHost(
        'f32',
        [hd / 2],
        new Float32Array(hd / 2).map((_, i) => 10000 ** (-i / 32)),
      ),
    ),
    numHeads: nh,
    numKvHeads: nkv,
    headDim: hd,
    style,
  });
}
for (const v of [1001, 4096]) {
  const b = 4;
  const col = (dtype, vals) => T(DeviceTensor.fromHost(dtype, [b], vals));
  sample({
    logits: T(
      DeviceTensor.fromHost(
        'f32',
        [b, v],
        new Float32Array(b * v).map(() => rand() * 4),
      ),
    ),
    temperature: col('f32', Float32Array.of(0, 1, 0.7, 1.2)),
    topK: col('i32', Int32Array.of(0, 0, 10, 100)),
    topP: col('f32', Float32Array.of(1, 0.9, 1, 0.5)),
    seeds: col('i32', Int32Array.of(1, 2, 3, 4)),
    steps: col('i32', Int32Array.of(0, 1, 2, 3)),
    out: col('i32', new Int32Array(b)),
  });
}
{
  const a = T(DeviceTensor.fromHost('bf16', [3, 64], bits(3 * 64)));
  const w = T(DeviceTensor.fromHost('bf16', [40, 64], bits(40 * 64)));
  gemmHalf({ a, w, out: T(DeviceTensor.alloc('f32', [3, 40])) });
}
synchronize(0);
for (const t of free) t.dispose();
console.log('memcheck pass: all kernels ran');
