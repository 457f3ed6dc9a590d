import { llamaTensors, type ModelConfig, QError } from '@q/core';

/**
 * The Megatron-style shard plan of a Llama-family model, read from `@q/core`'s one tensor layout: which slice of
 * every tensor a tensor-parallel rank holds.
 *
 * - q/k/v (and their biases), gate/up: column-parallel, rows split (attention heads split across ranks; KV heads
 *   split, or replicated when there are fewer KV heads than ranks).
 * - o_proj, down_proj: row-parallel, columns (K) split; one all-reduce after each.
 * - embeddings and lm_head: vocab-parallel, rows split (uneven when the vocabulary does not divide).
 * - norms: replicated.
 */

/** How a tensor is split over the ranks. */
export type ShardKind = 'column' | 'row' | 'vocab' | 'replicated';

/** One tensor's slice on one rank: dimension `dim` restricted to [start, end) (the whole tensor when replicated). */
export interface TensorShard {
  readonly name: string;
  /** Shape of the whole tensor. */
  readonly shape: readonly number[];
  readonly kind: ShardKind;
  /** 0 splits rows (out features, vocabulary), 1 splits columns (in features). */
  readonly dim: 0 | 1;
  readonly start: number;
  readonly end: number;
}

/** What one rank holds. */
export interface ShardPlan {
  readonly tp: number;
  readonly rank: number;
  /** The rank's view of the config: its query heads, KV heads and MLP width; hidden size and vocabulary stay. */
  readonly config: ModelConfig;
  /** Vocabulary rows [start, end) of the embeddings and lm_head on this rank. */
  readonly vocab: { readonly start: number; readonly end: number };
  /** Global query heads [start, end). */
  readonly heads: { readonly start: number; readonly end: number };
  /** Global KV heads [start, end) (one head, shared with other ranks, when KV heads are replicated). */
  readonly kvHeads: { readonly start: number; readonly end: number };
  /** True when each KV head is held by several ranks. */
  readonly kvReplicated: boolean;
  /** Every tensor of the layout (`lm_head.weight` included even when tied) by name. */
  readonly tensors: ReadonlyMap<string, TensorShard>;
}

function refuse(what: string, name: string, got: string): never {
  throw new QError('E_ARG', `Expected ${what} for ${name} but received ${got}`);
}

/**
 * Checks that a model can be split over `tp` ranks (heads, KV heads and the MLP width must divide).
 *
 * @example
 * ```ts
 * checkTensorParallel(config, 3); // throws E_ARG: 8 heads do not split over 3 ranks
 * ```
 */
export function checkTensorParallel(config: ModelConfig, tp: number): void {
  if (!Number.isInteger(tp) || tp < 1) refuse('a positive integer', '--tp', String(tp));
  const nh = config.numHeads;
  const nkv = config.numKvHeads;
  if (nh % tp !== 0)
    refuse(`a tensor-parallel degree that divides the ${nh} attention heads`, '--tp', String(tp));
  if (nkv % tp !== 0 && tp % nkv !== 0)
    refuse(
      `a tensor-parallel degree that divides the ${nkv} KV heads or is a multiple of them`,
      '--tp',
      String(tp),
    );
  if (config.intermediateSize % tp !== 0)
    refuse(
      `a tensor-parallel degree that divides the MLP width ${config.intermediateSize}`,
      '--tp',
      String(tp),
    );
  if (config.vocabSize < tp)
    refuse(`at most ${config.vocabSize} ranks (one vocabulary row each)`, '--tp', String(tp));
}

/**
 * The vocabulary rows of rank `rank` of `tp`: ⌈vocab / tp⌉ per rank, the last one shorter.
 *
 * @example
 * ```ts
 * vocabRange(32000, 3, 2); // { start: 21334, end: 32000 }
 * ```
 */
export function vocabRange(vocab: number, tp: number, rank: number): { start: number; end: number } {
  const per = Math.ceil(vocab / tp);
  return { start: Math.min(vocab, rank * per), end: Math.min(vocab, (rank + 1) * per) };
}

/**
 * The slice of every tensor that rank `rank` of `tp` holds, with its config.
 *
 * @example
 * ```ts
 * const plan = shardPlan(config, 2, 1); // Llama: 32 heads, 8 KV heads
 * plan.heads; // { start: 16, end: 32 }
 * plan.tensors.get('model.layers.0.mlp.down_proj.weight'); // { kind: 'row', dim: 1, start: ff / 2, end: ff, … }
 * ```
 */
export function shardPlan(config: ModelConfig, tp: number, rank: number): ShardPlan {
  checkTensorParallel(config, tp);
  if (!Number.isInteger(rank) || rank < 0 || rank >= tp)
    refuse(`an integer in [0, ${tp})`, 'rank', String(rank));
  const hd = config.headDim;
  const nhr = config.numHeads / tp;
  const heads = { start: rank * nhr, end: (rank + 1) * nhr };
  const kvReplicated = config.numKvHeads < tp;
  const groups = config.numHeads / config.numKvHeads;
  const kvHeads = kvReplicated
    ? { start: Math.floor(heads.start / groups), end: Math.floor(heads.start / groups) + 1 }
    : { start: (rank * config.numKvHeads) / tp, end: ((rank + 1) * config.numKvHeads) / tp };
  const ffr = config.intermediateSize / tp;
  const ff = { start: rank * ffr, end: (rank + 1) * ffr };
  const vocab = vocabRange(config.vocabSize, tp, rank);
  const tensors = new Map<string, TensorShard>();
  for (const t of llamaTensors(config, { includeTiedHead: true })) {
    const base = { name: t.name, shape: t.shape };
    const rows = (r: { start: number; end: number }, unit: number, kind: ShardKind): TensorShard => ({
      ...base,
      kind,
      dim: 0,
      start: r.start * unit,
      end: r.end * unit,
    });
    const cols = (r: { start: number; end: number }, unit: number): TensorShard => ({
      ...base,
      kind: 'row',
      dim: 1,
      start: r.start * unit,
      end: r.end * unit,
    });
    let s: TensorShard;
    switch (t.projection) {
      case 'q_proj':
        s = rows(heads, hd, 'column');
        break;
      case 'k_proj':
      case 'v_proj':
        s = rows(kvHeads, hd, 'column');
        break;
      case 'gate_proj':
      case 'up_proj':
        s = rows(ff, 1, 'column');
        break;
      case 'o_proj':
        s = cols(heads, hd);
        break;
      case 'down_proj':
        s = cols(ff, 1);
        break;
      case 'lm_head':
        s = rows(vocab, 1, 'vocab');
        break;
      default:
        s =
          t.role === 'embedding'
            ? rows(vocab, 1, 'vocab')
            : { ...base, kind: 'replicated', dim: 0, start: 0, end: t.shape[0] as number };
    }
    tensors.set(t.name, s);
  }
  return {
    tp,
    rank,
    config: {
      ...config,
      numHeads: nhr,
      numKvHeads: kvHeads.end - kvHeads.start,
      intermediateSize: ffr,
    },
    vocab,
    heads,
    kvHeads,
    kvReplicated,
    tensors,
  };
}
