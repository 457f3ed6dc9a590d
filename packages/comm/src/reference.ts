/**
 * The two-step quantized all-reduce of Flash Communication, as an exact single-process reference.
 *
 * ## Semantics (bit-exact contract for the CPU workers and the CUDA kernels)
 * With `n` elements, `W` ranks and group size `G`:
 * 1. Split: `C = ceil(ceil(n / W) / G) * G` elements per chunk; chunk `j` covers `[j*C, min(n, (j+1)*C))` and may
 *    be short or empty. Only the chunk holding element `n-1` can end in a partial group.
 * 2. Every rank widens its input to f32 exactly (f16/bf16 through @q/core) and quantizes every chunk, its own
 *    included (rules in quantize.ts), into a chunk record (`wireLayout`).
 * 3. All-to-all: rank `j` receives chunk `j`'s record from every rank.
 * 4. Rank `j` dequantizes the `W` records and sums them in f32 in rank order: `acc = d_0`, then
 *    `acc = f32(acc + d_r)` for `r = 1 .. W-1`.
 * 5. Rank `j` requantizes `acc` with the same scheme.
 * 6. All-gather of the reduced records; every rank dequantizes all of them (its own too), so every rank holds the
 *    same bits, then rounds f32 to the output dtype (round-to-nearest-even; f32 output is kept as is).
 * Unquantized (`wire: 'none'`): `out = dtype(f32 sum in rank order)`.
 * A one-shot kernel that reads every rank's records and reduces all chunks locally gives the same bits, since
 * steps 4-6 are deterministic functions of the records.
 */
import {
  bf16ArrayToF32,
  f16ArrayToF32,
  f32ArrayToBf16,
  f32ArrayToF16,
  QError,
  relativeError as relativeErrorF64,
} from '@q/core';
import { checkScheme, codeBytes, dequantizeInto, type QuantScheme, quantizeInto } from './quantize';

/** What travels between ranks: int8 or int4 codes with scales, or the input dtype unchanged. */
export type WireFormat = 'int8' | 'int4' | 'none';

/** dtypes an all-reduce takes and returns. */
export type PayloadDType = 'f32' | 'f16' | 'bf16';

/** A host payload: f32 values, or raw f16/bf16 bits. */
export type HostPayload = Float32Array | Uint16Array;

/** Options of the quantized all-reduce. */
export interface QuantOptions {
  /** Default 'int8'. */
  readonly wire?: WireFormat;
  /** Default false (asymmetric: scale and zero point per group). */
  readonly symmetric?: boolean;
  /** Default 128. */
  readonly groupSize?: number;
}

/** Byte layout of the chunk records of one all-reduce. */
export interface WireLayout {
  readonly n: number;
  readonly world: number;
  readonly scheme: QuantScheme;
  /** Elements per chunk `C` (a multiple of groupSize). */
  readonly chunkElems: number;
  readonly groupsPerChunk: number;
  /** Record: codes at 0, f32 scales at `scalesOffset`, u8 zeros at `zerosOffset` (asymmetric), 16-byte aligned. */
  readonly scalesOffset: number;
  readonly zerosOffset: number;
  readonly recordBytes: number;
}

const align16 = (b: number) => Math.ceil(b / 16) * 16;

/**
 * Resolves options into a scheme (bits from the wire format).
 *
 * @example
 * ```ts
 * schemeOf({ wire: 'int4' }) // { bits: 4, symmetric: false, groupSize: 128 }
 * ```
 */
export function schemeOf(opts: QuantOptions = {}): QuantScheme {
  const wire = opts.wire ?? 'int8';
  if (wire !== 'int8' && wire !== 'int4') {
    throw new QError('E_ARG', `Expected 'int8' or 'int4' for wire but received ${String(wire)}`);
  }
  const scheme = {
    bits: wire === 'int8' ? 8 : 4,
    symmetric: opts.symmetric ?? false,
    groupSize: opts.groupSize ?? 128,
  } as const;
  checkScheme(scheme, 'options');
  return scheme;
}

/**
 * The chunk split and record layout that every implementation uses.
 *
 * @example
 * ```ts
 * const l = wireLayout(8192, 4, { bits: 8, symmetric: false, groupSize: 128 });
 * l.chunkElems // 2048
 * ```
 */
export function wireLayout(n: number, world: number, scheme: QuantScheme): WireLayout {
  if (!Number.isInteger(n) || n < 1)
    throw new QError('E_ARG', `Expected a positive element count for n but received ${n}`);
  if (!Number.isInteger(world) || world < 1) {
    throw new QError('E_ARG', `Expected a positive integer for world but received ${world}`);
  }
  const g = scheme.groupSize;
  const chunkElems = Math.ceil(Math.ceil(n / world) / g) * g;
  const groupsPerChunk = chunkElems / g;
  const scalesOffset = align16(codeBytes(chunkElems, scheme.bits));
  const zerosOffset = scalesOffset + 4 * groupsPerChunk;
  const recordBytes = align16(zerosOffset + (scheme.symmetric ? 0 : groupsPerChunk));
  return { n, world, scheme, chunkElems, groupsPerChunk, scalesOffset, zerosOffset, recordBytes };
}

/**
 * Elements that chunk `j` really holds (0 for a chunk past the end).
 *
 * @example
 * ```ts
 * chunkLength(wireLayout(1000, 4, DEFAULT_SCHEME), 3) // 232
 * ```
 */
export function chunkLength(layout: WireLayout, j: number): number {
  return Math.max(0, Math.min(layout.n, (j + 1) * layout.chunkElems) - j * layout.chunkElems);
}

function recordViews(layout: WireLayout, record: Uint8Array) {
  const { scalesOffset, zerosOffset, groupsPerChunk } = layout;
  return {
    codes: record.subarray(0, scalesOffset),
    scales: new Float32Array(record.buffer, record.byteOffset + scalesOffset, groupsPerChunk),
    zeros: record.subarray(zerosOffset, zerosOffset + (layout.scheme.symmetric ? 0 : groupsPerChunk)),
  };
}

/**
 * Step 2: quantizes chunk `j` of `x` into `record` (recordBytes, 4-byte aligned).
 *
 * @example
 * ```ts
 * const rec = new Uint8Array(layout.recordBytes);
 * encodeChunk(x, layout, 0, rec);
 * ```
 */
export function encodeChunk(x: Float32Array, layout: WireLayout, j: number, record: Uint8Array): void {
  const v = recordViews(layout, record);
  record.fill(0, 0, layout.recordBytes);
  quantizeInto(x, j * layout.chunkElems, chunkLength(layout, j), layout.scheme, v.codes, v.scales, v.zeros);
}

/**
 * Step 6: dequantizes chunk `j`'s record into `out` at the chunk's position.
 *
 * @example
 * ```ts
 * decodeChunk(rec, layout, 0, out);
 * ```
 */
export function decodeChunk(record: Uint8Array, layout: WireLayout, j: number, out: Float32Array): void {
  const v = recordViews(layout, record);
  dequantizeInto(
    v.codes,
    v.scales,
    v.zeros,
    chunkLength(layout, j),
    layout.scheme,
    out,
    j * layout.chunkElems,
  );
}

/**
 * Steps 4-5: dequantize-sum in rank order, then requantize into `out`. `scratch` holds chunkElems f32.
 *
 * @example
 * ```ts
 * reduceChunk([recFromRank0, recFromRank1], layout, j, reducedRec);
 * ```
 */
export function reduceChunk(
  records: readonly Uint8Array[],
  layout: WireLayout,
  j: number,
  out: Uint8Array,
  scratch = new Float32Array(layout.chunkElems),
): void {
  const len = chunkLength(layout, j);
  const part = new Float32Array(len);
  records.forEach((rec, r) => {
    const v = recordViews(layout, rec);
    dequantizeInto(v.codes, v.scales, v.zeros, len, layout.scheme, r === 0 ? scratch : part, 0);
    if (r > 0)
      for (let i = 0; i < len; i++) scratch[i] = Math.fround((scratch[i] as number) + (part[i] as number));
  });
  const o = recordViews(layout, out);
  out.fill(0, 0, layout.recordBytes);
  quantizeInto(scratch, 0, len, layout.scheme, o.codes, o.scales, o.zeros);
}

/**
 * Widens a payload to f32 (exact), rejecting non-finite values.
 *
 * @example
 * ```ts
 * toF32(new Uint16Array([0x3f80]), 'bf16') // Float32Array [1]
 * ```
 */
export function toF32(x: HostPayload, dtype: PayloadDType, name = 'input'): Float32Array {
  let f: Float32Array;
  if (dtype === 'f32') {
    if (!(x instanceof Float32Array))
      throw new QError(
        'E_DTYPE',
        `Expected a Float32Array for ${name} (f32) but received ${x.constructor.name}`,
      );
    f = x;
  } else {
    if (!(x instanceof Uint16Array)) {
      throw new QError(
        'E_DTYPE',
        `Expected a Uint16Array of ${dtype} bits for ${name} but received ${x.constructor.name}`,
      );
    }
    f = dtype === 'f16' ? f16ArrayToF32(x) : bf16ArrayToF32(x);
  }
  for (let i = 0; i < f.length; i++) {
    if (!Number.isFinite(f[i])) {
      throw new QError('E_NUMERIC', `Expected finite values for ${name} but received ${f[i]} at index ${i}`);
    }
  }
  return f;
}

/**
 * Rounds f32 values to the payload dtype (round-to-nearest-even).
 *
 * @example
 * ```ts
 * fromF32(Float32Array.of(1), 'bf16') // Uint16Array [0x3f80]
 * ```
 */
export function fromF32(x: Float32Array, dtype: PayloadDType): HostPayload {
  if (dtype === 'f32') return x;
  return dtype === 'f16' ? f32ArrayToF16(x) : f32ArrayToBf16(x);
}

/**
 * Checks that every rank's payload has the same length; returns it.
 *
 * @example
 * ```ts
 * commonLength([new Float32Array(4), new Float32Array(4)]) // 4
 * ```
 */
export function commonLength(inputs: readonly HostPayload[]): number {
  if (inputs.length === 0)
    throw new QError('E_ARG', 'Expected at least one rank input for inputs but received none');
  const n = inputs[0]?.length ?? 0;
  inputs.forEach((x, r) => {
    if (x.length !== n) {
      throw new QError(
        'E_COMM',
        `Expected ${n} elements for rank ${r}'s input (as rank 0) but received ${x.length}`,
      );
    }
  });
  if (n === 0) throw new QError('E_ARG', 'Expected a non-empty payload for inputs but received 0 elements');
  return n;
}

/**
 * The all-reduce result every rank must get, computed in one process (the semantics in this file's header).
 *
 * @example
 * ```ts
 * const a = new Float32Array([1, 2, 3]), b = new Float32Array([0.5, -1, 4]);
 * allReduceReference([a, b], 'f32', { wire: 'int8' }); // ≈ [1.5, 1, 7]
 * ```
 */
export function allReduceReference(
  inputs: readonly HostPayload[],
  dtype: PayloadDType,
  opts: QuantOptions = {},
): HostPayload {
  const n = commonLength(inputs);
  const xs = inputs.map((x, r) => toF32(x, dtype, `inputs[${r}]`));
  const world = xs.length;
  if ((opts.wire ?? 'int8') === 'none') {
    const acc = new Float32Array(xs[0] as Float32Array);
    for (let r = 1; r < world; r++) {
      const x = xs[r] as Float32Array;
      for (let i = 0; i < n; i++) acc[i] = Math.fround((acc[i] as number) + (x[i] as number));
    }
    return fromF32(acc, dtype);
  }
  const layout = wireLayout(n, world, schemeOf(opts));
  const rb = layout.recordBytes;
  // records[r] holds rank r's W chunk records back to back: the all-to-all send buffer.
  const records = xs.map((x) => {
    const buf = new Uint8Array(rb * world);
    for (let j = 0; j < world; j++) encodeChunk(x, layout, j, buf.subarray(j * rb, (j + 1) * rb));
    return buf;
  });
  const reduced = new Uint8Array(rb * world);
  for (let j = 0; j < world; j++) {
    reduceChunk(
      records.map((b) => b.subarray(j * rb, (j + 1) * rb)),
      layout,
      j,
      reduced.subarray(j * rb, (j + 1) * rb),
    );
  }
  const out = new Float32Array(n);
  for (let j = 0; j < world; j++) decodeChunk(reduced.subarray(j * rb, (j + 1) * rb), layout, j, out);
  return fromF32(out, dtype);
}

/**
 * The exact sum of the ranks' inputs in float64, for error reports.
 *
 * @example
 * ```ts
 * exactSum([new Float32Array([1]), new Float32Array([2])], 'f32') // Float64Array [3]
 * ```
 */
export function exactSum(inputs: readonly HostPayload[], dtype: PayloadDType): Float64Array {
  const n = commonLength(inputs);
  const out = new Float64Array(n);
  for (const [r, x] of inputs.entries()) {
    const f = toF32(x, dtype, `inputs[${r}]`);
    for (let i = 0; i < n; i++) out[i] = (out[i] as number) + (f[i] as number);
  }
  return out;
}

/**
 * ‖out − ref‖₂ / ‖ref‖₂ (`@q/core`'s `relativeError`) with `out` widened from its dtype.
 *
 * @example
 * ```ts
 * relativeError(new Float32Array([1.01]), 'f32', Float64Array.of(1)) // ≈ 0.01
 * ```
 */
export function relativeError(out: HostPayload, dtype: PayloadDType, ref: Float64Array): number {
  const f =
    dtype === 'f32'
      ? (out as Float32Array)
      : dtype === 'f16'
        ? f16ArrayToF32(out as Uint16Array)
        : bf16ArrayToF32(out as Uint16Array);
  return relativeErrorF64(f.subarray(0, ref.length), ref);
}
