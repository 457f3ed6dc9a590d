#!/usr/bin/env node
// The GPU test suite in one command (`pnpm test:gpu`): builds the CUDA addons, runs the vitest project `gpu`
// (one forked worker), and prints `N passed, M failed`. On a machine without a GPU every GPU test is skipped
// with a printed reason.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const bin = (b) => join(root, 'node_modules', '.bin', b);
const report = join(root, '.tmp', 'reports', 'gpu.json');
mkdirSync(join(root, '.tmp', 'reports'), { recursive: true });
if (existsSync(bin('turbo')) && !process.env.Q_SKIP_BUILD) {
  const b = spawnSync(bin('turbo'), ['run', 'build:native', '--output-logs=errors-only'], {
    cwd: root,
    stdio: 'inherit',
  });
  if (b.status !== 0) process.exit(b.status ?? 1);
}
const vitest = existsSync(bin('vitest')) ? bin('vitest') : join(root, 'node_modules', 'vitest', 'vitest.mjs');
const args = [
  'run',
  '--project',
  'gpu',
  '--reporter=default',
  '--reporter=json',
  `--outputFile.json=${report}`,
];
const r = spawnSync(
  vitest.endsWith('.mjs') ? process.execPath : vitest,
  vitest.endsWith('.mjs') ? [vitest, ...args] : args,
  {
    cwd: root,
    stdio: 'inherit',
  },
);
const s = spawnSync(process.execPath, [join(root, 'tools', 'summary.mjs'), report], { stdio: 'inherit' });
process.exit(r.status === 0 && s.status === 0 ? 0 : 1);
