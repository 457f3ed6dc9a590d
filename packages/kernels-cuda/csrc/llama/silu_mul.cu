// SwiGLU: out = silu(g) · u with g = gateUp[:, :ff], u = gateUp[:, ff:], silu(g) = g / (1 + exp(-g)), in f32;
// written as bf16, or as int8 for down_proj by the @q/quant activation rule (actquant/quant_rule.cuh) with a
// static per-tensor scale or a per-token dynamic one (scale = f32(max|out| / 127), written to scales[t]).
//
// Layout: gateUp bf16 [T, 2·ff] (gate and up projections as one GEMM output, gate first); out bf16 [T, ff] or
// int8 [T, ldo] with ldo ≥ ff, columns ff..ldo-1 written as 0 (the W4A8 GEMM's zero-padded K); scales f32 [T].
// One block per token: the dynamic scale needs the row's amax (a block reduction), and rows are 5k–28k wide. 256
// threads when there are many tokens; 1024 at up to kFewRows tokens (decode), where a handful of blocks must keep
// enough loads in flight to stream the row (at 256 threads a 28672-wide row took 26 µs on an H200). 8-wide (16-byte) loads of g and u when ff % 8 == 0, ldo % 8 == 0 and the pointers allow.
// expf and a true division (not __expf / a reciprocal): the kernel is memory-bound, so accuracy costs nothing.
#include <cuda_bf16.h>

#include "act_out.cuh"
#include "llama.h"
#include "vec.cuh"

namespace q {
namespace {


template <int N>
__device__ __forceinline__ void swiglu(const __nv_bfloat16* row, int ff, int c, float (&v)[N]) {
  float u[N];
  loadBf16<N>(row + c * N, v);
  loadBf16<N>(row + ff + c * N, u);
#pragma unroll
  for (int i = 0; i < N; i++) v[i] = v[i] / (1.f + expf(-v[i])) * u[i];
}

template <int N, int kMode, int kThreads>
__global__ void __launch_bounds__(kThreads) siluMulKernel(const __nv_bfloat16* __restrict__ gu,  // bf16 [T, 2ff]
                                                          void* __restrict__ out,  // bf16 [T, ff] | i8 [T, ldo]
                                                          int ldo,                 // out row stride
                                                          float staticScale,       // kOutInt8Static
                                                          float* __restrict__ scales,  // f32 [T] (dynamic)
                                                          int ff) {
  __shared__ float red[32];
  const int64_t t = blockIdx.x;
  const __nv_bfloat16* row = gu + t * 2 * ff;
  auto y = [&](int c, float (&v)[N]) { swiglu<N>(row, ff, c, v); };
  writeActRow<N, kThreads, kMode>(y, ff / N, out, t, ldo, staticScale, scales, red);
}

template <int N, int kThreads>
void launchSiluThreads(int mode, const __nv_bfloat16* gu, void* out, int ldo, float staticScale, float* scales,
                       int T, int ff, cudaStream_t stream) {
  if (mode == kOutBf16)
    siluMulKernel<N, kOutBf16, kThreads><<<T, kThreads, 0, stream>>>(gu, out, ldo, staticScale, scales, ff);
  else if (mode == kOutInt8Static)
    siluMulKernel<N, kOutInt8Static, kThreads><<<T, kThreads, 0, stream>>>(gu, out, ldo, staticScale, scales, ff);
  else
    siluMulKernel<N, kOutInt8Dynamic, kThreads><<<T, kThreads, 0, stream>>>(gu, out, ldo, staticScale, scales, ff);
}

template <int N>
void launchSilu(int mode, const __nv_bfloat16* gu, void* out, int ldo, float staticScale, float* scales, int T,
                int ff, cudaStream_t stream) {
  if (T <= kFewRows)
    launchSiluThreads<N, 1024>(mode, gu, out, ldo, staticScale, scales, T, ff, stream);
  else
    launchSiluThreads<N, 256>(mode, gu, out, ldo, staticScale, scales, T, ff, stream);
}

}  // namespace

cudaError_t LaunchSiluMul(const void* gateUp, void* out, int ldo, int mode, float staticScale, float* scales, int T,
                          int ff, cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  if (mode < kOutBf16 || mode > kOutInt8Dynamic) return cudaErrorInvalidValue;
  const auto* gu = static_cast<const __nv_bfloat16*>(gateUp);
  const bool vec = ff % 8 == 0 && ldo % 8 == 0 && Aligned(gateUp, 16) && Aligned(out, mode == kOutBf16 ? 16 : 8);
  if (vec)
    launchSilu<8>(mode, gu, out, ldo, staticScale, scales, T, ff, stream);
  else
    launchSilu<1>(mode, gu, out, ldo, staticScale, scales, T, ff, stream);
  return cudaGetLastError();
}

}  // namespace q
