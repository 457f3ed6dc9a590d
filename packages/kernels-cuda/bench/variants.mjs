#!/usr/bin/env node
// Checks and times kernel variants in one call: node packages/kernels-cuda/bench/variants.mjs [--json out]
// 1. every variant (mma.sync with 1/2/4/8 token tiles, wgmma with 128 and with 256 tokens per block, the
//    warp-specialized wgmma kernel 20-25) against
//    @q/quant's golden integer GEMM on one small problem per mode;
// 2. the median time of each variant on a few layer shapes and M values.
import { writeFileSync } from 'node:fs';
import { Rng } from '@q/core';
import {
  BENCH_SHAPES,
  benchGemm,
  DeviceTensor,
  gemmW4A8,
  gpuStatus,
  packForGemm,
  uploadGemmWeights,
} from '@q/kernels-cuda';
import { gemmW4A8GoldenInt, quantizeActPerToken, quantizeInt4, withIntegerScale } from '@q/quant';

const s = gpuStatus();
if (!s.available) {
  console.log(`variants skipped: ${s.reason}`);
  process.exit(0);
}
const args = process.argv.slice(2);
const seed = Number(process.env.Q_TEST_SEED ?? Date.now() % 1e9);
const rng = new Rng(seed);
const rand = () => rng.next();
const [m, n, k] = [200, 256, 640];
// --check 20,23 narrows the variants checked.
const ci = args.indexOf('--check');
const checkVariants =
  ci >= 0
    ? args[ci + 1].split(',').map(Number)
    : [1, 2, 4, 8, 16, 18, 20, 21, 22, 23, 24, 25, 201, 202, 404, 408, 801];
const check = {};
for (const gs of ['channel', 128, 64]) {
  const wf = new Float32Array(n * k).map(() => rand() - 0.5);
  const w0 = quantizeInt4(wf, n, k, { groupSize: gs });
  const w = gs === 'channel' ? w0 : withIntegerScale(w0);
  const act = quantizeActPerToken(
    new Float32Array(m * k).map(() => (rand() - 0.5) * 8),
    m,
    k,
    { kPadded: w.kPadded },
  );
  const dw = uploadGemmWeights(packForGemm(w));
  const a = DeviceTensor.fromHost('i8', [m, w.kPadded], act.q);
  const sc = DeviceTensor.fromHost('f32', [m], act.scales);
  const out = DeviceTensor.alloc('i32', [m, n]);
  for (const mode of gs === 'channel' ? ['per-channel'] : ['group-float', 'group-int']) {
    const gold = gemmW4A8GoldenInt({ a: act.q, aScales: act.scales, m, weights: w, mode });
    let want = gold.values;
    if (mode === 'group-float') {
      want = new Int32Array(m * n);
      for (let i = 0; i < want.length; i++)
        for (let g = 0; g < gold.groups; g++) want[i] += gold.values[i * gold.groups + g];
    }
    for (const variant of checkVariants) {
      out.fillBytes(0xa5);
      gemmW4A8({ a, aScale: sc, weights: dw, mode, out, variant });
      const got = out.download();
      let bad = 0;
      for (let i = 0; i < want.length; i++) if (got[i] !== want[i]) bad++;
      check[`${mode}/g${gs}/v${variant}`] = bad;
      console.log(
        `check ${mode} groupSize=${gs} variant=${variant}: ${bad === 0 ? 'exact' : `${bad} of ${want.length} differ`}`,
      );
    }
  }
  for (const t of [a, sc, out]) t.dispose();
  dw.dispose();
}
const timings = {};
const only = args.includes('--no-time') ? [] : [1, 2, 16];
for (const variant of only) {
  const ms = variant === 16 ? [16, 128, 2048, 4096] : [1, 16, 32, 64];
  console.log(`--- variant ${variant}`);
  timings[variant] = benchGemm({
    variant,
    ms,
    shapes: [BENCH_SHAPES[1], BENCH_SHAPES[2], BENCH_SHAPES[6]],
    trials: 5,
  }).rows;
}
const i = args.indexOf('--json');
if (i >= 0) writeFileSync(args[i + 1], JSON.stringify({ gpu: s.devices[0]?.name, check, timings }, null, 2));
