/**
 * The device layout of a model, decided on the host before anything is read or allocated: which linear layers
 * run as bf16 cuBLAS GEMMs and which as W4A8, how q/k/v and gate/up are fused along N, and how shapes the
 * kernels cannot take are zero-padded (head dim to 64 or 128, the MLP width to a multiple of 16, K to the
 * GEMM's tile). Pure functions of the config and tensor shapes, so every decision is testable without a GPU.
 */
import { type DType, type ModelConfig, QError } from '@q/core';
import type { ActQuantMode, GemmScaleMode, Int4Weights, LayerPlan } from '@q/quant';

/** What a loader gives for one tensor without reading it. */
export interface TensorInfo {
  readonly dtype: DType;
  readonly shape: readonly number[];
}

/** Rounds v up to a multiple of m. */
export function roundUp(v: number, m: number): number {
  return Math.ceil(v / m) * m;
}

/**
 * The head dimension the attention kernels run at: 64 or 128 (smaller heads are zero-padded).
 *
 * @example
 * ```ts
 * paddedHeadDim(8); // 64 (stories260K)
 * paddedHeadDim(128); // 128
 * ```
 */
export function paddedHeadDim(headDim: number): number {
  if (headDim <= 64) return 64;
  if (headDim <= 128) return 128;
  throw new QError(
    'E_UNSUPPORTED',
    `Expected a head dimension of at most 128 (the attention kernels' limit) for config.headDim but received ${headDim}`,
  );
}

/**
 * Where each row of a padded head block comes from: `map[newRow]` is the source row, or -1 for a zero row.
 * RoPE in the 'half' style rotates pairs (i, i + hd/2), so the second half of each head moves to P/2 to keep
 * the pairs (i, i + P/2) of the padded head; padded pairs get frequency 0 (see `paddedInvFreq`).
 *
 * @example
 * ```ts
 * headRowMap(1, 4, 8, 'half', true); // Int32Array [0, 1, -1, -1, 2, 3, -1, -1]
 * ```
 */
export function headRowMap(
  heads: number,
  hd: number,
  P: number,
  style: 'interleaved' | 'half',
  rope: boolean,
): Int32Array {
  const map = new Int32Array(heads * P).fill(-1);
  for (let h = 0; h < heads; h++) {
    for (let j = 0; j < hd; j++) {
      const dst = rope && style === 'half' && j >= hd / 2 ? P / 2 + (j - hd / 2) : j;
      map[h * P + dst] = h * hd + j;
    }
  }
  return map;
}

/**
 * RoPE inverse frequencies for the padded head: the model's `hd/2` values, then zeros (identity rotation of
 * the zero-padded pairs), as f32 [P/2].
 *
 * @example
 * ```ts
 * paddedInvFreq(Float64Array.of(1, 0.1), 8); // Float32Array [1, 0.1, 0, 0]
 * ```
 */
export function paddedInvFreq(invFreq: Float64Array, P: number): Float32Array {
  const out = new Float32Array(P / 2);
  out.set(invFreq);
  return out;
}

/** A row (or column) map for concatenated blocks: `map[new] = source index` or -1. */
function concatMaps(parts: readonly { map: Int32Array; offset: number }[]): Int32Array {
  const total = parts.reduce((a, p) => a + p.map.length, 0);
  const out = new Int32Array(total);
  let o = 0;
  for (const p of parts) {
    for (let i = 0; i < p.map.length; i++) {
      const v = p.map[i] as number;
      out[o + i] = v < 0 ? -1 : v + p.offset;
    }
    o += p.map.length;
  }
  return out;
}

function identityPad(n: number, nP: number): Int32Array {
  const m = new Int32Array(nP).fill(-1);
  for (let i = 0; i < n; i++) m[i] = i;
  return m;
}

/** The padded sizes of a model on the device. */
export interface DeviceDims {
  readonly d: number;
  readonly hd: number;
  /** Padded head dim (64 or 128). */
  readonly P: number;
  readonly nh: number;
  readonly nkv: number;
  readonly ff: number;
  /** ff rounded up to a multiple of 16. */
  readonly ffP: number;
  /** (nh + 2 nkv) P: the fused q/k/v width. */
  readonly qkvN: number;
  readonly vocab: number;
}

/**
 * The padded dimensions of a config (throws E_UNSUPPORTED for a hidden size that is not a multiple of 16,
 * which no released Llama-family model has: the residual stream itself cannot be padded without changing RMSNorm).
 *
 * @example
 * ```ts
 * deviceDims(stories260KConfig); // { d: 64, hd: 8, P: 64, ff: 172, ffP: 176, qkvN: 1024, ... }
 * ```
 */
export function deviceDims(c: ModelConfig): DeviceDims {
  if (c.hiddenSize % 16 !== 0)
    throw new QError(
      'E_UNSUPPORTED',
      `Expected a hidden size that is a multiple of 16 (the GEMMs' N) for config.hiddenSize but received ${c.hiddenSize}`,
    );
  const P = paddedHeadDim(c.headDim);
  return {
    d: c.hiddenSize,
    hd: c.headDim,
    P,
    nh: c.numHeads,
    nkv: c.numKvHeads,
    ff: c.intermediateSize,
    ffP: roundUp(c.intermediateSize, 16),
    qkvN: (c.numHeads + 2 * c.numKvHeads) * P,
    vocab: c.vocabSize,
  };
}

/**
 * Row maps of the fused projections: q/k/v rows into [(nh + 2 nkv) P] (q and k RoPE-aware, v plain, each
 * offset into the concatenation q ‖ k ‖ v of the source rows), and gate/up rows into [2 ffP].
 *
 * @example
 * ```ts
 * fusedRowMaps(config, dims).qkv.length; // dims.qkvN
 * ```
 */
export function fusedRowMaps(c: ModelConfig, dims: DeviceDims): { qkv: Int32Array; gateUp: Int32Array } {
  const { hd, P, nh, nkv, ff, ffP } = dims;
  const qkv = concatMaps([
    { map: headRowMap(nh, hd, P, c.ropeStyle, true), offset: 0 },
    { map: headRowMap(nkv, hd, P, c.ropeStyle, true), offset: nh * hd },
    { map: headRowMap(nkv, hd, P, c.ropeStyle, false), offset: (nh + nkv) * hd },
  ]);
  const gateUp = concatMaps([
    { map: identityPad(ff, ffP), offset: 0 },
    { map: identityPad(ff, ffP), offset: ff },
  ]);
  return { qkv, gateUp };
}

/** Column map of o_proj's input: the attention output [nh P] back to the model's [nh hd] (v heads are not permuted). */
export function oColumnMap(dims: DeviceDims): Int32Array {
  return headRowMap(dims.nh, dims.hd, dims.P, 'interleaved', false);
}

/**
 * Pads a row-major float matrix [n, k] to [rowMap.length, colMap.length] (maps give the source index or -1).
 *
 * @example
 * ```ts
 * padMatrix(Float32Array.of(1, 2, 3, 4), 2, 2, Int32Array.of(1, -1), null); // [3, 4, 0, 0]
 * ```
 */
export function padMatrix(
  w: Float32Array,
  n: number,
  k: number,
  rowMap: Int32Array | null,
  colMap: Int32Array | null,
): Float32Array {
  if (w.length !== n * k)
    throw new QError(
      'E_SHAPE',
      `Expected ${n * k} values ([${n}, ${k}]) for padMatrix but received ${w.length}`,
    );
  const nN = rowMap ? rowMap.length : n;
  const nK = colMap ? colMap.length : k;
  const out = new Float32Array(nN * nK);
  for (let r = 0; r < nN; r++) {
    const src = rowMap ? (rowMap[r] as number) : r;
    if (src < 0) continue;
    if (src >= n) throw new QError('E_INTERNAL', `padMatrix: row map points at row ${src} of ${n}`);
    if (!colMap) out.set(w.subarray(src * k, (src + 1) * k), r * nK);
    else
      for (let c = 0; c < nK; c++) {
        const sc = colMap[c] as number;
        if (sc >= 0) out[r * nK + c] = w[src * k + sc] as number;
      }
  }
  return out;
}

/** Pads a vector [n] by a row map. */
export function padVector(v: Float32Array, map: Int32Array): Float32Array {
  const out = new Float32Array(map.length);
  for (let i = 0; i < map.length; i++) {
    const s = map[i] as number;
    if (s >= 0) out[i] = v[s] as number;
  }
  return out;
}

function nibble(packed: Uint8Array, idx: number): number {
  const b = packed[idx >> 1] as number;
  return (idx & 1) === 0 ? b & 0xf : b >> 4;
}

/**
 * The new K layout of an int4 layer whose input columns move (`colMap[newCol]` = source column or -1):
 * per-channel weights take any map (K rounded up to 16); group-wise weights keep their groups, so each group
 * of G source columns must land in one group of G' columns: the map is built group-aligned by `oGroupLayout`.
 */
export interface Int4ColumnLayout {
  readonly kPadded: number;
  readonly groupSize: number;
  readonly colMap: Int32Array;
}

/**
 * The K layout of o_proj on the device: the attention output [nh P] with padded heads, grouped so that each
 * source group (whole heads) stays one group. Throws E_UNSUPPORTED when a group does not hold whole heads.
 *
 * @example
 * ```ts
 * oGroupLayout(dims, 128, 64).groupSize; // 8 heads of 8 → 1 group of 512 for stories260K with P = 64
 * ```
 */
export function oGroupLayout(dims: DeviceDims, kPadded: number, groupSize: number): Int4ColumnLayout {
  const { nh, hd, P } = dims;
  const K = nh * hd;
  const groups = kPadded / groupSize;
  if (P === hd && kPadded % 16 === 0) return { kPadded, groupSize, colMap: identityPad(kPadded, kPadded) };
  if (groups === 1) {
    const newK = roundUp(nh * P, 16);
    const map = new Int32Array(newK).fill(-1);
    map.set(oColumnMap(dims));
    return { kPadded: newK, groupSize: newK, colMap: map };
  }
  if (groupSize % hd !== 0)
    throw new QError(
      'E_UNSUPPORTED',
      `Expected a group size holding whole heads (a multiple of headDim ${hd}) for padding o_proj's heads to ${P} but received groupSize ${groupSize}`,
    );
  const perGroup = groupSize / hd;
  const g2 = perGroup * P;
  const map = new Int32Array(groups * g2).fill(-1);
  for (let c = 0; c < map.length; c++) {
    const grp = Math.floor(c / g2);
    const within = c % g2;
    const head = grp * perGroup + Math.floor(within / P);
    const j = within % P;
    if (j < hd && head < nh) {
      const src = head * hd + j;
      if (src < K) map[c] = src;
    }
  }
  return { kPadded: groups * g2, groupSize: g2, colMap: map };
}

/**
 * Re-lays int4 weights: rows by `rowMap` (a zero row, scale 0, where -1) over the concatenation of `parts`,
 * columns by `cols` (group structure given by the layout). All parts must share kPadded, groupSize, symmetry
 * and Integer Scale presence (checked by the caller's plan).
 *
 * @example
 * ```ts
 * const qkv = remapInt4([q, k, v], fusedRowMaps(config, dims).qkv, null);
 * ```
 */
export function remapInt4(
  parts: readonly Int4Weights[],
  rowMap: Int32Array | null,
  cols: Int4ColumnLayout | null,
): Int4Weights {
  const first = parts[0];
  if (!first) throw new QError('E_INTERNAL', 'remapInt4: no parts');
  const srcRows: { w: Int4Weights; r: number }[] = [];
  for (const w of parts) for (let r = 0; r < w.n; r++) srcRows.push({ w, r });
  const map = rowMap ?? Int32Array.from(srcRows, (_, i) => i);
  const n = map.length;
  const kIn = first.kPadded;
  const kOut = cols ? cols.kPadded : kIn;
  const gIn = first.groupSize;
  const gOut = cols ? cols.groupSize : gIn;
  const groups = kIn / gIn;
  if (kOut / gOut !== groups)
    throw new QError('E_INTERNAL', `remapInt4: ${groups} groups in, ${kOut / gOut} out`);
  const packed = new Uint8Array(Math.ceil((n * kOut) / 2));
  const scales = new Float32Array(n * groups);
  const iq = first.intScale ? new Int32Array(n * groups) : undefined;
  const unit = first.intScale ? new Float32Array(n) : undefined;
  const chan = first.intScale ? new Float32Array(n) : undefined;
  for (let r = 0; r < n; r++) {
    const s = map[r] as number;
    if (s < 0) continue;
    const src = srcRows[s];
    if (!src) throw new QError('E_INTERNAL', `remapInt4: row map points at row ${s} of ${srcRows.length}`);
    const { w, r: sr } = src;
    if (w.kPadded !== kIn || w.groupSize !== gIn || !!w.intScale !== !!first.intScale)
      throw new QError('E_INTERNAL', 'remapInt4: parts differ in layout');
    for (let c = 0; c < kOut; c++) {
      const sc = cols ? (cols.colMap[c] as number) : c;
      if (sc < 0) continue;
      const v = nibble(w.packed, sr * kIn + sc);
      const idx = r * kOut + c;
      packed[idx >> 1] = (packed[idx >> 1] as number) | ((idx & 1) === 0 ? v : v << 4);
    }
    scales.set(w.scales.subarray(sr * groups, (sr + 1) * groups), r * groups);
    if (iq && unit && chan && w.intScale) {
      iq.set(w.intScale.q.subarray(sr * groups, (sr + 1) * groups), r * groups);
      unit[r] = w.intScale.unit[sr] as number;
      chan[r] = w.intScale.channelScale[sr] as number;
    }
  }
  const kReal = cols ? kOut : first.k;
  return {
    format: 'int4',
    n,
    k: Math.min(kReal, kOut),
    kPadded: kOut,
    groupSize: gOut,
    symmetric: first.symmetric,
    packed,
    scales,
    ...(iq && unit && chan && first.intScale
      ? { intScale: { amplifierBits: first.intScale.amplifierBits, q: iq, channelScale: chan, unit } }
      : {}),
  };
}

/** How one fused linear group runs on the device. */
export type LinearKind =
  | { readonly kind: 'bf16' }
  | {
      readonly kind: 'w4a8';
      readonly act: Exclude<ActQuantMode, 'none'>;
      readonly staticScale?: number;
      readonly mode: GemmScaleMode;
      /** K of the int8 activations (the device weights' kPadded). */
      readonly kPadded: number;
      readonly groupSize: number;
      readonly intScale: boolean;
    };

/** The four GEMMs of one decoder layer. */
export interface LayerLayout {
  readonly qkv: LinearKind;
  readonly o: LinearKind;
  readonly gateUp: LinearKind;
  readonly down: LinearKind;
  readonly qkvBias: boolean;
}

/** Layout of a whole model, and its device bytes. */
export interface ModelLayout {
  readonly dims: DeviceDims;
  readonly layers: readonly LayerLayout[];
  readonly tiedHead: boolean;
  /** Bytes of every weight on the device. */
  readonly weightBytes: number;
}

/** Bytes `packForGemm` + `uploadGemmWeights` put on the device for int4 weights [n, kPadded]. */
export function int4DeviceBytes(n: number, kPadded: number, groups: number, intScale: boolean): number {
  const packed = n * Math.ceil(kPadded / 64) * 32;
  return packed + n * groups * 4 + (intScale ? n * groups * 4 + n * 4 : 0);
}

/** The plan of one quantized linear as stored: its plan and the int4 layout read from tensor shapes. */
export interface StoredLinear {
  readonly name: string;
  readonly format: 'int4' | 'int8' | 'f32';
  readonly n: number;
  readonly k: number;
  readonly kPadded: number;
  readonly groupSize: number;
  readonly symmetric: boolean;
  readonly intScale: boolean;
  readonly plan: LayerPlan;
  readonly bias: boolean;
}

/**
 * The kind of a fused group from its members' stored layers: W4A8 when every member is symmetric int4 with a
 * quantized activation and the members agree (act, static scale, layout); bf16 when every member is f32.
 * Anything else has no GPU kernel: E_UNSUPPORTED naming the recipe and the layer.
 */
export function groupKind(members: readonly StoredLinear[], recipe: string): LinearKind {
  const first = members[0];
  if (!first) throw new QError('E_INTERNAL', 'groupKind: no members');
  if (members.every((m) => m.format === 'f32')) return { kind: 'bf16' };
  for (const m of members) {
    if (m.format === 'int8')
      throw new QError(
        'E_UNSUPPORTED',
        `Expected int4 or float weights for ${m.name} but received int8: no GPU kernel for recipe ${recipe} (W8A8 runs on the CPU only)`,
      );
    if (m.format !== 'int4' || m.plan.act === 'none')
      throw new QError(
        'E_UNSUPPORTED',
        `Expected int8 activations (a static or dynamic plan) for ${m.name} but received act '${m.plan.act}': no GPU kernel for recipe ${recipe} (weight-only int4 runs on the CPU only)`,
      );
    if (!m.symmetric)
      throw new QError(
        'E_UNSUPPORTED',
        `Expected symmetric int4 weights for ${m.name} but received asymmetric ones: no GPU kernel for recipe ${recipe}`,
      );
    if (
      m.plan.act !== first.plan.act ||
      m.plan.staticScale !== first.plan.staticScale ||
      m.kPadded !== first.kPadded ||
      m.groupSize !== first.groupSize ||
      m.intScale !== first.intScale
    )
      throw new QError(
        'E_UNSUPPORTED',
        `Expected ${members.map((x) => x.name).join(', ')} (one shared input) to share the activation plan and int4 layout but ${m.name} differs from ${first.name}`,
      );
  }
  const groups = first.kPadded / first.groupSize;
  const mode: GemmScaleMode = first.intScale
    ? 'group-int'
    : first.kPadded === first.groupSize
      ? 'per-channel'
      : 'group-float';
  if (groups > 1 && first.groupSize % 64 !== 0)
    throw new QError(
      'E_UNSUPPORTED',
      `Expected an int4 group size that is a multiple of 64 (the GEMM's k tile) for ${first.name} but received ${first.groupSize}`,
    );
  return {
    kind: 'w4a8',
    act: first.plan.act as 'static' | 'dynamic',
    ...(first.plan.act === 'static' && first.plan.staticScale !== undefined
      ? { staticScale: first.plan.staticScale }
      : {}),
    mode,
    kPadded: first.kPadded,
    groupSize: first.groupSize,
    intScale: first.intScale,
  };
}
