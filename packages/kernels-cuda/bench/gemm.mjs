#!/usr/bin/env node
// Runs benchGemm from the built package: node packages/kernels-cuda/bench/gemm.mjs [--json out.json]
//   [--quick] [--ms 1,16,4096] [--shapes 0,1] [--group-size 128] [--variant N] [--stream]
import { BENCH_SHAPES, benchGemm, gpuStatus } from '@q/kernels-cuda';

const args = process.argv.slice(2);
const opt = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const s = gpuStatus();
if (!s.available) {
  console.log(`bench gemm skipped: ${s.reason}`);
  process.exit(0);
}
const ms =
  opt('--ms')?.split(',').map(Number) ?? (args.includes('--quick') ? [1, 16, 2048, 4096] : undefined);
const shapes = opt('--shapes')
  ?.split(',')
  .map((i) => BENCH_SHAPES[Number(i)]);
benchGemm({
  ...(opt('--json') ? { json: opt('--json') } : {}),
  ...(ms ? { ms } : {}),
  ...(shapes ? { shapes } : {}),
  ...(opt('--group-size') ? { groupSize: Number(opt('--group-size')) } : {}),
  ...(opt('--variant') ? { variant: Number(opt('--variant')) } : {}),
  ...(opt('--trials') ? { trials: Number(opt('--trials')) } : {}),
  ...(args.includes('--stream') ? { timing: 'stream' } : {}),
});
