// Builds the q CUDA addon: every .cc (g++, node-addon-api) and .cu (nvcc) file under <pkgDir>/csrc, each
// compiled once, linked by nvcc into ONE binary build/<baseName>-<platform>-<arch>-v<version>.node. Machine code:
// cubins for sm_80 (mma.sync) and sm_90a (Hopper: wgmma, TMA), plus compute_90 PTX that newer GPUs JIT-compile.
// A .cu file whose header says "Compiled for sm_90a only" (the wgmma/TMA kernels) gets the sm_90a cubin alone:
// its instructions exist nowhere else, and the launchers pick it at run time by compute capability.
// cudart is linked statically, so loading the file needs no CUDA library and a machine without a GPU can still
// import it; cuBLAS and NCCL are dlopen'ed at run time. The version in package.json is compiled in
// (Q_ADDON_VERSION), so the loader can tell a stale file. Skips with a printed reason (result 0) when nvcc or the
// headers are absent: the TypeScript side works without the addon. Object files go to a private temporary folder,
// so only the .node file ships and concurrent builds of different checkouts never share objects.
//
// Environment: NVCC, CUDA_HOME, CXX, Q_CUDA_ARCHS (cubins, default "80,90a"), Q_CUDA_PTX (PTX, default "90";
// "" for none), Q_BUILD_JOBS (parallel compiles, default 2, what CI has), Q_BUILD_VERBOSE (print registers and
// spills of every kernel).
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

function walk(dir) {
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f);
    return statSync(p).isDirectory() ? walk(p) : [p];
  });
}

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

/** Lines of a compiler log worth showing: errors, and non-zero spills (all resource lines when verbose). */
function notable(log, verbose) {
  return log
    .split('\n')
    .filter((l) =>
      verbose
        ? /error|registers|spill|stack frame/i.test(l)
        : /error/i.test(l) || /[1-9]\d* bytes spill/.test(l),
    );
}

/**
 * Builds the addon of the package at `pkgDir`; resolves to a process exit code (0 also when skipped).
 *
 * @param {{ pkgDir: string, baseName: string, cudaStd?: string, defines?: string[] }} options
 * @returns {Promise<number>}
 */
export async function buildCudaAddon({ pkgDir, baseName, cudaStd = 'c++20', defines = [] }) {
  const csrc = join(pkgDir, 'csrc');
  const pkg = JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8'));
  const outDir = join(pkgDir, 'build');
  const name = `${baseName}-${process.platform}-${process.arch}-v${pkg.version}.node`;
  const skip = (reason) => {
    console.log(`build:native: skipped (${reason})`);
    return 0;
  };

  if (!existsSync(join(csrc, 'addon.cc'))) return skip('no csrc/addon.cc');
  const nvcc = process.env.NVCC ?? 'nvcc';
  const probe = spawnSync(nvcc, ['--version'], { encoding: 'utf8' });
  if (probe.error || probe.status !== 0)
    return skip(`nvcc not found (${nvcc}); install the CUDA toolkit to build the addon`);
  const nodeInclude = [join(dirname(process.execPath), '..', 'include', 'node'), '/usr/include/node'].find(
    (d) => existsSync(join(d, 'node_api.h')),
  );
  if (!nodeInclude) return skip('Node headers (node_api.h) not found next to node or in /usr/include/node');
  const require = createRequire(join(pkgDir, 'package.json'));
  let napiInclude = '';
  for (const from of [pkgDir, dirname(new URL(import.meta.url).pathname)]) {
    try {
      napiInclude = dirname(require.resolve('node-addon-api/package.json', { paths: [from] }));
      break;
    } catch {}
  }
  if (!napiInclude || !existsSync(join(napiInclude, 'napi.h')))
    return skip('node-addon-api headers not found');
  const nvccPath = spawnSync('which', [nvcc], { encoding: 'utf8' }).stdout?.trim() || nvcc;
  const cudaInclude = [
    process.env.CUDA_HOME && join(process.env.CUDA_HOME, 'include'),
    join(dirname(nvccPath), '..', 'include'),
    '/usr/local/cuda/include',
  ].find((d) => d && existsSync(join(d, 'cuda_runtime.h')));
  if (!cudaInclude) return skip('cuda_runtime.h not found (set CUDA_HOME)');

  const list = (v) =>
    v
      .split(',')
      .map((a) => a.trim())
      .filter(Boolean);
  const archs = list(process.env.Q_CUDA_ARCHS ?? '80,90a');
  const ptx = list(process.env.Q_CUDA_PTX ?? '90');
  const gencode = [
    ...archs.map((a) => `-gencode=arch=compute_${a},code=sm_${a}`),
    ...ptx.map((a) => `-gencode=arch=compute_${a},code=compute_${a}`),
  ];
  const sm90aOnly = ['-gencode=arch=compute_90a,code=sm_90a'];
  const sources = walk(csrc).filter((f) => f.endsWith('.cc') || f.endsWith('.cu'));
  const objDir = mkdtempSync(join(tmpdir(), `${baseName}-obj-`));
  mkdirSync(outDir, { recursive: true });
  const defs = [`Q_ADDON_VERSION="${pkg.version}"`, ...defines].map((d) => `-D${d}`);
  const jobs = sources.map((src) => {
    const obj = join(objDir, `${relative(csrc, src).replaceAll('/', '_')}.o`);
    if (src.endsWith('.cu')) {
      const only90a = /Compiled for sm_90a only/.test(readFileSync(src, 'utf8').slice(0, 4000));
      const args = ['-O3', `-std=${cudaStd}`, `-I${csrc}`, ...defs, ...(only90a ? sm90aOnly : gencode)];
      args.push('-Xcompiler', '-fPIC', '-Xptxas', '-v', '-lineinfo', '-c', src, '-o', obj);
      return { src, obj, cmd: nvcc, args };
    }
    const args = ['-O3', '-std=c++17', `-I${csrc}`, ...defs, '-fPIC', '-fvisibility=hidden'];
    args.push('-DNAPI_VERSION=8', '-DNAPI_CPP_EXCEPTIONS', '-DNODE_ADDON_API_DISABLE_DEPRECATED');
    args.push(`-I${napiInclude}`, `-I${nodeInclude}`, `-I${cudaInclude}`, '-c', src, '-o', obj);
    return { src, obj, cmd: process.env.CXX ?? 'g++', args };
  });

  const t0 = Date.now();
  const verbose = Boolean(process.env.Q_BUILD_VERBOSE);
  const queue = [...jobs];
  let failed = false;
  await Promise.all(
    Array.from({ length: Number(process.env.Q_BUILD_JOBS ?? 2) }, async () => {
      for (let j = queue.shift(); j; j = queue.shift()) {
        const r = await run(j.cmd, j.args);
        console.log(
          `build:native: ${relative(pkgDir, j.src)} ${r.code === 0 ? 'ok' : 'FAILED'} (${r.s.toFixed(1)} s)`,
        );
        const lines = r.code !== 0 ? [r.log] : notable(r.log, verbose);
        if (lines.length) console.log(lines.join('\n'));
        if (r.code !== 0) failed = true;
      }
    }),
  );
  try {
    if (failed) {
      console.error('build:native: compilation failed');
      return 1;
    }
    const tmp = join(outDir, `${name}.tmp`);
    const link = await run(nvcc, [
      '-shared',
      '-cudart',
      'static',
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
      return 1;
    }
    renameSync(tmp, join(outDir, name));
    const s = ((Date.now() - t0) / 1000).toFixed(1);
    console.log(
      `build:native: built build/${name} for sm_${archs.join(', sm_')}${ptx.length ? ` + compute_${ptx.join(', compute_')} PTX` : ''} in ${s} s`,
    );
    return 0;
  } finally {
    rmSync(objDir, { recursive: true, force: true });
  }
}
