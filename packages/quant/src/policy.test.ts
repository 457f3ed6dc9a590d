import { describe, expect, it } from 'vitest';
import { createObserver } from './observer';
import { formatPlanTable, linearGroups, planLayers } from './policy';
import { tinyConfig } from './testing';

function observerWithRanges(ranges: Record<string, number>, k: (name: string) => number) {
  const obs = createObserver();
  for (const [name, r] of Object.entries(ranges)) {
    const m = new Float32Array(k(name)).map((_, j) => (r * (j + 1)) / k(name));
    obs.setMaxAbs(name, m);
  }
  return obs;
}

describe('planLayers (FPTQ policy)', () => {
  const config = tinyConfig({ numLayers: 1 });
  const kOf = (n: string): number => (n.endsWith('down_proj') ? 96 : 64);
  const p = 'model.layers.0';
  it('applies the v0/v1 thresholds, shares decisions, and keeps LAE off for o_proj/down_proj', () => {
    const obs = observerWithRanges(
      {
        [`${p}.self_attn.q_proj`]: 40, // LAE band
        [`${p}.self_attn.o_proj`]: 3, // static
        [`${p}.mlp.gate_proj`]: 200, // dynamic
        [`${p}.mlp.down_proj`]: 60, // middle band but no norm → dynamic
      },
      kOf,
    );
    const plans = planLayers(obs, config);
    const by = new Map(plans.map((x) => [x.name.replace(`${p}.`, ''), x]));
    for (const n of ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj']) {
      expect(by.get(n)?.act).toBe('static');
      expect(by.get(n)?.lae).toBe(true);
      expect(by.get(n)?.range).toBe(40);
      // After LAE the range of channel j is log2(2 + m_j); the largest is log2(42).
      expect(by.get(n)?.staticScale).toBeCloseTo(Math.log2(42) / 127, 6);
    }
    expect(by.get('self_attn.o_proj')).toMatchObject({
      act: 'static',
      lae: false,
      staticScale: Math.fround(Math.fround(3) / 127),
    });
    expect(by.get('mlp.gate_proj')).toMatchObject({ act: 'dynamic', lae: false });
    expect(by.get('mlp.up_proj')).toMatchObject({ act: 'dynamic', lae: false });
    expect(by.get('mlp.down_proj')).toMatchObject({ act: 'dynamic', lae: false });
    const table = formatPlanTable(plans);
    expect(table.split('\n')).toHaveLength(8);
    expect(table).toContain('model.layers.0.mlp.down_proj');
  });
  it('follows custom thresholds and fixed policies', () => {
    const obs = observerWithRanges(
      {
        [`${p}.self_attn.q_proj`]: 40,
        [`${p}.self_attn.o_proj`]: 3,
        [`${p}.mlp.gate_proj`]: 200,
        [`${p}.mlp.down_proj`]: 60,
      },
      kOf,
    );
    const plans = planLayers(obs, config, { v0: 50, v1: 300 });
    expect(plans.find((x) => x.name.endsWith('q_proj'))).toMatchObject({ act: 'static', lae: false });
    expect(plans.find((x) => x.name.endsWith('gate_proj'))).toMatchObject({ act: 'static', lae: true });
    expect(planLayers(obs, config, { lae: false }).find((x) => x.name.endsWith('q_proj'))?.act).toBe(
      'dynamic',
    );
    expect(planLayers(obs, config, { policy: 'static' }).every((x) => x.act === 'static' && !x.lae)).toBe(
      true,
    );
    expect(planLayers(undefined, config, { policy: 'dynamic' }).every((x) => x.act === 'dynamic')).toBe(true);
    expect(() => planLayers(undefined, config)).toThrow(/statistics/);
    expect(() => planLayers(obs, config, { v0: 10, v1: 5 })).toThrow(/v0 ≤ v1/);
  });
  it('groups the layers of a model', () => {
    const g = linearGroups(tinyConfig({ numLayers: 3 }));
    expect(g).toHaveLength(12);
    expect(g[2]?.members).toEqual(['model.layers.0.mlp.gate_proj', 'model.layers.0.mlp.up_proj']);
    expect(g[3]?.norm).toBeUndefined();
  });
});
