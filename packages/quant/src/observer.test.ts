import { isQError } from '@q/core';
import { describe, expect, it } from 'vitest';
import { ActivationObserver, createObserver } from './observer';
import { randn } from './testing';

function refMax(x: Float32Array, k: number): number[] {
  const out = new Array<number>(k).fill(0);
  for (let i = 0; i < x.length; i++) out[i % k] = Math.max(out[i % k] as number, Math.abs(x[i] as number));
  return out;
}

describe('ActivationObserver', () => {
  it('records per-channel max|X| across batches', () => {
    const obs = createObserver();
    const a = randn(10 * 16, 1, 2);
    const b = randn(7 * 16, 2, 5);
    obs.observe('l', a, 16);
    obs.observe('l', b, 16);
    const all = new Float32Array([...a, ...b]);
    expect(Array.from(obs.maxAbs('l'))).toEqual(refMax(all, 16));
    expect(obs.get('l').rows).toBe(17);
    expect(obs.range('l')).toBe(Math.max(...refMax(all, 16)));
  });

  it('merges batches seen by separate observers (same-shape max)', () => {
    const a = randn(5 * 8, 3);
    const b = randn(9 * 8, 4, 3);
    const o1 = createObserver();
    const o2 = createObserver();
    o1.observe('x', a, 8);
    o2.observe('x', b, 8);
    o2.observe('y', a, 8);
    o1.merge(o2);
    expect(Array.from(o1.maxAbs('x'))).toEqual(refMax(new Float32Array([...a, ...b]), 8));
    expect(o1.get('x').rows).toBe(14);
    expect(o1.has('y')).toBe(true);
  });

  it('concatenates channel-sharded tensor-parallel observers in rank order', () => {
    const full = randn(6 * 12, 5);
    const shards = [0, 1, 2].map(() => createObserver());
    for (let r = 0; r < 3; r++) {
      const part = new Float32Array(6 * 4);
      for (let i = 0; i < 6; i++)
        for (let j = 0; j < 4; j++) part[i * 4 + j] = full[i * 12 + r * 4 + j] as number;
      shards[r]?.observe('model.layers.0.mlp.down_proj', part, 4);
    }
    const joined = ActivationObserver.concat(shards);
    expect(Array.from(joined.maxAbs('model.layers.0.mlp.down_proj'))).toEqual(refMax(full, 12));
    expect(joined.get('model.layers.0.mlp.down_proj').rows).toBe(6);
    const viaMerge = (shards[0] as ActivationObserver).merge(shards[1] as ActivationObserver, 'concat');
    expect(viaMerge.maxAbs('model.layers.0.mlp.down_proj').length).toBe(8);
  });

  it('refuses shape mismatches', () => {
    const o = createObserver();
    o.observe('l', randn(8, 1), 4);
    expect(() => o.observe('l', randn(9, 1), 3)).toThrow(/k=4/);
    const p = createObserver();
    p.observe('l', randn(6, 1), 6);
    expect(() => o.merge(p)).toThrow(/concat/);
    expect(() => ActivationObserver.concat([o, createObserver()])).toThrow(/shard 1/);
  });

  it('refuses NaN and Inf activations naming the layer', () => {
    const x = randn(12, 1);
    x[7] = Number.NaN;
    expect(() => createObserver().observe('model.layers.2.mlp.up_proj', x, 4)).toThrow(
      /model\.layers\.2\.mlp\.up_proj.*row 1, channel 3/,
    );
    x[7] = Number.POSITIVE_INFINITY;
    try {
      createObserver().observe('l', x, 4);
      expect.unreachable();
    } catch (e) {
      expect(isQError(e, 'E_NUMERIC')).toBe(true);
    }
  });

  it('round-trips through JSON exactly, histograms included', () => {
    const o = createObserver({ histogram: true });
    o.observe('a', randn(20 * 8, 6, 7), 8);
    o.observe('b', randn(3 * 5, 7), 5);
    const back = ActivationObserver.fromJSON(JSON.stringify(o));
    expect(back.names()).toEqual(['a', 'b']);
    expect(Array.from(back.maxAbs('a'))).toEqual(Array.from(o.maxAbs('a')));
    expect(back.percentile('a', 50)).toBe(o.percentile('a', 50));
  });

  it('refuses JSON of another version, malformed JSON, and non-finite statistics', () => {
    const o = createObserver();
    o.observe('a', randn(8, 1), 4);
    const j = o.toJSON();
    expect(() => ActivationObserver.fromJSON({ ...j, formatVersion: 2 })).toThrow(/formatVersion 1/);
    expect(() => ActivationObserver.fromJSON('{')).toThrow(/does not parse/);
    const bad = JSON.parse(JSON.stringify(j));
    bad.layers.a.maxAbs[2] = null; // how NaN comes out of JSON.stringify
    expect(() => ActivationObserver.fromJSON(bad)).toThrow(/layer a channel 2/);
    expect(() => o.setMaxAbs('z', Float32Array.of(1, Number.NaN))).toThrow(/layer z channel 1/);
  });

  it('estimates percentiles from the histogram within one bin (9%)', () => {
    const o = createObserver({ histogram: true });
    const x = randn(4000 * 4, 8);
    o.observe('a', x, 4);
    const sorted = Array.from(x, Math.abs).sort((p, q) => p - q);
    for (const p of [50, 90, 99]) {
      const truth = sorted[Math.ceil((p / 100) * sorted.length) - 1] as number;
      const est = o.percentile('a', p);
      expect(est).toBeGreaterThanOrEqual(truth * 0.999);
      expect(est).toBeLessThanOrEqual(truth * 2 ** (1 / 8) * 1.001);
    }
    expect(() => createObserver().percentile('a', 50)).toThrow();
  });
});
