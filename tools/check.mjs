#!/usr/bin/env node
// The whole gate, in the order CI runs it: lint, build (TypeScript + the CUDA addon where nvcc exists, compiled
// once and staged into its platform package @q/kernels-cuda-linux-x64-gnu),
// typecheck, every vitest project with a JSON report, release checks (publint, attw, consumer install),
// and last the one closing line `N passed, M failed`.
import { spawnSync } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const reports = join(root, '.tmp', 'reports');
rmSync(reports, { recursive: true, force: true });
mkdirSync(reports, { recursive: true });

const failures = [];
function step(name, cmd, args, env = {}) {
  const t0 = Date.now();
  console.log(`\n=== ${name}`);
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', env: { ...process.env, ...env } });
  const s = ((Date.now() - t0) / 1000).toFixed(1);
  if (r.status !== 0) {
    failures.push(name);
    console.log(`=== ${name}: FAILED (${s} s)`);
    return false;
  }
  console.log(`=== ${name}: ok (${s} s)`);
  return true;
}

const bin = (b) => join(root, 'node_modules', '.bin', b);
step('lint', bin('turbo'), ['run', 'lint', 'lint:root', '--output-logs=errors-only']);
const built = step('build', bin('turbo'), ['run', 'build', 'build:native', '--output-logs=errors-only']);
step('typecheck', bin('turbo'), ['run', 'typecheck', '--output-logs=errors-only']);
step('tests', bin('vitest'), [
  'run',
  ...['core', 'quant', 'kernels-cuda', 'comm', 'runtime', 'gpu', 'examples'].flatMap((p) => ['--project', p]),
  '--reporter=default',
  '--reporter=json',
  `--outputFile.json=${join(reports, 'vitest.json')}`,
]);
if (built) step('release checks', process.execPath, [join(root, 'tools', 'release-check.mjs')]);
else failures.push('release checks (skipped: build failed)');

if (failures.length) console.log(`\nFailed steps: ${failures.join(', ')}`);
const summaryArgs = [join(root, 'tools', 'summary.mjs'), join(reports, 'vitest.json')];
// The tests step already counts its own failures; every other failed step adds one.
const otherFailures = failures.filter((f) => f !== 'tests').length;
const sum = spawnSync(process.execPath, [...summaryArgs, '--failed-steps', String(otherFailures)], {
  stdio: 'inherit',
});
process.exit(failures.length === 0 && sum.status === 0 ? 0 : 1);
