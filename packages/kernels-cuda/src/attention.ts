/**
 * Attention over a paged KV cache (csrc/attention/): a FlashAttention-style prefill for ragged batches and a
 * flash-decoding kernel for one token per sequence. Every argument is validated here before the native call,
 * which takes positional arguments (these run once per layer per step).
 *
 * Cache layout per layer: `k`, `v` bf16 [pages, pageSize, kvHeads, headDim]; `pageTable` i32
 * [S, maxPagesPerSeq] (page ids of each sequence slot). headDim 64 or 128, any GQA ratio, pageSize a multiple
 * of 16 (64 recommended: one page per 64-position K/V tile of the prefill kernel).
 */
import { QError } from '@q/core';
import { callNative, type DeviceTensor, type Stream, streamHandle, useDevice } from './device';
import { needAligned, needDtype, needRank2, needShape, sameDevice, shapeText } from './ops';

/** The head sizes the kernels are built for. */
export const ATTENTION_HEAD_DIMS: readonly number[] = [64, 128];

/** The fields both attention entry points share. */
export interface AttentionCommonOptions {
  /**
   * bf16 [rows, width]: query head h of row r at element r·qStride + h·headDim, so `q` may be a fused qkv
   * tensor (q heads first) with qStride its width.
   */
  q: DeviceTensor;
  /** Elements between rows of q, a multiple of 8, ≥ numHeads·headDim (default: q's width). */
  qStride?: number;
  /** bf16 [pages, pageSize, kvHeads, headDim]. */
  k: DeviceTensor;
  /** bf16 [pages, pageSize, kvHeads, headDim], the shape of k. */
  v: DeviceTensor;
  /** i32 [S, maxPagesPerSeq]: page ids of each sequence. */
  pageTable: DeviceTensor;
  /** i32 [S]: positions of each sequence in the cache after this step (what attention reads). */
  contextLens: DeviceTensor;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  /** Softmax scale, usually 1/√headDim. */
  scale: number;
  /** bf16 [rows, numHeads·headDim]. */
  out: DeviceTensor;
  stream?: Stream;
}

/** Options of `attentionPrefill`. */
export interface AttentionPrefillOptions extends AttentionCommonOptions {
  /** i32 [S+1]: token offsets of each sequence in q/out (prefix sums of the new-token counts). */
  qStart: DeviceTensor;
  /** i32 [T]: absolute position of each token; token t attends to cache positions ≤ positions[t]. */
  positions: DeviceTensor;
  /** ≥ the largest new-token count of any sequence (sizes the grid; a smaller value is correct but slower). */
  maxQLen: number;
}

/** Options of `attentionDecode`. */
export interface AttentionDecodeOptions extends AttentionCommonOptions {
  /** f32 scratch of at least `attentionDecodeWorkspaceBytes(S, numHeads, headDim, maxContext)` bytes. */
  workspace: DeviceTensor;
  /**
   * The largest context of any sequence this launch (or CUDA graph) serves; fixes the grid. Positions past it
   * are not read. At most maxPagesPerSeq·pageSize.
   */
  maxContext: number;
}

interface Geometry {
  device: number;
  rows: number;
  qStride: number;
  s: number;
  maxPages: number;
  pageSize: number;
}

/** Native arguments 0..6 of both entry points (csrc/attention/glue.cc ReadQKv). */
function qkvArgs(o: AttentionCommonOptions, g: Geometry): (bigint | number)[] {
  return [o.q.ptr, g.qStride, o.k.ptr, o.v.ptr, o.pageTable.ptr, g.maxPages, g.pageSize];
}

function needInt(op: string, name: string, v: number, min: number): void {
  if (!Number.isInteger(v) || v < min) {
    throw new QError('E_ARG', `${op}: Expected an integer ≥ ${min} for ${name} but received ${String(v)}`);
  }
}

function checkCommon(op: string, o: AttentionCommonOptions, extra: Record<string, DeviceTensor>): Geometry {
  needInt(op, 'numHeads', o.numHeads, 1);
  needInt(op, 'numKvHeads', o.numKvHeads, 1);
  if (o.numHeads % o.numKvHeads !== 0) {
    throw new QError(
      'E_ARG',
      `${op}: Expected numHeads a multiple of numKvHeads=${o.numKvHeads} but received ${o.numHeads}`,
    );
  }
  if (!ATTENTION_HEAD_DIMS.includes(o.headDim)) {
    throw new QError('E_UNSUPPORTED', `${op}: Expected headDim 64 or 128 but received ${String(o.headDim)}`);
  }
  if (typeof o.scale !== 'number' || !Number.isFinite(o.scale) || !(o.scale > 0)) {
    throw new QError('E_ARG', `${op}: Expected a positive finite scale but received ${String(o.scale)}`);
  }
  const hd = o.headDim;
  const qWidth = o.numHeads * hd;

  needDtype(op, 'q', o.q, ['bf16']);
  const [rows, width] = needRank2(op, 'q', o.q);
  const qStride = o.qStride ?? width;
  if (!Number.isInteger(qStride) || qStride % 8 !== 0 || qStride < qWidth) {
    throw new QError(
      'E_ARG',
      `${op}: Expected qStride a multiple of 8 and ≥ numHeads·headDim=${qWidth} but received ${String(qStride)}`,
    );
  }
  if (rows > 0 && (rows - 1) * qStride + qWidth > rows * width) {
    throw new QError(
      'E_SHAPE',
      `${op}: Expected q to hold ${rows} rows of stride ${qStride} (${(rows - 1) * qStride + qWidth} elements) but received ${shapeText(o.q)}`,
    );
  }

  needDtype(op, 'k', o.k, ['bf16']);
  needDtype(op, 'v', o.v, ['bf16']);
  if (o.k.shape.length !== 4) {
    throw new QError(
      'E_SHAPE',
      `${op}: Expected k of shape [pages, pageSize, ${o.numKvHeads}, ${hd}] but received ${shapeText(o.k)}`,
    );
  }
  const [pages, pageSize] = o.k.shape as [number, number, number, number];
  needShape(op, 'k', o.k, [pages, pageSize, o.numKvHeads, hd], ' ([pages, pageSize, numKvHeads, headDim])');
  needShape(op, 'v', o.v, o.k.shape, ' (that of k)');
  if (pageSize % 16 !== 0 || pageSize === 0) {
    throw new QError('E_UNSUPPORTED', `${op}: Expected a pageSize multiple of 16 but received ${pageSize}`);
  }

  needDtype(op, 'pageTable', o.pageTable, ['i32']);
  const [s, maxPages] = needRank2(op, 'pageTable', o.pageTable);
  if (s < 1 || maxPages < 1) {
    throw new QError(
      'E_SHAPE',
      `${op}: Expected pageTable [S ≥ 1, maxPagesPerSeq ≥ 1] but received ${shapeText(o.pageTable)}`,
    );
  }
  needDtype(op, 'contextLens', o.contextLens, ['i32']);
  needShape(op, 'contextLens', o.contextLens, [s], ' ([S], S = pageTable rows)');
  needDtype(op, 'out', o.out, ['bf16']);
  needShape(op, 'out', o.out, [rows, qWidth], ' ([rows of q, numHeads·headDim])');

  const device = sameDevice(op, {
    q: o.q,
    k: o.k,
    v: o.v,
    pageTable: o.pageTable,
    contextLens: o.contextLens,
    out: o.out,
    ...extra,
  });
  needAligned(op, 'q', o.q, 16);
  needAligned(op, 'k', o.k, 16);
  needAligned(op, 'v', o.v, 16);
  needAligned(op, 'out', o.out, 4);
  needAligned(op, 'pageTable', o.pageTable, 4);
  needAligned(op, 'contextLens', o.contextLens, 4);
  return { device, rows, qStride, s, maxPages, pageSize };
}

/**
 * Causal attention of a ragged batch of new tokens over a paged KV cache (their own K/V already written):
 * sequence s owns rows qStart[s]..qStart[s+1]-1 of q and out and reads cache positions [0, contextLens[s]);
 * token t attends to positions ≤ positions[t], so a chunk continues a sequence with cached positions.
 * FlashAttention-2 manner on bf16 tensor cores (f32 softmax, no [S, S] matrix). Asynchronous on `stream`,
 * CUDA-graph capturable.
 *
 * @example
 * ```ts
 * attentionPrefill({ q: qkv, qStride: qkv.shape[1], k, v, pageTable, qStart, contextLens, positions,
 *   numHeads: 32, numKvHeads: 8, headDim: 128, scale: 1 / Math.sqrt(128), out, maxQLen: 2048 });
 * ```
 */
export function attentionPrefill(o: AttentionPrefillOptions): void {
  const op = 'attentionPrefill';
  const g = checkCommon(op, o, { qStart: o.qStart, positions: o.positions });
  needDtype(op, 'qStart', o.qStart, ['i32']);
  needShape(op, 'qStart', o.qStart, [g.s + 1], ' ([S+1], S = pageTable rows)');
  needDtype(op, 'positions', o.positions, ['i32']);
  needShape(op, 'positions', o.positions, [g.rows], ' ([T], T = rows of q)');
  if (g.rows < 1) throw new QError('E_SHAPE', `${op}: Expected at least one token in q but received 0 rows`);
  if (!Number.isInteger(o.maxQLen) || o.maxQLen < 1 || o.maxQLen > g.rows) {
    throw new QError(
      'E_ARG',
      `${op}: Expected an integer maxQLen in [1, ${g.rows}] (T = rows of q) but received ${String(o.maxQLen)}`,
    );
  }
  needAligned(op, 'qStart', o.qStart, 4);
  needAligned(op, 'positions', o.positions, 4);
  useDevice(g.device);
  callNative(op, (b) =>
    b.attentionPrefill(
      ...qkvArgs(o, g),
      o.qStart.ptr,
      o.contextLens.ptr,
      o.positions.ptr,
      g.s,
      o.numHeads,
      o.numKvHeads,
      o.headDim,
      o.scale,
      o.out.ptr,
      o.maxQLen,
      streamHandle(o.stream),
    ),
  );
}

/**
 * Positions per split block of `attentionDecode`: 64, doubled (up to 512) while the batch has more than 128
 * (sequence, chunk) pairs per KV head, so batch 1 with a long context runs many blocks per KV head (32
 * chunks of 64 at 2048) and large batches keep their blocks long.
 *
 * @example
 * ```ts
 * attentionDecodeChunkSize(1, 2048); // 64
 * attentionDecodeChunkSize(64, 2048); // 512
 * ```
 */
export function attentionDecodeChunkSize(s: number, maxContext: number): number {
  let chunk = 64;
  while (chunk < 512 && s * Math.ceil(maxContext / chunk) > 128) chunk *= 2;
  return chunk;
}

/**
 * Bytes of the f32 workspace `attentionDecode` needs: for each sequence, head and context chunk a max, a sum
 * and headDim partial outputs.
 *
 * @example
 * ```ts
 * const ws = DeviceTensor.alloc('f32', [attentionDecodeWorkspaceBytes(8, 32, 128, 4096) / 4]);
 * ```
 */
export function attentionDecodeWorkspaceBytes(
  s: number,
  numHeads: number,
  headDim: number,
  maxContext: number,
): number {
  const op = 'attentionDecodeWorkspaceBytes';
  needInt(op, 'S', s, 1);
  needInt(op, 'numHeads', numHeads, 1);
  needInt(op, 'headDim', headDim, 1);
  needInt(op, 'maxContext', maxContext, 1);
  const chunks = Math.ceil(maxContext / attentionDecodeChunkSize(s, maxContext));
  return s * numHeads * chunks * (headDim + 2) * 4;
}

/**
 * Attention of one new token per sequence (q row s belongs to sequence s) over a paged KV cache,
 * flash-decoding: the context is split into chunks processed by separate blocks (all query heads of a KV head
 * in one block), then combined. The grid depends only on S and `maxContext`, so one CUDA graph serves every
 * step whose contexts are ≤ maxContext. Asynchronous on `stream`.
 *
 * @example
 * ```ts
 * const ws = DeviceTensor.alloc('f32', [attentionDecodeWorkspaceBytes(s, 32, 128, 4096) / 4]);
 * attentionDecode({ q, k, v, pageTable, contextLens, numHeads: 32, numKvHeads: 32, headDim: 128,
 *   scale: 1 / Math.sqrt(128), out, workspace: ws, maxContext: 4096 });
 * ```
 */
export function attentionDecode(o: AttentionDecodeOptions): void {
  const op = 'attentionDecode';
  const g = checkCommon(op, o, { workspace: o.workspace });
  if (g.rows !== g.s) {
    throw new QError(
      'E_SHAPE',
      `${op}: Expected one query row per sequence (${g.s} = pageTable rows) in q but received ${g.rows}`,
    );
  }
  const capacity = g.maxPages * g.pageSize;
  if (!Number.isInteger(o.maxContext) || o.maxContext < 1 || o.maxContext > capacity) {
    throw new QError(
      'E_ARG',
      `${op}: Expected an integer maxContext in [1, ${capacity}] (maxPagesPerSeq·pageSize) but received ${String(o.maxContext)}`,
    );
  }
  needDtype(op, 'workspace', o.workspace, ['f32']);
  const need = attentionDecodeWorkspaceBytes(g.s, o.numHeads, o.headDim, o.maxContext);
  if (o.workspace.byteLength < need) {
    throw new QError(
      'E_SHAPE',
      `${op}: Expected a workspace of ≥ ${need} bytes (S=${g.s}, numHeads=${o.numHeads}, headDim=${o.headDim}, maxContext=${o.maxContext}) but received ${o.workspace.byteLength}`,
    );
  }
  needAligned(op, 'workspace', o.workspace, 4);
  useDevice(g.device);
  callNative(op, (b) =>
    b.attentionDecode(
      ...qkvArgs(o, g),
      o.contextLens.ptr,
      g.s,
      o.numHeads,
      o.numKvHeads,
      o.headDim,
      o.scale,
      o.out.ptr,
      o.workspace.ptr,
      o.workspace.byteLength,
      o.maxContext,
      attentionDecodeChunkSize(g.s, o.maxContext),
      streamHandle(o.stream),
    ),
  );
}
