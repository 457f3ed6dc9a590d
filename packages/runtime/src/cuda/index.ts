/**
 * The GPU backend of `@q/runtime`: `createCudaModel` builds a `CausalLM` on one CUDA device.
 */
import type { BackendFactory } from '../backend';
import { resolveDevice } from '../device';
import type { CausalLM } from '../lm';
import { CudaModel, type CudaModelOptions } from './model';
import type { CudaModelInput } from './weights';

export { CudaKVCache, cacheBytes, PageAllocator } from './cache';
export { DECODE_BUCKETS, decodeBucket, GraphRunner, metaLayout, StepIO } from './graph-runner';
export { deviceDims, paddedHeadDim } from './layout';
export { CudaModel, type CudaModelOptions, disposeAllCudaModels, type MemoryPlan } from './model';
export { type CudaModelInput, openWeightSource, planLayout, type WeightSource } from './weights';

/**
 * Loads a model onto a CUDA device: a llama2.c file, a Hugging Face directory or a `q quantize` directory by
 * path, or a loaded model (`{ config, weights, recipe?, plans? }`). Float checkpoints run in bf16, quantized
 * ones in W4A8 per their plans; recipes without a GPU kernel (w8a8, w4a16) throw E_UNSUPPORTED naming them.
 *
 * @example
 * ```ts
 * const model = await createCudaModel('stories260K-fptq', { device: 0, maxBatch: 8, maxContext: 512 });
 * const ids = await model.forwardSample?.([[1, 403]], { sampling: [{ temperature: 0, topK: 0, topP: 1, seed: 1, step: 0 }] });
 * await model.dispose();
 * ```
 */
export async function createCudaModel(
  source: CudaModelInput,
  options: CudaModelOptions & { readonly device?: number } = {},
): Promise<CausalLM & CudaModel> {
  return CudaModel.create(source, options);
}

/**
 * The CUDA backend for `createModel` (register it with `registerBackend('cuda', cudaBackend)`).
 *
 * @example
 * ```ts
 * registerBackend('cuda', cudaBackend);
 * const model = await createModel(loadModel('stories260K-fptq'), { backend: 'cuda', device: 0 });
 * ```
 */
export const cudaBackend: BackendFactory = (source, options) => {
  // The same reason `--device cuda` gives, before any loading: no driver, no addon, no device.
  resolveDevice(`cuda:${options.device ?? 0}`);
  return createCudaModel(source, {
    ...(options.device !== undefined ? { device: options.device } : {}),
    ...(options.maxBatch !== undefined ? { maxBatch: options.maxBatch } : {}),
    ...(options.maxContext !== undefined ? { maxContext: options.maxContext } : {}),
  });
};
