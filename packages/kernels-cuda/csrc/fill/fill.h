#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

// Fills device memory with counter-based random values (benchmark weights drawn on the device) and adds a
// bias row to a bf16 matrix (the bf16 path's q/k/v bias). Asynchronous on `stream`, graph-capturable.
// kind: 0 random bytes; 1 f32 uniform [lo, hi); 2 bf16 uniform [lo, hi); 3 i32 uniform integers [lo, hi].
extern "C" cudaError_t q_fill_random(void* p, uint64_t count, int kind, uint32_t seed, float lo, float hi,
                                     void* stream);
// out[m, n] = bf16(f32(out[m, n]) + bias[n]) for a bf16 [M, N] matrix and an f32 [N] bias.
extern "C" cudaError_t q_add_bias_bf16(void* out, const float* bias, int M, int N, void* stream);
