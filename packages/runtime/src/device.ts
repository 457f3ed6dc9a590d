import { QError } from '@q/core';
import { type GpuStatus, gpuStatus } from '@q/kernels-cuda';

/** Where a command runs: the CPU, or one CUDA device. */
export type DeviceChoice = { readonly backend: 'cpu' } | { readonly backend: 'cuda'; readonly index: number };

/** A resolved `--device`, with the one line a command prints about it. */
export interface ResolvedDevice {
  readonly device: DeviceChoice;
  /** e.g. "device: cuda:0 (NVIDIA H200)" or "device: cpu (no GPU: <reason>)". */
  readonly line: string;
}

/**
 * Resolves `--device cpu|cuda|cuda:N` (default: `cuda` where `gpuStatus()` says a GPU is usable, else `cpu`).
 * Naming `cuda` without a usable GPU throws `E_NO_DEVICE` with the reason `gpuStatus()` gives.
 *
 * @example
 * ```ts
 * const { device, line } = resolveDevice(opts.device); // undefined → cuda:0 on a GPU machine, cpu elsewhere
 * console.error(line);
 * ```
 */
export function resolveDevice(flag?: string, status: () => GpuStatus = gpuStatus): ResolvedDevice {
  const m = flag === undefined ? null : /^(cpu|cuda)(?::(\d+))?$/.exec(flag.trim());
  if (flag !== undefined && (m === null || (m[1] === 'cpu' && m[2] !== undefined)))
    throw new QError(
      'E_ARG',
      `Expected cpu, cuda or cuda:N for --device but received ${JSON.stringify(flag)}`,
    );
  if (m?.[1] === 'cpu') return { device: { backend: 'cpu' }, line: 'device: cpu (asked for)' };
  const st = status();
  const index = m?.[2] !== undefined ? Number(m[2]) : 0;
  if (!st.available) {
    if (m !== null)
      throw new QError('E_NO_DEVICE', `Expected a usable GPU for --device ${flag} but ${st.reason}`);
    return { device: { backend: 'cpu' }, line: `device: cpu (no usable GPU: ${st.reason})` };
  }
  const dev = st.devices.find((d) => d.index === index);
  if (dev === undefined)
    throw new QError(
      'E_NO_DEVICE',
      `Expected a device index in [0, ${st.devices.length}) for --device but received ${index}`,
    );
  if (!dev.supported)
    throw new QError(
      'E_NO_DEVICE',
      `Expected a device of compute capability 8.0 or newer for --device cuda:${index} but received ${dev.name} (${dev.computeCapability})`,
    );
  return { device: { backend: 'cuda', index }, line: `device: cuda:${index} (${dev.name})` };
}
