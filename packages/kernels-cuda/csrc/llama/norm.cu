// RMSNorm with the residual add fused, the entry of every attention and MLP block:
//   x += f32(r)                       (when r is given; x is written back: it is the residual stream)
//   y  = x · rstd · gain,  rstd = 1 / sqrt(mean(x²) + eps)
// y is written as bf16, or as int8 by the @q/quant activation rule (actquant/quant_rule.cuh) with a static
// per-tensor scale or a per-token dynamic one (scale = f32(max|y| / 127), written to scales[t]).
//
// Layout: x f32 [T, d] (in place); r bf16 [T, d] (a GEMM output) or null; gain f32 [d] (the norm weight, with
// the LAE division folded in for int8 outputs); out bf16 [T, d] or int8 [T, ldo] with ldo ≥ d, columns d..ldo-1
// written as 0 (the zero padding of the W4A8 GEMM's K); scales f32 [T].
// One block of 256 threads per token (rows are 2k–8k wide: one block's worth, and the sum of squares and the
// amax need a block reduction anyway). Each thread owns the same 8-element chunks in every pass, so it reads
// back its own writes of x; the later passes hit L1/L2. 8-wide (16-byte) accesses when d % 8 == 0, ldo % 8 == 0
// and the pointers allow, one element at a time otherwise. The sum of squares is in f32 in a fixed order, so
// the int8 codes match a float64 reference to ±1 (a value within an ulp of a rounding boundary may go either
// way), not bit for bit.
#include <cuda_bf16.h>

#include "act_out.cuh"
#include "actquant/quant_rule.cuh"
#include "llama.h"
#include "vec.cuh"

namespace q {
namespace {

template <int N, int kMode, bool kRes, int kThreads>
__global__ void __launch_bounds__(kThreads) addRmsNormKernel(float* __restrict__ x,                   // f32 [T, d]
                                                             const __nv_bfloat16* __restrict__ r,    // bf16 [T, d]
                                                             const float* __restrict__ gain,         // f32 [d]
                                                             float eps,                              // RMSNorm eps
                                                             void* __restrict__ out,    // bf16 [T, d] | i8 [T, ldo]
                                                             int ldo,                   // out row stride
                                                             float staticScale,         // kOutInt8Static
                                                             float* __restrict__ scales,  // f32 [T] (dynamic)
                                                             int d) {
  __shared__ float red[32];
  const int64_t t = blockIdx.x;
  float* xr = x + t * d;
  const int chunks = d / N;
  float ss = 0.f;
  for (int c = threadIdx.x; c < chunks; c += kThreads) {
    float v[N];
    loadF32<N>(xr + c * N, v);
    if constexpr (kRes) {
      float rv[N];
      loadBf16<N>(r + t * d + c * N, rv);
#pragma unroll
      for (int i = 0; i < N; i++) v[i] += rv[i];
      storeF32<N>(xr + c * N, v);
    }
#pragma unroll
    for (int i = 0; i < N; i++) ss = fmaf(v[i], v[i], ss);
  }
  ss = blockReduce<kThreads, false>(ss, red);
  const float rstd = rsqrtf(ss / static_cast<float>(d) + eps);

  auto y = [&](int c, float (&v)[N]) {
    float g[N];
    loadF32<N>(xr + c * N, v);
    loadF32<N>(gain + c * N, g);
#pragma unroll
    for (int i = 0; i < N; i++) v[i] = v[i] * rstd * g[i];
  };
  writeActRow<N, kThreads, kMode>(y, chunks, out, t, ldo, staticScale, scales, red);
}

template <int N, int kMode, int kThreads>
void launchNormThreads(float* x, const void* r, const float* gain, float eps, void* out, int ldo, float staticScale,
                       float* scales, int T, int d, cudaStream_t stream) {
  const auto* rb = static_cast<const __nv_bfloat16*>(r);
  if (r != nullptr)
    addRmsNormKernel<N, kMode, true, kThreads>
        <<<T, kThreads, 0, stream>>>(x, rb, gain, eps, out, ldo, staticScale, scales, d);
  else
    addRmsNormKernel<N, kMode, false, kThreads>
        <<<T, kThreads, 0, stream>>>(x, rb, gain, eps, out, ldo, staticScale, scales, d);
}

// 1024 threads a row at up to kFewRows rows (decode), 256 otherwise: see silu_mul.cu.
template <int N, int kMode>
void launchNorm(float* x, const void* r, const float* gain, float eps, void* out, int ldo, float staticScale,
                float* scales, int T, int d, cudaStream_t stream) {
  if (T <= kFewRows)
    launchNormThreads<N, kMode, 1024>(x, r, gain, eps, out, ldo, staticScale, scales, T, d, stream);
  else
    launchNormThreads<N, kMode, 256>(x, r, gain, eps, out, ldo, staticScale, scales, T, d, stream);
}

template <int N>
void launchNormModes(int mode, float* x, const void* r, const float* gain, float eps, void* out, int ldo,
                     float staticScale, float* scales, int T, int d, cudaStream_t stream) {
  if (mode == kOutBf16)
    launchNorm<N, kOutBf16>(x, r, gain, eps, out, ldo, staticScale, scales, T, d, stream);
  else if (mode == kOutInt8Static)
    launchNorm<N, kOutInt8Static>(x, r, gain, eps, out, ldo, staticScale, scales, T, d, stream);
  else
    launchNorm<N, kOutInt8Dynamic>(x, r, gain, eps, out, ldo, staticScale, scales, T, d, stream);
}

}  // namespace

cudaError_t LaunchAddRmsNorm(float* x, const void* r, const float* gain, float eps, void* out, int ldo, int mode,
                             float staticScale, float* scales, int T, int d, cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  if (mode < kOutBf16 || mode > kOutInt8Dynamic) return cudaErrorInvalidValue;
  const int outBytes = mode == kOutBf16 ? 16 : 8;
  const bool vec = d % 8 == 0 && ldo % 8 == 0 && Aligned(x, 16) && Aligned(gain, 16) && Aligned(out, outBytes) &&
                   (r == nullptr || Aligned(r, 16));
  if (vec)
    launchNormModes<8>(mode, x, r, gain, eps, out, ldo, staticScale, scales, T, d, stream);
  else
    launchNormModes<1>(mode, x, r, gain, eps, out, ldo, staticScale, scales, T, d, stream);
  return cudaGetLastError();
}

}  // namespace q
