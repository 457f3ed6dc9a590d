#!/usr/bin/env node
// Release gates for every @q/* package, run on the built packages:
//   1. publint --strict
//   2. attw on the packed tarball (types resolve under node10, node16 CJS/ESM and bundler)
//   3. consumer test: the packed tarballs installed with npm into an empty project, then a small ESM and a
//      small CJS program run against them.
import { execFileSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
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
for (const p of pkgs) {
  const dir = join(root, 'packages', p);
  const { name } = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
  console.log(`\n--- ${name}: publint --strict`);
  run(bin('publint'), ['--strict'], dir);
  const before = new Set(readdirSync(packDir));
  const viaNode = pnpmArgs(['pack', '--pack-destination', packDir]);
  if (viaNode) run(process.execPath, viaNode, dir);
  else run(pnpm, ['pack', '--pack-destination', packDir], dir);
  const tgz = readdirSync(packDir).find((f) => !before.has(f));
  if (!tgz) throw new Error(`pack produced no tarball for ${name}`);
  tarballs[name] = join(packDir, tgz);
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
console.log('--- consumer: ESM program');
run(process.execPath, ['esm.mjs'], consumer);
console.log('--- consumer: CJS program');
run(process.execPath, ['cjs.cjs'], consumer);
rmSync(consumer, { recursive: true, force: true });
console.log('\nrelease checks passed');
