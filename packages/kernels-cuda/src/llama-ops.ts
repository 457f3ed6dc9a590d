/**
 * The Llama-layer kernels (csrc/llama/) as typed functions: embedding gather, RMSNorm with the residual add
 * fused, RoPE fused with the paged KV-cache write, SwiGLU, and sampling. Each validates its arguments here, in
 * TypeScript, with QErrors naming the numbers, then queues one kernel on `stream` through positional native
 * arguments. Every kernel is CUDA-graph capturable, so a decode step can be captured once and replayed.
 */
import { QError } from '@q/core';
import { callNative, type DeviceTensor, type Stream, streamHandle, useDevice } from './device';
import { needAligned, needDtype, needRank2, needShape, sameDevice, shapeText } from './ops';

/** How a norm or activation kernel writes its output: int8 by @q/quant's rule, with a static or per-token scale. */
export type ActQuantMode = 'static' | 'dynamic';

const MODE_BF16 = 0;
const MODE_STATIC = 1;
const MODE_DYNAMIC = 2;

/** The largest vocabulary `sample` takes: its 40-bit fixed-point masses must sum below 2^63. */
export const SAMPLE_MAX_VOCAB = 2 ** 23;

function needRank1(op: string, name: string, t: DeviceTensor, n: number): void {
  needShape(op, name, t, [n]);
}

function needInt(op: string, name: string, v: number, min: number): void {
  if (!Number.isInteger(v) || v < min) {
    throw new QError('E_ARG', `${op}: Expected an integer ≥ ${min} for ${name} but received ${String(v)}`);
  }
}

interface OutPlan {
  mode: number;
  ldo: number;
  staticScale: number;
  scales: bigint;
}

/**
 * Checks an activation output: bf16 [T, n] (no mode), or i8 [T, ldo ≥ n] with mode 'static' (staticScale) or
 * 'dynamic' (scales f32 [T]).
 */
function outPlan(
  op: string,
  o: { out: DeviceTensor; mode?: ActQuantMode; staticScale?: number; scales?: DeviceTensor },
  t: number,
  n: number,
): OutPlan {
  needDtype(op, 'out', o.out, ['bf16', 'i8']);
  if (o.out.dtype === 'bf16') {
    if (o.mode !== undefined) {
      throw new QError(
        'E_ARG',
        `${op}: Expected no mode for a bf16 out (mode quantizes to an i8 out) but received ${String(o.mode)}`,
      );
    }
    needShape(op, 'out', o.out, [t, n]);
    return { mode: MODE_BF16, ldo: n, staticScale: 0, scales: 0n };
  }
  const [rows, ldo] = needRank2(op, 'out', o.out);
  if (rows !== t || ldo < n) {
    throw new QError(
      'E_SHAPE',
      `${op}: Expected out of shape [${t}, ≥${n}] but received ${shapeText(o.out)}`,
    );
  }
  if (o.mode === 'static') {
    const s = o.staticScale;
    if (typeof s !== 'number' || !Number.isFinite(s) || !(Math.fround(s) > 0)) {
      throw new QError(
        'E_ARG',
        `${op}: Expected a positive finite staticScale for mode 'static' but received ${String(s)}`,
      );
    }
    return { mode: MODE_STATIC, ldo, staticScale: Math.fround(s), scales: 0n };
  }
  if (o.mode === 'dynamic') {
    if (o.scales === undefined) {
      throw new QError(
        'E_ARG',
        `${op}: Expected scales (f32 [${t}]) for mode 'dynamic' but received undefined`,
      );
    }
    needDtype(op, 'scales', o.scales, ['f32']);
    needRank1(op, 'scales', o.scales, t);
    return { mode: MODE_DYNAMIC, ldo, staticScale: 0, scales: needAligned(op, 'scales', o.scales, 4) };
  }
  throw new QError(
    'E_ARG',
    `${op}: Expected mode 'static' or 'dynamic' for an i8 out but received ${String(o.mode)}`,
  );
}

/** Options of `embedding`. */
export interface EmbeddingOptions {
  /** i32 [T]: token ids, each in [0, V) (an id outside writes a row of zeros). */
  ids: DeviceTensor;
  /** bf16 [V, d]: the embedding table. */
  table: DeviceTensor;
  /** f32 [T, d]: the residual stream. */
  out: DeviceTensor;
  stream?: Stream;
}

/**
 * Embedding gather `out[t] = f32(table[ids[t]])`. Asynchronous on `stream`.
 *
 * @example
 * ```ts
 * embedding({ ids, table: embedTokens, out: x, stream });
 * ```
 */
export function embedding(o: EmbeddingOptions): void {
  const op = 'embedding';
  needDtype(op, 'ids', o.ids, ['i32']);
  needDtype(op, 'table', o.table, ['bf16']);
  needDtype(op, 'out', o.out, ['f32']);
  if (o.ids.shape.length !== 1)
    throw new QError('E_SHAPE', `${op}: Expected a 1-D tensor [T] for ids but received ${shapeText(o.ids)}`);
  const t = o.ids.shape[0] as number;
  const [v, d] = needRank2(op, 'table', o.table);
  needShape(op, 'out', o.out, [t, d]);
  const device = sameDevice(op, { ids: o.ids, table: o.table, out: o.out });
  const ids = needAligned(op, 'ids', o.ids, 4);
  const table = needAligned(op, 'table', o.table, 2);
  const out = needAligned(op, 'out', o.out, 4);
  const s = streamHandle(o.stream);
  useDevice(device);
  callNative(op, (b) => b.llamaEmbedding(ids, table, out, t, d, v, s));
}

/** Options of `addRmsNorm`. */
export interface AddRmsNormOptions {
  /** f32 [T, d]: the residual stream; `x += r` is written back when `r` is given. */
  x: DeviceTensor;
  /** bf16 [T, d]: the block output to add to x first. */
  r?: DeviceTensor;
  /** f32 [d]: the norm weight (with the LAE division folded in for an int8 out). */
  gain: DeviceTensor;
  /** RMSNorm epsilon (finite, ≥ 0). */
  eps: number;
  /** bf16 [T, d], or i8 [T, ldq ≥ d] (columns d..ldq-1 written as 0) with `mode`. */
  out: DeviceTensor;
  /** For an i8 out: a static per-tensor scale or per-token dynamic scales. */
  mode?: ActQuantMode;
  /** The calibrated f32 scale of mode 'static' (> 0). */
  staticScale?: number;
  /** f32 [T]: the per-token scales written in mode 'dynamic'. */
  scales?: DeviceTensor;
  stream?: Stream;
}

/**
 * RMSNorm with the residual add fused: `x += r; out = x / rms(x) · gain`, written as bf16 or quantized to int8
 * exactly by @q/quant's activation rule (the same rounding as `quantizeAct`). Asynchronous on `stream`.
 *
 * @example
 * ```ts
 * addRmsNorm({ x, r: attnOut, gain: postAttnNorm, eps: 1e-5, out: q8, mode: 'dynamic', scales, stream });
 * ```
 */
export function addRmsNorm(o: AddRmsNormOptions): void {
  const op = 'addRmsNorm';
  needDtype(op, 'x', o.x, ['f32']);
  const [t, d] = needRank2(op, 'x', o.x);
  if (o.r !== undefined) {
    needDtype(op, 'r', o.r, ['bf16']);
    needShape(op, 'r', o.r, [t, d]);
  }
  needDtype(op, 'gain', o.gain, ['f32']);
  needRank1(op, 'gain', o.gain, d);
  if (typeof o.eps !== 'number' || !Number.isFinite(o.eps) || o.eps < 0)
    throw new QError('E_ARG', `${op}: Expected a finite eps ≥ 0 but received ${String(o.eps)}`);
  const plan = outPlan(op, o, t, d);
  const device = sameDevice(op, {
    x: o.x,
    r: o.r,
    gain: o.gain,
    out: o.out,
    scales: plan.mode === MODE_DYNAMIC ? o.scales : undefined,
  });
  const x = needAligned(op, 'x', o.x, 4);
  const r = o.r === undefined ? 0n : needAligned(op, 'r', o.r, 2);
  const gain = needAligned(op, 'gain', o.gain, 4);
  const out = needAligned(op, 'out', o.out, o.out.dtype === 'bf16' ? 2 : 1);
  const s = streamHandle(o.stream);
  useDevice(device);
  callNative(op, (b) =>
    b.llamaAddRmsNorm(x, r, gain, o.eps, out, plan.ldo, plan.mode, plan.staticScale, plan.scales, t, d, s),
  );
}

/** Options of `siluMul`. */
export interface SiluMulOptions {
  /** bf16 [T, 2·ff]: gate projection in columns 0..ff-1, up projection in ff..2ff-1. */
  gateUp: DeviceTensor;
  /** bf16 [T, ff], or i8 [T, ldq ≥ ff] (columns ff..ldq-1 written as 0) with `mode`. */
  out: DeviceTensor;
  mode?: ActQuantMode;
  staticScale?: number;
  /** f32 [T]: the per-token scales written in mode 'dynamic'. */
  scales?: DeviceTensor;
  stream?: Stream;
}

/**
 * SwiGLU `out = silu(gate) · up`, written as bf16 or quantized to int8 for down_proj (static or per-token, as
 * `quantizeAct`). Asynchronous on `stream`.
 *
 * @example
 * ```ts
 * siluMul({ gateUp, out: q8, mode: 'static', staticScale: 0.02, stream });
 * ```
 */
export function siluMul(o: SiluMulOptions): void {
  const op = 'siluMul';
  needDtype(op, 'gateUp', o.gateUp, ['bf16']);
  const [t, ff2] = needRank2(op, 'gateUp', o.gateUp);
  if (ff2 % 2 !== 0)
    throw new QError(
      'E_SHAPE',
      `${op}: Expected an even number of columns (gate and up) for gateUp but received ${shapeText(o.gateUp)}`,
    );
  const ff = ff2 / 2;
  const plan = outPlan(op, o, t, ff);
  const device = sameDevice(op, {
    gateUp: o.gateUp,
    out: o.out,
    scales: plan.mode === MODE_DYNAMIC ? o.scales : undefined,
  });
  const gu = needAligned(op, 'gateUp', o.gateUp, 2);
  const out = needAligned(op, 'out', o.out, o.out.dtype === 'bf16' ? 2 : 1);
  const s = streamHandle(o.stream);
  useDevice(device);
  callNative(op, (b) =>
    b.llamaSiluMul(gu, out, plan.ldo, plan.mode, plan.staticScale, plan.scales, t, ff, s),
  );
}

/** Options of `ropeKvWrite`. */
export interface RopeKvWriteOptions {
  /** bf16 [T, (numHeads + 2·numKvHeads)·headDim]: q heads, k heads, v heads; q and k are rotated in place. */
  qkv: DeviceTensor;
  /** i32 [T]: the absolute position of each token. */
  positions: DeviceTensor;
  /** i32 [T]: the sequence (a row of pageTable) of each token. */
  seqOfToken: DeviceTensor;
  /** i32 [S, maxPagesPerSeq]: the page ids of each sequence. */
  pageTable: DeviceTensor;
  /** bf16 [pages, pageSize, numKvHeads, headDim]: this layer's key cache. */
  k: DeviceTensor;
  /** bf16 [pages, pageSize, numKvHeads, headDim]: this layer's value cache. */
  v: DeviceTensor;
  /** f32 [headDim / 2]: rotary frequencies with theta and any linear or llama3 scaling folded in. */
  invFreq: DeviceTensor;
  numHeads: number;
  numKvHeads: number;
  /** A multiple of 16 up to 256 (64 and 128 are the Llama head sizes). */
  headDim: number;
  /** 'interleaved': pairs (2i, 2i+1) (Meta checkpoints); 'half': pairs (i, i + headDim/2) (Hugging Face). */
  style: 'interleaved' | 'half';
  stream?: Stream;
}

/**
 * RoPE on the q and k heads of a fused qkv projection (in place), then k and v written into the paged KV cache
 * at each token's (sequence, position). Tokens whose page lies outside the table or pool are not written.
 * Asynchronous on `stream`.
 *
 * @example
 * ```ts
 * ropeKvWrite({ qkv, positions, seqOfToken, pageTable, k: kCache[l], v: vCache[l], invFreq,
 *   numHeads: 32, numKvHeads: 8, headDim: 128, style: 'half', stream });
 * ```
 */
export function ropeKvWrite(o: RopeKvWriteOptions): void {
  const op = 'ropeKvWrite';
  needInt(op, 'numHeads', o.numHeads, 1);
  needInt(op, 'numKvHeads', o.numKvHeads, 1);
  needInt(op, 'headDim', o.headDim, 2);
  const { numHeads: nh, numKvHeads: nkv, headDim: hd } = o;
  if (nh % nkv !== 0)
    throw new QError(
      'E_ARG',
      `${op}: Expected numHeads a multiple of numKvHeads but received numHeads=${nh}, numKvHeads=${nkv}`,
    );
  if (hd % 16 !== 0 || hd > 256)
    throw new QError(
      'E_UNSUPPORTED',
      `${op}: Expected headDim a multiple of 16 up to 256 but received ${hd}`,
    );
  if (o.style !== 'interleaved' && o.style !== 'half')
    throw new QError(
      'E_ARG',
      `${op}: Expected style 'interleaved' or 'half' but received ${String(o.style)}`,
    );
  needDtype(op, 'qkv', o.qkv, ['bf16']);
  const [t] = needRank2(op, 'qkv', o.qkv);
  needShape(op, 'qkv', o.qkv, [t, (nh + 2 * nkv) * hd], ` ((numHeads + 2·numKvHeads)·headDim)`);
  for (const [name, x] of [
    ['positions', o.positions],
    ['seqOfToken', o.seqOfToken],
  ] as const) {
    needDtype(op, name, x, ['i32']);
    needRank1(op, name, x, t);
  }
  needDtype(op, 'pageTable', o.pageTable, ['i32']);
  const [seqs, maxPages] = needRank2(op, 'pageTable', o.pageTable);
  needDtype(op, 'k', o.k, ['bf16']);
  if (o.k.shape.length !== 4)
    throw new QError(
      'E_SHAPE',
      `${op}: Expected a 4-D tensor [pages, pageSize, ${nkv}, ${hd}] for k but received ${shapeText(o.k)}`,
    );
  const [pages, pageSize] = o.k.shape as [number, number, number, number];
  needShape(op, 'k', o.k, [pages, pageSize, nkv, hd], ' ([pages, pageSize, numKvHeads, headDim])');
  needDtype(op, 'v', o.v, ['bf16']);
  needShape(op, 'v', o.v, o.k.shape, ' (that of k)');
  if (pageSize < 1)
    throw new QError('E_SHAPE', `${op}: Expected pageSize ≥ 1 for k but received ${shapeText(o.k)}`);
  needDtype(op, 'invFreq', o.invFreq, ['f32']);
  needRank1(op, 'invFreq', o.invFreq, hd / 2);
  const device = sameDevice(op, {
    qkv: o.qkv,
    positions: o.positions,
    seqOfToken: o.seqOfToken,
    pageTable: o.pageTable,
    k: o.k,
    v: o.v,
    invFreq: o.invFreq,
  });
  const qkv = needAligned(op, 'qkv', o.qkv, 16);
  const positions = needAligned(op, 'positions', o.positions, 4);
  const seqOfToken = needAligned(op, 'seqOfToken', o.seqOfToken, 4);
  const pageTable = needAligned(op, 'pageTable', o.pageTable, 4);
  const k = needAligned(op, 'k', o.k, 16);
  const v = needAligned(op, 'v', o.v, 16);
  const invFreq = needAligned(op, 'invFreq', o.invFreq, 4);
  const half = o.style === 'half' ? 1 : 0;
  const s = streamHandle(o.stream);
  useDevice(device);
  callNative(op, (b) =>
    b.llamaRopeKvWrite(
      qkv,
      positions,
      seqOfToken,
      pageTable,
      k,
      v,
      invFreq,
      t,
      nh,
      nkv,
      hd,
      seqs,
      maxPages,
      pages,
      pageSize,
      half,
      s,
    ),
  );
}

/** Options of `sample`. */
export interface SampleOptions {
  /** f32 [B, V], V ≤ 2^23. */
  logits: DeviceTensor;
  /** f32 [B]: 0 (or less) = greedy argmax, lowest index on ties. */
  temperature: DeviceTensor;
  /** i32 [B]: keep the k largest logits (0 = all). */
  topK: DeviceTensor;
  /** f32 [B]: keep the smallest set of largest-probability tokens whose mass reaches p (1 = all). */
  topP: DeviceTensor;
  /** i32 [B]: the seed of each row's random stream (read as u32). */
  seeds: DeviceTensor;
  /** i32 [B]: the step of each row (its counter): the same seed and step give the same token. */
  steps: DeviceTensor;
  /** i32 [B]: the sampled token ids. */
  out: DeviceTensor;
  stream?: Stream;
}

/**
 * One token per row of logits, on the device: greedy, or a draw from softmax(logits / temperature) restricted
 * to top-k, then top-p, with a counter-based (Philox) random stream per row. Asynchronous on `stream`; all
 * per-row settings live on the device, so a captured graph serves any mix of them.
 *
 * @example
 * ```ts
 * sample({ logits, temperature, topK, topP, seeds, steps, out: nextIds, stream });
 * ```
 */
export function sample(o: SampleOptions): void {
  const op = 'sample';
  needDtype(op, 'logits', o.logits, ['f32']);
  const [rows, vocab] = needRank2(op, 'logits', o.logits);
  if (vocab < 1 || vocab > SAMPLE_MAX_VOCAB)
    throw new QError(
      'E_UNSUPPORTED',
      `${op}: Expected a vocabulary in [1, ${SAMPLE_MAX_VOCAB}] for logits but received ${shapeText(o.logits)}`,
    );
  const perRow = [
    ['temperature', o.temperature, 'f32'],
    ['topK', o.topK, 'i32'],
    ['topP', o.topP, 'f32'],
    ['seeds', o.seeds, 'i32'],
    ['steps', o.steps, 'i32'],
    ['out', o.out, 'i32'],
  ] as const;
  for (const [name, x, dtype] of perRow) {
    needDtype(op, name, x, [dtype]);
    needRank1(op, name, x, rows);
  }
  const device = sameDevice(op, {
    logits: o.logits,
    temperature: o.temperature,
    topK: o.topK,
    topP: o.topP,
    seeds: o.seeds,
    steps: o.steps,
    out: o.out,
  });
  const logits = needAligned(op, 'logits', o.logits, 4);
  const [temperature, topK, topP, seeds, steps, out] = perRow.map(([name, x]) => needAligned(op, name, x, 4));
  const s = streamHandle(o.stream);
  useDevice(device);
  callNative(op, (b) =>
    b.llamaSample(
      logits,
      temperature as bigint,
      topK as bigint,
      topP as bigint,
      seeds as bigint,
      steps as bigint,
      out as bigint,
      rows,
      vocab,
      s,
    ),
  );
}
