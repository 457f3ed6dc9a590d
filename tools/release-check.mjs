#!/usr/bin/env node
// Release gates for every @q/* package, run on the built packages:
//   1. publint --strict
//   2. attw on the packed tarball (types resolve under node10, node16 CJS/ESM and bundler)
//   3. consumer test: the packed tarballs installed with npm into an empty project, then a small ESM and a
//      small CJS program run against them. @q/kernels-cuda-linux-x64-gnu (the prebuilt addon, staged by the
//      build from @q/kernels-cuda's one compile) is installed beside @q/kernels-cuda, so the programs load the
//      addon from it with no toolkit and no build step; it holds no JavaScript, so attw has nothing to check
//      there, and without a built addon (no nvcc here) it is left out and said so.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const bin = (b) => join(root, 'node_modules', '.bin', b);
const pkgs = readdirSync(join(root, 'packages')).filter((d) => !d.startsWith('.'));
const packDir = join(root, '.tmp', 'pack');
rmSync(packDir, { recursive: true, force: true });
mkdirSync(packDir, { recursive: true });

const run = (cmd, args, cwd) => execFileSync(cmd, args, { cwd, stdio: 'inherit', env: process.env });
const pnpm = process.env.PNPM_BIN ?? 'pnpm';
const pnpmArgs = (args) =>
  process.env.npm_execpath?.includes('pnpm') ? [process.env.npm_execpath, ...args] : null;

const tarballs = {};
let platformPackage;
for (const p of pkgs) {
  const dir = join(root, 'packages', p);
  const manifest = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
  const { name } = manifest;
  const native = typeof manifest.main === 'string' && manifest.main.endsWith('.node');
  if (native && !existsSync(join(dir, manifest.main))) {
    console.log(`\n--- ${name}: left out (${manifest.main} is not built: no nvcc on this machine)`);
    continue;
  }
  console.log(`\n--- ${name}: publint --strict`);
  run(bin('publint'), ['--strict'], dir);
  const before = new Set(readdirSync(packDir));
  const viaNode = pnpmArgs(['pack', '--pack-destination', packDir]);
  if (viaNode) run(process.execPath, viaNode, dir);
  else run(pnpm, ['pack', '--pack-destination', packDir], dir);
  const tgz = readdirSync(packDir).find((f) => !before.has(f));
  if (!tgz) throw new Error(`pack produced no tarball for ${name}`);
  tarballs[name] = join(packDir, tgz);
  if (native) {
    platformPackage = name;
    continue;
  }
  // Build-time helpers under scripts/ (e.g. @q/kernels-cuda/build-addon, which @q/comm's build uses) are
  // ESM-only on purpose: they run under node at install/build time, never through require().
  const exportsMap = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')).exports ?? {};
  const scriptsOnly = Object.entries(exportsMap)
    .filter(([, t]) => typeof t === 'object' && String(t.default ?? '').startsWith('./scripts/'))
    .map(([k]) => k);
  const exclude = scriptsOnly.length ? ['--exclude-entrypoints', ...scriptsOnly] : [];
  console.log(
    `--- ${name}: attw ${tgz}${scriptsOnly.length ? ` (ESM-only build scripts: ${scriptsOnly.join(', ')})` : ''}`,
  );
  run(bin('attw'), [tarballs[name], '--format', 'table-flipped', ...exclude], dir);
}

const consumer = join(tmpdir(), `q-consumer-${process.pid}`);
rmSync(consumer, { recursive: true, force: true });
mkdirSync(consumer, { recursive: true });
const files = Object.fromEntries(Object.entries(tarballs).map(([n, t]) => [n, `file:${t}`]));
writeFileSync(
  join(consumer, 'package.json'),
  JSON.stringify(
    { name: 'q-consumer', private: true, version: '0.0.0', dependencies: files, overrides: files },
    null,
    2,
  ),
);
writeFileSync(join(consumer, 'esm.mjs'), readFileSync(join(root, 'tools', 'consumer', 'esm.mjs')));
writeFileSync(join(consumer, 'cjs.cjs'), readFileSync(join(root, 'tools', 'consumer', 'cjs.cjs')));
console.log(`\n--- consumer: npm install into ${consumer}`);
run('npm', ['install', '--no-audit', '--no-fund', '--loglevel=error'], consumer);
const pinned = JSON.parse(
  readFileSync(join(consumer, 'node_modules', '@q', 'kernels-cuda', 'package.json'), 'utf8'),
).optionalDependencies;
console.log(`--- consumer: @q/kernels-cuda's optionalDependencies ${JSON.stringify(pinned)}`);
const env = { ...process.env, Q_CONSUMER_PLATFORM_PACKAGE: platformPackage ?? '' };
delete env.Q_CUDA_ADDON;
console.log('--- consumer: ESM program');
execFileSync(process.execPath, ['esm.mjs'], { cwd: consumer, stdio: 'inherit', env });
console.log('--- consumer: CJS program');
execFileSync(process.execPath, ['cjs.cjs'], { cwd: consumer, stdio: 'inherit', env });
rmSync(consumer, { recursive: true, force: true });
console.log('\nrelease checks passed');
