/**
 * `@q/runtime`: Llama-family inference on the CPU (the exact reference of the quantized GPU path) and the `q`
 * command line: load, calibrate, quantize, evaluate, generate, demo.
 *
 * @example
 * ```ts
 * import { createModel, generate, loadModel } from '@q/runtime';
 * const loaded = loadModel('stories260K/stories260K.bin');
 * const model = await createModel(loaded, { backend: 'cpu' });
 * const decoder = loaded.tokenizer.streamDecoder();
 * for await (const id of generate(model, loaded.tokenizer.encodePrompt('Once upon a time'), { maxTokens: 40 }))
 *   process.stdout.write(decoder.push(id));
 * await model.dispose();
 * ```
 */

export { Rng } from '@q/core';
export {
  type BackendFactory,
  type CreateModelOptions,
  createCpuModel,
  createModel,
  type ModelSourceData,
  registerBackend,
} from './backend';
export {
  type BenchE2eOptions,
  benchE2e,
  E2E_SHAPES,
  type E2eResult,
  type E2eRow,
  type E2eShape,
  formatE2eTable,
} from './bench-e2e';
export { type CalibrateOptions, calibrate } from './calibrate';
export { type CliIO, createProgram, runCli } from './cli-main';
export { matmulT, threadCount } from './cpu/gemm';
export { LazyLinear } from './cpu/lazy-linear';
export { FloatLinear, type Linear, QuantLinear, type QuantLinearForward } from './cpu/linear';
export { shutdownThreads } from './cpu/threads';
export {
  CudaKVCache,
  type CudaModel,
  type CudaModelInput,
  type CudaModelOptions,
  createCudaModel,
  disposeAllCudaModels,
} from './cuda';
export {
  DEMO_RECIPES,
  type DemoOptions,
  type DemoResult,
  type DemoRow,
  formatDemoTable,
  gpuAvailability,
  runDemo,
} from './demo';
export { buildDemoModel, type DemoModel, type DemoModelOptions, demoText, demoTokenizer } from './demo-model';
export { type DeviceChoice, type ResolvedDevice, resolveDevice } from './device';
export {
  type FinishReason,
  Generator,
  type GeneratorOptions,
  type GeneratorStats,
  type SamplingParams,
  type SequenceHandle,
  type SequenceOptions,
  type StepInfo,
} from './engine';
export { type EvalOptions, type EvalResult, evaluatePerplexity } from './evaluate';
export { argmax, type GenerateOptions, generate, generateIds, sampleToken } from './generate';
export type {
  Backend,
  CacheOptions,
  CausalLM,
  ForwardOptions,
  KVCache,
  LinearInputHook,
} from './lm';
export {
  type LoadedFloatModel,
  type LoadedModel,
  type LoadedQuantizedModel,
  type LoadOptions,
  loadHuggingFace,
  loadLlama2c,
  loadModel,
  type ModelSource,
} from './load';
export {
  CpuKVCache,
  type CpuLayerWeights,
  type CpuModelWeights,
  type FloatTensorSource,
  layerLinearNames,
  Model,
  type ShardCollectives,
} from './model';
export { tensorNames } from './names';
export {
  isQuantizedDir,
  loadQuantizedModel,
  modelFromQuantized,
  needsCalibration,
  type QuantizedRun,
  type QuantizeOptions,
  quantizeLoaded,
  type RecipeChoice,
  resolveRecipe,
  type SaveQuantizedOptions,
  saveQuantizedModel,
} from './quantize';
export {
  type QuantizeFileOptions,
  type QuantizeFileProgress,
  type QuantizeFileResult,
  quantizeFile,
} from './quantize-file';
export {
  ApiError,
  type BenchServeOptions,
  type BenchServeResult,
  benchServe,
  chatPromptIds,
  formatBenchServe,
  type OpenedModel,
  type OpenModelOptions,
  openModel,
  plainChatTemplate,
  type ServeOptions,
  type Server,
  StopMatcher,
  startServer,
} from './server';
export {
  type ChatMessage,
  findLlama2cTokenizer,
  loadHfTokenizer,
  loadLlama2cTokenizer,
  type TextTokenizer,
  wrapLlama2cTokenizer,
} from './tokenizer';
export * from './tp/index';
export { type ModelWeights, safetensorsWeights, type TensorInfo, weightsFromMap } from './weights';
