export { type ServeOptions, type Server, startServer } from './app';
export {
  type BenchServeOptions,
  type BenchServeResult,
  benchServe,
  formatBenchServe,
  type LatencyStats,
} from './bench';
export { chatPromptIds, plainChatTemplate } from './chat-template';
export { addBenchServeCommand, addServeCommand } from './cli';
export { ApiError, type OpenAIErrorBody } from './errors';
export { type RequestOutcome, ServerMetrics } from './metrics';
export { type OpenedModel, type OpenModelOptions, openModel } from './open-model';
export { chatRequestSchema, completionRequestSchema } from './schema';
export { StopMatcher } from './stop-strings';
