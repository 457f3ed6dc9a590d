import type { GpuStatus } from '@q/kernels-cuda';
import { describe, expect, it } from 'vitest';
import { resolveDevice } from './device';

const none: GpuStatus = { available: false, reason: 'no NVIDIA driver is installed', devices: [] };
const one: GpuStatus = {
  available: true,
  reason: 'ok',
  devices: [
    {
      index: 0,
      name: 'NVIDIA H200',
      computeCapability: '9.0',
      multiProcessorCount: 132,
      totalMemoryBytes: 1,
      supported: true,
    },
  ],
};

describe('resolveDevice', () => {
  it('defaults to cuda where a GPU is usable, else cpu with the reason', () => {
    expect(resolveDevice(undefined, () => one)).toEqual({
      device: { backend: 'cuda', index: 0 },
      line: 'device: cuda:0 (NVIDIA H200)',
    });
    const cpu = resolveDevice(undefined, () => none);
    expect(cpu.device).toEqual({ backend: 'cpu' });
    expect(cpu.line).toContain('no NVIDIA driver is installed');
  });
  it('--device cuda without a usable GPU gives the reason from gpuStatus', () => {
    expect(() => resolveDevice('cuda', () => none)).toThrow(/no NVIDIA driver is installed/);
    expect(() => resolveDevice('cuda:0', () => none)).toThrow(/E_NO_DEVICE|no NVIDIA/);
  });
  it('cpu, cuda:N and bad values', () => {
    expect(resolveDevice('cpu', () => one).device).toEqual({ backend: 'cpu' });
    expect(() => resolveDevice('cuda:1', () => one)).toThrow(/\[0, 1\)/);
    expect(() => resolveDevice('gpu', () => one)).toThrow(/cpu, cuda or cuda:N/);
    expect(() => resolveDevice('cpu:0', () => one)).toThrow(/cpu, cuda or cuda:N/);
  });
});
