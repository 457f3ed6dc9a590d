import { QError } from '@q/core';
import { matmulT } from './gemm';
import type { Linear } from './linear';

/**
 * A float linear layer whose weights are read when it runs and dropped afterwards: `load()` returns W [out, in]
 * as f32 (best on shared memory, so the matmul's worker threads read it in place; it may reuse one buffer across calls). A model built from these
 * holds no linear weights between layers, so a forward pass over a checkpoint larger than memory (calibration)
 * needs about one layer's weights at a time.
 *
 * @example
 * ```ts
 * const st = openSafetensorsModel('Llama-2-7b');
 * const l = new LazyLinear('model.layers.0.mlp.up_proj', 11008, 4096, () => widenShared(st, 'model.layers.0.mlp.up_proj.weight'));
 * const y = l.forward(x, rows); // reads, multiplies, forgets
 * ```
 */
export class LazyLinear implements Linear {
  readonly format = 'f32' as const;

  constructor(
    readonly name: string,
    readonly outFeatures: number,
    readonly inFeatures: number,
    private readonly load: () => Float32Array,
    private readonly bias: Float32Array | null = null,
  ) {
    if (bias !== null && bias.length !== outFeatures)
      throw new QError(
        'E_SHAPE',
        `Expected ${outFeatures} bias values for ${name} but received ${bias.length}`,
      );
  }

  async forward(x: Float32Array, rows: number): Promise<Float32Array> {
    const w = this.load();
    if (w.length !== this.outFeatures * this.inFeatures)
      throw new QError(
        'E_SHAPE',
        `Expected ${this.outFeatures * this.inFeatures} weights ([${this.outFeatures}, ${this.inFeatures}]) for ${this.name} but received ${w.length}`,
      );
    return await matmulT(x, rows, this.inFeatures, w, this.outFeatures, this.bias);
  }
}
