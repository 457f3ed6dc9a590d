#!/usr/bin/env node
// Builds the @q/comm addon into build/q_comm-<platform>-<arch>-v<version>.node with machine code for sm_80 and
// sm_90a. cudart is linked statically, so loading the file needs no CUDA library and works without a GPU; NCCL is
// dlopen'ed at run time. Skips with a printed reason (exit 0) when nvcc or the Node headers are absent.
// Environment: NVCC, CUDA_HOME, Q_CUDA_ARCHS (e.g. "80,90a"), Q_BUILD_JOBS (parallel compiles, default 2).
import { spawn, spawnSync } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
} from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const pkgDir = join(dirname(fileURLToPath(import.meta.url)), '..');
const csrc = join(pkgDir, 'csrc');
const pkg = JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8'));
const outDir = join(pkgDir, 'build');
// Objects stay out of build/ so that only the .node file travels and ships.
// A fresh folder per build: concurrent builds of different checkouts never share object files.
const objDir = mkdtempSync(join(tmpdir(), 'q-comm-obj-'));
const name = `q_comm-${process.platform}-${process.arch}-v${pkg.version}.node`;

function skip(reason) {
  console.log(`build:native: skipped (${reason})`);
  process.exit(0);
}

const nvcc = process.env.NVCC ?? 'nvcc';
const probe = spawnSync(nvcc, ['--version'], { encoding: 'utf8' });
if (probe.error || probe.status !== 0)
  skip(`nvcc not found (${nvcc}); install the CUDA toolkit to build the addon`);
const nodeInclude = [join(dirname(process.execPath), '..', 'include', 'node'), '/usr/include/node'].find(
  (d) => existsSync(join(d, 'node_api.h')),
);
if (!nodeInclude) skip('Node headers (node_api.h) not found next to node or in /usr/include/node');
const require = createRequire(import.meta.url);
let napiInclude = '';
for (const from of [pkgDir, join(pkgDir, '..', 'kernels-cuda')]) {
  try {
    napiInclude = dirname(require.resolve('node-addon-api/package.json', { paths: [from] }));
    break;
  } catch {}
}
if (!napiInclude || !existsSync(join(napiInclude, 'napi.h'))) skip('node-addon-api headers not found');
const nvccPath = spawnSync('which', [nvcc], { encoding: 'utf8' }).stdout.trim() || nvcc;
const cudaInclude = [
  process.env.CUDA_HOME && join(process.env.CUDA_HOME, 'include'),
  join(dirname(nvccPath), '..', 'include'),
  '/usr/local/cuda/include',
].find((d) => d && existsSync(join(d, 'cuda_runtime.h')));
if (!cudaInclude) skip('cuda_runtime.h not found (set CUDA_HOME)');

const archs = (process.env.Q_CUDA_ARCHS ?? '80,90a').split(',').map((a) => a.trim());
const gencode = archs.map((a) => `-gencode=arch=compute_${a},code=sm_${a}`);
const walk = (dir) =>
  readdirSync(dir).flatMap((f) =>
    statSync(join(dir, f)).isDirectory() ? walk(join(dir, f)) : [join(dir, f)],
  );
const sources = walk(csrc).filter((f) => f.endsWith('.cc') || f.endsWith('.cu'));
mkdirSync(objDir, { recursive: true });
mkdirSync(outDir, { recursive: true });

const jobs = sources.map((src) => {
  const obj = join(objDir, `${relative(csrc, src).replaceAll('/', '_')}.o`);
  if (src.endsWith('.cu')) {
    return {
      src,
      obj,
      cmd: nvcc,
      args: [
        '-O3',
        '-std=c++20',
        `-I${csrc}`,
        ...gencode,
        '-Xcompiler',
        '-fPIC',
        '-Xptxas',
        '-v',
        '-lineinfo',
        '-c',
        src,
        '-o',
        obj,
      ],
    };
  }
  return {
    src,
    obj,
    cmd: process.env.CXX ?? 'g++',
    args: [
      '-O2',
      '-std=c++17',
      '-fPIC',
      '-fvisibility=hidden',
      `-I${csrc}`,
      '-DNAPI_VERSION=8',
      '-DNAPI_CPP_EXCEPTIONS',
      '-DNODE_ADDON_API_DISABLE_DEPRECATED',
      `-DQ_COMM_VERSION="${pkg.version}"`,
      `-I${napiInclude}`,
      `-I${nodeInclude}`,
      `-I${cudaInclude}`,
      '-c',
      src,
      '-o',
      obj,
    ],
  };
});

function run(cmd, args) {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let log = '';
    p.stdout.on('data', (d) => {
      log += d;
    });
    p.stderr.on('data', (d) => {
      log += d;
    });
    p.on('close', (code) => resolve({ code, log, s: (Date.now() - t0) / 1000 }));
    p.on('error', (e) => resolve({ code: 1, log: String(e), s: 0 }));
  });
}

const t0 = Date.now();
const queue = [...jobs];
let failed = false;
await Promise.all(
  Array.from({ length: Number(process.env.Q_BUILD_JOBS ?? 2) }, async () => {
    for (let j = queue.shift(); j; j = queue.shift()) {
      const r = await run(j.cmd, j.args);
      console.log(
        `build:native: ${relative(pkgDir, j.src)} ${r.code === 0 ? 'ok' : 'FAILED'} (${r.s.toFixed(1)} s)`,
      );
      if (r.code !== 0 || /spill|error/i.test(r.log.replace(/0 bytes spill (stores|loads)/g, ''))) {
        const lines = r.log
          .split('\n')
          .filter((l) => r.code !== 0 || /spill|error/i.test(l.replace(/0 bytes spill (stores|loads)/g, '')));
        console.log(lines.join('\n'));
      }
      if (r.code !== 0) failed = true;
    }
  }),
);
if (failed) {
  console.error('build:native: compilation failed');
  process.exit(1);
}
const tmp = join(outDir, `${name}.tmp`);
const link = await run(nvcc, [
  '-shared',
  '-cudart',
  'static',
  ...gencode,
  '-o',
  tmp,
  ...jobs.map((j) => j.obj),
  '-ldl',
  '-lpthread',
  '-lrt',
]);
if (link.code !== 0) {
  console.error(link.log);
  console.error('build:native: link failed');
  process.exit(1);
}
renameSync(tmp, join(outDir, name));
rmSync(objDir, { recursive: true, force: true });
console.log(
  `build:native: built build/${name} for sm_${archs.join(', sm_')} in ${((Date.now() - t0) / 1000).toFixed(1)} s`,
);
