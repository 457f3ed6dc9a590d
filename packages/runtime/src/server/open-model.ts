import * as path from 'node:path';
import { QError } from '@q/core';
import { type CreateModelOptions, createModel } from '../backend';
import { buildDemoModel } from '../demo-model';
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
}

/**
 * Parses `--device`: `cpu`, `cuda` or `cuda:N`.
 *
 * @example
 * ```ts
 * parseDevice('cuda:1'); // { backend: 'cuda', device: 1 }
 * ```
 */
export function parseDevice(device: string): CreateModelOptions {
  if (device === 'cpu') return { backend: 'cpu' };
  const m = /^cuda(?::(\d+))?$/.exec(device);
  if (m === null)
    throw new QError(
      'E_ARG',
      `Expected cpu, cuda or cuda:N for --device but received ${JSON.stringify(device)}`,
    );
  return { backend: 'cuda', device: Number(m[1] ?? 0) };
}

/**
 * Opens a model to serve on a backend: any path `loadModel` reads, or `demo` for the embedded demo model.
 * A backend that is not available (no GPU model in this build) is refused by `createModel`.
 *
 * @example
 * ```ts
 * const { model, tokenizer, name } = await openModel('models/stories260K/stories260K.bin', { device: 'cpu' });
 * ```
 */
export async function openModel(
  source: string,
  options: { readonly device?: string } = {},
): Promise<OpenedModel> {
  const backend = parseDevice(options.device ?? 'cpu');
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
  return { model: await createModel(loaded, backend), tokenizer: loaded.tokenizer, name };
}
