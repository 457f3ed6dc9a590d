import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Rng } from '../src/random';

/** A seeded uniform source in [0, 1), so every run draws the same "fresh" numbers. */
export function rng(seed: number): () => number {
  const r = new Rng(seed);
  return () => r.next();
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

/** Bytes of a llama2.c tokenizer file: int32 max_token_length, then per piece f32 score, int32 length, bytes. */
export function tokenizerFile(pieces: (string | Uint8Array)[], scores: number[], maxLen?: number): Buffer {
  const enc = pieces.map((p) => (typeof p === 'string' ? Buffer.from(p, 'utf8') : Buffer.from(p)));
  const parts: Buffer[] = [];
  const head = Buffer.alloc(4);
  head.writeInt32LE(maxLen ?? Math.max(1, ...enc.map((b) => b.length)), 0);
  parts.push(head);
  enc.forEach((b, i) => {
    const h = Buffer.alloc(8);
    h.writeFloatLE(scores[i] as number, 0);
    h.writeInt32LE(b.length, 4);
    parts.push(h, b);
  });
  return Buffer.concat(parts);
}

/**
 * A llama2.c-style vocabulary: <unk>, BOS, EOS, the 256 byte pieces, then merges over a small alphabet
 * with scores drawn from a few values so that equal scores (ties) are common.
 */
export function syntheticVocab(seed: number, merges = 120): { pieces: string[]; scores: number[] } {
  const r = rng(seed);
  const pieces = ['<unk>', '\n<s>\n', '\n</s>\n'];
  const scores = [0, 0, 0];
  for (let b = 0; b < 256; b++) {
    pieces.push(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
    scores.push(0);
  }
  const alphabet = [' ', 'a', 'b', 'c', 'é', '\n'];
  for (const a of alphabet) {
    pieces.push(a);
    scores.push(0);
  }
  const seen = new Set(pieces);
  while (pieces.length < 3 + 256 + alphabet.length + merges) {
    const len = 2 + Math.floor(r() * 4);
    let s = '';
    for (let i = 0; i < len; i++) s += alphabet[Math.floor(r() * alphabet.length)];
    if (seen.has(s)) continue;
    seen.add(s);
    pieces.push(s);
    scores.push(-Math.floor(r() * 6));
  }
  return { pieces, scores };
}
