#!/usr/bin/env node
// One shape, a few launches, for Nsight Compute:
//   ncu --kernel-name regex:w4a8 --launch-skip 2 --launch-count 1 node packages/kernels-cuda/bench/profile.mjs \
//     --m 4096 --k 4096 --n 4096 --mode per-channel [--variant 16]
import { Rng } from '@q/core';
import { DeviceGemmWeights, DeviceTensor, gemmW4A8, synchronize } from '@q/kernels-cuda';

const args = process.argv.slice(2);
const opt = (n, d) => {
  const i = args.indexOf(n);
  return i >= 0 ? args[i + 1] : d;
};
const m = Number(opt('--m', 4096));
const k = Number(opt('--k', 4096));
const n = Number(opt('--n', 4096));
const mode = opt('--mode', 'per-channel');
const variant = Number(opt('--variant', 0));
const gs = mode === 'per-channel' ? k : 128;
const groups = k / gs;
const rng = new Rng(7);
const rnd = (len) => Uint8Array.from({ length: len }, () => rng.int(256));
const packed = DeviceTensor.fromHost(
  'u8',
  [(n / 16) * Math.ceil(k / 64) * 512],
  rnd((n / 16) * Math.ceil(k / 64) * 512),
);
const scales = DeviceTensor.fromHost('f32', [n, groups], new Float32Array(n * groups).fill(0.01));
const q = DeviceTensor.fromHost('i32', [n, groups], new Int32Array(n * groups).fill(700));
const unit = DeviceTensor.fromHost('f32', [n], new Float32Array(n).fill(1e-5));
const w = new DeviceGemmWeights({
  n,
  k,
  kPadded: k,
  groupSize: gs,
  groups,
  device: 0,
  packed,
  scales,
  intQ: q,
  unit,
});
const a = DeviceTensor.fromHost('i8', [m, k], rnd(m * k));
const as = DeviceTensor.fromHost('f32', [m], new Float32Array(m).fill(0.02));
const out = DeviceTensor.alloc('bf16', [m, n]);
for (let i = 0; i < 4; i++) gemmW4A8({ a, aScale: as, weights: w, mode, out, variant });
synchronize(0);
console.log(`profiled ${mode} m=${m} k=${k} n=${n} variant=${variant}`);
