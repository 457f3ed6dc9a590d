// Test-only float64 reference of a Llama-family forward pass, written independently of the runtime (plain
// loops, no cache, no shared helpers), to check the float32 CPU backend and the loaders against.
import type { ModelConfig } from '@q/core';

export type F64Weights = ReadonlyMap<string, ArrayLike<number>>;

function need(w: F64Weights, name: string): ArrayLike<number> {
  const t = w.get(name);
  if (!t) throw new Error(`reference: missing ${name}`);
  return t;
}

function linear(x: number[], w: ArrayLike<number>, n: number, bias?: ArrayLike<number>): number[] {
  const k = x.length;
  const y = new Array<number>(n).fill(0);
  for (let j = 0; j < n; j++) {
    let s = bias ? (bias[j] as number) : 0;
    for (let i = 0; i < k; i++) s += (w[j * k + i] as number) * (x[i] as number);
    y[j] = s;
  }
  return y;
}

function norm(x: number[], g: ArrayLike<number>, eps: number): number[] {
  const ms = x.reduce((a, v) => a + v * v, 0) / x.length;
  const r = 1 / Math.sqrt(ms + eps);
  return x.map((v, i) => v * r * (g[i] as number));
}

function freqs(c: ModelConfig): number[] {
  const out: number[] = [];
  for (let i = 0; i < c.headDim / 2; i++) {
    const base = c.ropeTheta ** (-(2 * i) / c.headDim);
    const s = c.ropeScaling;
    if (s.type === 'none') out.push(base);
    else if (s.type === 'linear') out.push(base / s.factor);
    else {
      const wl = (2 * Math.PI) / base;
      const lowWl = s.originalMaxPositionEmbeddings / s.lowFreqFactor;
      const highWl = s.originalMaxPositionEmbeddings / s.highFreqFactor;
      if (wl < highWl) out.push(base);
      else if (wl > lowWl) out.push(base / s.factor);
      else {
        const t =
          (s.originalMaxPositionEmbeddings / wl - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
        out.push((1 - t) * (base / s.factor) + t * base);
      }
    }
  }
  return out;
}

function rope(v: number[], heads: number, hd: number, pos: number, c: ModelConfig, f: number[]): void {
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < hd / 2; i++) {
      const a = c.ropeStyle === 'interleaved' ? h * hd + 2 * i : h * hd + i;
      const b = c.ropeStyle === 'interleaved' ? a + 1 : a + hd / 2;
      const ang = pos * (f[i] as number);
      const x0 = v[a] as number;
      const x1 = v[b] as number;
      v[a] = x0 * Math.cos(ang) - x1 * Math.sin(ang);
      v[b] = x0 * Math.sin(ang) + x1 * Math.cos(ang);
    }
  }
}

/** Logits [T][vocab] for one sequence, all in float64. */
export function referenceForward(c: ModelConfig, w: F64Weights, tokens: readonly number[]): number[][] {
  const d = c.hiddenSize;
  const hd = c.headDim;
  const f = freqs(c);
  const emb = need(w, 'model.embed_tokens.weight');
  let xs = tokens.map((t) => Array.from({ length: d }, (_, i) => emb[t * d + i] as number));
  for (let l = 0; l < c.numLayers; l++) {
    const p = `model.layers.${l}`;
    const qs: number[][] = [];
    const ks: number[][] = [];
    const vs: number[][] = [];
    xs.forEach((x, pos) => {
      const h = norm(x, need(w, `${p}.input_layernorm.weight`), c.rmsNormEps);
      const b = (n: string) => (c.attentionBias ? need(w, `${p}.self_attn.${n}.bias`) : undefined);
      const q = linear(h, need(w, `${p}.self_attn.q_proj.weight`), c.numHeads * hd, b('q_proj'));
      const k = linear(h, need(w, `${p}.self_attn.k_proj.weight`), c.numKvHeads * hd, b('k_proj'));
      const v = linear(h, need(w, `${p}.self_attn.v_proj.weight`), c.numKvHeads * hd, b('v_proj'));
      rope(q, c.numHeads, hd, pos, c, f);
      rope(k, c.numKvHeads, hd, pos, c, f);
      qs.push(q);
      ks.push(k);
      vs.push(v);
    });
    xs = xs.map((x, t) => {
      const att = new Array<number>(c.numHeads * hd).fill(0);
      for (let h = 0; h < c.numHeads; h++) {
        const kvh = Math.floor((h * c.numKvHeads) / c.numHeads);
        const sc: number[] = [];
        const qt = qs[t] as number[];
        for (let s = 0; s <= t; s++) {
          const ksr = ks[s] as number[];
          let dot = 0;
          for (let i = 0; i < hd; i++) dot += (qt[h * hd + i] as number) * (ksr[kvh * hd + i] as number);
          sc.push(dot / Math.sqrt(hd));
        }
        let mx = Number.NEGATIVE_INFINITY;
        for (const v of sc) mx = Math.max(mx, v);
        const e = sc.map((v) => Math.exp(v - mx));
        const z = e.reduce((a, v) => a + v, 0);
        for (let s = 0; s <= t; s++) {
          const vsr = vs[s] as number[];
          const pr = (e[s] as number) / z;
          for (let i = 0; i < hd; i++)
            att[h * hd + i] = (att[h * hd + i] as number) + pr * (vsr[kvh * hd + i] as number);
        }
      }
      const o = linear(att, need(w, `${p}.self_attn.o_proj.weight`), d);
      const x1 = x.map((v, i) => v + (o[i] as number));
      const h2 = norm(x1, need(w, `${p}.post_attention_layernorm.weight`), c.rmsNormEps);
      const g = linear(h2, need(w, `${p}.mlp.gate_proj.weight`), c.intermediateSize);
      const u = linear(h2, need(w, `${p}.mlp.up_proj.weight`), c.intermediateSize);
      const a = g.map((v, i) => (v / (1 + Math.exp(-v))) * (u[i] as number));
      const dn = linear(a, need(w, `${p}.mlp.down_proj.weight`), d);
      return x1.map((v, i) => v + (dn[i] as number));
    });
  }
  const head = c.tieWordEmbeddings ? emb : need(w, 'lm_head.weight');
  return xs.map((x) => linear(norm(x, need(w, 'model.norm.weight'), c.rmsNormEps), head, c.vocabSize));
}

/** Max |a − b| over two logit tables, and max |b| for a relative scale. */
export function maxAbsDiff(a: ArrayLike<number>, b: number[][]): { diff: number; scale: number } {
  let diff = 0;
  let scale = 0;
  const v = b[0]?.length ?? 0;
  for (let t = 0; t < b.length; t++) {
    const row = b[t] as number[];
    for (let j = 0; j < row.length; j++) {
      const y = row[j] as number;
      diff = Math.max(diff, Math.abs((a[t * v + j] as number) - y));
      scale = Math.max(scale, Math.abs(y));
    }
  }
  return { diff, scale };
}
