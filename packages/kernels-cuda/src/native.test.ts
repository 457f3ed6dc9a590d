import { readFileSync } from 'node:fs';
import { isQError } from '@q/core';
import { describe, expect, it } from 'vitest';
import { BINDING_FUNCTIONS } from './binding';
import {
  type AddonEnvironment,
  addonFileName,
  gpuStatus,
  isAvailable,
  platformPackageName,
  resolveAddon,
  VERSION,
} from './native';

function fakeBinding(version = VERSION): Record<string, unknown> {
  return { ...Object.fromEntries(BINDING_FUNCTIONS.map((f) => [f, () => undefined])), version };
}

function env(over: Partial<AddonEnvironment> = {}): AddonEnvironment {
  return {
    env: {},
    platform: 'linux',
    arch: 'x64',
    buildDir: '/pkg/build/',
    exists: () => false,
    load: () => {
      throw new Error('should not load');
    },
    resolvePackage: (n) => {
      throw new Error(`Cannot find module '${n}'`);
    },
    ...over,
  };
}

describe('addon loader', () => {
  it('names the local build with platform, arch and version', () => {
    expect(addonFileName('linux', 'x64')).toBe(`q_cuda-linux-x64-v${VERSION}.node`);
    expect(platformPackageName('linux', 'x64')).toBe('@q/kernels-cuda-linux-x64-gnu');
  });

  it('keeps VERSION equal to package.json', () => {
    const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as {
      version: string;
    };
    expect(VERSION).toBe(pkg.version);
  });

  it('reports every path tried, why each failed, and possible solutions', () => {
    const r = resolveAddon(env({ env: { Q_CUDA_ADDON: '/custom/q.node' } }));
    expect('error' in r).toBe(true);
    if (!('error' in r)) return;
    expect(isQError(r.error, 'E_NATIVE_MISSING')).toBe(true);
    const m = r.error.message;
    expect(m).toContain('/custom/q.node: file does not exist');
    expect(m).toContain(`/pkg/build/q_cuda-linux-x64-v${VERSION}.node: file does not exist`);
    expect(m).toContain('@q/kernels-cuda-linux-x64-gnu: not installed');
    expect(m).toContain('Possible solutions:');
    expect(m).toContain('build:native');
    expect(r.attempts.map((a) => a.source)).toEqual(['env Q_CUDA_ADDON', 'local build', 'platform package']);
  });

  it('prefers the Q_CUDA_ADDON override', () => {
    const b = fakeBinding();
    const r = resolveAddon(env({ env: { Q_CUDA_ADDON: '/o.node' }, exists: () => true, load: () => b }));
    expect('binding' in r && r.path).toBe('/o.node');
  });

  it('falls back from a broken override to the local build', () => {
    const b = fakeBinding();
    const r = resolveAddon(
      env({
        env: { Q_CUDA_ADDON: '/o.node' },
        exists: () => true,
        load: (p) => {
          if (p === '/o.node') throw new Error('/o.node: invalid ELF header');
          return b;
        },
      }),
    );
    expect('binding' in r && r.path).toBe(`/pkg/build/q_cuda-linux-x64-v${VERSION}.node`);
    expect(r.attempts[0]?.error).toContain('invalid ELF header');
  });

  it('uses the platform package when there is no local build', () => {
    const b = fakeBinding();
    const r = resolveAddon(
      env({
        exists: (p) => p === '/nm/pkg/q.node',
        resolvePackage: () => '/nm/pkg/q.node',
        load: () => b,
      }),
    );
    expect('binding' in r && r.path).toBe('/nm/pkg/q.node');
  });

  it('diagnoses a C library that is too old', () => {
    const r = resolveAddon(
      env({
        exists: () => true,
        load: () => {
          throw new Error("/lib/x86_64-linux-gnu/libc.so.6: version `GLIBC_2.34' not found");
        },
      }),
    );
    expect('error' in r && r.error.message).toMatch(/GLIBC_2\.34[\s\S]*C library is too old/);
  });

  it('rejects a stale addon that lacks functions, naming them', () => {
    const r = resolveAddon(
      env({ exists: (p) => p.endsWith('.node'), load: () => ({ deviceCount: () => 0 }) }),
    );
    expect('error' in r && r.error.message).toContain('lacks');
    expect('error' in r && r.error.message).toContain('gemmW4A8');
  });

  it('rejects an addon built for another version, naming both', () => {
    const r = resolveAddon(env({ exists: (p) => p.endsWith('.node'), load: () => fakeBinding('0.0.1') }));
    expect('error' in r && r.error.message).toContain(
      `the addon was built as version 0.0.1, but this @q/kernels-cuda is ${VERSION}`,
    );
  });

  it('says when the platform is not supported', () => {
    const r = resolveAddon(env({ platform: 'darwin', arch: 'arm64' }));
    expect('error' in r && r.error.message).toContain('built for linux x64 only; this is darwin arm64');
  });

  it('gpuStatus and isAvailable never throw and give a reason', () => {
    const s = gpuStatus();
    expect(typeof s.available).toBe('boolean');
    expect(s.reason.length).toBeGreaterThan(0);
    expect(isAvailable()).toBe(s.available);
    if (!s.available) console.log(`gpuStatus here: ${s.reason}`);
  });
});
