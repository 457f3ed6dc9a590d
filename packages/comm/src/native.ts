/**
 * The one loader of the @q/comm addon: the `Q_COMM_ADDON` override, then the local build
 * `build/q_comm-<platform>-<arch>-v<version>.node`. If neither loads, one E_NATIVE_MISSING error lists every path
 * tried, why it failed, and what usually fixes it. Loading never touches the GPU (cudart is linked statically), and
 * NCCL is opened only when a communicator is created.
 */
import { existsSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Q_ERROR_CODES, QError, type QErrorCode } from '@q/core';
import { COMM_BINDING_FUNCTIONS, type CommBinding } from './binding';

/** The package version; the local build's file name carries it so a stale build is never picked up. */
export const COMM_VERSION = '0.1.0';

/**
 * File name of the local build for a platform.
 *
 * @example
 * ```ts
 * commAddonFileName('linux', 'x64') // 'q_comm-linux-x64-v0.1.0.node'
 * ```
 */
export function commAddonFileName(platform: string = process.platform, arch: string = process.arch): string {
  return `q_comm-${platform}-${arch}-v${COMM_VERSION}.node`;
}

/** One place the loader looked, and why it did not load from there. */
export interface CommAddonAttempt {
  source: 'env Q_COMM_ADDON' | 'local build';
  path: string;
  error: string;
}

/** What the loader needs from the outside world; tests replace it to exercise every failure. */
export interface CommAddonEnvironment {
  env: Record<string, string | undefined>;
  platform: string;
  arch: string;
  buildDir: string;
  exists(path: string): boolean;
  load(path: string): unknown;
}

function defaultEnvironment(): CommAddonEnvironment {
  const require = createRequire(import.meta.url);
  return {
    env: process.env,
    platform: process.platform,
    arch: process.arch,
    // src/ and dist/ both sit beside build/.
    buildDir: fileURLToPath(new URL('../build/', import.meta.url)),
    exists: existsSync,
    load: (p) => require(p),
  };
}

/**
 * Tries every source in order; returns the binding or a diagnosing E_NATIVE_MISSING QError.
 *
 * @example
 * ```ts
 * const r = resolveCommAddon();
 * if ('error' in r) console.error(r.error.message);
 * ```
 */
export function resolveCommAddon(
  environment: CommAddonEnvironment = defaultEnvironment(),
): { binding: CommBinding; path: string } | { error: QError; attempts: CommAddonAttempt[] } {
  const attempts: CommAddonAttempt[] = [];
  const tryPath = (source: CommAddonAttempt['source'], path: string): CommBinding | undefined => {
    if (!environment.exists(path)) {
      attempts.push({ source, path, error: 'file does not exist' });
      return undefined;
    }
    try {
      const mod = environment.load(path) as Record<string, unknown>;
      const missing = COMM_BINDING_FUNCTIONS.filter((f) => typeof mod?.[f] !== 'function');
      if (missing.length > 0) {
        attempts.push({
          source,
          path,
          error: `the addon lacks ${missing.join(', ')} (a build of another @q/comm version?)`,
        });
        return undefined;
      }
      return mod as unknown as CommBinding;
    } catch (e) {
      attempts.push({
        source,
        path,
        error: (e instanceof Error ? e.message : String(e)).split('\n')[0] ?? '',
      });
      return undefined;
    }
  };
  const override = environment.env.Q_COMM_ADDON;
  if (override) {
    const b = tryPath('env Q_COMM_ADDON', override);
    if (b) return { binding: b, path: override };
  }
  const local = join(environment.buildDir, commAddonFileName(environment.platform, environment.arch));
  const b = tryPath('local build', local);
  if (b) return { binding: b, path: local };
  const all = attempts.map((a) => a.error).join('\n');
  const solutions: string[] = [];
  if (environment.platform !== 'linux' || environment.arch !== 'x64') {
    solutions.push(
      `q's communication addon is built for linux x64 only; this is ${environment.platform} ${environment.arch}.`,
    );
  }
  if (/GLIBC|GLIBCXX/.test(all))
    solutions.push(
      'The C library is too old for this build: rebuild it here with `pnpm --filter @q/comm build:native`.',
    );
  if (/ELF/.test(all))
    solutions.push('The .node file was built for another platform: rebuild it on this machine.');
  solutions.push(
    `Build the addon: \`pnpm --filter @q/comm build:native\` (needs the CUDA toolkit), which writes build/${commAddonFileName(environment.platform, environment.arch)}.`,
  );
  solutions.push('Point Q_COMM_ADDON at a q_comm .node file built for this version.');
  solutions.push('Without a GPU, use allReduceThreads (worker threads) for the same results on the CPU.');
  const message = [
    `Expected the q communication addon for ${environment.platform}-${environment.arch} v${COMM_VERSION} but none could be loaded. Tried:`,
    ...attempts.map((a) => `  - ${a.source}: ${a.path}: ${a.error}`),
    'Possible solutions:',
    ...solutions.map((s) => `  - ${s}`),
  ].join('\n');
  return { error: new QError('E_NATIVE_MISSING', message, { details: { attempts } }), attempts };
}

let cached: ReturnType<typeof resolveCommAddon> | undefined;

/**
 * The loaded addon, with every thrown error turned into a QError (code from the message prefix).
 *
 * @example
 * ```ts
 * const addon = loadCommNative();
 * addon.deviceCount();
 * ```
 */
export function loadCommNative(): CommBinding {
  cached ??= resolveCommAddon();
  if ('error' in cached) throw cached.error;
  return wrapErrors(cached.binding);
}

/**
 * True when the addon loads (a GPU may still be missing).
 *
 * @example
 * ```ts
 * if (!isCommAddonAvailable()) console.log('using the CPU implementation');
 * ```
 */
export function isCommAddonAvailable(): boolean {
  cached ??= resolveCommAddon();
  return !('error' in cached);
}

let wrapped: CommBinding | undefined;
function wrapErrors(b: CommBinding): CommBinding {
  if (wrapped) return wrapped;
  const out: Record<string, unknown> = { addonVersion: b.addonVersion };
  for (const name of COMM_BINDING_FUNCTIONS) {
    const fn = (b as unknown as Record<string, (...a: unknown[]) => unknown>)[name] as (
      ...a: unknown[]
    ) => unknown;
    out[name] = (...args: unknown[]) => {
      try {
        return fn(...args);
      } catch (e) {
        throw toQError(e, name);
      }
    };
  }
  wrapped = out as unknown as CommBinding;
  return wrapped;
}

/**
 * Turns an addon error ("E_CUDA: ...") into a QError.
 *
 * @example
 * ```ts
 * toQError(new Error('E_CUDA: cudaMalloc failed'), 'alloc').code // 'E_CUDA'
 * ```
 */
export function toQError(e: unknown, where: string): QError {
  if (e instanceof QError) return e;
  const msg = e instanceof Error ? e.message : String(e);
  const m = /^(E_[A-Z_]+): ([\s\S]*)$/.exec(msg);
  const code =
    m && (Q_ERROR_CODES as readonly string[]).includes(m[1] as string) ? (m[1] as QErrorCode) : 'E_INTERNAL';
  return new QError(code, `${where}: ${m ? m[2] : msg}`, { cause: e });
}

/**
 * Candidate paths of libnccl.so.2: Q_NCCL_LIB, the dynamic loader's search, then NCCL wheels of Python
 * environments (nvidia/nccl/lib) in the usual places.
 *
 * @example
 * ```ts
 * ncclCandidates({ Q_NCCL_LIB: '/opt/nccl/libnccl.so.2' })[0] // '/opt/nccl/libnccl.so.2'
 * ```
 */
export function ncclCandidates(env: Record<string, string | undefined> = process.env): string[] {
  const out: string[] = [];
  if (env.Q_NCCL_LIB) out.push(env.Q_NCCL_LIB);
  out.push('libnccl.so.2');
  out.push(
    '/opt/torch/.venv/lib/python3.12/site-packages/nvidia/nccl/lib/libnccl.so.2',
    '/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib/libnccl.so.2',
    '/usr/lib/x86_64-linux-gnu/libnccl.so.2',
  );
  const roots = [
    '/opt',
    '/usr/local/lib',
    '/usr/lib',
    env.VIRTUAL_ENV ?? '',
    env.HOME ? join(env.HOME, '.local/lib') : '',
  ].filter(Boolean);
  const seen = new Set<string>();
  // Python wheels put NCCL under site-packages/nvidia/<nccl|cu12|cu13>/lib; walk only folders that can lead there.
  const visit = (dir: string, depth: number, inNvidia: boolean) => {
    if (depth > 10 || seen.has(dir)) return;
    seen.add(dir);
    let entries: string[];
    try {
      entries = readdirSync(dir);
    } catch {
      return;
    }
    if (entries.includes('libnccl.so.2')) out.push(join(dir, 'libnccl.so.2'));
    for (const e of entries) {
      const next = inNvidia || e === 'nvidia';
      if (
        next ||
        /^(python3[\d.]*|site-packages|dist-packages|lib|lib64|\.venv|venv)$/.test(e) ||
        (depth === 0 && !e.startsWith('.'))
      ) {
        visit(join(dir, e), depth + 1, next);
      }
    }
  };
  for (const r of roots) visit(r, 0, false);
  return [...new Set(out)];
}
