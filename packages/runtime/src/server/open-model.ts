import * as path from 'node:path';
import { type CreateModelOptions, createModel } from '../backend';
import { buildDemoModel } from '../demo-model';
import { resolveDevice } from '../device';
import type { CausalLM } from '../lm';
import { type LoadedModel, loadModel } from '../load';
import type { TextTokenizer } from '../tokenizer';
import { weightsFromMap } from '../weights';

/** A model ready to serve: the model, its tokenizer and the name clients address it by. */
export interface OpenedModel {
  readonly model: CausalLM;
  readonly tokenizer: TextTokenizer;
  /** The model's id in the API (`/v1/models`): the file or directory name. */
  readonly name: string;
  /** Where it runs, in one line (`device: cpu (asked for)`, `device: cuda:0 (NVIDIA H200)`). */
  readonly deviceLine: string;
  /** Sequences one step may hold, as the model was built for (a GPU model sizes its buffers by it). */
  readonly maxBatch: number;
  /** Positions per sequence, as the model was built for. */
  readonly maxContext: number;
}

/** Options of `openModel`. */
export interface OpenModelOptions {
  /** `cpu`, `cuda` or `cuda:N` (default: a usable GPU, else the CPU). */
  readonly device?: string;
  /** Sequences one step may hold (default 8). */
  readonly maxBatch?: number;
  /** Positions per sequence (default the model's context). */
  readonly maxContext?: number;
}

/**
 * Opens a model to serve: any path `loadModel` reads, or `demo` for the embedded demo model, on the device
 * `--device` names (`cpu`, `cuda`, `cuda:N`; by default a usable GPU, else the CPU: see `resolveDevice`).
 *
 * @example
 * ```ts
 * const { model, tokenizer, name } = await openModel('models/stories260K/stories260K.bin', { device: 'cpu' });
 * ```
 */
export async function openModel(source: string, options: OpenModelOptions = {}): Promise<OpenedModel> {
  const { device, line } = resolveDevice(options.device);
  const backend: CreateModelOptions =
    device.backend === 'cpu' ? { backend: 'cpu' } : { backend: 'cuda', device: device.index };
  let loaded: LoadedModel;
  let name: string;
  if (source === 'demo') {
    const demo = buildDemoModel();
    loaded = {
      source: 'llama2c',
      path: '(synthetic demo model)',
      config: demo.config,
      tokenizer: demo.tokenizer,
      weights: weightsFromMap(demo.weights),
    };
    name = 'demo';
  } else {
    loaded = loadModel(source);
    name = path.basename(loaded.path).replace(/\.bin$/, '');
  }
  const maxBatch = options.maxBatch ?? 8;
  const maxContext = options.maxContext ?? loaded.config.maxSeqLen;
  return {
    model: await createModel(loaded, { ...backend, maxBatch, maxContext }),
    tokenizer: loaded.tokenizer,
    name,
    deviceLine: line,
    maxBatch,
    maxContext,
  };
}
