/**
 * `@q/runtime`: Llama-family inference on the CPU (the exact reference of the quantized GPU path) and the `q`
 * command line: load, calibrate, quantize, evaluate, generate, demo.
 *
 * @example
 * ```ts
 * import { loadModel, generate } from '@q/runtime';
 * const { model, tokenizer } = loadModel('stories260K/stories260K.bin');
 * const ids = generate(model, tokenizer.encodePrompt('Once upon a time'), { maxTokens: 40 });
 * console.log(tokenizer.decode(ids));
 * ```
 */

export { Rng } from '@q/core';
export { type CalibrateOptions, calibrate } from './calibrate';
export { type CliIO, createProgram, runCli } from './cli-main';
export { matmulT, threadCount } from './cpu/gemm';
export { LazyLinear } from './cpu/lazy-linear';
export { FloatLinear, type Linear, QuantLinear, type QuantLinearForward } from './cpu/linear';
export { shutdownThreads } from './cpu/threads';
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
export { type EvalOptions, type EvalResult, evaluatePerplexity } from './evaluate';
export { argmax, type GenerateOptions, generate, sampleToken } from './generate';
export {
  type LoadedModel,
  type LoadOptions,
  loadHuggingFace,
  loadLlama2c,
  loadModel,
  type ModelSource,
} from './load';
export {
  type ForwardOptions,
  KVCache,
  type LayerWeights,
  type LinearInputHook,
  layerLinearNames,
  Model,
  type ModelWeights,
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
  type ChatMessage,
  findLlama2cTokenizer,
  loadHfTokenizer,
  loadLlama2cTokenizer,
  type TextTokenizer,
  wrapLlama2cTokenizer,
} from './tokenizer';
