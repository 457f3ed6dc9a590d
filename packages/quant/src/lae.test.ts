import { Rng, relativeError } from '@q/core';
import { describe, expect, it } from 'vitest';
import { foldLae, laeScales } from './lae';
import { randn } from './testing';

/** Float64 evaluation of y_i = W_i · (norm(x) ⊙ g + b) for every linear i. */
function block(
  x: Float64Array,
  g: Float32Array,
  b: Float32Array | undefined,
  ws: Float32Array[],
  layerNorm: boolean,
): number[] {
  const k = x.length;
  let mean = 0;
  if (layerNorm) mean = x.reduce((p, v) => p + v, 0) / k;
  let ss = 0;
  for (const v of x) ss += (v - mean) ** 2;
  const r = 1 / Math.sqrt(ss / k + 1e-5);
  const h = Array.from(x, (v, j) => (v - mean) * r * (g[j] as number) + (b ? (b[j] as number) : 0));
  const out: number[] = [];
  for (const w of ws) {
    for (let i = 0; i < w.length / k; i++) {
      let s = 0;
      for (let j = 0; j < k; j++) s += (w[i * k + j] as number) * (h[j] as number);
      out.push(s);
    }
  }
  return out;
}

describe('laeScales', () => {
  it('is max|X| / log2(2 + max|X|), clamped away from zero', () => {
    const m = Float32Array.of(0, 1e-9, 0.5, 2, 15, 150, 3000);
    const s = laeScales(m, { minScale: 1e-4 });
    m.forEach((v, j) => {
      expect(s[j]).toBe(Math.max(Math.fround(1e-4), Math.fround(v / Math.log2(2 + v))));
    });
    expect(s[0]).toBeGreaterThan(0);
    expect(s[2]).toBeCloseTo(0.5 / Math.log2(2.5), 6);
  });
  it('refuses NaN statistics naming the layer', () => {
    expect(() =>
      laeScales(Float32Array.of(1, Number.NaN), { name: 'model.layers.1.self_attn.q_proj' }),
    ).toThrow(/model\.layers\.1\.self_attn\.q_proj channel 1/);
  });
});

describe('foldLae', () => {
  for (const layerNorm of [false, true]) {
    it(`keeps the float function within 1e-5 relative (${layerNorm ? 'LayerNorm with bias' : 'RMSNorm'})`, () => {
      const k = 96;
      const rng = new Rng(layerNorm ? 5 : 4);
      const rand = (): number => rng.next();
      const maxAbs = new Float32Array(k).map(() => (rand() < 0.1 ? 50 + 100 * rand() : 0.05 + 3 * rand()));
      maxAbs[3] = 0; // a dead channel: the clamp keeps the scale positive
      const s = laeScales(maxAbs);
      const g = randn(k, 1, 0.2).map((v) => 1 + v);
      const b = layerNorm ? randn(k, 2, 0.1) : undefined;
      const ws = [randn(32 * k, 3, 0.1), randn(16 * k, 4, 0.1), randn(16 * k, 5, 0.1)];
      const folded = foldLae({
        normWeight: g,
        ...(b ? { normBias: b } : {}),
        linears: ws.map((weight, i) => ({ name: `l${i}`, weight })),
        scales: s,
      });
      expect(folded.normBias !== undefined).toBe(layerNorm);
      for (let t = 0; t < 5; t++) {
        const x = Float64Array.from(randn(k, 100 + t), (v, j) => v * (maxAbs[j] as number));
        const ref = block(x, g, b, ws, layerNorm);
        const got = block(
          x,
          folded.normWeight,
          folded.normBias,
          folded.linears.map((l) => l.weight),
          layerNorm,
        );
        expect(relativeError(got, ref)).toBeLessThanOrEqual(1e-5);
      }
      // The inputs are untouched (pure function).
      expect(ws[0]?.[0]).toBe(randn(32 * k, 3, 0.1)[0]);
    });
  }
  it('refuses mismatched lengths and non-positive scales', () => {
    expect(() =>
      foldLae({ normWeight: new Float32Array(3), linears: [], scales: new Float32Array(4).fill(1) }),
    ).toThrow(/length 4/);
    expect(() =>
      foldLae({ normWeight: new Float32Array(2), linears: [], scales: Float32Array.of(1, 0) }),
    ).toThrow(/channel 1/);
  });
});
