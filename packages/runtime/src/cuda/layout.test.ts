import { type ModelConfig, QError, Rng, Tensor } from '@q/core';
import { gemmModeFor, gemmW4A8Golden, quantizeInt4, toIntegerScale } from '@q/quant';
import { describe, expect, it } from 'vitest';
import { matmulT } from '../cpu/gemm';
import { RopeTable, rmsNorm, ropeInvFreq, softmaxInPlace } from '../cpu/ops';
import { layerLinearNames, Model } from '../model';
import { randomWeights, smallConfig } from '../testing/random-model';
import { PageAllocator } from './cache';
import { decodeBucket, metaLayout } from './graph-runner';
import {
  deviceDims,
  fusedRowMaps,
  groupKind,
  headRowMap,
  oColumnMap,
  oGroupLayout,
  paddedInvFreq,
  padMatrix,
  padVector,
  remapInt4,
  type StoredLinear,
} from './layout';

function seedOf(label: string): number {
  const seed = process.env.Q_TEST_SEED ? Number(process.env.Q_TEST_SEED) : (Date.now() ^ 0x5bd1e995) >>> 0;
  console.log(`${label}: seed ${seed}`);
  return seed;
}

/**
 * The forward pass exactly as the GPU model lays it out (fused, zero-padded q/k/v, heads padded to P with the
 * RoPE-aware row order, o_proj columns padded, MLP width padded), in f32 on the CPU: it must equal the CPU Model.
 */
async function paddedForward(
  c: ModelConfig,
  w: Map<string, Tensor<'f32'>>,
  ids: readonly number[],
): Promise<Float32Array> {
  const dims = deviceDims(c);
  const { d, hd, P, nh, nkv, ff, ffP, qkvN } = dims;
  const maps = fusedRowMaps(c, dims);
  const get = (n: string): Float32Array => (w.get(n) as Tensor<'f32'>).data;
  const cat = (...xs: Float32Array[]): Float32Array => {
    const out = new Float32Array(xs.reduce((a, x) => a + x.length, 0));
    let o = 0;
    for (const x of xs) {
      out.set(x, o);
      o += x.length;
    }
    return out;
  };
  const rope = new RopeTable(Float64Array.from(paddedInvFreq(ropeInvFreq(c), P)));
  const T = ids.length;
  const x = new Float32Array(T * d);
  ids.forEach((t, r) => {
    x.set(get('model.embed_tokens.weight').subarray(t * d, (t + 1) * d), r * d);
  });
  const downCols = new Int32Array(ffP).fill(-1);
  for (let j = 0; j < ff; j++) downCols[j] = j;
  for (let l = 0; l < c.numLayers; l++) {
    const [q, k, v, o, g, u, dn] = layerLinearNames(l);
    const wqkv = padMatrix(
      cat(get(`${q}.weight`), get(`${k}.weight`), get(`${v}.weight`)),
      (nh + 2 * nkv) * hd,
      d,
      maps.qkv,
      null,
    );
    const bqkv = c.attentionBias
      ? padVector(cat(get(`${q}.bias`), get(`${k}.bias`), get(`${v}.bias`)), maps.qkv)
      : null;
    const wo = padMatrix(get(`${o}.weight`), d, nh * hd, null, oColumnMap(dims));
    const wgu = padMatrix(cat(get(`${g}.weight`), get(`${u}.weight`)), 2 * ff, d, maps.gateUp, null);
    const wd = padMatrix(get(`${dn}.weight`), d, ff, null, downCols);
    const p = `model.layers.${l}`;
    const h = rmsNorm(x, T, d, get(`${p}.input_layernorm.weight`), c.rmsNormEps);
    const qkv = await matmulT(h, T, d, wqkv, qkvN, bqkv);
    for (let r = 0; r < T; r++) {
      rope.apply(qkv, r * qkvN, nh, r, c.ropeStyle);
      rope.apply(qkv, r * qkvN + nh * P, nkv, r, c.ropeStyle);
    }
    const att = new Float32Array(T * nh * P);
    const scores = new Float64Array(T);
    for (let r = 0; r < T; r++)
      for (let hh = 0; hh < nh; hh++) {
        const kvh = Math.floor(hh / (nh / nkv));
        for (let s = 0; s <= r; s++) {
          let acc = 0;
          for (let i = 0; i < P; i++)
            acc += (qkv[r * qkvN + hh * P + i] as number) * (qkv[s * qkvN + (nh + kvh) * P + i] as number);
          scores[s] = acc / Math.sqrt(hd);
        }
        softmaxInPlace(scores, 0, r + 1);
        for (let i = 0; i < P; i++) {
          let acc = 0;
          for (let s = 0; s <= r; s++)
            acc += (scores[s] as number) * (qkv[s * qkvN + (nh + nkv + kvh) * P + i] as number);
          att[r * nh * P + hh * P + i] = acc;
        }
      }
    const ao = await matmulT(att, T, nh * P, wo, d);
    for (let i = 0; i < x.length; i++) x[i] = (x[i] as number) + (ao[i] as number);
    const h2 = rmsNorm(x, T, d, get(`${p}.post_attention_layernorm.weight`), c.rmsNormEps);
    const gu = await matmulT(h2, T, d, wgu, 2 * ffP);
    const act = new Float32Array(T * ffP);
    for (let r = 0; r < T; r++)
      for (let j = 0; j < ffP; j++) {
        const a = gu[r * 2 * ffP + j] as number;
        act[r * ffP + j] = (a / (1 + Math.exp(-a))) * (gu[r * 2 * ffP + ffP + j] as number);
      }
    const dd = await matmulT(act, T, ffP, wd, d);
    for (let i = 0; i < x.length; i++) x[i] = (x[i] as number) + (dd[i] as number);
  }
  const hf = rmsNorm(x, T, d, get('model.norm.weight'), c.rmsNormEps);
  const head = c.tieWordEmbeddings ? get('model.embed_tokens.weight') : get('lm_head.weight');
  return await matmulT(hf, T, d, head, c.vocabSize);
}

describe('GPU layout (padding, fusion) reproduces the CPU model', () => {
  for (const [style, hd, ff, bias] of [
    ['half', 8, 44, true],
    ['interleaved', 8, 48, false],
    ['half', 64, 40, true],
    ['half', 96, 36, false],
  ] as const) {
    it(`ropeStyle ${style}, headDim ${hd}, ff ${ff}, bias ${bias}`, async () => {
      const seed = seedOf(`layout ${style} ${hd}`);
      const c = smallConfig({
        ropeStyle: style,
        headDim: hd,
        hiddenSize: 32,
        intermediateSize: ff,
        attentionBias: bias,
      });
      const w = randomWeights(c, seed);
      const rng = new Rng(seed + 1);
      const ids = Array.from({ length: 7 }, () => rng.int(c.vocabSize));
      const ref = await Model.fromFloatWeights(c, w).forward([ids]);
      const got = await paddedForward(c, w, ids);
      let maxErr = 0;
      let maxRef = 0;
      for (let i = 0; i < ref.length; i++) {
        maxErr = Math.max(maxErr, Math.abs((got[i] as number) - (ref[i] as number)));
        maxRef = Math.max(maxRef, Math.abs(ref[i] as number));
      }
      // Both are f32 with float64 dot products; only summation order differs.
      expect(maxErr).toBeLessThanOrEqual(1e-4 * Math.max(1, maxRef));
    });
  }

  it('headRowMap keeps RoPE pairs of the half layout at distance P/2', () => {
    const m = headRowMap(2, 4, 8, 'half', true);
    expect([...m]).toEqual([0, 1, -1, -1, 2, 3, -1, -1, 4, 5, -1, -1, 6, 7, -1, -1]);
    expect([...headRowMap(1, 4, 8, 'interleaved', true)]).toEqual([0, 1, 2, 3, -1, -1, -1, -1]);
  });

  it('deviceDims pads heads to 64/128 and refuses a hidden size the GEMMs cannot take', () => {
    expect(deviceDims(smallConfig({ headDim: 8 })).P).toBe(64);
    expect(deviceDims(smallConfig({ headDim: 128 })).P).toBe(128);
    expect(() => deviceDims(smallConfig({ headDim: 256 }))).toThrow(/at most 128/);
    expect(() => deviceDims(smallConfig({ hiddenSize: 36 }))).toThrow(QError);
  });
});

describe('int4 re-layout keeps the exact W4A8 result', () => {
  for (const [groupSize, intScale] of [
    [64, true],
    [128, false],
    ['channel', false],
  ] as const) {
    it(`o_proj with heads padded 8 → 64, group ${groupSize}, intScale ${intScale}`, () => {
      const seed = seedOf(`int4 o ${groupSize}`);
      const rng = new Rng(seed);
      const c = smallConfig({ headDim: 8, numHeads: 16, numKvHeads: 4, hiddenSize: 128 });
      const dims = deviceDims(c);
      const K = dims.nh * dims.hd;
      const n = dims.d;
      const w = Float32Array.from({ length: n * K }, () => rng.normal() * 0.05);
      let q = quantizeInt4(w, n, K, { groupSize });
      if (intScale) q = { ...q, intScale: toIntegerScale(q, { amplifierBits: 8 }) };
      const cols = oGroupLayout(dims, q.kPadded, q.groupSize);
      const padded = remapInt4([q], null, cols);
      const m = 3;
      const a = new Int8Array(m * q.kPadded);
      for (let r = 0; r < m; r++) for (let j = 0; j < K; j++) a[r * q.kPadded + j] = rng.int(255) - 127;
      const ap = new Int8Array(m * padded.kPadded);
      for (let r = 0; r < m; r++)
        for (let cc = 0; cc < padded.kPadded; cc++) {
          const s = cols.colMap[cc] as number;
          if (s >= 0) ap[r * padded.kPadded + cc] = a[r * q.kPadded + s] as number;
        }
      const aScales = Float32Array.from({ length: m }, () => 0.01 + rng.next() * 0.02);
      const mode = gemmModeFor(q);
      expect(gemmModeFor(padded)).toBe(mode);
      expect(padded.kPadded % 16).toBe(0);
      const ref = gemmW4A8Golden({ a, aScales, m, weights: q, mode });
      const got = gemmW4A8Golden({ a: ap, aScales, m, weights: padded, mode });
      expect([...got]).toEqual([...ref]);
    });
  }

  it('fused q/k/v rows equal the three separate layers (zero rows where padded)', () => {
    const seed = seedOf('int4 qkv');
    const rng = new Rng(seed);
    const c = smallConfig({ headDim: 8, hiddenSize: 64, numHeads: 4, numKvHeads: 2 });
    const dims = deviceDims(c);
    const mk = (n: number) =>
      quantizeInt4(
        Float32Array.from({ length: n * dims.d }, () => rng.normal()),
        n,
        dims.d,
        { groupSize: 64 },
      );
    const parts = [mk(dims.nh * dims.hd), mk(dims.nkv * dims.hd), mk(dims.nkv * dims.hd)];
    const map = fusedRowMaps(c, dims).qkv;
    const fused = remapInt4(parts, map, null);
    expect(fused.n).toBe(dims.qkvN);
    const m = 2;
    const a = Int8Array.from({ length: m * 64 }, () => rng.int(255) - 127);
    const aScales = Float32Array.of(0.02, 0.03);
    const outs = parts.map((p) => gemmW4A8Golden({ a, aScales, m, weights: p, mode: 'group-float' }));
    const ref = new Float32Array(m * parts.reduce((s, p) => s + p.n, 0));
    const N0 = ref.length / m;
    for (let r = 0; r < m; r++) {
      let o = 0;
      outs.forEach((out, i) => {
        const n = (parts[i] as { n: number }).n;
        ref.set(out.subarray(r * n, (r + 1) * n), r * N0 + o);
        o += n;
      });
    }
    const got = gemmW4A8Golden({ a, aScales, m, weights: fused, mode: 'group-float' });
    for (let r = 0; r < m; r++)
      for (let j = 0; j < fused.n; j++) {
        const s = map[j] as number;
        expect(got[r * fused.n + j]).toBe(s < 0 ? 0 : ref[r * N0 + s]);
      }
  });
});

describe('plans the GPU refuses name the recipe', () => {
  const base: StoredLinear = {
    name: 'model.layers.0.self_attn.q_proj',
    format: 'int4',
    n: 64,
    k: 64,
    kPadded: 128,
    groupSize: 128,
    symmetric: true,
    intScale: true,
    bias: false,
    plan: { name: 'model.layers.0.self_attn.q_proj', range: 3, act: 'static', lae: false, staticScale: 0.02 },
  };
  it('w4a16 (act none) and w8a8 (int8) have no GPU kernel', () => {
    expect(() => groupKind([{ ...base, plan: { ...base.plan, act: 'none' } }], 'w4a16')).toThrow(
      /no GPU kernel for recipe w4a16/,
    );
    expect(() => groupKind([{ ...base, format: 'int8' }], 'w8a8')).toThrow(/no GPU kernel for recipe w8a8/);
  });
  it('members of one fused GEMM must share their plan', () => {
    const other = { ...base, name: 'k', plan: { ...base.plan, name: 'k', staticScale: 0.03 } };
    expect(() => groupKind([base, other], 'fptq')).toThrow(/share the activation plan/);
    expect(groupKind([base, { ...base, name: 'k' }], 'fptq')).toMatchObject({
      kind: 'w4a8',
      mode: 'group-int',
      act: 'static',
    });
  });
});

describe('paged cache bookkeeping and step metadata', () => {
  it('PageAllocator hands out every page once and refuses past the pool', () => {
    const a = new PageAllocator(3);
    const got = [a.alloc(), a.alloc(), a.alloc()];
    expect(new Set(got).size).toBe(3);
    expect(() => a.alloc()).toThrow(/all are in use/);
    a.free([got[1] as number]);
    expect(a.alloc()).toBe(got[1]);
    expect(a.inUse).toBe(3);
  });
  it('decode buckets and metadata regions', () => {
    expect([1, 2, 3, 5, 64, 65, 128, 129].map(decodeBucket)).toEqual([1, 2, 4, 8, 64, 128, 128, undefined]);
    const L = metaLayout(2048, 8, 256);
    expect(L.contextLens - L.qStart).toBe(9);
    expect(L.pageTable).toBe(3 * 2048 + 9 + 6 * 8);
    expect(L.total).toBe(L.pageTable + 8 * 256);
  });
});

void Tensor;
