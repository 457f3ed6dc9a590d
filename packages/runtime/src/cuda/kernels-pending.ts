// Temporary: the llama-ops and attention kernels of @q/kernels-cuda typed as agreed, until they are merged.
// Once they are exported by @q/kernels-cuda this file is deleted and `kernels` imports come from there.

import { QError } from '@q/core';
import type { DeviceTensor, Stream } from '@q/kernels-cuda';
import * as k from '@q/kernels-cuda';

/** Activation output of a fused kernel: bf16, or int8 with a static or per-token dynamic scale. */
export interface QuantOut {
  /** 'static' (staticScale) or 'dynamic' (scales f32 [T]); absent for a bf16 out. */
  mode?: 'static' | 'dynamic';
  staticScale?: number;
  scales?: DeviceTensor;
}

export interface EmbeddingOptions {
  /** i32 [T]. */
  ids: DeviceTensor;
  /** bf16 [V, d]. */
  table: DeviceTensor;
  /** f32 [T, d]. */
  out: DeviceTensor;
  stream: Stream;
}

export interface AddRmsNormOptions extends QuantOut {
  /** f32 [T, d], updated in place when r is given. */
  x: DeviceTensor;
  /** bf16 [T, d], added to x first. */
  r?: DeviceTensor;
  /** f32 [d]. */
  gain: DeviceTensor;
  eps: number;
  /** bf16 [T, d] or i8 [T, ldq]. */
  out: DeviceTensor;
  stream: Stream;
}

export interface RopeKvWriteOptions {
  /** bf16 [T, (nh + 2 nkv) hd]. */
  qkv: DeviceTensor;
  positions: DeviceTensor;
  seqOfToken: DeviceTensor;
  pageTable: DeviceTensor;
  k: DeviceTensor;
  v: DeviceTensor;
  /** f32 [hd / 2]. */
  invFreq: DeviceTensor;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  style: 'interleaved' | 'half';
  stream: Stream;
}

export interface SiluMulOptions extends QuantOut {
  /** bf16 [T, 2 ff]. */
  gateUp: DeviceTensor;
  /** bf16 [T, ff] or i8 [T, ldq]. */
  out: DeviceTensor;
  stream: Stream;
}

export interface SampleOptions {
  /** f32 [B, V]. */
  logits: DeviceTensor;
  temperature: DeviceTensor;
  topK: DeviceTensor;
  topP: DeviceTensor;
  seeds: DeviceTensor;
  steps: DeviceTensor;
  /** i32 [B]. */
  out: DeviceTensor;
  stream: Stream;
}

export interface AttentionPrefillOptions {
  q: DeviceTensor;
  /** Elements between the q rows of consecutive tokens. */
  qStride: number;
  k: DeviceTensor;
  v: DeviceTensor;
  pageTable: DeviceTensor;
  qStart: DeviceTensor;
  contextLens: DeviceTensor;
  positions: DeviceTensor;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  scale: number;
  /** bf16 [T, nh hd]. */
  out: DeviceTensor;
  maxQLen: number;
  stream: Stream;
}

export interface AttentionDecodeOptions {
  q: DeviceTensor;
  qStride: number;
  k: DeviceTensor;
  v: DeviceTensor;
  pageTable: DeviceTensor;
  contextLens: DeviceTensor;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  scale: number;
  out: DeviceTensor;
  workspace: DeviceTensor;
  maxContext: number;
  stream: Stream;
}

/** The kernels GPU-API.md promises and @q/kernels-cuda does not export yet. */
export interface PendingKernels {
  embedding(o: EmbeddingOptions): void;
  addRmsNorm(o: AddRmsNormOptions): void;
  ropeKvWrite(o: RopeKvWriteOptions): void;
  siluMul(o: SiluMulOptions): void;
  sample(o: SampleOptions): void;
  attentionPrefill(o: AttentionPrefillOptions): void;
  attentionDecode(o: AttentionDecodeOptions): void;
  attentionDecodeWorkspaceBytes(S: number, numHeads: number, headDim: number, maxContext: number): number;
}

/** @q/kernels-cuda with the pending kernels typed in. */
export const kernels = k as typeof k & PendingKernels;

const PENDING: readonly (keyof PendingKernels)[] = [
  'embedding',
  'addRmsNorm',
  'ropeKvWrite',
  'siluMul',
  'sample',
  'attentionPrefill',
  'attentionDecode',
  'attentionDecodeWorkspaceBytes',
];

/** Throws E_UNSUPPORTED naming the kernels this build of @q/kernels-cuda lacks (before any device work). */
export function requireModelKernels(): void {
  const have = kernels as unknown as Record<string, unknown>;
  const missing = PENDING.filter((n) => typeof have[n] !== 'function');
  if (missing.length > 0)
    throw new QError(
      'E_UNSUPPORTED',
      `Expected @q/kernels-cuda to export the model kernels but received a build without ${missing.join(', ')}`,
    );
}
