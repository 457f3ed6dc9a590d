/**
 * The one loader of the CUDA addon. Order: the `Q_CUDA_ADDON` override, the local build
 * `build/q_cuda-<platform>-<arch>-v<version>.node`, then the prebuilt platform package
 * `@q/kernels-cuda-<platform>-<arch>-gnu`. If none loads, one `E_NATIVE_MISSING` error lists every path tried,
 * why each failed, and what usually fixes it. Loading never touches the GPU, so it succeeds on machines
 * without one; `gpuStatus()` says whether a GPU is usable and why not.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { QError } from '@q/core';
import pkg from '../package.json';
import { BINDING_FUNCTIONS, type NativeBinding, type NativeDeviceProperties } from './binding';

/**
 * The package version, from package.json (inlined by the bundler at build time, so no path needs to resolve at
 * run time); the local build's file name and the addon itself carry it, so a stale build is never picked up.
 */
export const VERSION: string = pkg.version;

/** One place the loader looked, and why it did not load from there. */
export interface AddonAttempt {
  source: 'env Q_CUDA_ADDON' | 'local build' | 'platform package';
  path: string;
  error: string;
}

/**
 * File name of the local build for a platform.
 *
 * @example
 * ```ts
 * addonFileName('linux', 'x64') // 'q_cuda-linux-x64-v0.1.0.node'
 * ```
 */
export function addonFileName(platform: string = process.platform, arch: string = process.arch): string {
  return `q_cuda-${platform}-${arch}-v${VERSION}.node`;
}

/**
 * Name of the prebuilt platform package, e.g. `@q/kernels-cuda-linux-x64-gnu`.
 *
 * @example
 * ```ts
 * platformPackageName('linux', 'x64') // '@q/kernels-cuda-linux-x64-gnu'
 * ```
 */
export function platformPackageName(
  platform: string = process.platform,
  arch: string = process.arch,
): string {
  return `@q/kernels-cuda-${platform}-${arch}${platform === 'linux' ? '-gnu' : ''}`;
}

/** What `resolveAddon` needs from the outside world; tests replace it to exercise every failure. */
export interface AddonEnvironment {
  env: Record<string, string | undefined>;
  platform: string;
  arch: string;
  /** Absolute path of the package's build/ folder. */
  buildDir: string;
  exists(path: string): boolean;
  /** Loads a .node file (Node's require). */
  load(path: string): unknown;
  /** Resolves a package's main file (the platform package's is its .node file), or throws. */
  resolvePackage(name: string): string;
}

function defaultEnvironment(): AddonEnvironment {
  const require = createRequire(import.meta.url);
  return {
    env: process.env,
    platform: process.platform,
    arch: process.arch,
    buildDir: fileURLToPath(new URL('../build/', import.meta.url)),
    exists: existsSync,
    load: (p) => require(p),
    resolvePackage: (n) => require.resolve(n),
  };
}

function checkBinding(mod: unknown): string | undefined {
  if (typeof mod !== 'object' || mod === null) return 'the file did not export an object';
  const missing = BINDING_FUNCTIONS.filter((f) => typeof (mod as Record<string, unknown>)[f] !== 'function');
  if (missing.length > 0)
    return `the addon lacks ${missing.join(', ')} (a build from another version of @q/kernels-cuda?)`;
  const version = (mod as Record<string, unknown>).version;
  if (version !== VERSION)
    return `the addon was built as version ${String(version)}, but this @q/kernels-cuda is ${VERSION}`;
  return undefined;
}

function errorText(e: unknown): string {
  const m = e instanceof Error ? e.message : String(e);
  return m.split('\n')[0] ?? m;
}

function solutions(attempts: readonly AddonAttempt[], platform: string, arch: string): string[] {
  const all = attempts.map((a) => a.error).join('\n');
  const s: string[] = [];
  if (platform !== 'linux' || arch !== 'x64')
    s.push(`q's CUDA addon is built for linux x64 only; this is ${platform} ${arch}.`);
  if (/GLIBC|GLIBCXX/.test(all))
    s.push(
      'The C library is too old for the prebuilt addon: build it here with `pnpm build:native` (needs nvcc).',
    );
  if (/wrong ELF class|invalid ELF header|cannot open shared object file: Exec format/.test(all))
    s.push('The .node file was built for another platform or architecture: rebuild it on this machine.');
  if (/libcuda|libcudart/.test(all))
    s.push(
      'A CUDA library was not found: install the NVIDIA driver (the addon links the CUDA runtime statically).',
    );
  s.push(
    `Build the addon from source: \`pnpm --filter @q/kernels-cuda build:native\` (needs the CUDA toolkit, nvcc ≥ 12.4), which writes build/${addonFileName(platform, arch)}.`,
  );
  s.push(
    `Install the prebuilt binary package ${platformPackageName(platform, arch)} (same version: ${VERSION}).`,
  );
  s.push('Point Q_CUDA_ADDON at a q_cuda .node file built for this version.');
  return s;
}

/**
 * Tries every source in order and returns the first binding that loads, or a diagnosing QError.
 *
 * @example
 * ```ts
 * const r = resolveAddon();
 * if ('error' in r) console.error(r.error.message);
 * ```
 */
export function resolveAddon(
  environment: AddonEnvironment = defaultEnvironment(),
):
  | { binding: NativeBinding; path: string; attempts: AddonAttempt[] }
  | { error: QError; attempts: AddonAttempt[] } {
  const { env, platform, arch } = environment;
  const attempts: AddonAttempt[] = [];
  const tryPath = (source: AddonAttempt['source'], path: string): NativeBinding | undefined => {
    if (!environment.exists(path)) {
      attempts.push({ source, path, error: 'file does not exist' });
      return undefined;
    }
    try {
      const mod = environment.load(path);
      const bad = checkBinding(mod);
      if (bad !== undefined) {
        attempts.push({ source, path, error: bad });
        return undefined;
      }
      return mod as NativeBinding;
    } catch (e) {
      attempts.push({ source, path, error: errorText(e) });
      return undefined;
    }
  };
  const override = env.Q_CUDA_ADDON;
  if (override !== undefined && override !== '') {
    const b = tryPath('env Q_CUDA_ADDON', override);
    if (b) return { binding: b, path: override, attempts };
  }
  const local = `${environment.buildDir.replace(/\/$/, '')}/${addonFileName(platform, arch)}`;
  const b = tryPath('local build', local);
  if (b) return { binding: b, path: local, attempts };
  const pkgName = platformPackageName(platform, arch);
  let pkgPath: string | undefined;
  try {
    pkgPath = environment.resolvePackage(pkgName);
  } catch (e) {
    attempts.push({ source: 'platform package', path: pkgName, error: `not installed (${errorText(e)})` });
  }
  if (pkgPath !== undefined) {
    const pb = tryPath('platform package', pkgPath);
    if (pb) return { binding: pb, path: pkgPath, attempts };
  }
  const lines = [
    `Expected the q CUDA addon for ${platform}-${arch} v${VERSION} but none could be loaded. Tried:`,
    ...attempts.map((a) => `  - ${a.source}: ${a.path}: ${a.error}`),
    'Possible solutions:',
    ...solutions(attempts, platform, arch).map((s) => `  - ${s}`),
  ];
  return {
    error: new QError('E_NATIVE_MISSING', lines.join('\n'), { details: { attempts } }),
    attempts,
  };
}

let cached: { binding: NativeBinding; path: string } | { error: QError } | undefined;

/**
 * The loaded addon; throws the diagnosing `E_NATIVE_MISSING` QError when it cannot be loaded.
 *
 * @example
 * ```ts
 * const addon = loadNative();
 * addon.deviceCount();
 * ```
 */
export function loadNative(): NativeBinding {
  if (cached === undefined) cached = resolveAddon();
  if ('error' in cached) throw cached.error;
  return cached.binding;
}

/**
 * Path of the loaded addon, or undefined when it did not load.
 *
 * @example
 * ```ts
 * if (isAvailable()) console.log(`addon: ${nativePath()}`);
 * ```
 */
export function nativePath(): string | undefined {
  if (cached === undefined) cached = resolveAddon();
  return 'path' in cached ? cached.path : undefined;
}

/**
 * Forgets the cached load result (tests that change Q_CUDA_ADDON call this).
 *
 * @example
 * ```ts
 * process.env.Q_CUDA_ADDON = '/opt/q/q_cuda.node';
 * resetNativeCache(); // the next call loads from the new path
 * ```
 */
export function resetNativeCache(): void {
  cached = undefined;
}

/** A CUDA device as `gpuStatus()` reports it. */
export interface GpuDevice {
  index: number;
  name: string;
  computeCapability: string;
  multiProcessorCount: number;
  totalMemoryBytes: number;
  /** False when the device is older than sm_80, which q's kernels need. */
  supported: boolean;
}

/** Whether a GPU can run q's kernels, and if not, why. Never throws. */
export interface GpuStatus {
  available: boolean;
  reason: string;
  devices: GpuDevice[];
  addonPath?: string;
  driverVersion?: number;
  runtimeVersion?: number;
}

function toDevice(p: NativeDeviceProperties): GpuDevice {
  return {
    index: p.index,
    name: p.name,
    computeCapability: `${p.major}.${p.minor}`,
    multiProcessorCount: p.multiProcessorCount,
    totalMemoryBytes: p.totalGlobalMem,
    supported: p.major >= 8,
  };
}

/**
 * Says whether the GPU part of q can run here and, if not, why (addon missing, no driver, no device, device
 * too old). Never throws.
 *
 * @example
 * ```ts
 * const s = gpuStatus();
 * if (!s.available) console.log(`GPU part skipped: ${s.reason}`);
 * ```
 */
export function gpuStatus(): GpuStatus {
  let binding: NativeBinding;
  try {
    binding = loadNative();
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    return { available: false, reason: msg.split('\n')[0] ?? msg, devices: [] };
  }
  try {
    const c = binding.deviceCount();
    const base = {
      addonPath: nativePath(),
      driverVersion: c.driverVersion,
      runtimeVersion: c.runtimeVersion,
    };
    if (c.error !== undefined) {
      // cudaDriverGetVersion reports 0 when libcuda.so.1 cannot be loaded at all: say so plainly, since the
      // runtime's own error for that case (InsufficientDriver) reads like a version problem.
      const reason = c.driverVersion
        ? `the CUDA driver is not usable: ${c.error}`
        : `no NVIDIA driver found (libcuda.so.1 could not be loaded; ${c.error})`;
      return { available: false, reason, devices: [], ...base };
    }
    if (c.count === 0) return { available: false, reason: 'no CUDA device found', devices: [], ...base };
    const devices: GpuDevice[] = [];
    for (let i = 0; i < c.count; i++) devices.push(toDevice(binding.deviceProperties(i)));
    const ok = devices.filter((d) => d.supported);
    if (ok.length === 0) {
      return {
        available: false,
        reason: `no device of compute capability 8.0 or newer (found ${devices.map((d) => `${d.name} ${d.computeCapability}`).join(', ')})`,
        devices,
        ...base,
      };
    }
    return {
      available: true,
      reason: `${ok.length} usable CUDA device(s): ${ok.map((d) => d.name).join(', ')}`,
      devices,
      ...base,
    };
  } catch (e) {
    return { available: false, reason: e instanceof Error ? e.message : String(e), devices: [] };
  }
}

/**
 * True when the addon loads and at least one supported GPU is present. Never throws.
 *
 * @example
 * ```ts
 * const y = isAvailable() ? gpuPath(x) : cpuPath(x);
 * ```
 */
export function isAvailable(): boolean {
  return gpuStatus().available;
}
