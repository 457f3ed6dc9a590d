/**
 * Paged attention on the GPU against a dense float64 reference on the same bf16-rounded inputs: one ragged
 * batch with contexts {1, 17, 511, 2048} (fresh prefills and chunks that continue cached prefixes), random
 * non-contiguous page tables with poisoned unused entries, NaN in every cache slot no sequence owns, GQA ratios
 * 1, 4 and 8, headDim 64 and 128, pages of 16 and 64.
 *
 * Tolerance: a plain implementation (bf16 inputs, f32 dot products, softmax and accumulation, bf16 output) is
 * computed here on the same inputs; the GPU's largest error against float64 must be at most twice the plain
 * one's plus 2^-9 (P is rounded to bf16 on the tensor cores, which a plain implementation does not do).
 * Outputs are poisoned with NaN before each run, so an element not written fails the check.
 */
import { bf16BitsToF32, f32ToBf16Bits, Rng } from '@q/core';
import {
  attentionDecode,
  attentionDecodeWorkspaceBytes,
  attentionPrefill,
  DeviceTensor,
  Graph,
  Stream,
} from '@q/kernels-cuda';
import { describe, expect, it } from 'vitest';
import { freshSeed, noGpu } from './helpers';

const ATOL = 2 ** -9;
const NAN_BF16 = 0x7fc0;
const POISON_PAGE = 1 << 30;

interface Seq {
  ctx: number;
  newTokens: number;
}

interface Case {
  hd: number;
  nh: number;
  kvh: number;
  pageSize: number;
  seqs: Seq[];
  /** Extra q columns per row (q read through qStride out of a wider, qkv-like tensor). */
  qExtra: number;
  /** A maxQLen below the longest chunk: the prefill blocks then loop over query tiles. */
  maxQLen?: number;
}

/** Host data of one case: bf16 bits for the device, their float values for the references. */
function makeCase(c: Case, rng: Rng, maxContext: number) {
  const { hd, nh, kvh, pageSize, seqs } = c;
  const bf = (x: number) => f32ToBf16Bits(x);
  const pagesPer = seqs.map((s) => Math.ceil(s.ctx / pageSize));
  const maxPages = Math.ceil(maxContext / pageSize);
  const pages = pagesPer.reduce((a, b) => a + b, 0) + 5;
  // A random permutation of the pool: every sequence's pages are scattered, unused pages stay NaN.
  const perm = Array.from({ length: pages }, (_, i) => i);
  for (let i = pages - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [perm[i], perm[j]] = [perm[j] as number, perm[i] as number];
  }
  const table = new Int32Array(seqs.length * maxPages).fill(POISON_PAGE);
  let used = 0;
  seqs.forEach((_, s) => {
    for (let p = 0; p < (pagesPer[s] as number); p++) table[s * maxPages + p] = perm[used++] as number;
  });
  const row = pageSize * kvh * hd;
  const kBits = new Uint16Array(pages * row).fill(NAN_BF16);
  const vBits = new Uint16Array(pages * row).fill(NAN_BF16);
  // kf[s][(p * kvh + kh) * hd + d]: the cache contents of sequence s as floats.
  const kf: Float64Array[] = [];
  const vf: Float64Array[] = [];
  seqs.forEach((sq, s) => {
    const kk = new Float64Array(sq.ctx * kvh * hd);
    const vv = new Float64Array(sq.ctx * kvh * hd);
    for (let p = 0; p < sq.ctx; p++) {
      const page = table[s * maxPages + Math.floor(p / pageSize)] as number;
      const base = (page * pageSize + (p % pageSize)) * kvh * hd;
      for (let i = 0; i < kvh * hd; i++) {
        const kb = bf(rng.normal());
        const vb = bf(rng.normal());
        kBits[base + i] = kb;
        vBits[base + i] = vb;
        kk[p * kvh * hd + i] = bf16BitsToF32(kb);
        vv[p * kvh * hd + i] = bf16BitsToF32(vb);
      }
    }
    kf.push(kk);
    vf.push(vv);
  });
  const T = seqs.reduce((a, s) => a + s.newTokens, 0);
  const width = nh * hd + c.qExtra;
  const qBits = new Uint16Array(T * width);
  const qf = new Float64Array(T * nh * hd);
  for (let t = 0; t < T; t++)
    for (let i = 0; i < width; i++) {
      const b = bf(rng.normal());
      qBits[t * width + i] = b;
      if (i < nh * hd) qf[t * nh * hd + i] = bf16BitsToF32(b);
    }
  const qStart = new Int32Array(seqs.length + 1);
  const positions = new Int32Array(T);
  const seqOf = new Int32Array(T);
  seqs.forEach((sq, s) => {
    qStart[s + 1] = (qStart[s] as number) + sq.newTokens;
    for (let i = 0; i < sq.newTokens; i++) {
      positions[(qStart[s] as number) + i] = sq.ctx - sq.newTokens + i;
      seqOf[(qStart[s] as number) + i] = s;
    }
  });
  return { pages, maxPages, table, kBits, vBits, kf, vf, T, width, qBits, qf, qStart, positions, seqOf };
}

type Data = ReturnType<typeof makeCase>;

/**
 * Attention of query rows `rows` (indices into qf) in float64 and in the plain f32 manner; returns both as
 * [rows.length, nh*hd] (the plain one rounded to bf16, as a kernel would store it).
 */
async function references(c: Case, d: Data, rows: number[], scale: number) {
  const { hd, nh, kvh } = c;
  const g = nh / kvh;
  const f = Math.fround;
  const ref = new Float64Array(rows.length * nh * hd);
  const plain = new Float64Array(rows.length * nh * hd);
  const scale32 = f(scale);
  for (let ri = 0; ri < rows.length; ri++) {
    // Long synchronous stretches would starve the test worker's messages to the runner.
    if (ri % 8 === 0) await new Promise((r) => setImmediate(r));
    const t = rows[ri] as number;
    const s = d.seqOf[t] as number;
    const n = (d.positions[t] as number) + 1; // keys 0..pos
    const kk = d.kf[s] as Float64Array;
    const vv = d.vf[s] as Float64Array;
    const sc = new Float64Array(n);
    const sc32 = new Float32Array(n);
    for (let h = 0; h < nh; h++) {
      const kh = Math.floor(h / g);
      const qo = t * nh * hd + h * hd;
      let mx = -Infinity;
      let mx32 = -Infinity;
      for (let p = 0; p < n; p++) {
        const ko = (p * kvh + kh) * hd;
        let acc = 0;
        let acc32 = 0;
        for (let e = 0; e < hd; e++) {
          const prod = (d.qf[qo + e] as number) * (kk[ko + e] as number);
          acc += prod;
          acc32 = f(acc32 + prod); // bf16 × bf16 is exact in f32
        }
        sc[p] = acc * scale;
        sc32[p] = f(acc32 * scale32);
        if ((sc[p] as number) > mx) mx = sc[p] as number;
        if ((sc32[p] as number) > mx32) mx32 = sc32[p] as number;
      }
      let sum = 0;
      let sum32 = 0;
      for (let p = 0; p < n; p++) {
        sc[p] = Math.exp((sc[p] as number) - mx);
        sum += sc[p] as number;
        sc32[p] = f(Math.exp(f((sc32[p] as number) - mx32)));
        sum32 = f(sum32 + (sc32[p] as number));
      }
      const oo = ri * nh * hd + h * hd;
      for (let e = 0; e < hd; e++) {
        let acc = 0;
        let acc32 = 0;
        for (let p = 0; p < n; p++) {
          const v = vv[(p * kvh + kh) * hd + e] as number;
          acc += (sc[p] as number) * v;
          acc32 = f(acc32 + f((sc32[p] as number) * v));
        }
        ref[oo + e] = acc / sum;
        plain[oo + e] = bf16BitsToF32(f32ToBf16Bits(f(acc32 / sum32)));
      }
    }
  }
  return { ref, plain };
}

function maxErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const e = Math.abs((a[i] as number) - (b[i] as number));
    if (!(e <= m)) m = e; // NaN wins
  }
  return m;
}

function unwritten(bits: Uint16Array): number {
  let n = 0;
  for (const b of bits) if ((b & 0x7f80) === 0x7f80 && (b & 0x7f) !== 0) n++;
  return n;
}

const toF = (bits: Uint16Array) => Array.from(bits, bf16BitsToF32);

/** Rows of `all` [T, w] picked by `rows`. */
function pick(all: ArrayLike<number>, rows: number[], w: number): Float64Array {
  const out = new Float64Array(rows.length * w);
  rows.forEach((t, i) => {
    for (let e = 0; e < w; e++) out[i * w + e] = all[t * w + e] as number;
  });
  return out;
}

// Contexts {1, 17, 511, 2048}: a one-token first step, a short chunk continuing 3 cached positions, a fresh
// 511-token prefill (multi-tile causal diagonal), and an 80-token chunk continuing 1968 cached positions.
const SEQS: Seq[] = [
  { ctx: 1, newTokens: 1 },
  { ctx: 17, newTokens: 14 },
  { ctx: 511, newTokens: 511 },
  { ctx: 2048, newTokens: 80 },
];

const CASES: Case[] = [];
for (const hd of [64, 128])
  for (const [nh, kvh] of [
    [4, 4],
    [8, 2],
    [8, 1],
  ] as const)
    CASES.push({
      hd,
      nh,
      kvh,
      pageSize: hd === 64 ? 16 : 64,
      seqs: SEQS,
      qExtra: nh === 8 && kvh === 2 ? 2 * kvh * hd : 0,
    });
// The other page size for one configuration of each head size.
CASES.push({ hd: 128, nh: 8, kvh: 2, pageSize: 16, seqs: SEQS, qExtra: 0 });
CASES.push({ hd: 64, nh: 8, kvh: 1, pageSize: 64, seqs: SEQS, qExtra: 0, maxQLen: 64 });

describe.skipIf(noGpu)('paged attention on the GPU', () => {
  const seed = freshSeed('attention');
  const rng = new Rng(seed);
  const MAX_CONTEXT = 4096; // decode grid sized past every context: blocks past a sequence's end must exit

  for (const c of CASES) {
    const label = `hd=${c.hd} heads=${c.nh}/${c.kvh} (GQA ${c.nh / c.kvh}) pageSize=${c.pageSize}${c.qExtra ? ' q in a qkv row' : ''}${c.maxQLen ? ` maxQLen=${c.maxQLen}` : ''}`;
    it(`${label}: prefill (also in a CUDA graph) and decode match float64; decode equals prefill at the last position`, async () => {
      const d = makeCase(c, rng, MAX_CONTEXT);
      const scale = 1 / Math.sqrt(c.hd);
      const S = c.seqs.length;
      const made: DeviceTensor[] = [];
      const dev = <T extends DeviceTensor>(x: T): T => {
        made.push(x);
        return x;
      };
      try {
        const shape = [d.pages, c.pageSize, c.kvh, c.hd];
        const k = dev(DeviceTensor.fromHost('bf16', shape, d.kBits));
        const v = dev(DeviceTensor.fromHost('bf16', shape, d.vBits));
        const pageTable = dev(DeviceTensor.fromHost('i32', [S, d.maxPages], d.table));
        const contextLens = dev(
          DeviceTensor.fromHost(
            'i32',
            [S],
            Int32Array.from(c.seqs, (s) => s.ctx),
          ),
        );
        const q = dev(DeviceTensor.fromHost('bf16', [d.T, d.width], d.qBits));
        const qStart = dev(DeviceTensor.fromHost('i32', [S + 1], d.qStart));
        const positions = dev(DeviceTensor.fromHost('i32', [d.T], d.positions));
        const out = dev(DeviceTensor.alloc('bf16', [d.T, c.nh * c.hd]));
        out.fillBytes(0xff);
        const common = {
          k,
          v,
          pageTable,
          contextLens,
          numHeads: c.nh,
          numKvHeads: c.kvh,
          headDim: c.hd,
          scale,
        };
        const maxQLen = c.maxQLen ?? Math.max(...c.seqs.map((s) => s.newTokens));
        attentionPrefill({ ...common, q, qStride: d.width, qStart, positions, out, maxQLen });
        const preBits = out.download() as Uint16Array;
        expect(unwritten(preBits), 'prefill outputs left unwritten (NaN poison)').toBe(0);
        // The same launch captured in a CUDA graph and replayed writes the same bits.
        const stream = Stream.create();
        try {
          const graph = Graph.capture(stream, () =>
            attentionPrefill({ ...common, q, qStride: d.width, qStart, positions, out, maxQLen, stream }),
          );
          try {
            out.fillBytes(0xff, stream);
            graph.launch(stream);
            const replay = out.download(stream) as Uint16Array;
            expect(Buffer.from(replay.buffer).equals(Buffer.from(preBits.buffer)), 'graph replay bits').toBe(
              true,
            );
          } finally {
            graph.dispose();
          }
        } finally {
          stream.dispose();
        }

        const allRows = Array.from({ length: d.T }, (_, t) => t);
        const { ref, plain } = await references(c, d, allRows, scale);
        const pre = toF(preBits);
        const errGpu = maxErr(pre, ref);
        const errPlain = maxErr(plain, ref);
        const tol = 2 * errPlain + ATOL;
        console.log(
          `${label} prefill: max |gpu - f64| ${errGpu.toExponential(3)}, plain f32 ${errPlain.toExponential(3)}, tolerance ${tol.toExponential(3)}`,
        );
        expect(errGpu).toBeLessThanOrEqual(tol);

        // Decode: the last token of each sequence, its q row gathered into [S, width].
        const last = c.seqs.map((_, s) => (d.qStart[s + 1] as number) - 1);
        const qd = dev(
          DeviceTensor.fromHost('bf16', [S, d.width], Uint16Array.from(pick(d.qBits, last, d.width))),
        );
        const outD = dev(DeviceTensor.alloc('bf16', [S, c.nh * c.hd]));
        const ws = dev(
          DeviceTensor.alloc('f32', [attentionDecodeWorkspaceBytes(S, c.nh, c.hd, MAX_CONTEXT) / 4]),
        );
        ws.fillBytes(0xff);
        outD.fillBytes(0xff);
        attentionDecode({
          ...common,
          q: qd,
          qStride: d.width,
          out: outD,
          workspace: ws,
          maxContext: MAX_CONTEXT,
        });
        const decBits = outD.download() as Uint16Array;
        expect(unwritten(decBits), 'decode outputs left unwritten (NaN poison)').toBe(0);
        const dec = toF(decBits);
        const refLast = pick(ref, last, c.nh * c.hd);
        const plainLast = pick(plain, last, c.nh * c.hd);
        const errDec = maxErr(dec, refLast);
        const errPlainLast = maxErr(plainLast, refLast);
        const tolDec = 2 * errPlainLast + ATOL;
        const errDecPre = maxErr(dec, pick(pre, last, c.nh * c.hd));
        console.log(
          `${label} decode: max |gpu - f64| ${errDec.toExponential(3)}, plain f32 ${errPlainLast.toExponential(3)}, tolerance ${tolDec.toExponential(3)}; |decode - prefill| ${errDecPre.toExponential(3)}`,
        );
        expect(errDec).toBeLessThanOrEqual(tolDec);
        // Both are within their tolerance of the same float64 value, so they differ by at most the sum.
        expect(errDecPre).toBeLessThanOrEqual(tolDec + tol);
      } finally {
        for (const x of made) x.dispose();
      }
    });
  }

  it('decode in a CUDA graph replays bit for bit; GQA ratios 3, 16 and 4 at batch 9, 9 and 1', async () => {
    const stream = Stream.create();
    const made: DeviceTensor[] = [];
    const dev = <T extends DeviceTensor>(x: T): T => {
      made.push(x);
      return x;
    };
    try {
      // Batch 9 splits contexts into chunks of 128, batch 1 into chunks of 64 (attentionDecodeChunkSize).
      for (const [hd, nh, kvh, batch] of [
        [128, 6, 2, 9],
        [64, 16, 1, 9],
        [128, 32, 8, 1],
      ] as const) {
        const seqs = Array.from({ length: batch }, () => ({
          ctx: batch === 1 ? 1500 : 1 + rng.int(1500),
          newTokens: 1,
        }));
        const c: Case = { hd, nh, kvh, pageSize: 32, seqs, qExtra: 0 };
        const maxContext = 1536;
        const d = makeCase(c, rng, maxContext);
        const S = seqs.length;
        const scale = 1 / Math.sqrt(hd);
        const k = dev(DeviceTensor.fromHost('bf16', [d.pages, c.pageSize, kvh, hd], d.kBits));
        const v = dev(DeviceTensor.fromHost('bf16', [d.pages, c.pageSize, kvh, hd], d.vBits));
        const pageTable = dev(DeviceTensor.fromHost('i32', [S, d.maxPages], d.table));
        const contextLens = dev(
          DeviceTensor.fromHost(
            'i32',
            [S],
            Int32Array.from(seqs, (s) => s.ctx),
          ),
        );
        const q = dev(DeviceTensor.fromHost('bf16', [S, d.width], d.qBits));
        const out = dev(DeviceTensor.alloc('bf16', [S, nh * hd]));
        const ws = dev(DeviceTensor.alloc('f32', [attentionDecodeWorkspaceBytes(S, nh, hd, maxContext) / 4]));
        const o = {
          q,
          k,
          v,
          pageTable,
          contextLens,
          numHeads: nh,
          numKvHeads: kvh,
          headDim: hd,
          scale,
          out,
          workspace: ws,
          maxContext,
          stream,
        };
        out.fillBytes(0xff, stream);
        attentionDecode(o);
        const plainRun = out.download(stream) as Uint16Array;
        expect(unwritten(plainRun)).toBe(0);
        const { ref, plain } = await references(
          c,
          d,
          Array.from({ length: S }, (_, t) => t),
          scale,
        );
        const err = maxErr(toF(plainRun), ref);
        const tol = 2 * maxErr(plain, ref) + ATOL;
        console.log(
          `decode hd=${hd} heads=${nh}/${kvh} S=${S}: max |gpu - f64| ${err.toExponential(3)}, tolerance ${tol.toExponential(3)}`,
        );
        expect(err).toBeLessThanOrEqual(tol);

        const graph = Graph.capture(stream, () => attentionDecode(o));
        try {
          out.fillBytes(0xff, stream);
          graph.launch(stream);
          const replay = out.download(stream) as Uint16Array;
          expect(Buffer.from(replay.buffer).equals(Buffer.from(plainRun.buffer))).toBe(true);
        } finally {
          graph.dispose();
        }
      }
    } finally {
      for (const x of made) x.dispose();
      stream.dispose();
    }
  });
});
