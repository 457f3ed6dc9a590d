// Activation quantization fp16/bf16 → int8, bit-identical to @q/quant (packages/quant/src/types.ts):
//   per-token dynamic: amax = max_j |x_j| (exact), scale = f32(amax / 127), scale = 1 when it is 0;
//   per-tensor static: scale given;
//   q_j = clamp(rint_half_even(f32(x_j / scale)), -127, 127), with a true division (__fdiv_rn, never a
//   reciprocal multiply, which differs in the last bit) and __float2int_rn (round half to even).
// Also fused RMSNorm + quantize: y_j = f32(x_j) · rstd · f32(g_j), rstd = 1/sqrt(mean(x²) + eps); the LAE
// division is already folded into the gain g. Its float sum order differs from a CPU loop, so it matches a
// reference to ±1 code, not bit for bit.
//
// Layout: x row-major [M, K]; q row-major [M, ldq] with ldq ≥ K, columns K..ldq-1 written as 0 so that the
// output can be the zero-padded K of the W4A8 GEMM directly; scales f32 [M]. One block of 256 threads per
// row: rows are 4k–28k elements in the layers q serves, enough work for a block, and the row amax needs a
// block reduction anyway.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "act_quant.h"
#include "quant_rule.cuh"

namespace {

__device__ __forceinline__ float load(const __half* p, int64_t i) { return __half2float(p[i]); }
__device__ __forceinline__ float load(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }

template <typename T, int kThreads>
__global__ void __launch_bounds__(kThreads) quantRows(const T* __restrict__ x,  // fp16/bf16 [M, K]
                                                      const T* __restrict__ gain,  // fp16/bf16 [K] or null
                                                      float eps,                  // RMSNorm epsilon
                                                      float staticScale,          // > 0: static mode
                                                      int8_t* __restrict__ q,     // int8 [M, ldq]
                                                      float* __restrict__ scales,  // f32 [M] or null
                                                      int K, int ldq) {
  __shared__ float red[32];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * K;
  int8_t* qr = q + row * ldq;
  float rstd = 1.f;
  if (gain != nullptr) {
    float ss = 0.f;
    for (int j = threadIdx.x; j < K; j += kThreads) {
      float v = load(xr, j);
      ss = fmaf(v, v, ss);
    }
    ss = q::blockReduce<kThreads, false>(ss, red);
    rstd = rsqrtf(ss / static_cast<float>(K) + eps);
  }
  float scale = staticScale;
  if (!(staticScale > 0.f)) {
    float amax = 0.f;
    for (int j = threadIdx.x; j < K; j += kThreads) {
      float v = load(xr, j);
      if (gain != nullptr) v = v * rstd * load(gain, j);
      amax = fmaxf(amax, fabsf(v));
    }
    amax = q::blockReduce<kThreads, true>(amax, red);
    scale = q::dynamicScale(amax);
    if (threadIdx.x == 0 && scales != nullptr) scales[row] = scale;
  }
  for (int j = threadIdx.x; j < ldq; j += kThreads) {
    int8_t out = 0;
    if (j < K) {
      float v = load(xr, j);
      if (gain != nullptr) v = v * rstd * load(gain, j);
      out = q::quantInt8(v, scale);
    }
    qr[j] = out;
  }
}

template <int kThreads>
void launchQuantRows(const ActQuantArgs* a, cudaStream_t s) {
  dim3 grid(a->M), block(kThreads);
  if (a->dtype == 1) {
    quantRows<__nv_bfloat16, kThreads><<<grid, block, 0, s>>>(
        static_cast<const __nv_bfloat16*>(a->x), static_cast<const __nv_bfloat16*>(a->gain), a->eps,
        a->staticScale, static_cast<int8_t*>(a->q), a->scales, a->K, a->ldq);
  } else {
    quantRows<__half, kThreads><<<grid, block, 0, s>>>(static_cast<const __half*>(a->x),
                                                       static_cast<const __half*>(a->gain), a->eps, a->staticScale,
                                                       static_cast<int8_t*>(a->q), a->scales, a->K, a->ldq);
  }
}

}  // namespace

extern "C" cudaError_t q_act_quant(const ActQuantArgs* a) {
  if (a->M == 0) return cudaSuccess;
  cudaStream_t s = reinterpret_cast<cudaStream_t>(a->stream);
  // One block a row; at decode batch sizes 1024 threads keep enough loads in flight (see llama/silu_mul.cu).
  if (a->M <= 128)
    launchQuantRows<1024>(a, s);
  else
    launchQuantRows<256>(a, s);
  return cudaGetLastError();
}
