#!/usr/bin/env node
import { Rng } from '@q/core';
// A small end-to-end pass over every kernel, meant to run under
//   compute-sanitizer --tool memcheck --error-exitcode 1 node packages/kernels-cuda/test/gpu/memcheck.mjs
// Shapes are chosen to hit the edges: M not a multiple of 8, K not a multiple of the 64-wide tile, ldq > K.
// (On sm_90 the last two shapes take the warp-specialized wgmma path.)
import {
  DeviceTensor,
  gemmHalf,
  gemmW4A8,
  gpuStatus,
  packForGemm,
  quantizeAct,
  rmsNormQuantize,
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
  }
  const wh = T(DeviceTensor.fromHost('bf16', [n, k], new Uint16Array(n * k).fill(0x3c00)));
  gemmHalf({ a: x, w: wh, out });
  synchronize(0);
  dw.dispose();
}
for (const t of free) t.dispose();
console.log('memcheck pass: all kernels ran');
