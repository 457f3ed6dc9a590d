import { describeValue, QError } from '@q/core';
import { DEFAULT_AMPLIFIER_BITS } from './intscale';
import { DEFAULT_LAE_MIN_SCALE } from './lae';
import type { ActPolicy } from './policy';
import type { ClipSearch } from './weights';

/** Recipes as data: every option spelled out, so a manifest records exactly what ran. */

export type RecipeName = 'fptq' | 'w4a8-rtn' | 'w4a8-static' | 'odyssey' | 'w8a8' | 'w4a16';

export interface WeightRecipe {
  /** 4: int4 (packed); 8: int8 per output channel. */
  readonly bits: 4 | 8;
  /** int4 group size along K, or 'channel'. int8 is always 'channel'. */
  readonly groupSize: number | 'channel';
  readonly symmetric: boolean;
  /** Zero-pad K to a multiple of the group size. */
  readonly padK: boolean;
  /** Clipping search of the scale, or false for plain round-to-nearest. */
  readonly clip: ClipSearch | false;
}

export interface ActivationRecipe {
  readonly policy: ActPolicy;
  readonly v0: number;
  readonly v1: number;
  readonly lae: boolean;
  readonly laeMinScale: number;
}

export interface IntegerScaleRecipe {
  readonly enabled: boolean;
  readonly amplifierBits: number | 'auto';
  readonly minBits: number;
  readonly maxBits: number;
  readonly overflowCheck: 'data' | 'worst-case';
}

export interface Recipe {
  /** A built-in recipe's name, or any name a custom recipe goes by (recorded in the manifest). */
  readonly name: string;
  readonly description: string;
  readonly weights: WeightRecipe;
  readonly activations: ActivationRecipe;
  readonly integerScale: IntegerScaleRecipe;
}

/** Partial overrides of a recipe, one level deep per section. */
export interface RecipeOverrides {
  readonly weights?: Partial<WeightRecipe>;
  readonly activations?: Partial<ActivationRecipe>;
  readonly integerScale?: Partial<IntegerScaleRecipe>;
}

const W4_G128: WeightRecipe = { bits: 4, groupSize: 128, symmetric: true, padK: true, clip: false };
const ACT = { v0: 15, v1: 150, lae: false, laeMinScale: DEFAULT_LAE_MIN_SCALE };
const NO_IS: IntegerScaleRecipe = {
  enabled: false,
  amplifierBits: DEFAULT_AMPLIFIER_BITS,
  minBits: 1,
  maxBits: 16,
  overflowCheck: 'data',
};

function deepFreeze<T>(o: T): T {
  if (typeof o === 'object' && o !== null) {
    for (const v of Object.values(o)) deepFreeze(v);
    Object.freeze(o);
  }
  return o;
}

/**
 * The built-in recipes.
 *
 * | name | weights | activations |
 * | --- | --- | --- |
 * | fptq | int4 g128 sym RTN + Integer Scale (b = 10, lowered per layer where int32 needs it) | FPTQ policy (v0 15, v1 150) with LAE |
 * | w4a8-rtn | int4 g128 sym RTN | per-token dynamic |
 * | w4a8-static | int4 g128 sym RTN | per-tensor static |
 * | odyssey | int4 per-channel sym + clipping search | per-token dynamic |
 * | w8a8 | int8 per-channel | per-token dynamic |
 * | w4a16 | int4 g128 sym RTN | none (f32) |
 *
 * @example
 * ```ts
 * RECIPES.fptq.activations // { policy: 'fptq', v0: 15, v1: 150, lae: true, laeMinScale: 1e-5 }
 * ```
 */
export const RECIPES: Readonly<Record<RecipeName, Recipe>> = deepFreeze({
  fptq: {
    name: 'fptq',
    description:
      'FPTQ: LAE + layerwise static/dynamic int8 activations, int4 g128 RTN weights, Integer Scale',
    weights: W4_G128,
    activations: { policy: 'fptq', ...ACT, lae: true },
    // 2^10 where the guaranteed int32 bound allows it, fewer bits where it does not (Llama-2-7B's down_proj
    // with K = 11008 needs b = 9): a fixed b = 10 would refuse such layers outright.
    integerScale: { ...NO_IS, enabled: true, amplifierBits: 'auto', maxBits: DEFAULT_AMPLIFIER_BITS },
  },
  'w4a8-rtn': {
    name: 'w4a8-rtn',
    description: 'int4 g128 RTN weights, per-token dynamic int8 activations, float group scales',
    weights: W4_G128,
    activations: { policy: 'dynamic', ...ACT },
    integerScale: NO_IS,
  },
  'w4a8-static': {
    name: 'w4a8-static',
    description: 'int4 g128 RTN weights, per-tensor static int8 activations (the naive baseline)',
    weights: W4_G128,
    activations: { policy: 'static', ...ACT },
    integerScale: NO_IS,
  },
  odyssey: {
    name: 'odyssey',
    description:
      'OdysseyLLM: int4 per-channel weights with a clipping search, per-token dynamic int8 activations',
    weights: {
      bits: 4,
      groupSize: 'channel',
      symmetric: true,
      padK: true,
      clip: { steps: 20, minRatio: 0.5 },
    },
    activations: { policy: 'dynamic', ...ACT },
    integerScale: NO_IS,
  },
  w8a8: {
    name: 'w8a8',
    description: 'int8 per-channel weights, per-token dynamic int8 activations',
    weights: { bits: 8, groupSize: 'channel', symmetric: true, padK: true, clip: false },
    activations: { policy: 'dynamic', ...ACT },
    integerScale: NO_IS,
  },
  w4a16: {
    name: 'w4a16',
    description: 'int4 g128 RTN weights only; activations stay float',
    weights: W4_G128,
    activations: { policy: 'none', ...ACT },
    integerScale: NO_IS,
  },
} satisfies Record<RecipeName, Recipe>);

export const RECIPE_NAMES = Object.keys(RECIPES) as RecipeName[];

const SECTION_KEYS = {
  weights: ['bits', 'groupSize', 'symmetric', 'padK', 'clip'],
  activations: ['policy', 'v0', 'v1', 'lae', 'laeMinScale'],
  integerScale: ['enabled', 'amplifierBits', 'minBits', 'maxBits', 'overflowCheck'],
} as const;

function bad(option: string, expectedWhat: string, v: unknown): never {
  throw new QError(
    'E_ARG',
    `Expected ${expectedWhat} for recipe option ${option} but received ${describeValue(v)}`,
  );
}

/**
 * Validates every option of a recipe (e.g. one read from a manifest); throws `E_ARG` naming the option.
 *
 * @example
 * ```ts
 * validateRecipe(JSON.parse(text).recipe); // returns it typed
 * ```
 */
export function validateRecipe(r: unknown): Recipe {
  if (typeof r !== 'object' || r === null) bad('(recipe)', 'an object', r);
  const o = r as Record<string, unknown>;
  // Custom recipes go by their own names: any non-empty name is valid; the options below decide what runs.
  if (typeof o.name !== 'string' || o.name.trim() === '') bad('name', 'a non-empty string', o.name);
  if (typeof o.description !== 'string') bad('description', 'a string', o.description);
  for (const key of Object.keys(o)) {
    if (!['name', 'description', ...Object.keys(SECTION_KEYS)].includes(key)) {
      throw new QError(
        'E_ARG',
        `Expected one of weights, activations, integerScale for recipe option but received ${describeValue(key)}`,
      );
    }
  }
  for (const [section, keys] of Object.entries(SECTION_KEYS)) {
    const s = o[section];
    if (typeof s !== 'object' || s === null) bad(section, 'an object', s);
    for (const k of keys) if (!(k in s)) bad(`${section}.${k}`, 'a value', undefined);
    for (const k of Object.keys(s)) {
      if (!(keys as readonly string[]).includes(k)) {
        throw new QError(
          'E_ARG',
          `Expected one of ${keys.join(', ')} for recipe option ${section} but received ${describeValue(k)}`,
        );
      }
    }
  }
  const w = o.weights as WeightRecipe;
  if (w.bits !== 4 && w.bits !== 8) bad('weights.bits', '4 or 8', w.bits);
  if (
    w.groupSize !== 'channel' &&
    !(Number.isSafeInteger(w.groupSize) && w.groupSize >= 2 && w.groupSize % 2 === 0)
  ) {
    bad('weights.groupSize', "a positive even integer (32, 64, 128) or 'channel'", w.groupSize);
  }
  if (w.bits === 8 && w.groupSize !== 'channel')
    bad('weights.groupSize', "'channel' for 8-bit weights", w.groupSize);
  if (typeof w.symmetric !== 'boolean') bad('weights.symmetric', 'a boolean', w.symmetric);
  if (w.bits === 8 && !w.symmetric) bad('weights.symmetric', 'true for 8-bit weights', w.symmetric);
  if (typeof w.padK !== 'boolean') bad('weights.padK', 'a boolean', w.padK);
  if (w.clip !== false) {
    const c = w.clip as ClipSearch;
    if (
      typeof c !== 'object' ||
      c === null ||
      !Number.isInteger(c.steps) ||
      c.steps < 2 ||
      !(c.minRatio > 0 && c.minRatio < 1)
    ) {
      bad('weights.clip', 'false or {steps ≥ 2, 0 < minRatio < 1}', c);
    }
    if (Object.keys(c).some((k) => k !== 'steps' && k !== 'minRatio'))
      bad('weights.clip', 'only steps and minRatio', c);
  }
  const a = o.activations as ActivationRecipe;
  if (!['fptq', 'dynamic', 'static', 'none'].includes(a.policy))
    bad('activations.policy', 'one of fptq, dynamic, static, none', a.policy);
  if (typeof a.v0 !== 'number' || !(a.v0 >= 0) || !Number.isFinite(a.v0))
    bad('activations.v0', 'a finite number ≥ 0', a.v0);
  if (typeof a.v1 !== 'number' || !(a.v1 >= a.v0) || !Number.isFinite(a.v1))
    bad('activations.v1', `a finite number ≥ v0 (${a.v0})`, a.v1);
  if (typeof a.lae !== 'boolean') bad('activations.lae', 'a boolean', a.lae);
  if (typeof a.laeMinScale !== 'number' || !(a.laeMinScale > 0) || !Number.isFinite(a.laeMinScale)) {
    bad('activations.laeMinScale', 'a positive finite number', a.laeMinScale);
  }
  const is = o.integerScale as IntegerScaleRecipe;
  if (typeof is.enabled !== 'boolean') bad('integerScale.enabled', 'a boolean', is.enabled);
  const okBits = (b: unknown): boolean => Number.isInteger(b) && (b as number) >= 0 && (b as number) <= 30;
  if (is.amplifierBits !== 'auto' && !okBits(is.amplifierBits))
    bad('integerScale.amplifierBits', "an integer in [0, 30] or 'auto'", is.amplifierBits);
  if (!okBits(is.minBits)) bad('integerScale.minBits', 'an integer in [0, 30]', is.minBits);
  if (!okBits(is.maxBits) || is.maxBits < is.minBits)
    bad('integerScale.maxBits', `an integer in [minBits (${is.minBits}), 30]`, is.maxBits);
  if (is.overflowCheck !== 'data' && is.overflowCheck !== 'worst-case')
    bad('integerScale.overflowCheck', "'data' or 'worst-case'", is.overflowCheck);
  if (is.enabled && (w.bits !== 4 || !w.symmetric || w.groupSize === 'channel')) {
    bad('integerScale.enabled', 'false unless weights are symmetric group-wise int4', is.enabled);
  }
  return o as unknown as Recipe;
}

/**
 * A built-in recipe with options overridden, validated. An unknown recipe or option throws `E_ARG` listing the
 * valid ones.
 *
 * @example
 * ```ts
 * getRecipe('fptq', { weights: { groupSize: 64 }, integerScale: { amplifierBits: 'auto' } });
 * ```
 */
export function getRecipe(name: string, overrides: RecipeOverrides = {}): Recipe {
  const base = RECIPES[name as RecipeName];
  if (!base || !Object.hasOwn(RECIPES, name)) {
    throw new QError(
      'E_ARG',
      `Expected one of ${RECIPE_NAMES.join(', ')} for recipe but received ${describeValue(name)}`,
    );
  }
  if (typeof overrides !== 'object' || overrides === null) bad('(overrides)', 'an object', overrides);
  for (const key of Object.keys(overrides)) {
    if (!(key in SECTION_KEYS)) {
      throw new QError(
        'E_ARG',
        `Expected one of ${Object.keys(SECTION_KEYS).join(', ')} for recipe option but received ${describeValue(key)}`,
      );
    }
  }
  const merged = {
    name: base.name,
    description: base.description,
    weights: { ...base.weights, ...overrides.weights },
    activations: { ...base.activations, ...overrides.activations },
    integerScale: { ...base.integerScale, ...overrides.integerScale },
  };
  if (merged.weights.clip && typeof merged.weights.clip === 'object')
    merged.weights.clip = { ...merged.weights.clip };
  return deepFreeze(validateRecipe(merged));
}
