import { QError } from '@q/core';
import type { QuantizedModel } from '@q/quant';
import type { Backend, CausalLM } from './lm';
import type { LoadedModel } from './load';
import { Model } from './model';
import { modelFromQuantized } from './quantize';

/** Options of `createModel`. */
export interface CreateModelOptions {
  /** Where the model runs (default `'cpu'`). */
  readonly backend?: Backend;
  /** Device index for a GPU backend (default 0). */
  readonly device?: number;
  /** GPU backend: sequences one step can run (default 8); the device cache and decode graphs are sized to it. */
  readonly maxBatch?: number;
  /** GPU backend: positions per sequence (default min(context, 4096)). */
  readonly maxContext?: number;
}

/** What `createModel` builds a model from: a loader's result or a quantized model in memory. */
export type ModelSourceData = LoadedModel | QuantizedModel;

/** Builds a backend's model; registered with `registerBackend`. */
export type BackendFactory = (source: ModelSourceData, options: CreateModelOptions) => Promise<CausalLM>;

const factories = new Map<Backend, BackendFactory>();

/**
 * Makes a backend available to `createModel`. The CPU backend is built in; a GPU backend registers itself
 * when its module is imported.
 *
 * @example
 * ```ts
 * registerBackend('cuda', async (source, { device }) => new CudaModel(source, device ?? 0));
 * ```
 */
export function registerBackend(backend: Backend, factory: BackendFactory): void {
  factories.set(backend, factory);
}

/**
 * The CPU model of a loaded or quantized model: float weights are read and widened to f32 once; quantized
 * layers run `@q/quant`'s exact integer reference.
 *
 * @example
 * ```ts
 * const model = createCpuModel(loadModel('stories260K.bin'));
 * model.linears().size; // 7 per layer + lm_head
 * ```
 */
export function createCpuModel(source: ModelSourceData): Model {
  if (!('source' in source)) return modelFromQuantized(source);
  if (source.source === 'quantized') return modelFromQuantized(source.weights);
  return Model.fromFloatWeights(source.config, source.weights);
}

registerBackend('cpu', async (source) => createCpuModel(source));
// The GPU backend's module is loaded on first use, so `import '@q/runtime'` never touches the CUDA addon.
registerBackend('cuda', async (source, options) =>
  (await import('./cuda/index')).cudaBackend(source, options),
);

/**
 * Builds the runnable model of a loaded (or quantized in-memory) model on a backend. The CUDA backend is
 * available once its module has registered itself; until then `'cuda'` throws `E_UNSUPPORTED`.
 *
 * @example
 * ```ts
 * const loaded = loadModel('stories260K/stories260K.bin');
 * const model = await createModel(loaded, { backend: 'cpu' });
 * for await (const id of generate(model, loaded.tokenizer.encodePrompt('Once'))) console.log(id);
 * await model.dispose();
 * ```
 */
export async function createModel(
  source: ModelSourceData,
  options: CreateModelOptions = {},
): Promise<CausalLM> {
  const backend = options.backend ?? 'cpu';
  const factory = factories.get(backend);
  if (factory === undefined) {
    if (backend === 'cuda')
      throw new QError(
        'E_UNSUPPORTED',
        "Expected an available backend for createModel but received 'cuda': the CUDA backend is not available in this build of @q/runtime",
      );
    throw new QError(
      'E_ARG',
      `Expected one of ${[...factories.keys()].join(', ')} for backend but received ${JSON.stringify(backend)}`,
    );
  }
  return factory(source, options);
}
