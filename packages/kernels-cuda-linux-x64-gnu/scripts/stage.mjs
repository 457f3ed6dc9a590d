#!/usr/bin/env node
// Puts @q/kernels-cuda's built addon (build/q_cuda-linux-x64-v<version>.node, compiled once by its build:native)
// into this package as q_cuda.node, atomically. Nothing is compiled here. Without a built addon (no nvcc on this
// machine) it says so and leaves the package empty; the release checks then leave it out.
import { copyFileSync, existsSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = join(dirname(fileURLToPath(import.meta.url)), '..');
const { version } = JSON.parse(readFileSync(join(here, 'package.json'), 'utf8'));
const src = join(here, '..', 'kernels-cuda', 'build', `q_cuda-linux-x64-v${version}.node`);
const dst = join(here, 'q_cuda.node');
if (!existsSync(src)) {
  rmSync(dst, { force: true });
  console.log(`stage: skipped (${src} is not built; pnpm --filter @q/kernels-cuda build:native needs nvcc)`);
} else {
  const tmp = `${dst}.${process.pid}.tmp`;
  copyFileSync(src, tmp);
  renameSync(tmp, dst);
  console.log(`stage: ${src} -> q_cuda.node`);
}
