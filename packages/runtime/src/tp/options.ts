import type { AllReduceAlgorithm } from '@q/comm';
import { QError } from '@q/core';
import type { Backend } from '../lm';

/**
 * How a tensor-parallel model sums the partial outputs of o_proj and down_proj, one option type for both backends:
 * - `auto`: by message size (and on GPUs topology), as `@q/comm` chooses: unquantized up to `smallBytes`, int8
 *   Flash Communication above.
 * - `exact` (CPU): the f32 sum in rank order.
 * - `nccl` (GPU): NCCL's own all-reduce; `fused` (GPU): q's IPC kernel, unquantized.
 * - `int8` / `int4`: Flash Communication's two-step quantized all-reduce (fused IPC on one host, NCCL across hosts).
 */
export type AllReduceOption = 'auto' | 'exact' | 'nccl' | 'fused' | 'int8' | 'int4';

/** Every `AllReduceOption`. */
export const ALLREDUCE_OPTIONS: readonly AllReduceOption[] = [
  'auto',
  'exact',
  'nccl',
  'fused',
  'int8',
  'int4',
];

/** Messages up to this size stay unquantized under `auto` (the default of `@q/comm`'s Communicator). */
export const AUTO_SMALL_BYTES = 4 * 1024 * 1024;

const FOR_BACKEND: Record<Backend, readonly AllReduceOption[]> = {
  cpu: ['auto', 'exact', 'int8', 'int4'],
  cuda: ['auto', 'nccl', 'fused', 'int8', 'int4'],
};

/**
 * Checks an `--allreduce` value for a backend and returns it.
 *
 * @example
 * ```ts
 * parseAllReduce('int4', 'cpu'); // 'int4'
 * parseAllReduce('nccl', 'cpu'); // throws E_ARG: the CPU takes auto, exact, int8 or int4
 * ```
 */
export function parseAllReduce(value: string, backend: Backend): AllReduceOption {
  const ok = FOR_BACKEND[backend];
  if (!(ok as readonly string[]).includes(value))
    throw new QError(
      'E_ARG',
      `Expected one of ${ok.join(', ')} for --allreduce on the ${backend} backend but received ${JSON.stringify(value)}`,
    );
  return value as AllReduceOption;
}

/**
 * The wire format of one CPU all-reduce of `bytes` (f32 payload) under an option.
 *
 * @example
 * ```ts
 * cpuWire('auto', 4096); // 'none'
 * cpuWire('int4', 4096); // 'int4'
 * ```
 */
export function cpuWire(
  option: AllReduceOption,
  bytes: number,
  smallBytes = AUTO_SMALL_BYTES,
): 'none' | 'int8' | 'int4' {
  switch (option) {
    case 'exact':
      return 'none';
    case 'int8':
    case 'int4':
      return option;
    case 'auto':
      return bytes <= smallBytes ? 'none' : 'int8';
    default:
      return parseAllReduce(option, 'cpu') as never;
  }
}

/**
 * The `@q/comm` algorithm of a GPU all-reduce under an option: quantized wires go through the fused IPC kernel
 * when every rank is on this host, through NCCL otherwise; `auto` is left to `Communicator.chooseAlgorithm`.
 *
 * @example
 * ```ts
 * gpuAlgorithm('int4', true); // 'fused-int4'
 * gpuAlgorithm('int8', false); // 'nccl-int8'
 * ```
 */
export function gpuAlgorithm(option: AllReduceOption, singleHost: boolean): AllReduceAlgorithm {
  switch (option) {
    case 'auto':
    case 'nccl':
      return option;
    case 'fused':
      if (!singleHost)
        throw new QError(
          'E_ARG',
          'Expected ranks on one host for --allreduce fused but received several hosts (use nccl, int8 or int4)',
        );
      return 'fused';
    case 'int8':
    case 'int4':
      return singleHost ? `fused-${option}` : `nccl-${option}`;
    default:
      return parseAllReduce(option, 'cuda') as never;
  }
}
