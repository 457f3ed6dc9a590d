// The output stage shared by the row kernels that produce activations (addRmsNorm, siluMul): one row computed
// chunk by chunk by `value(c, v)` (the N f32 values of chunk c), written as bf16, or as int8 by the @q/quant
// rule with a static scale or a per-token dynamic one (two passes: the row's amax, then the codes; `value` is
// cheap to call again and its inputs are in L1/L2). int8 rows are ldo wide, the columns past the row written as 0
// (the W4A8 GEMM's zero-padded K). Called by every thread of a block of kThreads; `red` is 32 floats of shared
// memory.
#pragma once
#include <cuda_bf16.h>

#include "actquant/quant_rule.cuh"
#include "llama.h"
#include "vec.cuh"

namespace q {

template <int N, int kThreads, int kMode, typename F>
__device__ __forceinline__ void writeActRow(F value, int chunks, void* out, int64_t row, int ldo, float staticScale,
                                            float* scales, float* red) {
  if constexpr (kMode == kOutBf16) {
    __nv_bfloat16* o = static_cast<__nv_bfloat16*>(out) + row * ldo;
    for (int c = threadIdx.x; c < chunks; c += kThreads) {
      float v[N];
      value(c, v);
      storeBf16<N>(o + c * N, v);
    }
  } else {
    float scale = staticScale;
    if constexpr (kMode == kOutInt8Dynamic) {
      float amax = 0.f;
      for (int c = threadIdx.x; c < chunks; c += kThreads) {
        float v[N];
        value(c, v);
#pragma unroll
        for (int i = 0; i < N; i++) amax = fmaxf(amax, fabsf(v[i]));
      }
      amax = blockReduce<kThreads, true>(amax, red);
      scale = dynamicScale(amax);
      if (threadIdx.x == 0) scales[row] = scale;
    }
    int8_t* o = static_cast<int8_t*>(out) + row * ldo;
    for (int c = threadIdx.x; c < ldo / N; c += kThreads) {
      int8_t qv[N];
      if (c < chunks) {
        float v[N];
        value(c, v);
#pragma unroll
        for (int i = 0; i < N; i++) qv[i] = quantInt8(v[i], scale);
      } else {
#pragma unroll
        for (int i = 0; i < N; i++) qv[i] = 0;
      }
      storeI8<N>(o + c * N, qv);
    }
  }
}

}  // namespace q
