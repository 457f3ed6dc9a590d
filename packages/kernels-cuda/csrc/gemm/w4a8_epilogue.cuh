#pragma once
// The store every W4A8 kernel ends with, shared by the mma.sync, wgmma and warp-specialized paths so that their
// outputs round identically: out[m, n] (row-major [M, N]) gets either the raw int32 accumulator (`iv`, for the
// bit-exact tests) or the f32 result `v` plus the optional f32 bias[n] and fp16/bf16 residual[m, n], rounded once
// to the output dtype (round-to-nearest-even).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "w4a8.h"

__device__ __forceinline__ void w4a8StoreOut(const W4A8Args& p, int m, int n, float v, int iv) {
  const size_t idx = static_cast<size_t>(m) * p.N + n;
  if (p.outType == Q_OUT_I32) {
    static_cast<int32_t*>(p.out)[idx] = iv;
    return;
  }
  if (p.bias) v += p.bias[n];
  if (p.outType == Q_OUT_F16) {
    if (p.residual) v += __half2float(static_cast<const __half*>(p.residual)[idx]);
    static_cast<__half*>(p.out)[idx] = __float2half_rn(v);
  } else {
    if (p.residual) v += __bfloat162float(static_cast<const __nv_bfloat16*>(p.residual)[idx]);
    static_cast<__nv_bfloat16*>(p.out)[idx] = __float2bfloat16_rn(v);
  }
}
