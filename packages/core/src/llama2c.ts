import * as fs from 'node:fs';
import { AtomicFile, ioError, readFullySync } from './atomic';
import type { ModelConfig } from './config';
import { describeValue, QError } from './errors';
import { type LlamaProjection, llamaLinearName, llamaNormNames } from './llama-layout';
import { Tensor } from './tensor';

/**
 * llama2.c checkpoints: the legacy format (7 int32 header, then fp32 arrays) and the versioned "ak42"
 * version 1 format (256-byte header, then fp32 arrays in a different order). Weights come back under the
 * Hugging Face names of `ModelConfig`, one tensor per layer.
 */

export type Llama2cFormat = 'legacy' | 'v1';

export interface Llama2cCheckpoint {
  readonly config: ModelConfig;
  readonly format: Llama2cFormat;
  readonly weights: Map<string, Tensor<'f32'>>;
}

/** "ak42" read as a little-endian uint32, the first 4 bytes of a versioned checkpoint. */
export const LLAMA2C_MAGIC = 0x616b3432;
const LEGACY_HEADER_BYTES = 28;
const V1_HEADER_BYTES = 256;

interface Dims {
  dim: number;
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  vocab: number;
  seqLen: number;
  shared: boolean;
}

/** One fp32 array of the file, in file order. `name` undefined means skipped (legacy freq_cis tables). */
interface Entry {
  name: string | undefined;
  shape: number[];
}

/** One tensor per layer, named by the Llama layout: a projection's weight or a norm's. */
function perLayer(d: Dims, what: LlamaProjection | 'input' | 'post', shape: number[]): Entry[] {
  const out: Entry[] = [];
  for (let i = 0; i < d.layers; i++) {
    const base =
      what === 'input'
        ? llamaNormNames(i).input
        : what === 'post'
          ? llamaNormNames(i).post
          : llamaLinearName(i, what);
    out.push({ name: `${base}.weight`, shape });
  }
  return out;
}

function kvDim(d: Dims): number {
  return (d.dim / d.heads) * d.kvHeads;
}

function layout(d: Dims, format: Llama2cFormat): Entry[] {
  const kv = kvDim(d);
  const headSize = d.dim / d.heads;
  const q = perLayer(d, 'q_proj', [d.dim, d.dim]);
  const k = perLayer(d, 'k_proj', [kv, d.dim]);
  const v = perLayer(d, 'v_proj', [kv, d.dim]);
  const o = perLayer(d, 'o_proj', [d.dim, d.dim]);
  const gate = perLayer(d, 'gate_proj', [d.hidden, d.dim]);
  const down = perLayer(d, 'down_proj', [d.dim, d.hidden]);
  const up = perLayer(d, 'up_proj', [d.hidden, d.dim]);
  const attNorm = perLayer(d, 'input', [d.dim]);
  const ffnNorm = perLayer(d, 'post', [d.dim]);
  const embed: Entry = { name: 'model.embed_tokens.weight', shape: [d.vocab, d.dim] };
  const norm: Entry = { name: 'model.norm.weight', shape: [d.dim] };
  const head: Entry[] = d.shared ? [] : [{ name: 'lm_head.weight', shape: [d.vocab, d.dim] }];
  if (format === 'legacy') {
    // Order of llama2.c export.py legacy_export / run.c memory_map_weights.
    const freq: Entry = { name: undefined, shape: [d.seqLen, Math.floor(headSize / 2)] };
    return [
      embed,
      ...attNorm,
      ...q,
      ...k,
      ...v,
      ...o,
      ...ffnNorm,
      ...gate,
      ...down,
      ...up,
      norm,
      freq,
      freq,
      ...head,
    ];
  }
  // Order of llama2.c export.py version1_export: norms first, then embeddings, then the matrices.
  return [...attNorm, ...ffnNorm, norm, embed, ...q, ...k, ...v, ...o, ...gate, ...down, ...up, ...head];
}

function floatCount(d: Dims, format: Llama2cFormat): number {
  const kv = kvDim(d);
  const perLayerFloats = 2 * d.dim + 2 * d.dim * d.dim + 2 * kv * d.dim + 3 * d.hidden * d.dim;
  let n = d.layers * perLayerFloats + d.dim + d.vocab * d.dim * (d.shared ? 1 : 2);
  if (format === 'legacy') n += 2 * d.seqLen * Math.floor(d.dim / d.heads / 2);
  return n;
}

function entryElements(e: Entry): number {
  let n = 1;
  for (const s of e.shape) n *= s;
  return n;
}

function checkDims(d: Dims, file: string): void {
  const fields: [string, number][] = [
    ['dim', d.dim],
    ['hidden_dim', d.hidden],
    ['n_layers', d.layers],
    ['n_heads', d.heads],
    ['n_kv_heads', d.kvHeads],
    ['vocab_size', d.vocab],
    ['seq_len', d.seqLen],
  ];
  for (const [k, v] of fields) {
    if (!Number.isInteger(v) || v <= 0) {
      throw new QError('E_FORMAT', `Expected a positive ${k} in the header of ${file} but received ${v}`);
    }
  }
  if (d.dim % d.heads !== 0) {
    throw new QError(
      'E_FORMAT',
      `Expected dim divisible by n_heads in the header of ${file} but received dim ${d.dim}, n_heads ${d.heads}`,
    );
  }
  if (d.kvHeads > d.heads || d.heads % d.kvHeads !== 0) {
    throw new QError(
      'E_FORMAT',
      `Expected n_kv_heads dividing n_heads in the header of ${file} but received n_heads ${d.heads}, n_kv_heads ${d.kvHeads}`,
    );
  }
}

function configOf(d: Dims): ModelConfig {
  return {
    architecture: 'llama',
    hiddenSize: d.dim,
    intermediateSize: d.hidden,
    numLayers: d.layers,
    numHeads: d.heads,
    numKvHeads: d.kvHeads,
    headDim: d.dim / d.heads,
    vocabSize: d.vocab,
    maxSeqLen: d.seqLen,
    rmsNormEps: 1e-5,
    ropeTheta: 10000,
    ropeScaling: { type: 'none' },
    ropeStyle: 'interleaved',
    tieWordEmbeddings: d.shared,
    attentionBias: false,
    bosTokenId: 1,
    eosTokenIds: [2],
  };
}

/**
 * Reads a llama2.c checkpoint, legacy or "ak42" version 1 (detected from the magic). The file size is
 * checked against the header before anything large is allocated.
 *
 * @example
 * ```ts
 * const { config, weights } = readLlama2cCheckpoint('stories260K.bin');
 * weights.get('model.layers.0.self_attn.q_proj.weight')?.shape // [64, 64]
 * ```
 */
export function readLlama2cCheckpoint(file: string): Llama2cCheckpoint {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (e) {
    throw ioError(e, `open llama2.c checkpoint ${file}`);
  }
  try {
    const size = fs.fstatSync(fd).size;
    if (size < LEGACY_HEADER_BYTES) {
      throw new QError(
        'E_FORMAT',
        `Expected at least ${LEGACY_HEADER_BYTES} bytes (the header) for llama2.c checkpoint ${file} but received ${size} bytes`,
      );
    }
    const head = new Uint8Array(Math.min(size, V1_HEADER_BYTES));
    readFullySync(fd, head, 0);
    const view = new DataView(head.buffer);
    let format: Llama2cFormat;
    let dims: Dims;
    let dataStart: number;
    if (view.getUint32(0, true) === LLAMA2C_MAGIC) {
      format = 'v1';
      if (size < V1_HEADER_BYTES) {
        throw new QError(
          'E_FORMAT',
          `Expected at least ${V1_HEADER_BYTES} bytes (the v1 header) for llama2.c checkpoint ${file} but received ${size} bytes`,
        );
      }
      const version = view.getInt32(4, true);
      if (version !== 1) {
        throw new QError(
          'E_VERSION',
          `Expected version 1 (fp32) for llama2.c checkpoint ${file} but received version ${version}`,
        );
      }
      const i = (k: number) => view.getInt32(8 + 4 * k, true);
      const sharedByte = view.getUint8(36);
      if (sharedByte > 1) {
        throw new QError(
          'E_FORMAT',
          `Expected 0 or 1 for shared_classifier in ${file} but received ${sharedByte}`,
        );
      }
      dims = {
        dim: i(0),
        hidden: i(1),
        layers: i(2),
        heads: i(3),
        kvHeads: i(4),
        vocab: i(5),
        seqLen: i(6),
        shared: sharedByte === 1,
      };
      dataStart = V1_HEADER_BYTES;
    } else {
      format = 'legacy';
      const i = (k: number) => view.getInt32(4 * k, true);
      const vocab = i(5);
      dims = {
        dim: i(0),
        hidden: i(1),
        layers: i(2),
        heads: i(3),
        kvHeads: i(4),
        // A negative vocab_size marks an unshared classifier.
        vocab: Math.abs(vocab),
        seqLen: i(6),
        shared: vocab > 0,
      };
      dataStart = LEGACY_HEADER_BYTES;
    }
    checkDims(dims, file);
    // Computed arithmetically so that a header with absurd counts is rejected before any per-layer work.
    const expectedBytes = dataStart + 4 * floatCount(dims, format);
    if (expectedBytes !== size) {
      throw new QError(
        'E_FORMAT',
        `Expected ${expectedBytes} bytes for llama2.c ${format} checkpoint ${file} (dim ${dims.dim}, hidden_dim ${dims.hidden}, n_layers ${dims.layers}, n_heads ${dims.heads}, n_kv_heads ${dims.kvHeads}, vocab_size ${dims.vocab}, seq_len ${dims.seqLen}, ${dims.shared ? 'shared' : 'unshared'} classifier) but received ${size} bytes`,
        { details: { file, expectedBytes, actualBytes: size } },
      );
    }
    const entries = layout(dims, format);
    const weights = new Map<string, Tensor<'f32'>>();
    let pos = dataStart;
    for (const e of entries) {
      const n = entryElements(e);
      if (e.name !== undefined) {
        const data = new Float32Array(n);
        const got = readFullySync(fd, new Uint8Array(data.buffer), pos);
        if (got !== n * 4) {
          throw new QError(
            'E_FORMAT',
            `Expected ${n * 4} bytes for ${e.name} at offset ${pos} of ${file} but received ${got} (file truncated while reading)`,
          );
        }
        weights.set(e.name, new Tensor('f32', e.shape, data));
      }
      pos += n * 4;
    }
    return { config: configOf(dims), format, weights };
  } finally {
    fs.closeSync(fd);
  }
}

export interface WriteLlama2cOptions {
  /** Default `v1`. */
  format?: Llama2cFormat;
}

/** RoPE tables written by legacy_export (precompute_freqs_cis over head_size); readers skip them. */
function freqTables(d: Dims, theta: number): [Float32Array, Float32Array] {
  const headSize = d.dim / d.heads;
  const half = Math.floor(headSize / 2);
  const cos = new Float32Array(d.seqLen * half);
  const sin = new Float32Array(d.seqLen * half);
  for (let t = 0; t < d.seqLen; t++) {
    for (let i = 0; i < half; i++) {
      const f = t / theta ** ((2 * i) / headSize);
      cos[t * half + i] = Math.cos(f);
      sin[t * half + i] = Math.sin(f);
    }
  }
  return [cos, sin];
}

/**
 * Writes a llama2.c checkpoint (atomically) from Hugging Face-named f32 weights. The classifier is
 * written unshared exactly when `config.tieWordEmbeddings` is false (then `lm_head.weight` is required).
 *
 * @example
 * ```ts
 * const { config, weights } = readLlama2cCheckpoint('stories260K.bin');
 * writeLlama2cCheckpoint('copy.bin', config, weights, { format: 'v1' });
 * ```
 */
export function writeLlama2cCheckpoint(
  file: string,
  config: ModelConfig,
  weights: ReadonlyMap<string, Tensor>,
  options: WriteLlama2cOptions = {},
): void {
  const format = options.format ?? 'v1';
  if (format !== 'legacy' && format !== 'v1') {
    throw new QError('E_ARG', `Expected 'legacy' or 'v1' for format but received ${describeValue(format)}`);
  }
  const dims: Dims = {
    dim: config.hiddenSize,
    hidden: config.intermediateSize,
    layers: config.numLayers,
    heads: config.numHeads,
    kvHeads: config.numKvHeads,
    vocab: config.vocabSize,
    seqLen: config.maxSeqLen,
    shared: config.tieWordEmbeddings,
  };
  for (const [k, v] of Object.entries(dims)) {
    if (k !== 'shared' && (!Number.isInteger(v) || (v as number) <= 0 || (v as number) > 0x7fffffff)) {
      throw new QError('E_ARG', `Expected a positive int32 for config ${k} but received ${describeValue(v)}`);
    }
  }
  if (config.headDim * config.numHeads !== config.hiddenSize) {
    throw new QError(
      'E_UNSUPPORTED',
      `Expected headDim × numHeads = hiddenSize for a llama2.c checkpoint but received ${config.headDim} × ${config.numHeads} ≠ ${config.hiddenSize}`,
    );
  }
  if (config.attentionBias) {
    throw new QError(
      'E_UNSUPPORTED',
      'Expected no attention bias for a llama2.c checkpoint but received attentionBias true',
    );
  }
  checkDims(dims, 'the checkpoint being written');
  const entries = layout(dims, format);
  // Validate every tensor before creating the file.
  const arrays: (Float32Array | undefined)[] = entries.map((e) => {
    if (e.name === undefined) return undefined;
    const t = weights.get(e.name);
    if (t === undefined) throw new QError('E_ARG', `Expected a tensor for ${e.name} but received none`);
    if (t.shape.length !== e.shape.length || t.shape.some((s, i) => s !== e.shape[i])) {
      throw new QError(
        'E_SHAPE',
        `Expected shape [${e.shape.join(', ')}] for ${e.name} but received [${t.shape.join(', ')}]`,
      );
    }
    return t.toFloat32();
  });
  const [cos, sin] = format === 'legacy' ? freqTables(dims, config.ropeTheta) : [undefined, undefined];
  const f = new AtomicFile(file);
  try {
    if (format === 'v1') {
      const h = new DataView(new ArrayBuffer(V1_HEADER_BYTES));
      h.setUint32(0, LLAMA2C_MAGIC, true);
      h.setInt32(4, 1, true);
      const vals = [dims.dim, dims.hidden, dims.layers, dims.heads, dims.kvHeads, dims.vocab, dims.seqLen];
      vals.forEach((v, i) => {
        h.setInt32(8 + 4 * i, v, true);
      });
      h.setUint8(36, dims.shared ? 1 : 0);
      f.write(new Uint8Array(h.buffer));
    } else {
      const h = new Int32Array([
        dims.dim,
        dims.hidden,
        dims.layers,
        dims.heads,
        dims.kvHeads,
        dims.shared ? dims.vocab : -dims.vocab,
        dims.seqLen,
      ]);
      f.write(littleEndianBytes(h));
    }
    let freqIndex = 0;
    for (const a of arrays) {
      const arr = a ?? (freqIndex++ === 0 ? cos : sin);
      if (arr === undefined) throw new QError('E_INTERNAL', 'Expected RoPE tables for a legacy checkpoint');
      f.write(littleEndianBytes(arr));
    }
    f.commit();
  } catch (e) {
    f.abort();
    throw e;
  }
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function littleEndianBytes(a: Float32Array | Int32Array): Uint8Array {
  if (LITTLE_ENDIAN) return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  const out = new Uint8Array(a.byteLength);
  const v = new DataView(out.buffer);
  for (let i = 0; i < a.length; i++) {
    if (a instanceof Float32Array) v.setFloat32(4 * i, a[i] as number, true);
    else v.setInt32(4 * i, a[i] as number, true);
  }
  return out;
}
