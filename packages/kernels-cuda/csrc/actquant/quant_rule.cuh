// The int8 activation rule of @q/quant (packages/quant/src/types.ts) on the device, shared by every kernel that
// writes int8 activations (actquant/, llama/) so that there is one copy of it:
//   per-token dynamic: scale = f32(amax / 127), 1 when amax is 0; per-tensor static: the given scale;
//   q = clamp(rint_half_even(f32(x / scale)), -127, 127), with a true division (__fdiv_rn, never a reciprocal
//   multiply, which differs in the last bit) and __float2int_rn (round half to even).
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

namespace q {

__device__ __forceinline__ int8_t quantInt8(float x, float scale) {
  int v = __float2int_rn(__fdiv_rn(x, scale));
  v = v > 127 ? 127 : (v < -127 ? -127 : v);
  return static_cast<int8_t>(v);
}

__device__ __forceinline__ float dynamicScale(float amax) {
  float scale = __fdiv_rn(amax, 127.f);
  return scale == 0.f ? 1.f : scale;
}

// Block-wide max or sum of a float over kThreads threads (a multiple of 32, at most 1024); every thread gets
// the result. `shared` holds at least 32 floats. The order of the sum is fixed, so a result is reproducible.
template <int kThreads, bool kMax>
__device__ float blockReduce(float v, float* shared) {
  for (int o = 16; o > 0; o >>= 1) {
    float w = __shfl_xor_sync(0xffffffffu, v, o);
    v = kMax ? fmaxf(v, w) : v + w;
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kThreads / 32 ? shared[lane] : (kMax ? -INFINITY : 0.f);
    for (int o = 16; o > 0; o >>= 1) {
      float w = __shfl_xor_sync(0xffffffffu, v, o);
      v = kMax ? fmaxf(v, w) : v + w;
    }
    if (lane == 0) shared[0] = v;
  }
  __syncthreads();
  float r = shared[0];
  __syncthreads();
  return r;
}

}  // namespace q
