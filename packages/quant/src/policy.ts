import { describeValue, type LinearGroup, linearGroups, type ModelConfig, QError } from '@q/core';
import { staticScaleFromRange } from './activation';
import { DEFAULT_LAE_MIN_SCALE, laeScales } from './lae';
import type { ActivationObserver } from './observer';
import type { ActQuantMode, LayerPlan } from './types';

/**
 * The FPTQ layerwise activation policy. For each group of linear layers sharing one input, the calibration
 * range r = max_j max|X_j| decides: r < v0 → per-tensor static; v0 ≤ r < v1 and the input follows a norm →
 * LAE then per-tensor static; otherwise per-token dynamic.
 */

export { type LinearGroup, linearGroups };

/** How activations are quantized across the model. */
export type ActPolicy = 'fptq' | 'dynamic' | 'static' | 'none';

export interface PolicyOptions {
  /** 'fptq' (thresholds), or one quantizer for every layer. Default 'fptq'. */
  readonly policy?: ActPolicy;
  /** Below v0: per-tensor static. Default 15. */
  readonly v0?: number;
  /** From v0 up to v1 (after a norm): LAE + static. Default 150. */
  readonly v1?: number;
  /** Allow LAE (the 'fptq' middle band falls back to dynamic without it). Default true. */
  readonly lae?: boolean;
  /** Lower clamp of LAE scales. Default 1e-5. */
  readonly laeMinScale?: number;
}

/**
 * The per-channel max|X| of a group's input: element-wise max over the members the observer saw.
 * Throws `E_ARG` when none was observed and `E_NUMERIC` naming the layer for NaN/±Inf/negative values.
 *
 * @example
 * ```ts
 * groupMaxAbs(obs, linearGroups(config)[0]) // Float32Array [hiddenSize]
 * ```
 */
export function groupMaxAbs(stats: ActivationObserver, group: LinearGroup): Float32Array {
  let out: Float32Array | undefined;
  for (const name of group.members) {
    if (!stats.has(name)) continue;
    const m = stats.maxAbs(name);
    for (let j = 0; j < m.length; j++) {
      const v = m[j] as number;
      if (!(v >= 0) || !Number.isFinite(v)) {
        throw new QError(
          'E_NUMERIC',
          `Expected a finite max|X| ≥ 0 for layer ${name} channel ${j} but received ${v}`,
        );
      }
    }
    if (!out) out = Float32Array.from(m);
    else {
      if (out.length !== m.length) {
        throw new QError(
          'E_SHAPE',
          `Expected ${out.length} channels for the statistics of ${name} but received ${m.length}`,
        );
      }
      for (let j = 0; j < m.length; j++) out[j] = Math.max(out[j] as number, m[j] as number);
    }
  }
  if (!out) {
    throw new QError(
      'E_ARG',
      `Expected calibration statistics for one of ${group.members.join(', ')} but received none (observed ${describeValue(stats.names())})`,
    );
  }
  return out;
}

function checkPolicyOptions(o: PolicyOptions): Required<PolicyOptions> {
  const r = {
    policy: o.policy ?? 'fptq',
    v0: o.v0 ?? 15,
    v1: o.v1 ?? 150,
    lae: o.lae ?? true,
    laeMinScale: o.laeMinScale ?? DEFAULT_LAE_MIN_SCALE,
  };
  if (!['fptq', 'dynamic', 'static', 'none'].includes(r.policy)) {
    throw new QError(
      'E_ARG',
      `Expected one of fptq, dynamic, static, none for policy but received ${describeValue(r.policy)}`,
    );
  }
  if (!(r.v0 >= 0 && r.v1 >= r.v0 && Number.isFinite(r.v1))) {
    throw new QError('E_ARG', `Expected finite thresholds 0 ≤ v0 ≤ v1 but received v0=${r.v0}, v1=${r.v1}`);
  }
  return r;
}

/**
 * Plans one group of layers sharing an input (they share the decision). `maxAbs` may be omitted for the
 * 'dynamic' and 'none' policies; the plans then report range 0.
 *
 * @example
 * ```ts
 * planGroup(linearGroups(config)[0], obs.maxAbs('model.layers.0.self_attn.q_proj'), { v0: 15, v1: 150 });
 * ```
 */
export function planGroup(
  group: LinearGroup,
  maxAbs: Float32Array | undefined,
  options: PolicyOptions = {},
): LayerPlan[] {
  const o = checkPolicyOptions(options);
  let range = 0;
  if (maxAbs) for (const v of maxAbs) range = Math.max(range, v);
  let act: ActQuantMode;
  let lae = false;
  let staticScale: number | undefined;
  const needStats = o.policy === 'fptq' || o.policy === 'static';
  if (needStats && !maxAbs) {
    throw new QError(
      'E_ARG',
      `Expected calibration statistics for ${group.members.join(', ')} (policy ${o.policy}) but received none`,
    );
  }
  if (o.policy === 'none' || o.policy === 'dynamic') {
    act = o.policy;
  } else if (o.policy === 'static' || range < o.v0) {
    act = 'static';
    staticScale = staticScaleFromRange(range);
  } else if (range < o.v1 && group.norm !== undefined && o.lae && maxAbs) {
    act = 'static';
    lae = true;
    const s = laeScales(maxAbs, { minScale: o.laeMinScale, name: group.members[0] ?? 'layer' });
    let r2 = 0;
    for (let j = 0; j < s.length; j++) r2 = Math.max(r2, (maxAbs[j] as number) / (s[j] as number));
    staticScale = staticScaleFromRange(r2);
  } else {
    act = 'dynamic';
  }
  return group.members.map((name) => ({
    name,
    range,
    act,
    lae,
    ...(staticScale !== undefined ? { staticScale } : {}),
  }));
}

/**
 * Plans every linear layer of a model (FPTQ policy by default; options choose thresholds or a fixed
 * quantizer). q/k/v and gate/up share one decision; o_proj and down_proj never take LAE.
 *
 * @example
 * ```ts
 * const plans = planLayers(obs, config, { v0: 15, v1: 150 });
 * console.log(formatPlanTable(plans));
 * ```
 */
export function planLayers(
  stats: ActivationObserver | undefined,
  config: ModelConfig,
  options: PolicyOptions = {},
): LayerPlan[] {
  const o = checkPolicyOptions(options);
  const out: LayerPlan[] = [];
  for (const g of linearGroups(config)) {
    const maxAbs =
      stats && (o.policy === 'fptq' || o.policy === 'static' || g.members.some((n) => stats.has(n)))
        ? groupMaxAbs(stats, g)
        : undefined;
    out.push(...planGroup(g, maxAbs, o));
  }
  return out;
}

/**
 * Formats plans (and optionally the error report) as a fixed-width text table.
 *
 * @example
 * ```ts
 * console.log(formatPlanTable(plans));
 * // layer                              range  act      LAE  static scale
 * // model.layers.0.self_attn.q_proj     3.21  static   no   0.02527559
 * ```
 */
export function formatPlanTable(
  plans: readonly LayerPlan[],
  report?: readonly { name: string; weightError: number; intScaleError?: number }[],
): string {
  const byName = new Map(report?.map((r) => [r.name, r]));
  const nameW = Math.max(5, ...plans.map((p) => p.name.length));
  const head = [
    'layer'.padEnd(nameW),
    'range'.padStart(10),
    'act'.padEnd(8),
    'LAE',
    'static scale'.padStart(13),
  ];
  if (report) head.push('weight err'.padStart(11), 'int-scale err'.padStart(13));
  const lines = [head.join('  ')];
  for (const p of plans) {
    const row = [
      p.name.padEnd(nameW),
      p.range.toFixed(3).padStart(10),
      p.act.padEnd(8),
      (p.lae ? 'yes' : 'no').padEnd(3),
      (p.staticScale !== undefined ? p.staticScale.toPrecision(7) : '-').padStart(13),
    ];
    if (report) {
      const r = byName.get(p.name);
      row.push(
        (r ? r.weightError.toExponential(3) : '-').padStart(11),
        (r?.intScaleError !== undefined ? r.intScaleError.toExponential(3) : '-').padStart(13),
      );
    }
    lines.push(row.join('  '));
  }
  return lines.join('\n');
}
