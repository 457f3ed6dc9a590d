import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

/** mulberry32: a small seeded PRNG so every run draws the same "fresh" numbers. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Uniform floats in [-1, 1) that are never exactly zero. */
export function randomFloats(n: number, seed: number): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    let v = 0;
    while (v === 0) v = Math.fround(r() * 2 - 1);
    out[i] = v;
  }
  return out;
}

export function tmpDir(prefix = 'q-core-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const sharedDir = path.resolve(repoRoot, '../shared');
export const hasShared = fs.existsSync(path.join(sharedDir, 'models/stories260K/stories260K.bin'));
