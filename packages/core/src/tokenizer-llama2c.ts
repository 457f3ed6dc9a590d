import * as fs from 'node:fs';
import { ioError } from './atomic';
import { describeValue, QError } from './errors';

/**
 * The llama2.c tokenizer (`tokenizer.bin`, `tok*.bin`): int32 max_token_length, then per token a float32
 * score, an int32 byte length and the piece's bytes. Encoding and decoding follow llama2.c's run.c.
 */

const BOS = 1;
const EOS = 2;
/** run.c starts its best-score search at -1e10 (a float), so pairs scoring at or below it never merge. */
const MIN_SCORE = Math.fround(-1e10);
const MAX_TOKENIZER_BYTES = 1 << 30;

function latin1(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('latin1');
}

export interface EncodeOptions {
  /** Prepend BOS (id 1). Default false. */
  bos?: boolean;
  /** Append EOS (id 2). Default false. */
  eos?: boolean;
}

/**
 * A llama2.c tokenizer. `encode` gives the same ids as run.c's `encode` (dummy-prefix space, UTF-8
 * codepoint lookup with byte fallback at id byte + 3, then repeated merging of the best-scoring adjacent
 * pair, leftmost on ties) in O(n log n) through a heap over a linked list of tokens.
 *
 * @example
 * ```ts
 * const tok = readLlama2cTokenizer('tok512.bin');
 * const ids = tok.encode('Once upon a time', { bos: true });
 * tok.decode(ids) // 'Once upon a time'
 * ```
 */
export class Llama2cTokenizer {
  readonly vocabSize: number;
  readonly bosId = BOS;
  readonly eosId = EOS;
  readonly maxTokenLength: number;
  /** Pieces as text (UTF-8 decoded; byte pieces stay in their `<0xXX>` spelling). */
  readonly pieces: readonly string[];
  readonly scores: Float32Array;
  /** Raw bytes of each piece. */
  readonly pieceBytes: readonly Uint8Array[];
  private readonly keys: string[];
  private readonly lookup: Map<string, number>;

  constructor(pieceBytes: readonly Uint8Array[], scores: Float32Array, maxTokenLength = 0) {
    if (scores.length !== pieceBytes.length) {
      throw new QError(
        'E_ARG',
        `Expected ${pieceBytes.length} scores for the tokenizer but received ${scores.length}`,
      );
    }
    this.vocabSize = pieceBytes.length;
    this.maxTokenLength = maxTokenLength;
    this.pieceBytes = pieceBytes;
    this.scores = scores;
    const dec = new TextDecoder();
    this.pieces = pieceBytes.map((b) => dec.decode(b));
    // Pieces are compared byte-wise as run.c does; latin1 strings map each byte to one char, exactly.
    this.keys = pieceBytes.map(latin1);
    this.lookup = new Map();
    // Duplicate pieces: the lowest id wins (run.c's bsearch order is unspecified there).
    this.keys.forEach((k, i) => {
      if (!this.lookup.has(k)) this.lookup.set(k, i);
    });
  }

  /**
   * The id of a piece given as text, or -1.
   *
   * @example
   * ```ts
   * tok.pieceId(' the') // 265 in tok512.bin
   * ```
   */
  pieceId(piece: string): number {
    return this.lookup.get(latin1(new TextEncoder().encode(piece))) ?? -1;
  }

  private byteFallback(byte: number): number {
    const id = byte + 3;
    if (id >= this.vocabSize) {
      throw new QError(
        'E_TOKENIZER',
        `Expected a byte-fallback piece at id ${id} (byte ${byte} + 3) but the vocabulary has ${this.vocabSize} pieces`,
      );
    }
    return id;
  }

  /**
   * Token ids before merging: codepoints found in the vocabulary, otherwise their bytes + 3.
   *
   * @example
   * ```ts
   * tok.initialTokens('hi') // [id of ' ', id of 'h', id of 'i']
   * ```
   */
  initialTokens(text: string, options: EncodeOptions = {}): number[] {
    const bytes = new TextEncoder().encode(text);
    const tokens: number[] = [];
    if (options.bos) tokens.push(BOS);
    if (bytes.length > 0) {
      const space = this.lookup.get(' ');
      tokens.push(space ?? this.byteFallback(0x20));
    }
    let start = 0;
    let len = 0;
    for (let i = 0; i < bytes.length; i++) {
      const c = bytes[i] as number;
      if ((c & 0xc0) !== 0x80) {
        start = i;
        len = 0;
      }
      len++;
      const next = i + 1 < bytes.length ? (bytes[i + 1] as number) : 0;
      if ((next & 0xc0) === 0x80 && len < 4) continue;
      const piece = bytes.subarray(start, start + len);
      const id = this.lookup.get(latin1(piece));
      if (id !== undefined) tokens.push(id);
      else for (const b of piece) tokens.push(this.byteFallback(b));
      len = 0;
      start = i + 1;
    }
    return tokens;
  }

  /**
   * Encodes text as run.c's `encode` does.
   *
   * @example
   * ```ts
   * tok.encode('hello', { bos: true }) // [1, ...]
   * ```
   */
  encode(text: string, options: EncodeOptions = {}): number[] {
    if (typeof text !== 'string') {
      throw new QError('E_ARG', `Expected a string for text but received ${describeValue(text)}`);
    }
    const merged = this.merge(this.initialTokens(text, options));
    if (options.eos) merged.push(EOS);
    return merged;
  }

  /**
   * Merges adjacent pairs best score first, leftmost first on equal scores, exactly the order of run.c's
   * quadratic loop: the heap always holds every current adjacent pair (stale entries are skipped).
   */
  private merge(tokens: number[]): number[] {
    const n = tokens.length;
    if (n < 2) return tokens;
    const id = Int32Array.from(tokens);
    const next = new Int32Array(n);
    const prev = new Int32Array(n);
    const ver = new Uint32Array(n);
    const alive = new Uint8Array(n).fill(1);
    for (let i = 0; i < n; i++) {
      next[i] = i + 1 < n ? i + 1 : -1;
      prev[i] = i - 1;
    }
    const heap = new PairHeap();
    const push = (l: number): void => {
      const r = next[l] as number;
      if (r < 0) return;
      const m = this.lookup.get(
        (this.keys[id[l] as number] as string) + (this.keys[id[r] as number] as string),
      );
      if (m === undefined) return;
      const s = this.scores[m] as number;
      if (!(s > MIN_SCORE)) return;
      heap.push({ score: s, left: l, right: r, verL: ver[l] as number, verR: ver[r] as number, merged: m });
    };
    for (let i = 0; i + 1 < n; i++) push(i);
    let count = n;
    for (;;) {
      const top = heap.pop();
      if (top === undefined) break;
      const { left: l, right: r } = top;
      if (alive[l] !== 1 || alive[r] !== 1 || next[l] !== r || ver[l] !== top.verL || ver[r] !== top.verR)
        continue;
      id[l] = top.merged;
      ver[l] = (ver[l] as number) + 1;
      alive[r] = 0;
      const rn = next[r] as number;
      next[l] = rn;
      if (rn >= 0) prev[rn] = l;
      count--;
      const p = prev[l] as number;
      if (p >= 0) push(p);
      push(l);
    }
    const out: number[] = new Array(count);
    let k = 0;
    for (let i = 0; i >= 0; i = next[i] as number) out[k++] = id[i] as number;
    return out;
  }

  private checkId(i: number): void {
    if (!Number.isInteger(i) || i < 0 || i >= this.vocabSize) {
      throw new QError(
        'E_ARG',
        `Expected a token id in [0, ${this.vocabSize}) but received ${describeValue(i)}`,
      );
    }
  }

  /**
   * The bytes run.c's `decode(prev, id)` prints: a leading space is dropped after BOS, and `<0xXX>`
   * pieces become that single byte.
   *
   * @example
   * ```ts
   * new TextDecoder().decode(tok.decodePiece(1, tok.encode('Hi')[1]))
   * ```
   */
  decodePiece(prevId: number, id: number): Uint8Array {
    this.checkId(id);
    let piece = this.pieceBytes[id] as Uint8Array;
    if (prevId === BOS && piece[0] === 0x20) piece = piece.subarray(1);
    const b = bytePieceValue(piece);
    return b >= 0 ? Uint8Array.of(b) : piece;
  }

  /**
   * Bytes of a token sequence as run.c's generate loop prints them: BOS and EOS produce no text.
   *
   * @example
   * ```ts
   * Buffer.from(tok.decodeBytes([1, ...ids])).toString('utf8')
   * ```
   */
  decodeBytes(ids: readonly number[]): Uint8Array {
    const parts: Uint8Array[] = [];
    let total = 0;
    let prev = -1;
    for (const id of ids) {
      this.checkId(id);
      if (id !== BOS && id !== EOS) {
        const p = this.decodePiece(prev, id);
        parts.push(p);
        total += p.length;
      }
      prev = id;
    }
    const out = new Uint8Array(total);
    let o = 0;
    for (const p of parts) {
      out.set(p, o);
      o += p.length;
    }
    return out;
  }

  /**
   * Text of a token sequence. Byte pieces are joined before UTF-8 decoding, so a character split over
   * several byte tokens comes out whole; invalid sequences become U+FFFD.
   *
   * @example
   * ```ts
   * tok.decode(tok.encode('héllo', { bos: true })) // 'héllo'
   * ```
   */
  decode(ids: readonly number[]): string {
    return new TextDecoder().decode(this.decodeBytes(ids));
  }

  /**
   * A decoder for generated tokens one at a time: `push(id)` returns the text completed so far (holding
   * back bytes of an unfinished UTF-8 character), `flush()` the rest.
   *
   * @example
   * ```ts
   * const d = tok.streamDecoder(); let s = ''; for (const id of ids) s += d.push(id); s += d.flush();
   * ```
   */
  streamDecoder(): { push(id: number): string; flush(): string } {
    const dec = new TextDecoder();
    let prev = -1;
    return {
      push: (id: number): string => {
        this.checkId(id);
        const p = prev;
        prev = id;
        if (id === BOS || id === EOS) return '';
        return dec.decode(this.decodePiece(p, id), { stream: true });
      },
      flush: (): string => dec.decode(),
    };
  }
}

function hexDigit(c: number | undefined): number {
  if (c === undefined) return -1;
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x41 && c <= 0x46) return c - 0x41 + 10;
  if (c >= 0x61 && c <= 0x66) return c - 0x61 + 10;
  return -1;
}

/** run.c's `sscanf(piece, "<0x%02hhX>")`: "<0x" then one or two hex digits gives that byte, else -1. */
function bytePieceValue(p: Uint8Array): number {
  if (p[0] !== 0x3c || p[1] !== 0x30 || p[2] !== 0x78) return -1;
  const h = hexDigit(p[3]);
  if (h < 0) return -1;
  const l = hexDigit(p[4]);
  return l < 0 ? h : h * 16 + l;
}

interface PairEntry {
  score: number;
  left: number;
  right: number;
  verL: number;
  verR: number;
  merged: number;
}

/** Max-heap on score, then min on left position (run.c takes the leftmost of equal scores). */
class PairHeap {
  private readonly a: PairEntry[] = [];

  private before(x: PairEntry, y: PairEntry): boolean {
    return x.score > y.score || (x.score === y.score && x.left < y.left);
  }

  push(e: PairEntry): void {
    const a = this.a;
    a.push(e);
    let i = a.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.before(a[i] as PairEntry, a[p] as PairEntry)) break;
      [a[i], a[p]] = [a[p] as PairEntry, a[i] as PairEntry];
      i = p;
    }
  }

  pop(): PairEntry | undefined {
    const a = this.a;
    const top = a[0];
    const last = a.pop();
    if (a.length > 0 && last !== undefined) {
      a[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < a.length && this.before(a[l] as PairEntry, a[m] as PairEntry)) m = l;
        if (r < a.length && this.before(a[r] as PairEntry, a[m] as PairEntry)) m = r;
        if (m === i) break;
        [a[i], a[m]] = [a[m] as PairEntry, a[i] as PairEntry];
        i = m;
      }
    }
    return top;
  }
}

/**
 * Parses tokenizer bytes. With `vocabSize`, exactly that many pieces are read (as run.c does, extra
 * bytes are ignored); without it, pieces are read to the end of the data.
 *
 * @example
 * ```ts
 * const tok = parseLlama2cTokenizer(fs.readFileSync('tok512.bin'), 512, 'tok512.bin');
 * ```
 */
export function parseLlama2cTokenizer(
  bytes: Uint8Array,
  vocabSize?: number,
  source = 'tokenizer',
): Llama2cTokenizer {
  if (vocabSize !== undefined && (!Number.isInteger(vocabSize) || vocabSize <= 0)) {
    throw new QError(
      'E_ARG',
      `Expected a positive integer for vocabSize but received ${describeValue(vocabSize)}`,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.byteLength < 4) {
    throw new QError(
      'E_FORMAT',
      `Expected at least 4 bytes (max_token_length) for llama2.c tokenizer ${source} but received ${bytes.byteLength}`,
    );
  }
  const maxLen = view.getInt32(0, true);
  if (maxLen <= 0) {
    throw new QError(
      'E_FORMAT',
      `Expected a positive max_token_length in llama2.c tokenizer ${source} but received ${maxLen}`,
    );
  }
  const pieces: Uint8Array[] = [];
  const scores: number[] = [];
  let pos = 4;
  while (vocabSize === undefined ? pos < bytes.byteLength : pieces.length < vocabSize) {
    const i = pieces.length;
    if (pos + 8 > bytes.byteLength) {
      throw new QError(
        'E_FORMAT',
        `Expected 8 bytes (score, length) for piece ${i} at offset ${pos} of llama2.c tokenizer ${source} but received ${bytes.byteLength - pos} (file truncated${vocabSize === undefined ? '' : `; ${vocabSize} pieces expected`})`,
      );
    }
    const score = view.getFloat32(pos, true);
    const len = view.getInt32(pos + 4, true);
    pos += 8;
    if (len < 0 || len > maxLen || pos + len > bytes.byteLength) {
      throw new QError(
        'E_FORMAT',
        `Expected a piece length in [0, ${Math.min(maxLen, bytes.byteLength - pos)}] for piece ${i} at offset ${pos - 4} of llama2.c tokenizer ${source} but received ${len}`,
      );
    }
    pieces.push(bytes.slice(pos, pos + len));
    scores.push(score);
    pos += len;
  }
  if (pieces.length === 0) {
    throw new QError(
      'E_FORMAT',
      `Expected at least one piece in llama2.c tokenizer ${source} but received none`,
    );
  }
  return new Llama2cTokenizer(pieces, Float32Array.from(scores), maxLen);
}

/**
 * Reads a llama2.c tokenizer file (`tokenizer.bin`, `tok512.bin`).
 *
 * @example
 * ```ts
 * const tok = readLlama2cTokenizer('tok512.bin', 512);
 * tok.encode('Once upon a time', { bos: true });
 * ```
 */
export function readLlama2cTokenizer(file: string, vocabSize?: number): Llama2cTokenizer {
  let bytes: Buffer;
  try {
    const st = fs.statSync(file);
    if (st.size > MAX_TOKENIZER_BYTES) {
      throw new QError(
        'E_FORMAT',
        `Expected a tokenizer file under 1 GiB for ${file} but received ${st.size} bytes`,
      );
    }
    bytes = fs.readFileSync(file);
  } catch (e) {
    if (e instanceof QError) throw e;
    const code = (e as { code?: string }).code;
    if (code === 'ENOENT') {
      throw new QError('E_TOKENIZER', `Expected a llama2.c tokenizer file at ${file} but it does not exist`, {
        cause: e,
      });
    }
    throw ioError(e, `read llama2.c tokenizer ${file}`);
  }
  return parseLlama2cTokenizer(
    new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength),
    vocabSize,
    file,
  );
}
