import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { isQError, type ModelConfig, QError } from '@q/core';
import type { QuantizedModel } from '@q/quant';
import type { ModelSourceData } from '../backend';
import type { Backend, CacheOptions, CausalLM, ForwardOptions, KVCache } from '../lm';
import type { ShardCollectives } from '../model';
import { LocalTpGroup, type TpCollectives } from './group';
import { type AllReduceOption, AUTO_SMALL_BYTES, cpuWire, parseAllReduce } from './options';
import { shardPlan, vocabRange } from './plan';
import { floatShardModel, type MaxAcross, quantizedShardModel } from './shard';

/** Options of `createTensorParallelModel`. */
export interface TensorParallelOptions {
  /** Ranks (tensor-parallel degree). */
  readonly tp: number;
  /** Default `'auto'`. */
  readonly allreduce?: AllReduceOption;
  /** A rank that does not reach a collective within this time fails every rank (E_TIMEOUT). Default 60 000. */
  readonly timeoutMs?: number;
  /** Largest all-reduce (bytes) that `auto` keeps unquantized. Default 4 MiB, as `@q/comm`. */
  readonly smallBytes?: number;
  /** Elements per scale of the int8/int4 all-reduce wire (CPU). Default 128, the group of the GPU kernels. */
  readonly wireGroupSize?: number;
  /** Default `'cpu'`; `'cuda'` needs `tp` GPUs and a GPU tensor-parallel model (not in this build). */
  readonly backend?: Backend;
}

/**
 * The collectives a CPU shard `Model` calls, over one rank's `TpCollectives`: the embedding's all-reduce is exact
 * (every position comes from one rank, so the sum only assembles it), o_proj and down_proj take the wire format
 * the option gives for their size, and the logits are all-gathered, so every rank samples from the same row.
 *
 * @example
 * ```ts
 * const model = floatShardModel(weights, plan, shardCollectives(group.rank(1), config.vocabSize, 'int8'));
 * ```
 */
export function shardCollectives(
  c: TpCollectives,
  vocabSize: number,
  allreduce: AllReduceOption,
  smallBytes = AUTO_SMALL_BYTES,
): ShardCollectives {
  const ranges = Array.from({ length: c.world }, (_, r) => vocabRange(vocabSize, c.world, r));
  return {
    vocab: ranges[c.rank] as { start: number; end: number },
    allReduce: (name, x) =>
      c.allReduce(
        name,
        x,
        name === 'model.embed_tokens' ? 'none' : cpuWire(allreduce, x.length * 4, smallBytes),
      ),
    async gatherLogits(logits, rows) {
      const parts = await c.allGather('lm_head', logits);
      const out = new Float32Array(rows * vocabSize);
      parts.forEach((p, r) => {
        const { start, end } = ranges[r] as { start: number; end: number };
        const w = end - start;
        if (p.length !== rows * w)
          throw new QError('E_COMM', `Expected ${rows * w} logits from rank ${r} but received ${p.length}`);
        for (let i = 0; i < rows; i++) out.set(p.subarray(i * w, (i + 1) * w), i * vocabSize + start);
      });
      return out;
    },
  };
}

/** The max-over-ranks of one rank, for row-parallel layers with per-token dynamic activations. */
export function maxAcrossRanks(c: TpCollectives): MaxAcross {
  return (x) => c.allReduceMax('activation amax', x);
}

const SAMPLE_ALL_BYTES = 256 * 1024 * 1024;
const SAMPLES = 16;
const SAMPLE_BYTES = 1024 * 1024;

function hashFile(h: ReturnType<typeof createHash>, file: string, name: string): void {
  const size = fs.statSync(file).size;
  h.update(`${name}\0${size}\0`);
  const fd = fs.openSync(file, 'r');
  try {
    const read = (pos: number, len: number) => {
      const b = Buffer.alloc(len);
      const got = fs.readSync(fd, b, 0, len, pos);
      h.update(b.subarray(0, got));
    };
    if (size <= SAMPLE_ALL_BYTES) {
      for (let pos = 0; pos < size; pos += SAMPLE_BYTES) read(pos, Math.min(SAMPLE_BYTES, size - pos));
    } else {
      // Large checkpoints: fixed samples spread over the file (the header and the end included).
      for (let i = 0; i < SAMPLES; i++)
        read(Math.floor(((size - SAMPLE_BYTES) * i) / (SAMPLES - 1)), SAMPLE_BYTES);
    }
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * A fingerprint of the model files at `p` (a file, or every file under a directory): SHA-256 over names, sizes
 * and contents (files over 256 MiB: 16 samples of 1 MiB spread over the file). Ranks compare it at start.
 *
 * @example
 * ```ts
 * fingerprintPath('stories260K/stories260K.bin'); // '5e1c…' (64 hex digits)
 * ```
 */
export function fingerprintPath(p: string): string {
  const h = createHash('sha256');
  const st = fs.statSync(p);
  if (st.isFile()) hashFile(h, p, path.basename(p));
  else {
    const walk = (dir: string, rel: string): void => {
      for (const e of fs
        .readdirSync(dir, { withFileTypes: true })
        .sort((a, b) => (a.name < b.name ? -1 : 1))) {
        const full = path.join(dir, e.name);
        const r = rel ? `${rel}/${e.name}` : e.name;
        if (e.isDirectory()) walk(full, r);
        else if (e.isFile()) hashFile(h, full, r);
      }
    };
    walk(p, '');
  }
  return h.digest('hex');
}

function fingerprintQuantized(q: QuantizedModel): string {
  const h = createHash('sha256');
  h.update(JSON.stringify(q.config));
  for (const [name, l] of [...q.linears].sort(([a], [b]) => (a < b ? -1 : 1))) {
    const w = l.weights;
    h.update(`${name}\0${w.format}\0${w.n}\0${w.k}\0${l.act}\0${l.staticScale ?? ''}\0`);
    const data = w.format === 'int4' ? w.packed : w.data;
    h.update(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    if (w.format !== 'f32')
      h.update(new Uint8Array(w.scales.buffer, w.scales.byteOffset, w.scales.byteLength));
  }
  for (const [name, t] of [...q.tensors].sort(([a], [b]) => (a < b ? -1 : 1))) {
    const f = t.toFloat32();
    h.update(`${name}\0${t.shape.join(',')}\0`);
    h.update(new Uint8Array(f.buffer, f.byteOffset, f.byteLength));
  }
  return h.digest('hex');
}

/**
 * The fingerprint of what a rank loaded: its files (`fingerprintPath`), or the contents of a model built in
 * memory.
 *
 * @example
 * ```ts
 * modelFingerprint(loadModel('stories260K/stories260K.bin')) === fingerprintPath('stories260K/stories260K.bin');
 * ```
 */
export function modelFingerprint(source: ModelSourceData): string {
  if (!('source' in source)) return fingerprintQuantized(source);
  if (fs.existsSync(source.path)) return fingerprintPath(source.path);
  if (source.source === 'quantized') return fingerprintQuantized(source.weights);
  // Weights built in memory: their names, shapes and values.
  const h = createHash('sha256');
  h.update(JSON.stringify(source.config));
  for (const name of [...source.weights.names()].sort()) {
    const t = source.weights.get(name);
    const f = t.toFloat32();
    h.update(`${name}\0${t.shape.join(',')}\0`);
    h.update(new Uint8Array(f.buffer, f.byteOffset, f.byteLength));
  }
  return h.digest('hex');
}

/** What every rank must agree on before the first forward. */
export interface RankIdentity {
  /** The rank's `--tp`. */
  readonly tp: number;
  /** `modelFingerprint` of what the rank loaded. */
  readonly fingerprint: string;
  readonly allreduce: AllReduceOption;
}

/**
 * The start of every tensor-parallel rank: refuses (E_ARG on the rank itself; E_COMM on every rank, naming each
 * rank's value) a `--tp` that is not the group size, ranks with different `--tp`, different model files or
 * different all-reduce options.
 *
 * @example
 * ```ts
 * await tpHandshake(group.rank(r), { tp: 2, fingerprint: modelFingerprint(loaded), allreduce: 'int8' });
 * ```
 */
export async function tpHandshake(c: TpCollectives, id: RankIdentity): Promise<void> {
  await c.checkSame('--tp', String(id.tp));
  if (id.tp !== c.world)
    throw new QError('E_ARG', `Expected --tp to equal the ${c.world} ranks of the job but received ${id.tp}`);
  await c.checkSame('model files (SHA-256 fingerprint)', id.fingerprint);
  await c.checkSame('--allreduce', id.allreduce);
}

/** One cache per rank behind the `KVCache` interface; every rank's cache holds its own KV heads. */
class TpKVCache implements KVCache {
  constructor(readonly ranks: readonly KVCache[]) {}
  private get first(): KVCache {
    return this.ranks[0] as KVCache;
  }
  get batch() {
    return this.first.batch;
  }
  get capacity() {
    return this.first.capacity;
  }
  get lengths() {
    return this.first.lengths;
  }
  get pageSize() {
    return this.first.pageSize;
  }
  get pagesTotal() {
    return this.first.pagesTotal;
  }
  get pagesInUse() {
    return this.first.pagesInUse;
  }
  reset(slot?: number): void {
    for (const c of this.ranks) c.reset(slot);
  }
  dispose(): void {
    for (const c of this.ranks) c.dispose();
  }
}

/**
 * A model split over tensor-parallel ranks (Megatron style, see `shardPlan`), implementing `CausalLM`. On the CPU
 * every rank is a shard `Model` in this process and they meet at `LocalTpGroup`'s collectives: one all-reduce after
 * the vocab-parallel embedding, o_proj and down_proj of each layer, one all-gather of the logits. Every rank
 * returns the same logits; `forward` returns rank 0's. A rank that fails fails the others (E_COMM), one that stops
 * answering fails them after the timeout (E_TIMEOUT), and the model refuses further calls.
 *
 * @example
 * ```ts
 * const model = await createTensorParallelModel(loadModel('stories260K.bin'), { tp: 2, allreduce: 'int8' });
 * const logits = await model.forward([[1, 403]], { logits: 'last' });
 * await model.dispose();
 * ```
 */
export class TensorParallelModel implements CausalLM {
  readonly backend: Backend = 'cpu';
  readonly tp: number;
  private disposed = false;

  /** `ranks[r]` runs rank r's shard and calls `collectives[r]` (tests may wrap either). */
  constructor(
    readonly config: ModelConfig,
    readonly ranks: readonly CausalLM[],
    private readonly collectives: readonly TpCollectives[],
    private readonly group: LocalTpGroup,
  ) {
    if (ranks.length !== group.world || collectives.length !== group.world)
      throw new QError(
        'E_ARG',
        `Expected ${group.world} ranks and collectives but received ${ranks.length} and ${collectives.length}`,
      );
    this.tp = group.world;
  }

  createCache(options: CacheOptions = {}): KVCache {
    this.check();
    return new TpKVCache(this.ranks.map((r) => r.createCache(options)));
  }

  async forward(tokens: readonly (readonly number[])[], options: ForwardOptions = {}): Promise<Float32Array> {
    this.check();
    if (options.hook !== undefined)
      throw new QError(
        'E_UNSUPPORTED',
        'Expected no linear-input hook for a tensor-parallel forward but received one (calibrate with --tp 1: the ranks see only their slices)',
      );
    let caches: readonly (KVCache | undefined)[];
    if (options.cache === undefined) caches = this.ranks.map(() => undefined);
    else if (options.cache instanceof TpKVCache) caches = options.cache.ranks;
    else
      throw new QError(
        'E_ARG',
        "Expected a cache made by this model's createCache for forward but received one of another model",
      );
    // A rank stuck outside any collective is given up when the group fails.
    let stopListening: () => void = () => {};
    const failed = new Promise<never>((_, reject) => {
      stopListening = this.group.onFailure(reject);
    });
    failed.catch(() => {});
    // A rank's own failure, kept apart from the group failure it causes (which may settle the race first).
    const own: unknown[] = [];
    const results = await Promise.allSettled(
      this.ranks.map((m, r) =>
        Promise.race([
          m.forward(tokens, { ...options, cache: caches[r] as KVCache }).catch((e: unknown) => {
            own[r] = e;
            (this.collectives[r] as TpCollectives).fail(e);
            throw e;
          }),
          failed,
        ]),
      ),
    ).finally(() => stopListening());
    const first = results[0];
    if (results.every((r) => r.status === 'fulfilled') && first?.status === 'fulfilled') return first.value;
    const errors = results.map((r, rank) => ({
      rank,
      error: r.status === 'rejected' ? (own[rank] ?? (r.reason as unknown)) : undefined,
    }));
    const groupError = this.group.failed;
    // The root cause: a rank's own failure, else what the group failed with (a timeout).
    const root =
      errors.find((e) => e.error !== undefined && e.error !== groupError)?.error ??
      groupError ??
      errors[0]?.error;
    const msg = (e: unknown) => (e instanceof Error ? e.message : String(e));
    throw new QError(
      isQError(root) ? root.code : 'E_COMM',
      `Expected every tensor-parallel rank to finish forward but received: ${errors
        .map((e) => `rank ${e.rank}: ${e.error === undefined ? 'finished' : msg(e.error)}`)
        .join('; ')}`,
      {
        cause: root,
        details: {
          ranks: errors.map((e) => ({
            rank: e.rank,
            code: isQError(e.error) ? e.error.code : e.error === undefined ? null : 'E_INTERNAL',
            message: e.error === undefined ? null : msg(e.error),
          })),
        },
      },
    );
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await Promise.all(this.ranks.map((r) => r.dispose()));
  }

  private check(): void {
    if (this.disposed)
      throw new QError('E_DISPOSED', 'Expected a live model but received one that was disposed');
    const f = this.group.failed;
    if (f !== undefined)
      throw new QError(
        'E_COMM',
        `Expected a working tensor-parallel group but it failed earlier: ${f.message}`,
        { cause: f },
      );
  }
}

function countCudaDevices(): Promise<number> {
  return import('@q/kernels-cuda').then(
    (k) => {
      try {
        return k.deviceCount();
      } catch {
        return 0;
      }
    },
    () => 0,
  );
}

/**
 * What `--device cuda --tp N` (N > 1) meets in this build: `E_NO_DEVICE` when fewer than N GPUs are visible, else
 * `E_UNSUPPORTED` (the GPU tensor-parallel model is not built yet). Always throws.
 *
 * @example
 * ```ts
 * await refuseGpuTensorParallel(4); // E_NO_DEVICE: Expected 4 visible CUDA devices for --tp 4 but received 1 …
 * ```
 */
export async function refuseGpuTensorParallel(tp: number): Promise<never> {
  const n = await countCudaDevices();
  if (n < tp)
    throw new QError(
      'E_NO_DEVICE',
      `Expected ${tp} visible CUDA devices for --tp ${tp} but received ${n} (tensor parallelism on GPUs needs one GPU per rank)`,
    );
  throw new QError(
    'E_UNSUPPORTED',
    `Expected a GPU tensor-parallel model for --device cuda --tp ${tp} but this build of @q/runtime has none (run --tp on the CPU)`,
  );
}

/**
 * Splits a loaded (float or quantized) model over `tp` ranks and starts them: on the CPU every rank is a shard
 * `Model` in this process reading only its slices; the ranks check at start that they agree on `--tp`, the model
 * files and the all-reduce. `tp = 1` runs the same path with one rank.
 *
 * @example
 * ```ts
 * const loaded = loadModel('stories260K/stories260K.bin');
 * const model = await createTensorParallelModel(loaded, { tp: 4, allreduce: 'exact' });
 * for await (const id of generate(model, loaded.tokenizer.encodePrompt('Once'))) console.log(id);
 * await model.dispose();
 * ```
 */
export async function createTensorParallelModel(
  source: ModelSourceData,
  options: TensorParallelOptions,
): Promise<TensorParallelModel> {
  const backend = options.backend ?? 'cpu';
  const tp = options.tp;
  const config = 'source' in source ? source.config : source.config;
  if (backend === 'cuda') await refuseGpuTensorParallel(tp);
  const allreduce = parseAllReduce(options.allreduce ?? 'auto', backend);
  shardPlan(config, tp, 0);
  const group = new LocalTpGroup(tp, {
    ...(options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {}),
    ...(options.wireGroupSize !== undefined ? { wireGroupSize: options.wireGroupSize } : {}),
  });
  const collectives = Array.from({ length: tp }, (_, r) => group.rank(r));
  const fingerprint = modelFingerprint(source);
  const ranks = collectives.map((c) => {
    const plan = shardPlan(config, tp, c.rank);
    const sc = shardCollectives(c, config.vocabSize, allreduce, options.smallBytes);
    if ('source' in source && source.source !== 'quantized') return floatShardModel(source.weights, plan, sc);
    const q = 'source' in source ? source.weights : source;
    return quantizedShardModel(q as QuantizedModel, plan, sc, maxAcrossRanks(c));
  });
  await Promise.all(collectives.map((c) => tpHandshake(c, { tp, fingerprint, allreduce })));
  return new TensorParallelModel(config, ranks, collectives, group);
}
