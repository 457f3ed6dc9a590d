import * as fs from 'node:fs';
import * as path from 'node:path';
import { AtomicFile, ioError, readFullySync } from './atomic';
import { type DType, viewBytes } from './dtype';
import { describeValue, isQError, QError } from './errors';
import { numel, type Shape, Tensor } from './tensor';

/**
 * safetensors: an 8-byte little-endian header length N, N bytes of JSON
 * (`{"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`), then the data;
 * offsets are relative to the end of the header. Readers parse and check the whole header up front and
 * then read single tensors by offset, never the whole file.
 */

/** The safetensors spec caps the header at 100 MB; larger headers are refused before allocating. */
export const SAFETENSORS_MAX_HEADER_BYTES = 100_000_000;

/** safetensors dtype names q reads and writes, and their q dtypes. */
export type SafetensorsDType = 'F32' | 'F16' | 'BF16' | 'I8' | 'U8' | 'I32';

const ST_TO_Q: Readonly<Record<SafetensorsDType, Exclude<DType, 'i4'>>> = {
  F32: 'f32',
  F16: 'f16',
  BF16: 'bf16',
  I8: 'i8',
  U8: 'u8',
  I32: 'i32',
};
const Q_TO_ST: Readonly<Record<Exclude<DType, 'i4'>, SafetensorsDType>> = {
  f32: 'F32',
  f16: 'F16',
  bf16: 'BF16',
  i8: 'I8',
  u8: 'U8',
  i32: 'I32',
};
const ELEMENT_BYTES: Readonly<Record<SafetensorsDType, number>> = {
  F32: 4,
  F16: 2,
  BF16: 2,
  I8: 1,
  U8: 1,
  I32: 4,
};
/** Valid safetensors dtypes that this build does not read. */
const OTHER_ST_DTYPES = [
  'BOOL',
  'U16',
  'I16',
  'U32',
  'U64',
  'I64',
  'F64',
  'F8_E4M3',
  'F8_E5M2',
  'F8_E8M0',
  'F4',
  'F6_E2M3',
  'F6_E3M2',
  'C64',
];

/** Where one tensor lives. `byteOffset` is absolute within the file. */
export interface SafetensorsTensorInfo {
  readonly dtype: Exclude<DType, 'i4'>;
  readonly shape: Shape;
  readonly byteOffset: number;
  readonly byteLength: number;
}

/** A tensor's location within a sharded model: the same as a single file plus the shard path. */
export interface SafetensorsModelTensorInfo extends SafetensorsTensorInfo {
  readonly file: string;
}

export interface SafetensorsReader {
  readonly path: string;
  readonly metadata: Readonly<Record<string, string>>;
  /** Tensor names in file (offset) order. */
  names(): string[];
  has(name: string): boolean;
  info(name: string): SafetensorsTensorInfo;
  /** Reads one tensor's bytes from disk into a fresh tensor. */
  read(name: string): Tensor<Exclude<DType, 'i4'>>;
  readBytes(name: string): Uint8Array;
  close(): void;
}

function fmt(file: string, problem: string, details: Record<string, unknown> = {}): QError {
  return new QError('E_FORMAT', `Invalid safetensors file ${file}: ${problem}`, {
    details: { file, ...details },
  });
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

interface Parsed {
  metadata: Record<string, string>;
  tensors: Map<string, SafetensorsTensorInfo>;
}

/**
 * Parses and checks a header (the JSON text), given the data section's start and length.
 * Every offset, shape and size is checked here so later reads need no checks.
 */
function parseHeader(file: string, json: string, dataStart: number, dataLength: number): Parsed {
  let obj: unknown;
  try {
    obj = JSON.parse(json);
  } catch (e) {
    throw fmt(file, `the header is not valid JSON (${(e as Error).message})`);
  }
  if (!isPlainObject(obj))
    throw fmt(file, `expected a JSON object as header but received ${describeValue(obj)}`);
  const metadata: Record<string, string> = {};
  const entries: { name: string; begin: number; end: number; info: SafetensorsTensorInfo }[] = [];
  for (const [name, raw] of Object.entries(obj)) {
    if (name === '__metadata__') {
      if (!isPlainObject(raw))
        throw fmt(file, `expected an object for __metadata__ but received ${describeValue(raw)}`);
      for (const [k, v] of Object.entries(raw)) {
        if (typeof v !== 'string') {
          throw fmt(file, `expected a string for __metadata__.${k} but received ${describeValue(v)}`);
        }
        metadata[k] = v;
      }
      continue;
    }
    const where = { tensor: name };
    if (!isPlainObject(raw))
      throw fmt(
        file,
        `expected an object for tensor ${JSON.stringify(name)} but received ${describeValue(raw)}`,
        where,
      );
    const { dtype, shape, data_offsets: offsets } = raw;
    if (typeof dtype !== 'string' || !(dtype in ST_TO_Q)) {
      if (typeof dtype === 'string' && OTHER_ST_DTYPES.includes(dtype)) {
        throw new QError(
          'E_UNSUPPORTED',
          `Expected one of ${Object.keys(ST_TO_Q).join(', ')} for the dtype of tensor ${JSON.stringify(name)} in ${file} but received ${dtype}`,
          { details: { file, tensor: name } },
        );
      }
      throw fmt(
        file,
        `unknown dtype ${describeValue(dtype)} for tensor ${JSON.stringify(name)} (expected one of ${Object.keys(ST_TO_Q).join(', ')})`,
        where,
      );
    }
    if (!Array.isArray(shape) || shape.some((d) => !Number.isSafeInteger(d) || d < 0)) {
      throw fmt(
        file,
        `expected an array of non-negative integers for the shape of tensor ${JSON.stringify(name)} but received ${describeValue(shape)}`,
        where,
      );
    }
    if (
      !Array.isArray(offsets) ||
      offsets.length !== 2 ||
      !Number.isSafeInteger(offsets[0]) ||
      !Number.isSafeInteger(offsets[1]) ||
      offsets[0] < 0 ||
      offsets[1] < offsets[0]
    ) {
      throw fmt(
        file,
        `expected data_offsets [begin, end] with 0 <= begin <= end for tensor ${JSON.stringify(name)} but received ${describeValue(offsets)}`,
        where,
      );
    }
    const begin = offsets[0] as number;
    const end = offsets[1] as number;
    const st = dtype as SafetensorsDType;
    // Product in float64: any overflow past 2^53 cannot equal a safe-integer byte range anyway.
    const expectedBytes = numel(shape as number[]) * ELEMENT_BYTES[st];
    if (expectedBytes !== end - begin) {
      throw fmt(
        file,
        `tensor ${JSON.stringify(name)} has shape [${shape.join(', ')}] × ${st} = ${expectedBytes} bytes but its byte range [${begin}, ${end}) holds ${end - begin}`,
        where,
      );
    }
    if (end > dataLength) {
      throw fmt(
        file,
        `tensor ${JSON.stringify(name)} has byte range [${begin}, ${end}) past the end of the data section (${dataLength} bytes; file truncated or offsets out of range)`,
        where,
      );
    }
    entries.push({
      name,
      begin,
      end,
      info: {
        dtype: ST_TO_Q[st],
        shape: Object.freeze([...(shape as number[])]),
        byteOffset: dataStart + begin,
        byteLength: end - begin,
      },
    });
  }
  entries.sort((a, b) => a.begin - b.begin || a.end - b.end);
  for (let i = 1; i < entries.length; i++) {
    const p = entries[i - 1] as (typeof entries)[number];
    const c = entries[i] as (typeof entries)[number];
    // Empty tensors occupy no bytes and cannot overlap anything.
    if (c.begin < p.end && c.end > c.begin) {
      throw fmt(
        file,
        `tensor ${JSON.stringify(c.name)} byte range [${c.begin}, ${c.end}) overlaps tensor ${JSON.stringify(p.name)} [${p.begin}, ${p.end})`,
        { tensor: c.name },
      );
    }
  }
  const tensors = new Map<string, SafetensorsTensorInfo>();
  for (const e of entries) tensors.set(e.name, e.info);
  return { metadata, tensors };
}

class FileReader implements SafetensorsReader {
  readonly path: string;
  readonly metadata: Readonly<Record<string, string>>;
  private fd: number | undefined;
  private readonly tensors: Map<string, SafetensorsTensorInfo>;

  constructor(file: string, fd: number, parsed: Parsed) {
    this.path = file;
    this.fd = fd;
    this.metadata = Object.freeze(parsed.metadata);
    this.tensors = parsed.tensors;
  }

  names(): string[] {
    return [...this.tensors.keys()];
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  info(name: string): SafetensorsTensorInfo {
    const i = this.tensors.get(name);
    if (i === undefined) {
      throw new QError(
        'E_ARG',
        `Expected a tensor named ${JSON.stringify(name)} in ${this.path} but it has none (${this.tensors.size} tensors)`,
      );
    }
    return i;
  }

  readBytes(name: string): Uint8Array {
    const info = this.info(name);
    if (this.fd === undefined)
      throw new QError('E_DISPOSED', `Expected an open reader for ${this.path} but it was closed`);
    const out = new Uint8Array(info.byteLength);
    let got: number;
    try {
      got = readFullySync(this.fd, out, info.byteOffset);
    } catch (e) {
      throw ioError(e, `read tensor ${name} from ${this.path}`);
    }
    if (got !== info.byteLength) {
      // The file shrank after it was opened.
      throw fmt(
        this.path,
        `tensor ${JSON.stringify(name)} needs ${info.byteLength} bytes at offset ${info.byteOffset} but only ${got} could be read (file truncated)`,
        { tensor: name },
      );
    }
    return out;
  }

  read(name: string): Tensor<Exclude<DType, 'i4'>> {
    const info = this.info(name);
    const bytes = this.readBytes(name);
    return new Tensor(info.dtype, info.shape, viewBytes(info.dtype, bytes));
  }

  close(): void {
    if (this.fd !== undefined) {
      fs.closeSync(this.fd);
      this.fd = undefined;
    }
  }
}

/**
 * Opens a safetensors file: reads and validates the header only. Tensors are read one at a time with
 * `read(name)` from their byte range.
 *
 * @example
 * ```ts
 * const r = openSafetensors('model.safetensors');
 * const w = r.read('model.embed_tokens.weight'); // Tensor<'bf16'>, say
 * r.close();
 * ```
 */
export function openSafetensors(file: string): SafetensorsReader {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (e) {
    throw ioError(e, `open safetensors file ${file}`);
  }
  try {
    const size = fs.fstatSync(fd).size;
    if (size < 8)
      throw fmt(file, `expected at least 8 bytes (the header length) but the file has ${size} (truncated)`);
    const lenBytes = new Uint8Array(8);
    readFullySync(fd, lenBytes, 0);
    const n = new DataView(lenBytes.buffer).getBigUint64(0, true);
    if (n > BigInt(SAFETENSORS_MAX_HEADER_BYTES)) {
      throw fmt(file, `header length ${n} is over the ${SAFETENSORS_MAX_HEADER_BYTES}-byte limit`);
    }
    const headerLen = Number(n);
    if (8 + headerLen > size) {
      throw fmt(
        file,
        `header length ${headerLen} runs past the end of the file (${size} bytes; truncated or not a safetensors file)`,
      );
    }
    const headerBytes = new Uint8Array(headerLen);
    readFullySync(fd, headerBytes, 8);
    let json: string;
    try {
      json = new TextDecoder('utf-8', { fatal: true }).decode(headerBytes);
    } catch {
      throw fmt(file, 'the header is not valid UTF-8 JSON');
    }
    const parsed = parseHeader(file, json, 8 + headerLen, size - 8 - headerLen);
    return new FileReader(file, fd, parsed);
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
}

/** What a streaming writer will receive: names in write order, with dtype and shape. */
export interface SafetensorsTensorSpec {
  readonly name: string;
  readonly dtype: Exclude<DType, 'i4'>;
  readonly shape: Shape;
}

export interface SafetensorsWriter {
  /** Writes the next tensor; names must come in spec order. Bytes are taken as stored (little-endian). */
  write(name: string, value: Tensor | Uint8Array): void;
  /** Checks every tensor was written, then flushes and renames into place. */
  close(): void;
  /** Drops the temporary file; nothing appears under the final name. */
  abort(): void;
}

/** Duck-typed so tensors from another copy of this package (dist next to sources) are accepted too. */
function isTensor(v: unknown): v is Tensor {
  if (v instanceof Tensor) return true;
  const t = v as Partial<Tensor> | null;
  return (
    typeof t === 'object' &&
    t !== null &&
    typeof t.dtype === 'string' &&
    Array.isArray(t.shape) &&
    ArrayBuffer.isView(t.data) &&
    typeof t.isContiguous === 'function' &&
    typeof t.contiguous === 'function'
  );
}

function tensorBytes(t: Tensor): Uint8Array {
  const c = t.isContiguous() ? t : t.contiguous();
  const bpe = c.data.BYTES_PER_ELEMENT;
  return new Uint8Array(c.data.buffer, c.data.byteOffset + c.offset * bpe, c.size * bpe);
}

function checkSpecs(specs: readonly SafetensorsTensorSpec[]): void {
  const seen = new Set<string>();
  for (const s of specs) {
    if (typeof s.name !== 'string' || s.name === '__metadata__' || seen.has(s.name)) {
      throw new QError(
        'E_ARG',
        `Expected a unique tensor name other than __metadata__ but received ${describeValue(s.name)}`,
      );
    }
    seen.add(s.name);
    if (!(s.dtype in Q_TO_ST)) {
      throw new QError(
        'E_DTYPE',
        `Expected one of ${Object.keys(Q_TO_ST).join(', ')} for the dtype of ${s.name} but received ${describeValue(s.dtype)} (store packed int4 as u8)`,
      );
    }
    if (!Array.isArray(s.shape) || s.shape.some((d) => !Number.isSafeInteger(d) || d < 0)) {
      throw new QError(
        'E_SHAPE',
        `Expected non-negative integer dimensions for ${s.name} but received ${describeValue(s.shape)}`,
      );
    }
  }
}

function buildHeader(
  specs: readonly SafetensorsTensorSpec[],
  metadata: Record<string, string> | undefined,
): { header: Uint8Array; sizes: number[] } {
  const obj: Record<string, unknown> = {};
  if (metadata !== undefined) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== 'string')
        throw new QError('E_ARG', `Expected a string for metadata ${k} but received ${describeValue(v)}`);
    }
    obj.__metadata__ = metadata;
  }
  const sizes: number[] = [];
  let off = 0;
  for (const s of specs) {
    const n = numel(s.shape) * ELEMENT_BYTES[Q_TO_ST[s.dtype]];
    sizes.push(n);
    obj[s.name] = { dtype: Q_TO_ST[s.dtype], shape: [...s.shape], data_offsets: [off, off + n] };
    off += n;
  }
  const json = new TextEncoder().encode(JSON.stringify(obj));
  // Pad with spaces so the data section starts 8-byte aligned, as the reference writer does.
  const padded = Math.ceil(json.length / 8) * 8;
  if (padded > SAFETENSORS_MAX_HEADER_BYTES) {
    throw new QError(
      'E_ARG',
      `Expected a header under ${SAFETENSORS_MAX_HEADER_BYTES} bytes but the tensor list needs ${padded}`,
    );
  }
  const header = new Uint8Array(8 + padded).fill(0x20);
  new DataView(header.buffer).setBigUint64(0, BigInt(padded), true);
  header.set(json, 8);
  return { header, sizes };
}

/** Options of the safetensors writers. */
export interface SafetensorsWriteOptions {
  /** Sees every byte written, in file order (e.g. to hash a file while writing it, not by reading it back). */
  readonly onBytes?: (bytes: Uint8Array) => void;
}

/**
 * Starts writing a safetensors file tensor by tensor, so files larger than memory can be written. The
 * file appears under `file` only after `close()`; any error (or `abort()`) removes the temporary file.
 *
 * @example
 * ```ts
 * const w = createSafetensorsWriter('out.safetensors', [{ name: 'a', dtype: 'f32', shape: [2] }], { format: 'pt' });
 * w.write('a', Tensor.from('f32', [2], [1, 2]));
 * w.close();
 * ```
 */
export function createSafetensorsWriter(
  file: string,
  specs: readonly SafetensorsTensorSpec[],
  metadata?: Record<string, string>,
  options: SafetensorsWriteOptions = {},
): SafetensorsWriter {
  checkSpecs(specs);
  const { header, sizes } = buildHeader(specs, metadata);
  const atomic = new AtomicFile(file);
  const onBytes = options.onBytes;
  const out = onBytes
    ? {
        write: (b: Uint8Array) => {
          atomic.write(b);
          onBytes(b);
        },
        commit: () => atomic.commit(),
        abort: () => atomic.abort(),
      }
    : atomic;
  let next = 0;
  let failed = false;
  const guard = <T>(fn: () => T): T => {
    if (failed) throw new QError('E_IO', `Expected a writer in progress for ${file} but it was aborted`);
    try {
      return fn();
    } catch (e) {
      failed = true;
      out.abort();
      throw isQError(e) ? e : ioError(e, `write ${file}`);
    }
  };
  guard(() => out.write(header));
  return {
    write(name, value) {
      guard(() => {
        const spec = specs[next];
        if (spec === undefined || spec.name !== name) {
          throw new QError(
            'E_ARG',
            `Expected tensor ${spec === undefined ? '(none: all written)' : JSON.stringify(spec.name)} next for ${file} but received ${JSON.stringify(name)}`,
          );
        }
        let bytes: Uint8Array;
        if (isTensor(value)) {
          if (
            value.dtype !== spec.dtype ||
            value.shape.length !== spec.shape.length ||
            value.shape.some((d, i) => d !== spec.shape[i])
          ) {
            throw new QError(
              'E_SHAPE',
              `Expected ${spec.dtype} [${spec.shape.join(', ')}] for ${name} but received ${value.dtype} [${value.shape.join(', ')}]`,
            );
          }
          bytes = tensorBytes(value);
        } else if (value instanceof Uint8Array) {
          bytes = value;
        } else {
          throw new QError(
            'E_ARG',
            `Expected a Tensor or Uint8Array for ${name} but received ${describeValue(value)}`,
          );
        }
        if (bytes.byteLength !== sizes[next]) {
          throw new QError(
            'E_SHAPE',
            `Expected ${sizes[next]} bytes for ${name} but received ${bytes.byteLength}`,
          );
        }
        out.write(bytes);
        next++;
      });
    },
    close() {
      guard(() => {
        if (next !== specs.length) {
          throw new QError(
            'E_ARG',
            `Expected ${specs.length} tensors for ${file} but received ${next} (next: ${specs[next]?.name})`,
          );
        }
        out.commit();
      });
    },
    abort() {
      failed = true;
      out.abort();
    },
  };
}

type TensorCollection = ReadonlyMap<string, Tensor> | Readonly<Record<string, Tensor>>;

function entriesOf(tensors: TensorCollection): [string, Tensor][] {
  return tensors instanceof Map ? [...tensors.entries()] : Object.entries(tensors as Record<string, Tensor>);
}

function specOf(name: string, t: Tensor): SafetensorsTensorSpec {
  if (!isTensor(t))
    throw new QError('E_ARG', `Expected a Tensor for ${name} but received ${describeValue(t)}`);
  if (t.dtype === 'i4') {
    throw new QError(
      'E_DTYPE',
      `Expected a safetensors dtype for ${name} but received i4 (store packed int4 as a u8 tensor)`,
    );
  }
  return { name, dtype: t.dtype as Exclude<DType, 'i4'>, shape: t.shape };
}

/**
 * Writes tensors to one safetensors file atomically (temp file, fsync, rename).
 *
 * @example
 * ```ts
 * writeSafetensors('w.safetensors', { w: Tensor.from('f32', [2, 2], [1, 2, 3, 4]) }, { format: 'pt' });
 * ```
 */
export function writeSafetensors(
  file: string,
  tensors: TensorCollection,
  metadata?: Record<string, string>,
  options: SafetensorsWriteOptions = {},
): void {
  const list = entriesOf(tensors);
  const w = createSafetensorsWriter(
    file,
    list.map(([n, t]) => specOf(n, t)),
    metadata,
    options,
  );
  for (const [n, t] of list) w.write(n, t);
  w.close();
}

/** A sharded or single-file model behind one read API. */
export interface SafetensorsModelReader {
  /** The index file, or the single safetensors file. */
  readonly path: string;
  /** Index metadata (values as strings) or the single file's metadata. */
  readonly metadata: Readonly<Record<string, string>>;
  /** Shard paths. */
  readonly files: readonly string[];
  names(): string[];
  has(name: string): boolean;
  info(name: string): SafetensorsModelTensorInfo;
  read(name: string): Tensor<Exclude<DType, 'i4'>>;
  readBytes(name: string): Uint8Array;
  close(): void;
}

export const SAFETENSORS_INDEX_FILE = 'model.safetensors.index.json';
export const SAFETENSORS_SINGLE_FILE = 'model.safetensors';
const MAX_INDEX_BYTES = 100_000_000;

function indexFormat(file: string, problem: string): QError {
  return new QError('E_FORMAT', `Invalid safetensors index ${file}: ${problem}`, { details: { file } });
}

/**
 * Opens a model stored as safetensors: a directory holding `model.safetensors.index.json` (sharded) or
 * `model.safetensors`, an index file, or a single `.safetensors` file. Every shard is opened and every
 * name of the weight map is checked against its shard up front.
 *
 * @example
 * ```ts
 * const m = openSafetensorsModel('models/Llama-3.2-1B');
 * const q = m.read('model.layers.0.self_attn.q_proj.weight');
 * m.close();
 * ```
 */
export function openSafetensorsModel(dirOrIndexFile: string): SafetensorsModelReader {
  let st: fs.Stats;
  try {
    st = fs.statSync(dirOrIndexFile);
  } catch (e) {
    throw ioError(e, `open safetensors model ${dirOrIndexFile}`);
  }
  let indexPath: string | undefined;
  let singlePath: string | undefined;
  if (st.isDirectory()) {
    const idx = path.join(dirOrIndexFile, SAFETENSORS_INDEX_FILE);
    const single = path.join(dirOrIndexFile, SAFETENSORS_SINGLE_FILE);
    if (fs.existsSync(idx)) indexPath = idx;
    else if (fs.existsSync(single)) singlePath = single;
    else {
      throw new QError(
        'E_IO',
        `Expected ${SAFETENSORS_INDEX_FILE} or ${SAFETENSORS_SINGLE_FILE} in ${dirOrIndexFile} but found neither`,
      );
    }
  } else if (dirOrIndexFile.endsWith('.json')) {
    indexPath = dirOrIndexFile;
  } else {
    singlePath = dirOrIndexFile;
  }
  if (singlePath !== undefined) {
    const r = openSafetensors(singlePath);
    return {
      path: singlePath,
      metadata: r.metadata,
      files: [singlePath],
      names: () => r.names(),
      has: (n) => r.has(n),
      info: (n) => ({ ...r.info(n), file: singlePath }),
      read: (n) => r.read(n),
      readBytes: (n) => r.readBytes(n),
      close: () => r.close(),
    };
  }
  const idxFile = indexPath as string;
  let text: string;
  try {
    const size = fs.statSync(idxFile).size;
    if (size > MAX_INDEX_BYTES)
      throw indexFormat(idxFile, `size ${size} is over the ${MAX_INDEX_BYTES}-byte limit`);
    text = fs.readFileSync(idxFile, 'utf8');
  } catch (e) {
    throw ioError(e, `read ${idxFile}`);
  }
  let obj: unknown;
  try {
    obj = JSON.parse(text);
  } catch (e) {
    throw indexFormat(idxFile, `not valid JSON (${(e as Error).message})`);
  }
  if (!isPlainObject(obj) || !isPlainObject(obj.weight_map)) {
    throw indexFormat(
      idxFile,
      `expected an object with a weight_map object but received ${describeValue(obj)}`,
    );
  }
  const metadata: Record<string, string> = {};
  if (obj.metadata !== undefined) {
    if (!isPlainObject(obj.metadata))
      throw indexFormat(
        idxFile,
        `expected an object for metadata but received ${describeValue(obj.metadata)}`,
      );
    for (const [k, v] of Object.entries(obj.metadata))
      metadata[k] = typeof v === 'string' ? v : JSON.stringify(v);
  }
  const dir = path.dirname(idxFile);
  const weightMap = new Map<string, string>();
  for (const [name, shard] of Object.entries(obj.weight_map)) {
    if (
      typeof shard !== 'string' ||
      shard === '' ||
      path.isAbsolute(shard) ||
      shard.split(/[\\/]/).includes('..')
    ) {
      throw indexFormat(
        idxFile,
        `expected a shard file name inside ${dir} for tensor ${JSON.stringify(name)} but received ${describeValue(shard)}`,
      );
    }
    weightMap.set(name, shard);
  }
  const readers = new Map<string, SafetensorsReader>();
  const closeAll = (): void => {
    for (const r of readers.values()) r.close();
  };
  try {
    for (const shard of new Set(weightMap.values()))
      readers.set(shard, openSafetensors(path.join(dir, shard)));
    for (const [name, shard] of weightMap) {
      if (!(readers.get(shard) as SafetensorsReader).has(name)) {
        throw indexFormat(
          idxFile,
          `tensor ${JSON.stringify(name)} is mapped to ${shard}, which does not hold it`,
        );
      }
    }
  } catch (e) {
    closeAll();
    throw e;
  }
  const readerFor = (name: string): SafetensorsReader => {
    const shard = weightMap.get(name);
    if (shard === undefined) {
      throw new QError(
        'E_ARG',
        `Expected a tensor named ${JSON.stringify(name)} in ${idxFile} but its weight_map has none (${weightMap.size} tensors)`,
      );
    }
    return readers.get(shard) as SafetensorsReader;
  };
  return {
    path: idxFile,
    metadata: Object.freeze(metadata),
    files: [...readers.values()].map((r) => r.path),
    names: () => [...weightMap.keys()],
    has: (n) => weightMap.has(n),
    info: (n) => {
      const r = readerFor(n);
      return { ...r.info(n), file: r.path };
    },
    read: (n) => readerFor(n).read(n),
    readBytes: (n) => readerFor(n).readBytes(n),
    close: closeAll,
  };
}

export interface WriteShardedOptions {
  /** Largest shard data size in bytes; a single larger tensor gets a shard of its own. */
  maxShardBytes: number;
  /** Metadata for every shard's header. */
  metadata?: Record<string, string>;
}

/**
 * Writes tensors as `model-0000i-of-0000N.safetensors` shards plus `model.safetensors.index.json`. Each
 * file is written atomically and the index last, so a reader never sees an index naming missing shards;
 * on failure the shards already written by this call are removed.
 *
 * @example
 * ```ts
 * writeShardedSafetensors('out', weights, { maxShardBytes: 2 ** 30 });
 * openSafetensorsModel('out').names();
 * ```
 */
export function writeShardedSafetensors(
  dir: string,
  tensors: TensorCollection,
  options: WriteShardedOptions,
): string[] {
  const max = options?.maxShardBytes;
  if (!Number.isSafeInteger(max) || max <= 0) {
    throw new QError(
      'E_ARG',
      `Expected a positive integer for maxShardBytes but received ${describeValue(max)}`,
    );
  }
  const list = entriesOf(tensors);
  const groups: [string, Tensor][][] = [];
  let cur: [string, Tensor][] = [];
  let curBytes = 0;
  for (const [name, t] of list) {
    const spec = specOf(name, t);
    const n = numel(spec.shape) * ELEMENT_BYTES[Q_TO_ST[spec.dtype]];
    if (cur.length > 0 && curBytes + n > max) {
      groups.push(cur);
      cur = [];
      curBytes = 0;
    }
    cur.push([name, t]);
    curBytes += n;
  }
  if (cur.length > 0 || groups.length === 0) groups.push(cur);
  try {
    fs.mkdirSync(dir, { recursive: true });
  } catch (e) {
    throw ioError(e, `create directory ${dir}`);
  }
  const width = Math.max(5, String(groups.length).length);
  const pad = (i: number) => String(i).padStart(width, '0');
  const written: string[] = [];
  const weightMap: Record<string, string> = {};
  let total = 0;
  try {
    groups.forEach((g, i) => {
      const name = `model-${pad(i + 1)}-of-${pad(groups.length)}.safetensors`;
      const file = path.join(dir, name);
      writeSafetensors(file, new Map(g), options.metadata);
      written.push(file);
      for (const [tn, t] of g) {
        weightMap[tn] = name;
        total += t.size * t.data.BYTES_PER_ELEMENT;
      }
    });
    const index = JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2);
    const f = new AtomicFile(path.join(dir, SAFETENSORS_INDEX_FILE));
    try {
      f.write(new TextEncoder().encode(`${index}\n`));
      f.commit();
    } catch (e) {
      f.abort();
      throw e;
    }
  } catch (e) {
    for (const w of written) {
      try {
        fs.unlinkSync(w);
      } catch {
        // already gone
      }
    }
    throw e;
  }
  return written;
}
