import {
  bf16ArrayToF32,
  type DType,
  f16ArrayToF32,
  llamaTensorNames,
  type ModelConfig,
  QError,
  type Shape,
  shippedScript,
  Tensor,
  viewBytes,
  WorkerPool,
} from '@q/core';
import { layerFile, OTHER_FILE, type QuantizedWriter } from './checkpoint';
import { foldLae, laeScales } from './lae';
import { type LayerReport, quantizeLinear } from './model';
import type { ActivationObserver } from './observer';
import { groupMaxAbs, linearGroups, planGroup } from './policy';
import { getRecipe, type Recipe, type RecipeName } from './recipes';
import type { LayerPlan, QuantizedLinear } from './types';
import { assertFinite } from './weights';

/**
 * Streaming quantization: a float checkpoint is read one linear layer at a time, each layer is quantized as a
 * job (on worker threads when the caller gives a runner that uses them) and finished transformer layers are
 * written to the quantized checkpoint as soon as they are complete. Memory holds the float bytes of the jobs in
 * flight plus the quantized (small) results of at most the layers being assembled, whatever the model size.
 * The result equals `quantizeModel` on the same weights widened to f32, bit for bit.
 */

/** A float checkpoint read tensor by tensor (`openSafetensorsModel` is one). */
export interface FloatTensorSource {
  has(name: string): boolean;
  info(name: string): { readonly dtype: Exclude<DType, 'i4'>; readonly shape: Shape };
  /** The stored bytes of one tensor, little-endian, in its stored dtype. */
  readBytes(name: string): Uint8Array;
}

/** One linear layer to quantize: its stored float weights and what the recipe and plan say to do with them. */
export interface QuantizeJob {
  readonly name: string;
  readonly dtype: 'f32' | 'f16' | 'bf16';
  /** The weights W[n, k] as stored. */
  readonly bytes: Uint8Array;
  readonly n: number;
  readonly k: number;
  /** LAE scales [k] to multiply the columns by (the group's input is equalized). */
  readonly laeScales?: Float32Array;
  readonly bias?: Float32Array;
  readonly recipe: Recipe;
  readonly plan: LayerPlan;
}

/** What a job gives back. */
export interface QuantizeJobResult {
  readonly linear: QuantizedLinear;
  readonly report: LayerReport;
}

/** Runs a job somewhere (this thread, a worker) and resolves with its result. */
export type QuantizeJobRunner = (job: QuantizeJob) => Promise<QuantizeJobResult>;

/**
 * Widens stored float bytes to f32 in bulk (exact).
 *
 * @example
 * ```ts
 * widenToF32('f16', new Uint8Array([0x00, 0x3c])); // Float32Array [1]
 * ```
 */
export function widenToF32(dtype: 'f32' | 'f16' | 'bf16', bytes: Uint8Array): Float32Array {
  if (dtype === 'f32') return viewBytes('f32', bytes);
  const bits = viewBytes(dtype, bytes);
  return dtype === 'f16' ? f16ArrayToF32(bits) : bf16ArrayToF32(bits);
}

/**
 * Runs one quantization job on this thread: widen, fold LAE into the columns (the same f32 products as
 * `foldLae`), `quantizeLinear`. This is what the worker threads run.
 *
 * @example
 * ```ts
 * const { linear, report } = runQuantizeJob({ name, dtype: 'f16', bytes, n, k, recipe, plan });
 * ```
 */
export function runQuantizeJob(job: QuantizeJob): QuantizeJobResult {
  const { n, k, laeScales: s } = job;
  if (job.bytes.byteLength !== n * k * (job.dtype === 'f32' ? 4 : 2))
    throw new QError(
      'E_SHAPE',
      `Expected ${n * k} ${job.dtype} values ([${n}, ${k}]) for ${job.name}.weight but received ${job.bytes.byteLength} bytes`,
    );
  let w = widenToF32(job.dtype, job.bytes);
  assertFinite(w, job.name, k);
  if (s) {
    // A view of the caller's bytes (f32) must not be modified in place.
    if (job.dtype === 'f32') w = w.slice();
    for (let r = 0; r < n; r++) {
      const o = r * k;
      for (let j = 0; j < k; j++) w[o + j] = (w[o + j] as number) * (s[j] as number);
    }
  }
  return quantizeLinear(w, n, k, job.recipe, job.plan, job.bias);
}

/** The typed arrays of a job result, for transferring it from a worker without a copy. */
export function jobResultTransferList(r: QuantizeJobResult): ArrayBuffer[] {
  const w = r.linear.weights;
  const arrays: ArrayBufferView[] = [];
  if (w.format === 'int4') {
    arrays.push(w.packed, w.scales);
    if (w.zeros) arrays.push(w.zeros);
    if (w.intScale) arrays.push(w.intScale.q, w.intScale.channelScale, w.intScale.unit);
  } else arrays.push(w.data, ...(w.format === 'int8' ? [w.scales] : []));
  const out = new Set<ArrayBuffer>();
  for (const a of arrays) if (a.buffer instanceof ArrayBuffer) out.add(a.buffer);
  return [...out];
}

/** Worker threads that run quantization jobs, and how to stop them. */
export interface QuantizeJobPool {
  readonly size: number;
  readonly run: QuantizeJobRunner;
  terminate(): Promise<void>;
}

/**
 * Starts `size` worker threads (the `@q/core` `WorkerPool`) that run `runQuantizeJob`. A job's float bytes move
 * to the worker without a copy when they own their buffer.
 *
 * @example
 * ```ts
 * const pool = await quantizeJobPool(2);
 * try { await quantizeStream(st, config, 'fptq', writer, { run: pool.run, concurrency: 4, ... }); }
 * finally { await pool.terminate(); }
 * ```
 */
export async function quantizeJobPool(size: number): Promise<QuantizeJobPool> {
  const pool = new WorkerPool(await shippedScript('quantize-worker', import.meta.url), {
    size,
    name: 'the quantization workers',
  });
  return {
    size,
    run: (job) => {
      const b = job.bytes;
      const owns =
        b.byteOffset === 0 && b.byteLength === b.buffer.byteLength && b.buffer instanceof ArrayBuffer;
      return pool.run<QuantizeJob, QuantizeJobResult>(
        job,
        owns ? { transfer: [b.buffer as ArrayBuffer] } : {},
      );
    },
    terminate: () => pool.terminate(),
  };
}

/** Progress of a streaming quantization. */
export interface StreamProgress {
  /** Linear layers quantized so far, and in all. */
  readonly done: number;
  readonly total: number;
  /** The layer just finished. */
  readonly name: string;
}

/** Options of `quantizeStream`. */
export interface QuantizeStreamOptions {
  /** Calibration statistics (recipes with static scales or LAE need them). */
  readonly stats?: ActivationObserver;
  /**
   * Every float tensor of the model (Hugging Face names); those not quantized are copied as stored. Default:
   * the Llama layout of `config` (`llamaTensorNames`).
   */
  readonly tensorNames?: readonly string[];
  /** Runs the jobs; default: on this thread. */
  readonly run?: QuantizeJobRunner;
  /** Jobs in flight at once (default 1); each holds one layer's float weights. */
  readonly concurrency?: number;
  readonly signal?: AbortSignal;
  readonly onProgress?: (p: StreamProgress) => void;
}

function floatDtype(name: string, dtype: string): 'f32' | 'f16' | 'bf16' {
  if (dtype === 'f32' || dtype === 'f16' || dtype === 'bf16') return dtype;
  throw new QError('E_DTYPE', `Expected f32, f16 or bf16 for ${name} but received ${dtype}`);
}

function readFloat(source: FloatTensorSource, name: string): Tensor<'f32' | 'f16' | 'bf16'> {
  const info = source.info(name);
  const dtype = floatDtype(name, info.dtype);
  return new Tensor(dtype, info.shape, viewBytes(dtype, source.readBytes(name)));
}

/**
 * Quantizes a float checkpoint from `source` into `writer` layer by layer (see the module comment), writing one
 * file per transformer layer and `other.safetensors`; the caller commits the writer. Float tensors that stay
 * float keep their stored dtype (a folded norm gain becomes f32). Throws what `quantizeModel` throws, and the
 * signal's reason when aborted.
 *
 * @example
 * ```ts
 * const st = openSafetensorsModel('Llama-2-7b');
 * const w = createQuantizedWriter('out', { config, recipe: getRecipe('w4a8-rtn') });
 * const { report } = await quantizeStream(st, config, 'w4a8-rtn', w);
 * w.commit(report);
 * ```
 */
export async function quantizeStream(
  source: FloatTensorSource,
  config: ModelConfig,
  recipe: Recipe | RecipeName,
  writer: QuantizedWriter,
  options: QuantizeStreamOptions = {},
): Promise<{ plans: LayerPlan[]; report: LayerReport[] }> {
  const r = typeof recipe === 'string' ? getRecipe(recipe) : recipe;
  const { stats, signal } = options;
  const names = options.tensorNames ?? llamaTensorNames(config);
  const run = options.run ?? (async (job: QuantizeJob) => runQuantizeJob(job));
  const concurrency = Math.max(1, Math.floor(options.concurrency ?? 1));
  signal?.throwIfAborted();

  interface Task {
    readonly layer: number;
    readonly slot: number;
    readonly name: string;
    readonly plan: LayerPlan;
    readonly laeScales?: Float32Array;
  }
  interface LayerState {
    readonly results: QuantizeJobResult[];
    left: number;
    /** Float tensors of this layer written with it: folded norms (f32) and the rest as stored. */
    readonly tensors: Map<string, Tensor>;
  }
  const tasks: Task[] = [];
  const layers: LayerState[] = [];
  const consumed = new Set<string>();
  const plans: LayerPlan[] = [];
  const folded = new Map<string, Float32Array>();
  for (const group of linearGroups(config)) {
    const m = /^model\.layers\.(\d+)\./.exec(group.members[0] ?? '');
    const li = m ? Number(m[1]) : -1;
    let st = layers[li];
    if (!st) {
      st = { results: [], left: 0, tensors: new Map() };
      layers[li] = st;
    }
    const maxAbs = stats && group.members.some((n) => stats.has(n)) ? groupMaxAbs(stats, group) : undefined;
    const gPlans = planGroup(group, maxAbs, r.activations);
    plans.push(...gPlans);
    let s: Float32Array | undefined;
    if (gPlans[0]?.lae && group.norm && stats && maxAbs) {
      const k = source.info(`${group.members[0]}.weight`).shape[1];
      if (maxAbs.length !== k)
        throw new QError(
          'E_SHAPE',
          `Expected ${k} channels in the statistics of ${group.members[0]} but received ${maxAbs.length}`,
        );
      s = laeScales(maxAbs, { minScale: r.activations.laeMinScale, name: group.members[0] ?? '' });
      folded.set(group.norm, s);
    }
    group.members.forEach((name, i) => {
      tasks.push({
        layer: li,
        slot: st.left++,
        name,
        plan: gPlans[i] as LayerPlan,
        ...(s ? { laeScales: s } : {}),
      });
      consumed.add(`${name}.weight`);
      consumed.add(`${name}.bias`);
    });
  }

  // Float tensors: folded norm gains (and biases) in f32, everything else as stored, each with its layer.
  const other = new Map<string, Tensor>();
  const placeFloat = (name: string, t: Tensor): void => {
    const m = /^model\.layers\.(\d+)\./.exec(name);
    const st = m ? layers[Number(m[1])] : undefined;
    (st ? st.tensors : other).set(name, t);
  };
  const floatFor = (name: string): void => {
    const t = readFloat(source, name);
    const norm = name.replace(/\.(weight|bias)$/, '');
    const s = folded.get(norm);
    if (!s) {
      placeFloat(name, t);
      return;
    }
    const v = t.toFloat32();
    assertFinite(v, name);
    // foldLae divides a gain (or bias) by s in f32: the same arithmetic as the in-memory path.
    const g = foldLae({ normWeight: v, linears: [], scales: s }).normWeight;
    placeFloat(name, new Tensor('f32', t.shape, g));
  };

  let nextTask = 0;
  let done = 0;
  let written = 0;
  const report: LayerReport[] = [];
  const writeReady = (): void => {
    while (written < layers.length) {
      const st = layers[written];
      if (!st || st.left > 0) break;
      for (const name of names) {
        if (consumed.has(name) || !name.startsWith(`model.layers.${written}.`)) continue;
        if (!source.has(name))
          throw new QError(
            'E_FORMAT',
            `Expected a tensor named ${name} in the source model but received none`,
          );
        floatFor(name);
      }
      writer.writeFile(
        layerFile(written),
        st.results.map((x) => x.linear),
        st.results.map((x) => x.report.plan),
        st.tensors,
      );
      for (const x of st.results) report.push(x.report);
      st.results.length = 0;
      st.tensors.clear();
      written++;
    }
  };

  const startJob = (t: Task): Promise<void> => {
    const info = source.info(`${t.name}.weight`);
    if (info.shape.length !== 2)
      throw new QError(
        'E_SHAPE',
        `Expected a matrix for ${t.name}.weight but received shape [${info.shape.join(', ')}]`,
      );
    const [n, k] = info.shape as [number, number];
    const biasName = `${t.name}.bias`;
    const bias = source.has(biasName) ? readFloat(source, biasName).toFloat32() : undefined;
    const job: QuantizeJob = {
      name: t.name,
      dtype: floatDtype(`${t.name}.weight`, info.dtype),
      bytes: source.readBytes(`${t.name}.weight`),
      n,
      k,
      recipe: r,
      plan: t.plan,
      ...(t.laeScales ? { laeScales: t.laeScales } : {}),
      ...(bias ? { bias } : {}),
    };
    return run(job).then((res) => {
      const st = layers[t.layer] as LayerState;
      st.results[t.slot] = res;
      st.left--;
      done++;
      options.onProgress?.({ done, total: tasks.length, name: t.name });
    });
  };

  // At most `concurrency` jobs in flight; finished layers are written in order between jobs.
  const inFlight = new Set<Promise<void>>();
  let failure: unknown;
  try {
    while (nextTask < tasks.length || inFlight.size > 0) {
      while (failure === undefined && nextTask < tasks.length && inFlight.size < concurrency) {
        signal?.throwIfAborted();
        const p: Promise<void> = startJob(tasks[nextTask++] as Task).then(
          () => {
            inFlight.delete(p);
          },
          (e: unknown) => {
            inFlight.delete(p);
            failure ??= e;
          },
        );
        inFlight.add(p);
      }
      if (inFlight.size > 0) await Promise.race(inFlight);
      if (failure !== undefined) {
        await Promise.allSettled(inFlight);
        throw failure;
      }
      signal?.throwIfAborted();
      writeReady();
    }
    writeReady();
    for (const name of names) {
      if (consumed.has(name) || /^model\.layers\.\d+\./.test(name)) continue;
      if (source.has(name)) floatFor(name);
      else if (!(name === 'lm_head.weight' && config.tieWordEmbeddings))
        throw new QError('E_FORMAT', `Expected a tensor named ${name} in the source model but received none`);
    }
    writer.writeFile(OTHER_FILE, [], [], other);
  } finally {
    // A failed or aborted run must not leave jobs writing into results nobody reads.
    await Promise.allSettled(inFlight);
  }
  return { plans, report };
}
