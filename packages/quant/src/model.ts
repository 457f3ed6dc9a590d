import { type ModelConfig, QError, Tensor } from '@q/core';
import { integerScaleWithReport, intScaleError } from './intscale';
import { foldLae, laeScales } from './lae';
import type { ActivationObserver } from './observer';
import { groupMaxAbs, type LinearGroup, linearGroups, planGroup } from './policy';
import { getRecipe, type Recipe, type RecipeName } from './recipes';
import type { LayerPlan, QuantizedLinear, QuantWeights } from './types';
import {
  assertFinite,
  dequantizeInt8,
  quantizeInt4WithStats,
  quantizeInt8,
  relativeFrobenius,
  weightErrorFromStats,
} from './weights';

/** A quantized model: quantized linear layers plus every other tensor in f32 (norms LAE-folded). */
export interface QuantizedModel {
  readonly config: ModelConfig;
  readonly recipe: Recipe;
  /** One plan per linear layer, in execution order. */
  readonly plans: readonly LayerPlan[];
  /** Quantized linear layers by name (no `.weight`). */
  readonly linears: Map<string, QuantizedLinear>;
  /** Float tensors by full HF name: embeddings, lm_head, folded norms, anything not quantized. */
  readonly tensors: Map<string, Tensor<'f32'>>;
}

/** What quantization did to one linear layer. */
export interface LayerReport {
  readonly name: string;
  readonly plan: LayerPlan;
  /** ‖dequant(Q(W')) − W'‖_F / ‖W'‖_F with W' the (LAE-folded) float weights, dequantized as the kernel will. */
  readonly weightError: number;
  /** Relative Frobenius error Integer Scale adds over float group scales (when enabled). */
  readonly intScaleError?: number;
  /** Amplifier bits and int32 bound chosen by the Integer Scale overflow check (when enabled). */
  readonly amplifierBits?: number;
  readonly overflowBound?: number;
}

export interface QuantizeResult {
  readonly model: QuantizedModel;
  readonly report: LayerReport[];
}

/**
 * Quantizes one linear layer's (already LAE-folded) f32 weights W[n, k] per the recipe and its plan.
 *
 * @example
 * ```ts
 * const { linear, report } = quantizeLinear(w, 64, 64, getRecipe('fptq'), plan);
 * ```
 */
export function quantizeLinear(
  weight: Float32Array,
  n: number,
  k: number,
  recipe: Recipe,
  plan: LayerPlan,
  bias?: Float32Array,
): { linear: QuantizedLinear; report: LayerReport } {
  const name = plan.name;
  // The quantizers check the weights for NaN/±Inf in their first pass.
  if (bias) {
    assertFinite(bias, `${name}.bias`);
    if (bias.length !== n)
      throw new QError('E_SHAPE', `Expected ${n} values for ${name}.bias but received ${bias.length}`);
  }
  const wr = recipe.weights;
  let weights: QuantWeights;
  let weightError: number;
  let extra: Partial<Pick<LayerReport, 'intScaleError' | 'amplifierBits' | 'overflowBound'>> = {};
  if (wr.bits === 8) {
    weights = quantizeInt8(weight, n, k, { name });
    weightError = relativeFrobenius(dequantizeInt8(weights), weight);
  } else {
    const q4 = quantizeInt4WithStats(weight, n, k, {
      groupSize: wr.groupSize,
      padK: wr.padK,
      symmetric: wr.symmetric,
      clip: wr.clip,
      name,
    });
    let w4 = q4.weights;
    const is = recipe.integerScale;
    if (is.enabled && w4.kPadded !== w4.groupSize) {
      const { intScale, overflow } = integerScaleWithReport(
        w4,
        {
          amplifierBits: is.amplifierBits,
          minBits: is.minBits,
          maxBits: is.maxBits,
          overflowCheck: is.overflowCheck,
          name,
        },
        q4.stats.sumAbsE,
      );
      w4 = { ...w4, intScale };
      extra = {
        intScaleError: intScaleError(w4, q4.stats.sumE2).relative,
        amplifierBits: intScale.amplifierBits,
        overflowBound: overflow.bound,
      };
    }
    weights = w4;
    weightError = weightErrorFromStats(w4, q4.stats);
  }
  const linear: QuantizedLinear = {
    name,
    weights,
    act: plan.act,
    ...(plan.staticScale !== undefined ? { staticScale: plan.staticScale } : {}),
    ...(bias ? { bias } : {}),
  };
  return { linear, report: { name, plan, weightError, ...extra } };
}

function f32Data(t: Tensor<'f32'>, name: string): Float32Array {
  if (t.dtype !== 'f32') throw new QError('E_DTYPE', `Expected f32 for ${name} but received ${t.dtype}`);
  return t.isContiguous() && t.offset === 0 && t.data.length === t.size ? t.data : t.contiguous().data;
}

function need(weights: ReadonlyMap<string, Tensor<'f32'>>, name: string): Tensor<'f32'> {
  const t = weights.get(name);
  if (!t) throw new QError('E_ARG', `Expected tensor ${name} in the model weights but received none`);
  return t;
}

/**
 * Applies the plan of one group (LAE folding if planned) and returns the float inputs to quantize:
 * the members' (folded) weights and the folded norm tensors.
 *
 * @example
 * ```ts
 * const g = linearGroups(config)[0];
 * const { members, norms } = prepareGroup(g, planGroup(g, groupMaxAbs(obs, g)), weights, obs, getRecipe('fptq'));
 * ```
 */
export function prepareGroup(
  group: LinearGroup,
  plans: readonly LayerPlan[],
  weights: ReadonlyMap<string, Tensor<'f32'>>,
  stats: ActivationObserver | undefined,
  recipe: Recipe,
): {
  members: { name: string; n: number; k: number; weight: Float32Array; bias?: Float32Array }[];
  norms: Map<string, Tensor<'f32'>>;
} {
  const members = group.members.map((name) => {
    const t = need(weights, `${name}.weight`);
    if (t.shape.length !== 2)
      throw new QError(
        'E_SHAPE',
        `Expected a matrix for ${name}.weight but received shape [${t.shape.join(', ')}]`,
      );
    const [n, k] = t.shape as [number, number];
    const weight = f32Data(t, `${name}.weight`);
    assertFinite(weight, name, k);
    const b = weights.get(`${name}.bias`);
    return { name, n, k, weight, ...(b ? { bias: f32Data(b, `${name}.bias`) } : {}) };
  });
  const norms = new Map<string, Tensor<'f32'>>();
  const plan = plans[0];
  if (plan?.lae && group.norm && stats) {
    const maxAbs = groupMaxAbs(stats, group);
    const k = members[0]?.k ?? 0;
    if (maxAbs.length !== k) {
      throw new QError(
        'E_SHAPE',
        `Expected ${k} channels in the statistics of ${group.members[0]} but received ${maxAbs.length}`,
      );
    }
    const s = laeScales(maxAbs, { minScale: recipe.activations.laeMinScale, name: group.members[0] ?? '' });
    const gName = `${group.norm}.weight`;
    const bName = `${group.norm}.bias`;
    const gT = need(weights, gName);
    const bT = weights.get(bName);
    const normWeight = f32Data(gT, gName);
    assertFinite(normWeight, gName);
    const normBias = bT ? f32Data(bT, bName) : undefined;
    if (normBias) assertFinite(normBias, bName);
    const folded = foldLae({ normWeight, ...(normBias ? { normBias } : {}), linears: members, scales: s });
    norms.set(gName, new Tensor('f32', gT.shape, folded.normWeight));
    if (bT && folded.normBias) norms.set(bName, new Tensor('f32', bT.shape, folded.normBias));
    folded.linears.forEach((l, i) => {
      const m = members[i];
      if (m) m.weight = l.weight;
    });
  }
  return { members, norms };
}

/**
 * Quantizes a model per a recipe. `weights` are f32 tensors under Hugging Face names (see `ModelConfig`);
 * `stats` the calibration statistics (needed by `fptq` and `w4a8-static`). Embeddings, lm_head and norms stay
 * float (norms LAE-folded where planned). Throws `E_NUMERIC` naming the tensor or layer for NaN/±Inf in weights
 * or statistics.
 *
 * @example
 * ```ts
 * const { config, weights } = readLlama2cCheckpoint('stories260K.bin');
 * const { model, report } = quantizeModel(weights, config, obs, 'fptq');
 * console.log(formatPlanTable(model.plans, report));
 * ```
 */
export function quantizeModel(
  weights: ReadonlyMap<string, Tensor<'f32'>>,
  config: ModelConfig,
  stats: ActivationObserver | undefined,
  recipe: Recipe | RecipeName,
): QuantizeResult {
  const r = typeof recipe === 'string' ? getRecipe(recipe) : recipe;
  for (const [name, t] of weights) {
    if (t.dtype !== 'f32') throw new QError('E_DTYPE', `Expected f32 for ${name} but received ${t.dtype}`);
    assertFinite(f32Data(t, name), name, t.shape.length === 2 ? t.shape[1] : undefined);
  }
  const linears = new Map<string, QuantizedLinear>();
  const tensors = new Map<string, Tensor<'f32'>>();
  const consumed = new Set<string>();
  const plans: LayerPlan[] = [];
  const report: LayerReport[] = [];
  for (const group of linearGroups(config)) {
    const maxAbs = stats && group.members.some((n) => stats.has(n)) ? groupMaxAbs(stats, group) : undefined;
    const gPlans = planGroup(group, maxAbs, r.activations);
    plans.push(...gPlans);
    const { members, norms } = prepareGroup(group, gPlans, weights, stats, r);
    for (const [n, t] of norms) tensors.set(n, t);
    members.forEach((m, i) => {
      const plan = gPlans[i] as LayerPlan;
      const res = quantizeLinear(m.weight, m.n, m.k, r, plan, m.bias);
      linears.set(m.name, res.linear);
      report.push(res.report);
      consumed.add(`${m.name}.weight`);
      consumed.add(`${m.name}.bias`);
    });
  }
  for (const [name, t] of weights) {
    if (!consumed.has(name) && !tensors.has(name)) tensors.set(name, t);
  }
  return { model: { config, recipe: r, plans, linears, tensors }, report };
}
