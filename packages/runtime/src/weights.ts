import { type DType, openSafetensorsModel, QError, type SafetensorsModelReader, type Tensor } from '@q/core';

/** A stored tensor's dtype and shape, known without reading its data. */
export interface TensorInfo {
  readonly dtype: Exclude<DType, 'i4'>;
  readonly shape: readonly number[];
}

/**
 * The float weights of a loaded model under Hugging Face names. Tensors are read when asked for and keep the
 * dtype they are stored in (f32, f16, bf16), so nothing is widened or held that a backend does not need.
 *
 * @example
 * ```ts
 * const { weights } = loadModel('models/Qwen2.5-0.5B');
 * weights.info('model.embed_tokens.weight'); // { dtype: 'bf16', shape: [151936, 896] }
 * const t = weights.get('model.norm.weight'); // read from disk now, Tensor<'bf16'>
 * ```
 */
export interface ModelWeights {
  /** Every tensor name, in a stable order. */
  names(): string[];
  has(name: string): boolean;
  /** Dtype and shape without reading the data; `E_FORMAT` for a name that is absent. */
  info(name: string): TensorInfo;
  /** Reads one tensor in its stored dtype; `E_FORMAT` for a name that is absent. */
  get(name: string): Tensor<Exclude<DType, 'i4'>>;
  /** Releases open files; reading afterwards throws `E_DISPOSED`. */
  close(): void;
}

function missing(name: string, where: string): QError {
  return new QError('E_FORMAT', `Expected a tensor named ${name} in ${where} but received none`);
}

/**
 * Tensors already in memory (a llama2.c checkpoint, a generated model) behind the `ModelWeights` interface.
 *
 * @example
 * ```ts
 * const weights = weightsFromMap(readLlama2cCheckpoint('stories260K.bin').weights);
 * ```
 */
export function weightsFromMap(
  map: ReadonlyMap<string, Tensor<Exclude<DType, 'i4'>>>,
  where = 'the model',
): ModelWeights {
  let closed = false;
  const get = (name: string): Tensor<Exclude<DType, 'i4'>> => {
    if (closed) throw new QError('E_DISPOSED', `Expected open weights for ${name} but they were closed`);
    const t = map.get(name);
    if (t === undefined) throw missing(name, where);
    return t;
  };
  return {
    names: () => [...map.keys()],
    has: (name) => map.has(name),
    info: (name) => {
      const t = get(name);
      return { dtype: t.dtype, shape: t.shape };
    },
    get,
    close: () => {
      closed = true;
    },
  };
}

/**
 * The tensors of a Hugging Face safetensors model (single file or sharded), read from disk on demand.
 *
 * @example
 * ```ts
 * const weights = safetensorsWeights('models/Llama-3.2-1B');
 * const q = weights.get('model.layers.0.self_attn.q_proj.weight'); // bf16, as stored
 * weights.close();
 * ```
 */
export function safetensorsWeights(dir: string): ModelWeights {
  let reader: SafetensorsModelReader | null = openSafetensorsModel(dir);
  const open = (name: string): SafetensorsModelReader => {
    if (reader === null)
      throw new QError('E_DISPOSED', `Expected open weights for ${name} but ${dir} was closed`);
    if (!reader.has(name)) throw missing(name, `the safetensors of ${dir}`);
    return reader;
  };
  return {
    names: () => (reader === null ? [] : reader.names()),
    has: (name) => reader?.has(name) === true,
    info: (name) => {
      const i = open(name).info(name);
      return { dtype: i.dtype, shape: i.shape };
    },
    get: (name) => open(name).read(name),
    close: () => {
      reader?.close();
      reader = null;
    },
  };
}
