/**
 * The Llama-layer kernels on the GPU, each against a float64 CPU reference on fresh random data (the seed is
 * printed; Q_TEST_SEED pins it).
 *
 * Tolerances. bf16 outputs follow the rule "error vs float64 ≤ 2x a plain implementation at the same precision
 * + a small absolute term": the plain implementation is the same formula in f32 arithmetic, one rounding per
 * operation and sequential sums (written here with Math.fround), rounded to bf16; the error measure is the
 * largest |out − ref| / max(|ref|, 1e-3 · max|ref|) over the tensor, and the absolute term is 1e-6.
 * int8 outputs are @q/quant's activation rule (q = clamp(rintHalfEven(f32(y / scale)), ±127), dynamic
 * scale = f32(max|y| / 127)) applied to the float64 values y; the GPU may differ by ±1 code and no more, because
 * its y is an f32 value a few ulps from the float64 one (another summation order, rsqrtf, expf), which moves
 * y / scale across a .5 rounding boundary only when it lies within ~1e-6 of one; at least 99.9% of the codes
 * must be equal, so a systematic rounding error (floor instead of rint, a reciprocal instead of a division)
 * still fails. Copies (embedding, the v half of the cache, the k cache against the rotated k) are bit-exact.
 * Sampling: greedy is exactly the CPU argmax (lowest index on ties); a sampled token must lie in the allowed set
 * of the CPU `sampleToken` rule (top-k exact, the top-p cut within 1e-5 of probability, which covers the
 * kernel's f32 exp and 40-bit fixed-point masses); the empirical distribution of many seeds must pass a
 * chi-square test against the float64 distribution at a critical value with an upper tail of about 1e-6
 * (Wilson–Hilferty, z = 4.75), so an honest kernel fails about once in a million runs.
 */
import { bf16BitsToF32, f32ToBf16Bits, Rng } from '@q/core';
import { addRmsNorm, DeviceTensor, embedding, gemmHalf, ropeKvWrite, sample, siluMul } from '@q/kernels-cuda';
import { rintHalfEven } from '@q/quant';
import { describe, expect, it } from 'vitest';
import { freshSeed, noGpu } from './helpers';

const f = Math.fround;

function bf16(x: number): number {
  return bf16BitsToF32(f32ToBf16Bits(x));
}

/** Allocates through `fn`, disposes every tensor made, on every path. */
function withTensors(fn: (keep: <T extends DeviceTensor>(t: T) => T) => void): void {
  const made: DeviceTensor[] = [];
  try {
    fn((t) => {
      made.push(t);
      return t;
    });
  } finally {
    for (const t of made) t.dispose();
  }
}

/** Largest |got − ref| / max(|ref|, 1e-3 · max|ref|). */
function relErr(got: ArrayLike<number>, ref: ArrayLike<number>): number {
  let mx = 0;
  for (let i = 0; i < ref.length; i++) mx = Math.max(mx, Math.abs(ref[i] as number));
  const floor = 1e-3 * mx || 1e-30;
  let e = 0;
  for (let i = 0; i < ref.length; i++) {
    const d = Math.abs((got[i] as number) - (ref[i] as number)) / Math.max(Math.abs(ref[i] as number), floor);
    if (!(d <= e)) e = d; // NaN propagates
  }
  return e;
}

function expectRule(
  label: string,
  got: ArrayLike<number>,
  plain: ArrayLike<number>,
  ref: ArrayLike<number>,
): void {
  const eGot = relErr(got, ref);
  const ePlain = relErr(plain, ref);
  expect(eGot, `${label}: error ${eGot} vs plain f32 ${ePlain}`).toBeLessThanOrEqual(2 * ePlain + 1e-6);
}

/** int8 codes against the activation rule on float64 values; padding columns must be 0. */
function expectInt8(
  label: string,
  got: Int8Array,
  ldq: number,
  y: Float64Array,
  rows: number,
  n: number,
  scaleOf: (row: number) => number,
): void {
  let equal = 0;
  for (let r = 0; r < rows; r++) {
    const scale = scaleOf(r);
    for (let j = 0; j < ldq; j++) {
      const g = got[r * ldq + j] as number;
      if (j >= n) {
        expect(g, `${label}: padding row ${r} col ${j}`).toBe(0);
        continue;
      }
      const want = Math.max(-127, Math.min(127, rintHalfEven(f((y[r * n + j] as number) / scale))));
      const d = Math.abs(g - want);
      if (d > 1)
        expect.fail(`${label}: row ${r} col ${j}: ${g} vs ${want} (y = ${y[r * n + j]}, scale ${scale})`);
      if (d === 0) equal++;
    }
  }
  expect(equal / (rows * n), `${label}: fraction of codes equal`).toBeGreaterThanOrEqual(0.999);
}

function dynScale(y: Float64Array, r: number, n: number): number {
  let amax = 0;
  for (let j = 0; j < n; j++) amax = Math.max(amax, Math.abs(y[r * n + j] as number));
  return f(amax / 127) || 1;
}

function expectScales(label: string, got: Float32Array, y: Float64Array, rows: number, n: number): void {
  for (let r = 0; r < rows; r++) {
    const want = dynScale(y, r, n);
    expect(Math.abs((got[r] as number) - want) / want, `${label}: scale of row ${r}`).toBeLessThan(1e-5);
  }
}

describe.skipIf(noGpu)('Llama-layer kernels on the GPU', () => {
  const seed = freshSeed('llama kernels');
  const rng = new Rng(seed);

  function bf16Data(n: number, scale: () => number): { bits: Uint16Array; val: Float64Array } {
    const bits = new Uint16Array(n);
    const val = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      bits[i] = f32ToBf16Bits(rng.normal() * scale());
      val[i] = bf16BitsToF32(bits[i] as number);
    }
    return { bits, val };
  }

  describe('embedding', () => {
    for (const [v, d, t] of [
      [1000, 4096, 37],
      [517, 100, 9],
    ] as const) {
      it(`V=${v} d=${d} T=${t}${d % 8 ? ' (scalar path)' : ''}: rows copied exactly, an id out of range → zeros`, () =>
        withTensors((keep) => {
          const table = bf16Data(v * d, () => 0.1);
          const ids = Int32Array.from({ length: t }, () => rng.int(v));
          ids[t - 1] = v; // out of range
          ids[1] = ids[0] as number; // a repeated id
          const tb = keep(DeviceTensor.fromHost('bf16', [v, d], table.bits));
          const id = keep(DeviceTensor.fromHost('i32', [t], ids));
          const out = keep(DeviceTensor.alloc('f32', [t, d]));
          out.fillBytes(0xff);
          embedding({ ids: id, table: tb, out });
          const got = out.download();
          for (let i = 0; i < t; i++) {
            const row = ids[i] as number;
            for (let j = 0; j < d; j++) {
              const want = row < v ? (table.val[row * d + j] as number) : 0;
              if (!Object.is(got[i * d + j], want))
                expect.fail(`token ${i} col ${j}: ${got[i * d + j]} vs ${want}`);
            }
          }
        }));
    }
  });

  describe('addRmsNorm', () => {
    const eps = 1e-5;
    for (const [t, d, pad] of [
      [1, 4096, 0],
      [33, 1004, 3],
      [7, 8192, 64],
    ] as const) {
      it(`T=${t} d=${d}: residual add exact; bf16 by the tolerance rule; int8 static and dynamic within ±1 code`, () =>
        withTensors((keep) => {
          const rowScale = Array.from({ length: t }, () => 10 ** (rng.next() * 2 - 1));
          const x0 = Float32Array.from(
            { length: t * d },
            (_, i) => rng.normal() * (rowScale[Math.floor(i / d)] as number),
          );
          const r = bf16Data(t * d, () => 0.5);
          const gain = Float32Array.from({ length: d }, () => rng.next() * 2 - 0.4);
          // Reference: s = f32(x + r) (what the kernel writes back), y = s · rstd · gain in float64.
          const s = Float32Array.from(x0, (x, i) => f(x + (r.val[i] as number)));
          const y = new Float64Array(t * d);
          const plain = new Float64Array(t * d);
          for (let i = 0; i < t; i++) {
            let ss = 0;
            let ssF = 0;
            for (let j = 0; j < d; j++) {
              const v = s[i * d + j] as number;
              ss += v * v;
              ssF = f(ssF + f(v * v));
            }
            const rstd = 1 / Math.sqrt(ss / d + eps);
            const rstdF = f(1 / f(Math.sqrt(f(f(ssF / d) + eps))));
            for (let j = 0; j < d; j++) {
              const v = s[i * d + j] as number;
              y[i * d + j] = v * rstd * (gain[j] as number);
              plain[i * d + j] = bf16(f(f(v * rstdF) * (gain[j] as number)));
            }
          }
          const x = keep(DeviceTensor.fromHost('f32', [t, d], x0));
          const rd = keep(DeviceTensor.fromHost('bf16', [t, d], r.bits));
          const g = keep(DeviceTensor.fromHost('f32', [d], gain));
          const ob = keep(DeviceTensor.alloc('bf16', [t, d]));
          ob.fillBytes(0xff);
          addRmsNorm({ x, r: rd, gain: g, eps, out: ob });
          const xs = x.download();
          for (let i = 0; i < t * d; i++)
            if (!Object.is(xs[i], s[i])) expect.fail(`x += r at ${i}: ${xs[i]} vs ${s[i]}`);
          expectRule('bf16 out', Array.from(ob.download(), bf16BitsToF32), plain, y);

          // x now holds s: the same norm without r must give the same y.
          const ldq = d + pad;
          const q = keep(DeviceTensor.alloc('i8', [t, ldq]));
          const scales = keep(DeviceTensor.alloc('f32', [t]));
          q.fillBytes(0x5a);
          scales.fillBytes(0xff);
          addRmsNorm({ x, gain: g, eps, out: q, mode: 'dynamic', scales });
          const gotS = scales.download();
          expectScales('dynamic', gotS, y, t, d);
          expectInt8('dynamic', q.download(), ldq, y, t, d, (row) => dynScale(y, row, d));

          // A static scale that saturates the largest values of the widest rows.
          let amax = 0;
          for (const v of y) amax = Math.max(amax, Math.abs(v));
          const st = f(amax / 150);
          q.fillBytes(0x5a);
          addRmsNorm({ x, gain: g, eps, out: q, mode: 'static', staticScale: st });
          expectInt8('static', q.download(), ldq, y, t, d, () => st);
          const xAfter = x.download();
          for (let i = 0; i < t * d; i++)
            if (!Object.is(xAfter[i], s[i])) expect.fail(`x changed without r at ${i}`);
        }));
    }
  });

  describe('siluMul', () => {
    for (const [t, ff, pad] of [
      [1, 11008, 0],
      [19, 1376, 32],
      [5, 300, 5],
    ] as const) {
      it(`T=${t} ff=${ff}: bf16 by the tolerance rule; int8 static and dynamic within ±1 code`, () =>
        withTensors((keep) => {
          const gu = bf16Data(t * 2 * ff, () => 2);
          const y = new Float64Array(t * ff);
          const plain = new Float64Array(t * ff);
          for (let i = 0; i < t; i++)
            for (let j = 0; j < ff; j++) {
              const g = gu.val[i * 2 * ff + j] as number;
              const u = gu.val[i * 2 * ff + ff + j] as number;
              y[i * ff + j] = (g / (1 + Math.exp(-g))) * u;
              plain[i * ff + j] = bf16(f(f(g / f(1 + f(Math.exp(-g)))) * u));
            }
          const gd = keep(DeviceTensor.fromHost('bf16', [t, 2 * ff], gu.bits));
          const ob = keep(DeviceTensor.alloc('bf16', [t, ff]));
          ob.fillBytes(0xff);
          siluMul({ gateUp: gd, out: ob });
          expectRule('bf16 out', Array.from(ob.download(), bf16BitsToF32), plain, y);

          const ldq = ff + pad;
          const q = keep(DeviceTensor.alloc('i8', [t, ldq]));
          const scales = keep(DeviceTensor.alloc('f32', [t]));
          q.fillBytes(0x5a);
          siluMul({ gateUp: gd, out: q, mode: 'dynamic', scales });
          expectScales('dynamic', scales.download(), y, t, ff);
          expectInt8('dynamic', q.download(), ldq, y, t, ff, (row) => dynScale(y, row, ff));
          const st = f(0.01 + rng.next() * 0.02); // saturates the large products
          q.fillBytes(0x5a);
          siluMul({ gateUp: gd, out: q, mode: 'static', staticScale: st });
          expectInt8('static', q.download(), ldq, y, t, ff, () => st);
        }));
    }
  });

  describe('ropeKvWrite', () => {
    type Scaling = 'none' | 'linear' | 'llama3';
    /** The runtime's ropeInvFreq (theta, linear and llama3 scaling), rounded to f32 as the runtime uploads it. */
    function invFreqOf(hd: number, theta: number, scaling: Scaling): Float32Array {
      const out = new Float32Array(hd / 2);
      for (let i = 0; i < hd / 2; i++) {
        let fr = 1 / theta ** ((2 * i) / hd);
        if (scaling === 'linear') fr /= 4;
        if (scaling === 'llama3') {
          const [factor, low, high, orig] = [8, 1, 4, 8192];
          const wavelen = (2 * Math.PI) / fr;
          if (wavelen > orig / low) fr /= factor;
          else if (wavelen >= orig / high) {
            const smooth = (orig / wavelen - low) / (high - low);
            fr = (1 - smooth) * (fr / factor) + smooth * fr;
          }
        }
        out[i] = fr;
      }
      return out;
    }

    const pageSize = 16;
    const pages = 40;
    const maxPages = 4100; // sequence 2 sits near position 65536, page 4096
    // Three sequences in token order; positions cross page boundaries (16, 65536); sequence 1's last token sits
    // on a page the table does not map (-1): rotated, but not written to the cache.
    const tokens: [number, number][] = [
      ...Array.from({ length: 21 }, (_, p) => [0, p] as [number, number]),
      ...Array.from({ length: 6 }, (_, i) => [1, 13 + i] as [number, number]),
      [1, 50],
      ...Array.from({ length: 8 }, (_, i) => [2, 65530 + i] as [number, number]),
    ];

    for (const [nh, nkv, hd, scaling, theta] of [
      [8, 2, 128, 'llama3', 500000],
      [4, 4, 64, 'none', 10000],
      [6, 1, 64, 'linear', 10000],
    ] as const) {
      for (const style of ['interleaved', 'half'] as const) {
        it(`nh=${nh} nkv=${nkv} hd=${hd} ${style}, ${scaling} inv-freq: q/k rotated, k/v in the right pages`, () =>
          withTensors((keep) => {
            const t = tokens.length;
            const width = (nh + 2 * nkv) * hd;
            const half = hd / 2;
            const inv = invFreqOf(hd, theta, scaling as Scaling);
            const qkv = bf16Data(t * width, () => 1);
            const perm = Array.from({ length: pages }, (_, i) => i);
            for (let i = pages - 1; i > 0; i--) {
              const j = rng.int(i + 1);
              [perm[i], perm[j]] = [perm[j] as number, perm[i] as number];
            }
            const table = new Int32Array(3 * maxPages).fill(-1);
            table[0 * maxPages + 0] = perm[0] as number;
            table[0 * maxPages + 1] = perm[1] as number;
            table[1 * maxPages + 0] = perm[2] as number;
            table[1 * maxPages + 1] = perm[3] as number;
            table[2 * maxPages + 4095] = perm[4] as number;
            table[2 * maxPages + 4096] = perm[5] as number;

            // float64 reference and plain f32 rotation of every q and k pair.
            const ref = Float64Array.from(qkv.val);
            const plain = Float64Array.from(qkv.val);
            for (let i = 0; i < t; i++) {
              const pos = (tokens[i] as [number, number])[1];
              for (let h = 0; h < nh + nkv; h++) {
                const o = i * width + h * hd;
                for (let p = 0; p < half; p++) {
                  const ang = pos * (inv[p] as number);
                  const [c, s] = [Math.cos(ang), Math.sin(ang)];
                  const [cf, sf] = [f(c), f(s)];
                  const ia = style === 'interleaved' ? o + 2 * p : o + p;
                  const ib = style === 'interleaved' ? ia + 1 : ia + half;
                  const a = qkv.val[ia] as number;
                  const b = qkv.val[ib] as number;
                  ref[ia] = a * c - b * s;
                  ref[ib] = a * s + b * c;
                  plain[ia] = bf16(f(f(a * cf) - f(b * sf)));
                  plain[ib] = bf16(f(f(a * sf) + f(b * cf)));
                }
              }
            }

            const dq = keep(DeviceTensor.fromHost('bf16', [t, width], qkv.bits));
            const pos = keep(
              DeviceTensor.fromHost(
                'i32',
                [t],
                Int32Array.from(tokens, (x) => x[1]),
              ),
            );
            const seq = keep(
              DeviceTensor.fromHost(
                'i32',
                [t],
                Int32Array.from(tokens, (x) => x[0]),
              ),
            );
            const pt = keep(DeviceTensor.fromHost('i32', [3, maxPages], table));
            const k = keep(DeviceTensor.alloc('bf16', [pages, pageSize, nkv, hd]));
            const v = keep(DeviceTensor.alloc('bf16', [pages, pageSize, nkv, hd]));
            const invD = keep(DeviceTensor.fromHost('f32', [half], inv));
            k.fillBytes(0xff);
            v.fillBytes(0xff);
            ropeKvWrite({
              qkv: dq,
              positions: pos,
              seqOfToken: seq,
              pageTable: pt,
              k,
              v,
              invFreq: invD,
              numHeads: nh,
              numKvHeads: nkv,
              headDim: hd,
              style,
            });
            const out = dq.download() as Uint16Array;
            // q and k: the tolerance rule; v: untouched.
            const rot: number[] = [];
            const rotRef: number[] = [];
            const rotPlain: number[] = [];
            for (let i = 0; i < t; i++)
              for (let j = 0; j < width; j++) {
                const at = i * width + j;
                if (j < (nh + nkv) * hd) {
                  rot.push(bf16BitsToF32(out[at] as number));
                  rotRef.push(ref[at] as number);
                  rotPlain.push(plain[at] as number);
                } else if (out[at] !== qkv.bits[at]) expect.fail(`v changed in qkv at token ${i} col ${j}`);
              }
            expectRule('rotated q and k', rot, rotPlain, rotRef);

            // The cache: each mapped token's slot holds its rotated k and its v, bit for bit; nothing else is written.
            const kc = k.download() as Uint16Array;
            const vc = v.download() as Uint16Array;
            const slotLen = nkv * hd;
            const written = new Set<number>();
            for (let i = 0; i < t; i++) {
              const [s, p] = tokens[i] as [number, number];
              const page = table[s * maxPages + Math.floor(p / pageSize)] as number;
              if (page < 0) continue;
              const slot = page * pageSize + (p % pageSize);
              written.add(slot);
              for (let e = 0; e < slotLen; e++) {
                const kWant = out[i * width + nh * hd + e];
                const vWant = qkv.bits[i * width + (nh + nkv) * hd + e];
                if (kc[slot * slotLen + e] !== kWant)
                  expect.fail(`k cache token ${i} (seq ${s} pos ${p}) elem ${e}`);
                if (vc[slot * slotLen + e] !== vWant)
                  expect.fail(`v cache token ${i} (seq ${s} pos ${p}) elem ${e}`);
              }
            }
            expect(written.size).toBe(t - 1);
            for (let slot = 0; slot < pages * pageSize; slot++) {
              if (written.has(slot)) continue;
              for (let e = 0; e < slotLen; e++)
                if (kc[slot * slotLen + e] !== 0xffff || vc[slot * slotLen + e] !== 0xffff)
                  expect.fail(`cache slot ${slot} was written but belongs to no token`);
            }
          }));
      }
    }
  });

  describe('sample', () => {
    /** Indices in the CPU sampleToken order: logit descending, then index ascending. */
    function order(l: Float32Array, off: number, v: number): number[] {
      const idx = Array.from({ length: v }, (_, i) => i);
      idx.sort((a, b) => (l[off + b] as number) - (l[off + a] as number) || a - b);
      return idx;
    }

    /** The restricted distribution of sampleToken: kept ids, their probabilities, cumulative mass before each. */
    function restricted(l: Float32Array, off: number, v: number, temp: number, k: number, p: number) {
      let idx = order(l, off, v);
      if (k > 0 && k < v) idx = idx.slice(0, k);
      const mx = l[off + (idx[0] as number)] as number;
      const w = idx.map((i) => Math.exp(((l[off + i] as number) - mx) / temp));
      const z = w.reduce((a, b) => a + b, 0);
      const before: number[] = [];
      let cum = 0;
      for (const x of w) {
        before.push(cum);
        cum += x / z;
      }
      // As sampleToken: the first token always stays; a later one stays while the mass before it is below p.
      let cut = idx.length;
      if (p < 1) {
        const over = before.findIndex((x, r) => r > 0 && x >= p);
        if (over > 0) cut = over;
      }
      const zc = w.slice(0, cut).reduce((a, b) => a + b, 0);
      return { idx, before, cut, probs: w.slice(0, cut).map((x) => x / zc) };
    }

    function run(
      keep: <T extends DeviceTensor>(t: T) => T,
      logits: Float32Array | DeviceTensor,
      b: number,
      v: number,
      rows: { temp: number; k: number; p: number; seed: number; step: number }[],
    ): Int32Array {
      const dl = logits instanceof DeviceTensor ? logits : keep(DeviceTensor.fromHost('f32', [b, v], logits));
      const col = <D extends 'f32' | 'i32'>(dtype: D, fn: (r: (typeof rows)[number]) => number) =>
        keep(
          DeviceTensor.fromHost(
            dtype,
            [b],
            dtype === 'f32' ? Float32Array.from(rows, fn) : Int32Array.from(rows, fn),
          ),
        );
      const out = keep(DeviceTensor.alloc('i32', [b]));
      out.fillBytes(0xff);
      sample({
        logits: dl,
        temperature: col('f32', (r) => r.temp),
        topK: col('i32', (r) => r.k),
        topP: col('f32', (r) => r.p),
        seeds: col('i32', (r) => r.seed | 0),
        steps: col('i32', (r) => r.step),
        out,
      });
      return out.download() as Int32Array;
    }

    for (const v of [1001, 32000, 128256, 262144]) {
      it(`greedy, V=${v}: the argmax, lowest index on ties, NaN ignored`, () =>
        withTensors((keep) => {
          const b = 3;
          const l = Float32Array.from({ length: b * v }, () => rng.normal() * 3);
          // Row 0: the maximum twice; row 1: every logit equal; row 2: NaN and -inf mixed in.
          const i0 = rng.int(v);
          const i1 = rng.int(v);
          l[i0] = 20;
          l[i1] = 20;
          for (let j = 0; j < v; j++) l[v + j] = 0.5;
          for (let j = 0; j < 50; j++) l[2 * v + rng.int(v)] = j % 2 ? Number.NaN : Number.NEGATIVE_INFINITY;
          const rows = Array.from({ length: b }, (_, r) => ({ temp: 0, k: 0, p: 1, seed: r, step: 0 }));
          const got = run(keep, l, b, v, rows);
          for (let r = 0; r < b; r++) {
            let best = 0;
            let bv = Number.NEGATIVE_INFINITY;
            for (let j = 0; j < v; j++)
              if ((l[r * v + j] as number) > bv) {
                bv = l[r * v + j] as number;
                best = j;
              }
            expect(got[r], `row ${r}`).toBe(best);
          }
          expect(got[0]).toBe(Math.min(i0, i1));
          expect(got[1]).toBe(0);
        }));
    }

    it('top-k with many tied logits: never a token outside the first k in (logit, index) order', () =>
      withTensors((keep) => {
        const v = 4096;
        const b = 256;
        const l = Float32Array.from({ length: b * v }, () => Math.round(rng.normal() * 4) / 2);
        const ks = [1, 2, 3, 17, 100, 1000];
        const rows = Array.from({ length: b }, (_, r) => ({
          temp: 0.5 + rng.next(),
          k: ks[r % ks.length] as number,
          p: 1,
          seed: rng.nextU32(),
          step: r,
        }));
        for (let step = 0; step < 4; step++) {
          const got = run(
            keep,
            l,
            b,
            v,
            rows.map((r) => ({ ...r, step: r.step + step * 1000 })),
          );
          for (let r = 0; r < b; r++) {
            const rank = order(l, r * v, v).indexOf(got[r] as number);
            const k = (rows[r] as { k: number }).k;
            expect(rank, `row ${r} k=${k}: token ${got[r]}`).toBeGreaterThanOrEqual(0);
            expect(rank, `row ${r} k=${k}: token ${got[r]} has rank ${rank}`).toBeLessThan(k);
          }
        }
      }));

    it('temperature, top-k and top-p mixed per row, V=128256: every token in the allowed set', () =>
      withTensors((keep) => {
        const v = 128256;
        const b = 64;
        const l = Float32Array.from({ length: b * v }, () => rng.normal() * 3);
        const ks = [0, 1, 5, 50, 1000];
        const ps = [1, 0.95, 0.5, 0.1, 0.01];
        const rows = Array.from({ length: b }, (_, r) => ({
          temp: 0.3 + rng.next() * 1.5,
          k: ks[r % ks.length] as number,
          p: ps[Math.floor(r / ks.length) % ps.length] as number,
          seed: rng.nextU32(),
          step: rng.int(1000),
        }));
        const got = run(keep, l, b, v, rows);
        for (let r = 0; r < b; r++) {
          const { temp, k, p } = rows[r] as { temp: number; k: number; p: number };
          const ref = restricted(l, r * v, v, f(temp), k, f(p));
          const rank = ref.idx.indexOf(got[r] as number);
          const label = `row ${r} (T=${temp.toFixed(3)} k=${k} p=${p}): token ${got[r]} rank ${rank}`;
          expect(rank, label).toBeGreaterThanOrEqual(0); // inside top-k (idx is already cut to k)
          if (p < 1 && rank > 0) expect(ref.before[rank] as number, label).toBeLessThan(f(p) + 1e-5);
        }
      }));

    /** Chi-square of observed counts against expected probabilities; bins under 5 expected are merged. */
    function chiSquare(counts: Map<number, number>, ids: number[], probs: number[], n: number) {
      let stat = 0;
      let bins = 0;
      let restE = 0;
      let restO = 0;
      ids.forEach((id, i) => {
        const e = (probs[i] as number) * n;
        const o = counts.get(id) ?? 0;
        if (e >= 5) {
          stat += (o - e) ** 2 / e;
          bins++;
        } else {
          restE += e;
          restO += o;
        }
      });
      if (restE > 0) {
        stat += (restO - restE) ** 2 / restE;
        bins++;
      }
      const df = Math.max(1, bins - 1);
      const z = 4.75;
      const crit = df * (1 - 2 / (9 * df) + z * Math.sqrt(2 / (9 * df))) ** 3;
      return { stat, crit, df };
    }

    for (const c of [
      { v: 64, spread: 1, temp: 1, k: 0, p: 1, b: 2048, steps: 8 },
      { v: 64, spread: 1, temp: 0.7, k: 10, p: 1, b: 2048, steps: 8 },
      { v: 64, spread: 1, temp: 1.3, k: 0, p: 0.8, b: 2048, steps: 8 },
      { v: 64, spread: 1, temp: 1, k: 20, p: 0.6, b: 2048, steps: 8 },
      { v: 128256, spread: 2, temp: 0.8, k: 40, p: 1, b: 128, steps: 64 },
    ]) {
      it(`distribution over seeds, V=${c.v} T=${c.temp} k=${c.k} p=${c.p}: chi-square within the 1e-6 tail`, () =>
        withTensors((keep) => {
          const one = Float32Array.from({ length: c.v }, () => rng.normal() * c.spread);
          const l = new Float32Array(c.b * c.v);
          for (let r = 0; r < c.b; r++) l.set(one, r * c.v);
          const ref = restricted(one, 0, c.v, f(c.temp), c.k, f(c.p));
          const allowed = new Set(ref.idx.slice(0, ref.cut));
          const counts = new Map<number, number>();
          const base = rng.nextU32();
          const dl = keep(DeviceTensor.fromHost('f32', [c.b, c.v], l));
          for (let s = 0; s < c.steps; s++) {
            const rows = Array.from({ length: c.b }, (_, r) => ({ ...c, seed: (base + r) >>> 0, step: s }));
            const got = run(keep, dl, c.b, c.v, rows);
            for (const id of got) {
              if (!allowed.has(id)) expect.fail(`token ${id} is outside the allowed set of ${allowed.size}`);
              counts.set(id, (counts.get(id) ?? 0) + 1);
            }
          }
          const n = c.b * c.steps;
          const { stat, crit, df } = chiSquare(counts, ref.idx.slice(0, ref.cut), ref.probs, n);
          console.log(
            `sample V=${c.v} T=${c.temp} k=${c.k} p=${c.p}: chi2 ${stat.toFixed(1)} (df ${df}, bound ${crit.toFixed(1)}), ${n} draws`,
          );
          expect(stat).toBeLessThan(crit);
        }));
    }

    it('the same seed and step give the same token; rows do not depend on their place in the batch', () =>
      withTensors((keep) => {
        const v = 5000;
        const b = 512;
        const one = Float32Array.from({ length: v }, () => rng.normal());
        const l = new Float32Array(b * v);
        for (let r = 0; r < b; r++) l.set(one, r * v);
        const rows = Array.from({ length: b }, (_, r) => ({
          temp: 1,
          k: 0,
          p: 0.9,
          seed: rng.nextU32(),
          step: r % 7,
        }));
        const a = run(keep, l, b, v, rows);
        const again = run(keep, l, b, v, rows);
        expect(Array.from(again)).toEqual(Array.from(a));
        const reversed = run(keep, l, b, v, [...rows].reverse());
        expect(Array.from(reversed).reverse()).toEqual(Array.from(a));
        const nextStep = run(
          keep,
          l,
          b,
          v,
          rows.map((r) => ({ ...r, step: r.step + 1 })),
        );
        let same = 0;
        for (let r = 0; r < b; r++) if (nextStep[r] === a[r]) same++;
        expect(same, 'tokens equal after changing only the step').toBeLessThan(b / 2);
      }));
  });

  describe('gemmHalf with an f32 out (lm_head)', () => {
    it('bf16 inputs, f32 logits within the tolerance rule of a float64 reference', () =>
      withTensors((keep) => {
        const [m, n, k] = [7, 1000, 2048];
        const a = bf16Data(m * k, () => 1);
        const w = bf16Data(n * k, () => 0.05);
        const ref = new Float64Array(m * n);
        const plain = new Float64Array(m * n);
        for (let i = 0; i < m; i++)
          for (let j = 0; j < n; j++) {
            let s = 0;
            let sf = 0;
            for (let q = 0; q < k; q++) {
              const p = (a.val[i * k + q] as number) * (w.val[j * k + q] as number);
              s += p;
              sf = f(sf + f(p));
            }
            ref[i * n + j] = s;
            plain[i * n + j] = sf;
          }
        const da = keep(DeviceTensor.fromHost('bf16', [m, k], a.bits));
        const dw = keep(DeviceTensor.fromHost('bf16', [n, k], w.bits));
        const out = keep(DeviceTensor.alloc('f32', [m, n]));
        out.fillBytes(0xff);
        gemmHalf({ a: da, w: dw, out });
        expectRule('f32 logits', out.download(), plain, ref);
      }));
  });
});
