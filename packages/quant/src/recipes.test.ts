import { isQError } from '@q/core';
import { describe, expect, it } from 'vitest';
import { getRecipe, RECIPE_NAMES, RECIPES, validateRecipe } from './recipes';

describe('recipes', () => {
  it('are fully optioned data objects that validate', () => {
    expect(RECIPE_NAMES).toEqual(['fptq', 'w4a8-rtn', 'w4a8-static', 'odyssey', 'w8a8', 'w4a16']);
    for (const name of RECIPE_NAMES) {
      const r = RECIPES[name];
      expect(validateRecipe(JSON.parse(JSON.stringify(r)))).toEqual(r);
      expect(Object.keys(r.weights).sort()).toEqual(['bits', 'clip', 'groupSize', 'padK', 'symmetric']);
    }
    expect(RECIPES.fptq).toMatchObject({
      weights: { bits: 4, groupSize: 128, clip: false },
      activations: { policy: 'fptq', v0: 15, v1: 150, lae: true },
      integerScale: { enabled: true, amplifierBits: 'auto', maxBits: 10 },
    });
    expect(RECIPES.odyssey.weights).toMatchObject({
      groupSize: 'channel',
      clip: { steps: 20, minRatio: 0.5 },
    });
  });
  it('applies overrides without touching the built-in', () => {
    const r = getRecipe('fptq', {
      weights: { groupSize: 64 },
      activations: { v1: 100 },
      integerScale: { amplifierBits: 12 },
    });
    expect(r.weights.groupSize).toBe(64);
    expect(r.activations.v1).toBe(100);
    expect(r.integerScale.amplifierBits).toBe(12);
    expect(RECIPES.fptq.weights.groupSize).toBe(128);
  });
  it('refuses an unknown recipe, listing the valid ones', () => {
    try {
      getRecipe('gptq');
      expect.unreachable();
    } catch (e) {
      expect(isQError(e, 'E_ARG')).toBe(true);
      expect((e as Error).message).toContain('fptq, w4a8-rtn, w4a8-static, odyssey, w8a8, w4a16');
      expect((e as Error).message).toContain('"gptq"');
    }
  });
  it('refuses an unknown option, listing the valid ones', () => {
    expect(() => getRecipe('fptq', { weights: { group: 64 } as never })).toThrow(
      /bits, groupSize, symmetric, padK, clip.*"group"/,
    );
    expect(() => getRecipe('fptq', { act: {} } as never)).toThrow(
      /weights, activations, integerScale.*"act"/,
    );
  });
  it('refuses bad option values', () => {
    expect(() => getRecipe('fptq', { weights: { groupSize: 33 } })).toThrow(/even/);
    expect(() => getRecipe('fptq', { weights: { groupSize: 'channel' } })).toThrow(/integerScale\.enabled/);
    expect(() => getRecipe('w8a8', { weights: { groupSize: 128 } })).toThrow(/8-bit/);
    expect(() => getRecipe('fptq', { activations: { v0: 200 } })).toThrow(/v1/);
    expect(() => getRecipe('fptq', { integerScale: { amplifierBits: 40 } })).toThrow(/amplifierBits/);
  });
});
