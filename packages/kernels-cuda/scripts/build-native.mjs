#!/usr/bin/env node
// Builds this package's addon, build/q_cuda-<platform>-<arch>-v<version>.node (see build-addon.mjs).
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildCudaAddon } from './build-addon.mjs';

process.exitCode = await buildCudaAddon({
  pkgDir: join(dirname(fileURLToPath(import.meta.url)), '..'),
  baseName: 'q_cuda',
});
