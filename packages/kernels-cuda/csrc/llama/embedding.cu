// Embedding gather: out[t, :] = f32(table[ids[t], :]), the start of the f32 residual stream.
//
// Layout: ids i32 [T]; table bf16 [V, d] row-major (the checkpoint's embed_tokens); out f32 [T, d] row-major.
// One block per token; each thread moves 8 elements at a time (one 16-byte bf16 load, two 16-byte f32 stores)
// when d % 8 == 0 and the pointers are 16-byte aligned, one at a time otherwise. An id outside [0, V) (which the
// runtime never passes: prompt ids are checked on the host, sampled ids come from `sample`) writes a row of
// zeros instead of reading out of bounds, since a kernel cannot report an error without a host read.
#include <cuda_bf16.h>

#include "llama.h"
#include "vec.cuh"

namespace q {
namespace {

constexpr int kThreads = 128;

template <int N>
__global__ void __launch_bounds__(kThreads) embeddingKernel(const int32_t* __restrict__ ids,           // i32 [T]
                                                            const __nv_bfloat16* __restrict__ table,  // bf16 [V, d]
                                                            float* __restrict__ out,                  // f32 [T, d]
                                                            int d, int V) {
  const int64_t t = blockIdx.x;
  const int id = ids[t];
  float* o = out + t * d;
  const bool ok = id >= 0 && id < V;
  const __nv_bfloat16* src = table + static_cast<int64_t>(ok ? id : 0) * d;
  for (int c = threadIdx.x; c < d / N; c += kThreads) {
    float v[N];
    if (ok) loadBf16<N>(src + c * N, v);
    else
#pragma unroll
      for (int i = 0; i < N; i++) v[i] = 0.f;
    storeF32<N>(o + c * N, v);
  }
}

}  // namespace

cudaError_t LaunchEmbedding(const int32_t* ids, const void* table, float* out, int T, int d, int V,
                            cudaStream_t stream) {
  if (T == 0 || d == 0) return cudaSuccess;
  const auto* tb = static_cast<const __nv_bfloat16*>(table);
  if (d % 8 == 0 && Aligned(table, 16) && Aligned(out, 16))
    embeddingKernel<8><<<T, kThreads, 0, stream>>>(ids, tb, out, d, V);
  else
    embeddingKernel<1><<<T, kThreads, 0, stream>>>(ids, tb, out, d, V);
  return cudaGetLastError();
}

}  // namespace q
