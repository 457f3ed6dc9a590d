#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

struct ActQuantArgs {
  const void* x;      // fp16/bf16 [M, K]
  const void* gain;   // fp16/bf16 [K] RMSNorm gain (LAE folded), or null for plain quantization
  float eps;          // RMSNorm epsilon
  float staticScale;  // > 0: per-tensor static scale; 0: per-token dynamic
  void* q;            // int8 [M, ldq]
  float* scales;      // f32 [M] (dynamic only), or null
  int M, K, ldq;
  int dtype;          // 0 fp16, 1 bf16
  void* stream;
};

extern "C" cudaError_t q_act_quant(const ActQuantArgs* a);
