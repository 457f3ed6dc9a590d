// Launchers of the Llama-layer kernels (embedding, addRmsNorm, ropeKvWrite, siluMul, sample). Each returns the
// launch status; the N-API glue (glue.cc) turns a failure into an E_CUDA error. Every launcher is asynchronous on
// `stream` and CUDA-graph capturable: no allocation, no synchronization, no host read of device data.
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

namespace q {

// Output of a norm or activation kernel: bf16, or int8 by the @q/quant rule with a static or per-token scale.
enum LlamaOutMode { kOutBf16 = 0, kOutInt8Static = 1, kOutInt8Dynamic = 2 };

// The row kernels (norms, SwiGLU, activation quantization) give each row 1024 threads at up to this many rows (a
// decode step's batch) and 256 beyond.
constexpr int kFewRows = 128;

cudaError_t LaunchEmbedding(const int32_t* ids, const void* table, float* out, int T, int d, int V,
                            cudaStream_t stream);

cudaError_t LaunchAddRmsNorm(float* x, const void* r, const float* gain, float eps, void* out, int ldo, int mode,
                             float staticScale, float* scales, int T, int d, cudaStream_t stream);

cudaError_t LaunchSiluMul(const void* gateUp, void* out, int ldo, int mode, float staticScale, float* scales, int T,
                          int ff, cudaStream_t stream);

struct RopeKvArgs {
  void* qkv;                 // bf16 [T, (nh + 2 nkv) hd]
  const int32_t* positions;  // i32 [T]
  const int32_t* seqOfToken; // i32 [T]
  const int32_t* pageTable;  // i32 [S, maxPages]
  void* k;                   // bf16 [pages, pageSize, nkv, hd]
  void* v;                   // bf16 [pages, pageSize, nkv, hd]
  const float* invFreq;      // f32 [hd / 2]
  int T, numHeads, numKvHeads, headDim;
  int S, maxPages, pages, pageSize;
  int half;                  // 0 interleaved pairs (2i, 2i+1), 1 half pairs (i, i + hd/2)
};
cudaError_t LaunchRopeKvWrite(const RopeKvArgs& a, cudaStream_t stream);

struct SampleArgs {
  const float* logits;       // f32 [B, V]
  const float* temperature;  // f32 [B]
  const int32_t* topK;       // i32 [B]
  const float* topP;         // f32 [B]
  const uint32_t* seeds;     // u32 [B]
  const int32_t* steps;      // i32 [B]
  int32_t* out;              // i32 [B]
  int B, V;
};
cudaError_t LaunchSample(const SampleArgs& a, cudaStream_t stream);

}  // namespace q
