import { QError } from '@q/core';
import type { QuantizedLinear } from '@q/quant';
import { matmulT, PARALLEL_MIN_MACS, toShared } from './gemm';
import { parallelLinearForward } from './quant-pool';

/**
 * One linear layer y = x · Wᵀ (+ b) over rows of x. Every projection of the model goes through this
 * interface, so a float layer and a quantized one are interchangeable and calibration can watch every input.
 */
export interface Linear {
  /** Parameter name without `.weight`, e.g. `model.layers.0.mlp.down_proj`. */
  readonly name: string;
  readonly inFeatures: number;
  readonly outFeatures: number;
  /** `f32` for float weights, otherwise the quantized weight format. */
  readonly format: 'f32' | 'int4' | 'int8';
  /** x [rows, inFeatures] → y [rows, outFeatures]; asynchronous so a layer may run off the calling thread. */
  forward(x: Float32Array, rows: number): Promise<Float32Array>;
}

/**
 * A float32 linear layer (weights [out, in]).
 *
 * @example
 * ```ts
 * const l = new FloatLinear('proj', new Float32Array([1, 0, 0, 1]), 2, 2);
 * await l.forward(new Float32Array([3, 4]), 1); // Float32Array [3, 4]
 * ```
 */
export class FloatLinear implements Linear {
  readonly format = 'f32' as const;
  readonly weight: Float32Array;
  readonly bias: Float32Array | null;

  constructor(
    readonly name: string,
    weight: Float32Array,
    readonly outFeatures: number,
    readonly inFeatures: number,
    bias: Float32Array | null = null,
  ) {
    if (weight.length !== outFeatures * inFeatures) {
      throw new QError(
        'E_SHAPE',
        `Expected ${outFeatures * inFeatures} weights ([${outFeatures}, ${inFeatures}]) for ${name} but received ${weight.length}`,
      );
    }
    if (bias !== null && bias.length !== outFeatures) {
      throw new QError(
        'E_SHAPE',
        `Expected ${outFeatures} bias values for ${name} but received ${bias.length}`,
      );
    }
    // Large weights live on shared memory once, so worker threads read them in place.
    this.weight = outFeatures * inFeatures * 16 >= PARALLEL_MIN_MACS ? toShared(weight) : weight;
    this.bias = bias;
  }

  async forward(x: Float32Array, rows: number): Promise<Float32Array> {
    return matmulT(x, rows, this.inFeatures, this.weight, this.outFeatures, this.bias);
  }
}

/** The function that runs a quantized layer exactly (injected so this module has no hard dependency on it). */
export type QuantLinearForward = (x: Float32Array, rows: number, layer: QuantizedLinear) => Float32Array;

/**
 * A quantized linear layer run by `@q/quant`'s exact integer reference (`linearForward`): activation
 * quantization, the int8×int4 (or int8×int8) integer GEMM and the f32 epilogue, bit for bit what a GPU kernel
 * must reproduce.
 *
 * @example
 * ```ts
 * const l = new QuantLinear(quantizedModel.linears.get('model.layers.0.mlp.down_proj')!, linearForward);
 * const y = await l.forward(x, rows);
 * ```
 */
export class QuantLinear implements Linear {
  readonly name: string;
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly format: 'f32' | 'int4' | 'int8';

  /**
   * `parallel`: `run` is `@q/quant`'s `linearForward`, so large inputs may be split by rows over worker threads
   * that run the same function (bit-identical; only from a build, see `cpu/quant-pool.ts`).
   */
  constructor(
    readonly layer: QuantizedLinear,
    private readonly run: QuantLinearForward,
    private readonly parallel = false,
  ) {
    this.name = layer.name;
    this.inFeatures = layer.weights.k;
    this.outFeatures = layer.weights.n;
    this.format = layer.weights.format;
  }

  async forward(x: Float32Array, rows: number): Promise<Float32Array> {
    return this.parallel
      ? parallelLinearForward(x, rows, this.layer, this.run)
      : this.run(x, rows, this.layer);
  }
}
