#include <cuda_bf16.h>

#include "fill.h"

namespace {

// splitmix64 of (index, seed): independent of the launch shape, so a fill is reproducible from its seed.
__device__ __forceinline__ uint32_t Hash(uint64_t i, uint32_t seed) {
  uint64_t z = i * 0x9E3779B97F4A7C15ull + (static_cast<uint64_t>(seed) << 32 | seed);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return static_cast<uint32_t>((z ^ (z >> 31)) >> 32);
}

__device__ __forceinline__ float Unit(uint32_t h) { return (h >> 8) * (1.0f / 16777216.0f); }

__global__ void FillKernel(void* p, uint64_t count, int kind, uint32_t seed, float lo, float hi) {
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t i = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride) {
    const uint32_t h = Hash(i, seed);
    switch (kind) {
      case 0:
        static_cast<uint8_t*>(p)[i] = static_cast<uint8_t>(h >> 24);
        break;
      case 1:
        static_cast<float*>(p)[i] = lo + (hi - lo) * Unit(h);
        break;
      case 2:
        static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(lo + (hi - lo) * Unit(h));
        break;
      default: {
        const int64_t span = static_cast<int64_t>(hi) - static_cast<int64_t>(lo) + 1;
        static_cast<int32_t*>(p)[i] = static_cast<int32_t>(static_cast<int64_t>(lo) + static_cast<int64_t>(h % span));
      }
    }
  }
}

__global__ void AddBiasKernel(__nv_bfloat16* out, const float* bias, int M, int N) {
  const uint64_t total = static_cast<uint64_t>(M) * N;
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t i = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    out[i] = __float2bfloat16_rn(__bfloat162float(out[i]) + bias[i % N]);
  }
}

unsigned Blocks(uint64_t n) {
  const uint64_t b = (n + 255) / 256;
  return static_cast<unsigned>(b < 65535 ? (b == 0 ? 1 : b) : 65535);
}

}  // namespace

extern "C" cudaError_t q_fill_random(void* p, uint64_t count, int kind, uint32_t seed, float lo, float hi,
                                     void* stream) {
  if (count == 0) return cudaSuccess;
  FillKernel<<<Blocks(count), 256, 0, static_cast<cudaStream_t>(stream)>>>(p, count, kind, seed, lo, hi);
  return cudaGetLastError();
}

extern "C" cudaError_t q_add_bias_bf16(void* out, const float* bias, int M, int N, void* stream) {
  if (M == 0 || N == 0) return cudaSuccess;
  AddBiasKernel<<<Blocks(static_cast<uint64_t>(M) * N), 256, 0, static_cast<cudaStream_t>(stream)>>>(
      static_cast<__nv_bfloat16*>(out), bias, M, N);
  return cudaGetLastError();
}
