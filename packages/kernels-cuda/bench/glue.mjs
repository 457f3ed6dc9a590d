#!/usr/bin/env node
// The host cost of one kernel call in JavaScript alone: argument validation, the device check and packing the
// argument block, measured against a stand-in addon whose functions do nothing (so no GPU and no launch is
// involved: what a real call adds on top is the N-API crossing and cudaLaunchKernel). Runs anywhere:
//   node packages/kernels-cuda/bench/glue.mjs        (needs the built dist: pnpm --filter @q/kernels-cuda build)
// It loads the stand-in through Q_CUDA_ADDON, which the loader accepts like any addon file.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const { version } = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'));
const dir = mkdtempSync(join(tmpdir(), 'q-glue-'));
const fake = join(dir, 'fake-addon.cjs');
const names = ['setDevice', 'malloc', 'free', 'memcpyHtoD', 'memcpyDtoH', 'memcpyDtoD', 'hostAlloc'];
names.push('streamCreate', 'eventCreate', 'cublasGemm', 'actQuant', 'gemmW4A8', 'streamWaitEvent');
names.push('ipcGetHandle', 'ncclLoad', 'syncWatch', 'arFused', 'deviceProperties');
writeFileSync(
  fake,
  `let calls = 0;\nmodule.exports = { version: ${JSON.stringify(version)}, abiVersion: 2,\n` +
    `  deviceCount: () => ({ count: 1, driverVersion: 13000, runtimeVersion: 13000 }),\n` +
    names.map((n) => `  ${n}: () => { calls++; },`).join('\n') +
    '\n  calls: () => calls };\n',
);
process.env.Q_CUDA_ADDON = fake;
const k = await import('@q/kernels-cuda');
try {
  const wrap = (ptr, dtype, shape) => k.DeviceTensor.wrap(ptr, dtype, shape);
  // Llama-2-7B o_proj at M = 1: [1, 4096] × [4096, 4096], group-int with groups of 128.
  const [m, n, kk, g] = [1, 4096, 4096, 128];
  const weights = new k.DeviceGemmWeights({
    n,
    k: kk,
    kPadded: kk,
    groupSize: g,
    groups: kk / g,
    device: 0,
    packed: wrap(0x7f0000000000n, 'u8', [(n * kk) / 2]),
    scales: wrap(0x7f0010000000n, 'f32', [n, kk / g]),
    intQ: wrap(0x7f0020000000n, 'i32', [n, kk / g]),
    unit: wrap(0x7f0030000000n, 'f32', [n]),
  });
  const stream = k.Stream.wrap(0x55aa00n, 0);
  const w4 = {
    a: wrap(0x7f0040000000n, 'i8', [m, kk]),
    aScale: wrap(0x7f0050000000n, 'f32', [m]),
    weights,
    mode: 'group-int',
    out: wrap(0x7f0060000000n, 'bf16', [m, n]),
    stream,
  };
  const half = {
    a: wrap(0x7f0070000000n, 'bf16', [m, kk]),
    w: wrap(0x7f0080000000n, 'bf16', [n, kk]),
    out: w4.out,
    stream,
  };
  const time = (label, f) => {
    for (let i = 0; i < 200_000; i++) f();
    const runs = [];
    for (let r = 0; r < 7; r++) {
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < 200_000; i++) f();
      runs.push(Number(process.hrtime.bigint() - t0) / 200_000);
    }
    runs.sort((a, b) => a - b);
    console.log(`${label}: ${runs[3].toFixed(0)} ns per call in JavaScript (median of 7 × 200k calls)`);
  };
  console.log(`kernel-call glue of @q/kernels-cuda ${version} against a stand-in addon (${process.version})`);
  time('gemmW4A8 7B o_proj M=1 group-int', () => k.gemmW4A8(w4));
  time('gemmHalf (cuBLAS) 7B o_proj M=1  ', () => k.gemmHalf(half));
} finally {
  rmSync(dir, { recursive: true, force: true });
}
