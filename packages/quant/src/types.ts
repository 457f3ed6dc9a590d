/**
 * The contract between `@q/quant` (the exact CPU reference), `@q/kernels-cuda` (which must reproduce it) and
 * `@q/runtime` (which runs it). Every number format and rounding rule that a GPU kernel has to match bit for bit
 * is written down here.
 *
 * ## Rounding rule for int8 activations (bit-exact contract)
 * All arithmetic is IEEE float32 with round-to-nearest-even:
 * - per-token dynamic: `amax = max_j |x_j|` over the row (exact); `scale = f32(amax / 127)`; if `scale == 0`
 *   then `scale = 1`.
 * - per-tensor static: `scale` is the calibrated f32 value stored in the checkpoint.
 * - `q_j = clamp(rintHalfEven(f32(x_j / scale)), -127, 127)` — a true f32 division (CUDA `__fdiv_rn`, never a
 *   multiply by a reciprocal), then round half to even (CUDA `__float2int_rn`). -128 is never produced.
 * Inputs given as f16/bf16 are first widened to f32 exactly.
 *
 * ## W4A8 GEMM (out[m, n] = Σ_k a[m, k] · w[n, k])
 * Integer part, exact in int32: `P[m, n, g] = Σ_{k in group g} a[m, k] · w[n, k]` with `a` int8 and `w` int4.
 * The f32 epilogue, evaluated left to right in f32:
 * - `per-channel`: `out = f32(Σ_g P) * aScale[m] * wScale[n]`
 * - `group-float`: `out = (Σ_g f32(P_g) * scales[n, g]) * aScale[m]` (g ascending; a GPU may reorder this sum,
 *   so float outputs are compared with a tolerance, integer parts exactly)
 * - `group-int` (Integer Scale): `acc = Σ_g intScale.q[n, g] · P_g` in int32, then
 *   `out = f32(acc) * aScale[m] * intScale.unit[n]` where `unit[n] = f32(channelScale[n] / 2^amplifierBits)`.
 */

/** Activation quantizer of one linear layer's input. */
export type ActQuantMode = 'static' | 'dynamic' | 'none';

/** int4 weights of one linear layer W[n, k] (out features × in features), quantized group-wise along k. */
export interface Int4Weights {
  readonly format: 'int4';
  /** Output features. */
  readonly n: number;
  /** Input features as in the float model. */
  readonly k: number;
  /** k rounded up to a multiple of groupSize; the padded columns hold weight 0 (activations are padded with 0). */
  readonly kPadded: number;
  /** Elements of one group along k; equals kPadded for per-channel quantization. */
  readonly groupSize: number;
  /** Symmetric: values in [-7, 7], w ≈ scale·q. Asymmetric: values in [-8, 7], w ≈ scale·(q − zero). */
  readonly symmetric: boolean;
  /** Plain int4 packing (low nibble first), row-major [n, kPadded]. */
  readonly packed: Uint8Array;
  /** f32 scales, row-major [n, kPadded / groupSize]. */
  readonly scales: Float32Array;
  /** Asymmetric only: integer zero points, row-major [n, kPadded / groupSize]. */
  readonly zeros?: Int8Array;
  /** Integer Scale form of `scales`, when the recipe asks for it (symmetric only). */
  readonly intScale?: IntegerScale;
}

/** Group scales as integers with an amplifier 2^amplifierBits (Integer Scale, normalised per channel). */
export interface IntegerScale {
  readonly amplifierBits: number;
  /** `q[n, g] = max(1, round(scales[n, g] / channelScale[n] · 2^amplifierBits))`, row-major [n, groups]. */
  readonly q: Int32Array;
  /** `channelScale[n] = max_g scales[n, g]`. */
  readonly channelScale: Float32Array;
  /** `unit[n] = f32(channelScale[n] / 2^amplifierBits)`: the epilogue factor. */
  readonly unit: Float32Array;
}

/** int8 per-output-channel weights (the W8A8 baseline): w ≈ scales[n] · data[n, k]. */
export interface Int8Weights {
  readonly format: 'int8';
  readonly n: number;
  readonly k: number;
  /** Row-major [n, k]. */
  readonly data: Int8Array;
  /** f32 [n]. */
  readonly scales: Float32Array;
}

/** Float weights kept as they are (layers a recipe leaves unquantized). Row-major [n, k]. */
export interface FloatWeights {
  readonly format: 'f32';
  readonly n: number;
  readonly k: number;
  readonly data: Float32Array;
}

export type QuantWeights = Int4Weights | Int8Weights | FloatWeights;

/** Scale mode the W4A8 GEMM runs in for a given Int4Weights. */
export type GemmScaleMode = 'per-channel' | 'group-float' | 'group-int';

/** What the FPTQ policy decided for one linear layer. */
export interface LayerPlan {
  /** Full parameter name without `.weight`, e.g. `model.layers.0.self_attn.q_proj`. */
  readonly name: string;
  /** Calibration range r = max_j max|X_j| of the layer input, before LAE. */
  readonly range: number;
  readonly act: ActQuantMode;
  /** LAE folded into the preceding norm for this layer's input. */
  readonly lae: boolean;
  /** Static activation scale (f32) when act === 'static'. */
  readonly staticScale?: number;
}

/**
 * One quantized linear layer, everything the CPU reference and a GPU kernel need to run it:
 * `y = dequant(W) · quant(x) (+ bias)`.
 */
export interface QuantizedLinear {
  readonly name: string;
  readonly weights: QuantWeights;
  readonly act: ActQuantMode;
  /** f32 static activation scale when act === 'static'. */
  readonly staticScale?: number;
  /** f32 [n], when the layer has a bias. */
  readonly bias?: Float32Array;
}
