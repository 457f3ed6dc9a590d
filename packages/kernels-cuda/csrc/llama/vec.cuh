// 8-wide loads and stores (16 bytes of bf16, 2×16 bytes of f32, 8 bytes of int8) for the memory-bound Llama-layer
// kernels, and the pointer checks that decide whether a launch may use them.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace q {

inline bool Aligned(const void* p, int bytes) { return (reinterpret_cast<uintptr_t>(p) % bytes) == 0; }

__device__ __forceinline__ void loadBf16x8(const __nv_bfloat16* p, float (&v)[8]) {
  uint4 u = *reinterpret_cast<const uint4*>(p);
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
  for (int i = 0; i < 4; i++) {
    float2 f = __bfloat1622float2(h[i]);
    v[2 * i] = f.x;
    v[2 * i + 1] = f.y;
  }
}

__device__ __forceinline__ void storeBf16x8(__nv_bfloat16* p, const float (&v)[8]) {
  uint4 u;
  __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&u);
#pragma unroll
  for (int i = 0; i < 4; i++) h[i] = __floats2bfloat162_rn(v[2 * i], v[2 * i + 1]);
  *reinterpret_cast<uint4*>(p) = u;
}

__device__ __forceinline__ void loadF32x8(const float* p, float (&v)[8]) {
  float4 a = reinterpret_cast<const float4*>(p)[0];
  float4 b = reinterpret_cast<const float4*>(p)[1];
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}

__device__ __forceinline__ void storeF32x8(float* p, const float (&v)[8]) {
  reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
  reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
}

__device__ __forceinline__ void storeI8x8(int8_t* p, const int8_t (&v)[8]) {
  uint2 u;
  int8_t* b = reinterpret_cast<int8_t*>(&u);
#pragma unroll
  for (int i = 0; i < 8; i++) b[i] = v[i];
  *reinterpret_cast<uint2*>(p) = u;
}

// N-wide forms (N = 8: the vector instructions above; N = 1: one element, for shapes or pointers that do
// not allow 16-byte accesses), so that a kernel is written once and instantiated for both.
template <int N>
__device__ __forceinline__ void loadBf16(const __nv_bfloat16* p, float (&v)[N]) {
  if constexpr (N == 8) loadBf16x8(p, v);
  else
#pragma unroll
    for (int i = 0; i < N; i++) v[i] = __bfloat162float(p[i]);
}

template <int N>
__device__ __forceinline__ void storeBf16(__nv_bfloat16* p, const float (&v)[N]) {
  if constexpr (N == 8) storeBf16x8(p, v);
  else
#pragma unroll
    for (int i = 0; i < N; i++) p[i] = __float2bfloat16_rn(v[i]);
}

template <int N>
__device__ __forceinline__ void loadF32(const float* p, float (&v)[N]) {
  if constexpr (N == 8) loadF32x8(p, v);
  else
#pragma unroll
    for (int i = 0; i < N; i++) v[i] = p[i];
}

template <int N>
__device__ __forceinline__ void storeF32(float* p, const float (&v)[N]) {
  if constexpr (N == 8) storeF32x8(p, v);
  else
#pragma unroll
    for (int i = 0; i < N; i++) p[i] = v[i];
}

template <int N>
__device__ __forceinline__ void storeI8(int8_t* p, const int8_t (&v)[N]) {
  if constexpr (N == 8) storeI8x8(p, v);
  else
#pragma unroll
    for (int i = 0; i < N; i++) p[i] = v[i];
}

}  // namespace q
