#!/usr/bin/env node
// Builds this package's addon, build/q_comm-<platform>-<arch>-v<version>.node, with the same builder as
// @q/kernels-cuda (its build-addon.mjs: sm_80 + sm_90a, cudart static; NCCL is dlopen'ed at run time).
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildCudaAddon } from '@q/kernels-cuda/build-addon';

const pkgDir = join(dirname(fileURLToPath(import.meta.url)), '..');
const { version } = JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8'));
process.exitCode = await buildCudaAddon({
  pkgDir,
  baseName: 'q_comm',
  cudaStd: 'c++20',
  defines: [`Q_COMM_VERSION="${version}"`],
});
