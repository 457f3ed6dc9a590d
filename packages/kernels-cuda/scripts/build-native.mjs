#!/usr/bin/env node
// Builds the CUDA addon into ONE binary, build/q_cuda-<platform>-<arch>-v<version>.node, holding machine code
// for sm_80 (mma.sync path) and sm_90a (Hopper). cudart is linked statically, so loading the file needs no
// CUDA library at all and a machine without a GPU can still import it; cuBLAS is dlopen'ed at run time.
// Skips with a printed reason when nvcc or the Node headers are absent (exit code 0: the TypeScript part of
// the package works without the addon). Compiles the translation units two at a time (this is what CI has).
//
// Environment: NVCC (compiler path), Q_CUDA_ARCHS (e.g. "80,90a"), Q_BUILD_JOBS (parallel compiles).
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, statSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const pkgDir = join(dirname(fileURLToPath(import.meta.url)), '..');
const csrc = join(pkgDir, 'csrc');
const pkg = JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8'));
const outDir = join(pkgDir, 'build');
const objDir = join(outDir, 'obj');
const name = `q_cuda-${process.platform}-${process.arch}-v${pkg.version}.node`;

function skip(reason) {
  console.log(`build:native: skipped (${reason})`);
  process.exit(0);
}

if (!existsSync(join(csrc, 'addon.cc'))) skip('no csrc/addon.cc');
const nvcc = process.env.NVCC ?? 'nvcc';
const probe = spawnSync(nvcc, ['--version'], { encoding: 'utf8' });
if (probe.error || probe.status !== 0)
  skip(`nvcc not found (${nvcc}); install the CUDA toolkit to build the addon`);
const nodeInclude = [join(dirname(process.execPath), '..', 'include', 'node'), '/usr/include/node'].find(
  (d) => existsSync(join(d, 'node_api.h')),
);
if (!nodeInclude) skip('Node headers (node_api.h) not found next to node or in /usr/include/node');
let napiInclude;
try {
  napiInclude = dirname(fileURLToPath(import.meta.resolve('node-addon-api/package.json', import.meta.url)));
} catch {
  napiInclude = join(pkgDir, 'node_modules', 'node-addon-api');
}
if (!existsSync(join(napiInclude, 'napi.h'))) skip('node-addon-api headers not found');
const nvccBin = dirname(
  probe.stdout ? spawnSync('which', [nvcc], { encoding: 'utf8' }).stdout.trim() || nvcc : nvcc,
);
const cudaInclude = [
  process.env.CUDA_HOME && join(process.env.CUDA_HOME, 'include'),
  join(nvccBin, '..', 'include'),
  '/usr/local/cuda/include',
].find((d) => d && existsSync(join(d, 'cuda_runtime.h')));
if (!cudaInclude) skip('cuda_runtime.h not found (set CUDA_HOME)');

const archs = (process.env.Q_CUDA_ARCHS ?? '80,90a').split(',').map((a) => a.trim());
const gencode = archs.map((a) => `-gencode=arch=compute_${a},code=sm_${a}`);

function walk(dir) {
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f);
    return statSync(p).isDirectory() ? walk(p) : [p];
  });
}
const sources = walk(csrc).filter((f) => f.endsWith('.cc') || f.endsWith('.cu'));
mkdirSync(objDir, { recursive: true });

const common = ['-O3', '-std=c++17', `-I${csrc}`];
const jobs = sources.map((src) => {
  const obj = join(objDir, `${relative(csrc, src).replaceAll('/', '_')}.o`);
  if (src.endsWith('.cu')) {
    return {
      src,
      obj,
      cmd: nvcc,
      args: [
        ...common,
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
      ...common,
      '-fPIC',
      '-fvisibility=hidden',
      '-DNAPI_VERSION=8',
      '-DNAPI_CPP_EXCEPTIONS',
      '-DNODE_ADDON_API_DISABLE_DEPRECATED',
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

function run(cmd, args, label) {
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
    p.on('close', (code) => resolve({ code, log, label, s: (Date.now() - t0) / 1000 }));
    p.on('error', (e) => resolve({ code: 1, log: String(e), label, s: 0 }));
  });
}

const t0 = Date.now();
const width = Number(process.env.Q_BUILD_JOBS ?? 2);
const queue = [...jobs];
const results = [];
await Promise.all(
  Array.from({ length: width }, async () => {
    for (let j = queue.shift(); j; j = queue.shift()) {
      const r = await run(j.cmd, j.args, relative(pkgDir, j.src));
      results.push(r);
      const resource = r.log
        .split('\n')
        .filter((l) => /Used \d+ registers|spill|bytes stack frame/.test(l) && /sm_|registers|stack/.test(l))
        .filter((l) => /registers/.test(l) || /[1-9]\d* bytes spill/.test(l));
      console.log(`build:native: ${r.label} ${r.code === 0 ? 'ok' : 'FAILED'} (${r.s.toFixed(1)} s)`);
      if (process.env.Q_BUILD_VERBOSE) for (const l of resource) console.log(`  ${l.trim()}`);
      if (r.code !== 0) console.log(r.log);
    }
  }),
);
if (results.some((r) => r.code !== 0)) {
  console.error('build:native: compilation failed');
  process.exit(1);
}
const tmp = join(outDir, `${name}.tmp`);
const link = await run(
  nvcc,
  [
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
  ],
  'link',
);
if (link.code !== 0) {
  console.error(link.log);
  console.error('build:native: link failed');
  process.exit(1);
}
renameSync(tmp, join(outDir, name));
console.log(
  `build:native: built build/${name} for sm_${archs.join(', sm_')} in ${((Date.now() - t0) / 1000).toFixed(1)} s`,
);
