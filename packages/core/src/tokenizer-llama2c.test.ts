import * as fs from 'node:fs';
import * as path from 'node:path';
import { isQError, Llama2cTokenizer, parseLlama2cTokenizer, readLlama2cTokenizer } from '@q/core';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { hasShared, rng, sharedDir, syntheticVocab, tmpDir, tokenizerFile } from '../test/helpers';

/**
 * Reference: run.c's `encode` transcribed literally (quadratic merge loop over an array), working on
 * byte strings in latin1 so that every byte is one char.
 */
function refEncode(
  pieces: string[],
  scores: Float32Array,
  text: string,
  bos: boolean,
  eos: boolean,
): number[] {
  const keys = pieces.map((p) => Buffer.from(p, 'utf8').toString('latin1'));
  const table = new Map<string, number>();
  for (let i = keys.length - 1; i >= 0; i--) table.set(keys[i] as string, i);
  const lookup = (s: string): number => table.get(s) ?? -1;
  const bytes = Buffer.from(text, 'utf8');
  const tokens: number[] = [];
  if (bos) tokens.push(1);
  if (bytes.length > 0) tokens.push(lookup(' '));
  let buf: number[] = [];
  for (let c = 0; c < bytes.length; c++) {
    if (((bytes[c] as number) & 0xc0) !== 0x80) buf = [];
    buf.push(bytes[c] as number);
    const next = c + 1 < bytes.length ? (bytes[c + 1] as number) : 0;
    if ((next & 0xc0) === 0x80 && buf.length < 4) continue;
    const id = lookup(Buffer.from(buf).toString('latin1'));
    if (id !== -1) tokens.push(id);
    else for (const b of buf) tokens.push(b + 3);
    buf = [];
  }
  for (;;) {
    let bestScore = Math.fround(-1e10);
    let bestId = -1;
    let bestIdx = -1;
    for (let i = 0; i < tokens.length - 1; i++) {
      const id = lookup((keys[tokens[i] as number] as string) + (keys[tokens[i + 1] as number] as string));
      if (id !== -1 && (scores[id] as number) > bestScore) {
        bestScore = scores[id] as number;
        bestId = id;
        bestIdx = i;
      }
    }
    if (bestIdx === -1) break;
    tokens.splice(bestIdx, 2, bestId);
  }
  if (eos) tokens.push(2);
  return tokens;
}

function errorOf(fn: () => unknown): Error & { code?: string } {
  try {
    fn();
  } catch (e) {
    return e as Error;
  }
  throw new Error('expected a throw');
}

const textArb = fc
  .array(fc.constantFrom('a', 'b', 'c', ' ', 'é', '\n', 'z', '😀', 'ab', ' a', 'ß', '\u00a0'), {
    maxLength: 40,
  })
  .map((a) => a.join(''));

describe('llama2.c tokenizer', () => {
  const dir = tmpDir();
  const { pieces, scores } = syntheticVocab(5);
  const file = path.join(dir, 'tok.bin');
  fs.writeFileSync(file, tokenizerFile(pieces, scores));
  const tok = readLlama2cTokenizer(file);

  it('reads pieces, scores and sizes', () => {
    expect(tok.vocabSize).toBe(pieces.length);
    expect(tok.bosId).toBe(1);
    expect(tok.eosId).toBe(2);
    expect(tok.pieces).toEqual(pieces);
    expect(Array.from(tok.scores)).toEqual(scores.map(Math.fround));
    expect(readLlama2cTokenizer(file, 100).vocabSize).toBe(100);
  });

  it('encodes exactly as run.c (heap merge equals the quadratic loop, ties included)', () => {
    fc.assert(
      fc.property(textArb, fc.boolean(), fc.boolean(), (text, bos, eos) => {
        expect(tok.encode(text, { bos, eos })).toEqual(refEncode(pieces, tok.scores, text, bos, eos));
      }),
      { numRuns: 300, seed: 42 },
    );
  });

  it('encodes several vocabularies with long texts as run.c does', () => {
    for (let seed = 1; seed <= 5; seed++) {
      const v = syntheticVocab(seed, 200);
      const t = new Llama2cTokenizer(
        v.pieces.map((p) => Buffer.from(p, 'utf8')),
        Float32Array.from(v.scores),
      );
      const r = rng(seed);
      const alphabet = ['a', 'b', 'c', ' ', 'é', '\n'];
      let text = '';
      for (let i = 0; i < 400; i++) text += alphabet[Math.floor(r() * alphabet.length)];
      expect(t.encode(text, { bos: true })).toEqual(refEncode(v.pieces, t.scores, text, true, false));
    }
  });

  it('adds the dummy prefix only to non-empty text and falls back to bytes + 3', () => {
    expect(tok.encode('', { bos: true, eos: true })).toEqual([1, 2]);
    expect(tok.encode('')).toEqual([]);
    const ids = tok.encode('z');
    expect(ids).toEqual([tok.pieceId(' '), 'z'.charCodeAt(0) + 3]);
    expect(tok.encode('😀')).toEqual([tok.pieceId(' '), ...Buffer.from('😀').map((b) => b + 3)]);
  });

  it('decodes what it encodes, joining multi-byte characters split over byte tokens', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'grapheme', maxLength: 30 }), (text) => {
        expect(tok.decode(tok.encode(text, { bos: true, eos: true }))).toBe(text);
      }),
      { numRuns: 300, seed: 7 },
    );
  });

  it('decodePiece strips the leading space after BOS and maps <0xXX> to the raw byte', () => {
    const v = syntheticVocab(1, 0);
    const tok = new Llama2cTokenizer(
      [...v.pieces, ' a'].map((p) => Buffer.from(p)),
      Float32Array.from([...v.scores, 0]),
    );
    const sp = tok.pieceId(' a');
    expect(sp).toBeGreaterThan(0);
    expect(Buffer.from(tok.decodePiece(1, sp)).toString()).toBe('a');
    expect(Buffer.from(tok.decodePiece(5, sp)).toString()).toBe(' a');
    expect(Array.from(tok.decodePiece(5, 3 + 0xc3))).toEqual([0xc3]);
    const d = tok.streamDecoder();
    const ids = tok.encode('é😀z', { bos: true });
    let s = '';
    for (const id of ids) s += d.push(id);
    expect(s + d.flush()).toBe('é😀z');
    expect(
      isQError(
        errorOf(() => tok.decode([tok.vocabSize])),
        'E_ARG',
      ),
    ).toBe(true);
  });

  it('rejects a missing file with E_TOKENIZER', () => {
    expect(
      isQError(
        errorOf(() => readLlama2cTokenizer(path.join(dir, 'nope.bin'))),
        'E_TOKENIZER',
      ),
    ).toBe(true);
  });

  it('rejects a truncated file with E_FORMAT naming piece and offset', () => {
    const b = tokenizerFile(pieces, scores);
    const e = errorOf(() => parseLlama2cTokenizer(b.subarray(0, b.length - 3), undefined, 'cut.bin'));
    expect(isQError(e, 'E_FORMAT')).toBe(true);
    expect(e.message).toMatch(/piece \d+ at offset \d+ of llama2\.c tokenizer cut\.bin/);
  });

  it('rejects a negative piece length', () => {
    const b = tokenizerFile(['<unk>', 'a'], [0, 0]);
    b.writeInt32LE(-5, 4 + 4);
    const e = errorOf(() => parseLlama2cTokenizer(b));
    expect(isQError(e, 'E_FORMAT')).toBe(true);
    expect(e.message).toContain('received -5');
  });

  it('rejects a piece longer than max_token_length', () => {
    const e = errorOf(() => parseLlama2cTokenizer(tokenizerFile(['abcdef'], [0], 3)));
    expect(isQError(e, 'E_FORMAT')).toBe(true);
  });

  it('rejects a non-positive max_token_length and a file too short for the header', () => {
    expect(
      isQError(
        errorOf(() => parseLlama2cTokenizer(tokenizerFile(['a'], [0], 0))),
        'E_FORMAT',
      ),
    ).toBe(true);
    expect(
      isQError(
        errorOf(() => parseLlama2cTokenizer(new Uint8Array(2))),
        'E_FORMAT',
      ),
    ).toBe(true);
  });

  it('rejects a vocab size larger than the file holds', () => {
    const e = errorOf(() => readLlama2cTokenizer(file, pieces.length + 1));
    expect(isQError(e, 'E_FORMAT')).toBe(true);
    expect(e.message).toContain(`${pieces.length + 1} pieces expected`);
  });

  it('throws E_TOKENIZER when byte fallback needs pieces the vocabulary lacks', () => {
    const small = parseLlama2cTokenizer(tokenizerFile(['<unk>', '\n<s>\n', '\n</s>\n', ' '], [0, 0, 0, 0]));
    expect(
      isQError(
        errorOf(() => small.encode('x')),
        'E_TOKENIZER',
      ),
    ).toBe(true);
  });
});

describe.skipIf(!hasShared)('tok512.bin (real data)', () => {
  if (!hasShared) console.warn(`skipping tok512.bin tests: ${sharedDir} is absent`);
  const tokPath = path.join(sharedDir, 'models/stories260K/tok512.bin');
  const textPath = path.join(sharedDir, 'data/tinystories-valid-sample.txt');

  it('has 512 pieces with byte pieces at 3..258', () => {
    const tok = readLlama2cTokenizer(tokPath, 512);
    expect(tok.vocabSize).toBe(512);
    expect(tok.maxTokenLength).toBe(7);
    for (let b = 0; b < 256; b++) {
      expect(tok.pieces[b + 3]).toBe(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
    }
  });

  it('decodes what it encodes for every line of the TinyStories sample', () => {
    const tok = readLlama2cTokenizer(tokPath, 512);
    const lines = fs.readFileSync(textPath, 'utf8').split('\n');
    expect(lines.length).toBeGreaterThan(10);
    for (const line of lines) {
      const ids = tok.encode(line, { bos: true });
      expect(ids[0]).toBe(1);
      expect(tok.decode(ids)).toBe(line);
    }
  });

  it('encodes the sample as run.c does, line by line against the quadratic reference', () => {
    const tok = readLlama2cTokenizer(tokPath, 512);
    const lines = fs.readFileSync(textPath, 'utf8').split('\n');
    for (const line of lines) {
      expect(tok.encode(line, { bos: true })).toEqual(
        refEncode([...tok.pieces], tok.scores, line, true, false),
      );
    }
  });

  it('encodes the whole 30 KB sample as one stream and decodes it back', () => {
    const tok = readLlama2cTokenizer(tokPath, 512);
    const text = fs.readFileSync(textPath, 'utf8');
    const ids = tok.encode(text, { bos: true, eos: true });
    expect(ids.length).toBeLessThan(Buffer.byteLength(text));
    expect(tok.decode(ids)).toBe(text);
  });

  it('decodes the published greedy continuation of stories260K to its text', () => {
    const tok = readLlama2cTokenizer(tokPath, 512);
    const ids = [
      1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267, 337,
      410, 408, 419, 292, 411, 322, 265, 282, 295, 433, 426, 385, 328, 432, 358, 394, 261, 370, 432, 352,
    ];
    expect(
      tok
        .decode(ids)
        .startsWith(
          'Once upon a time, there was a little girl named Lily. She loved to play outside in the park',
        ),
    ).toBe(true);
  });
});
