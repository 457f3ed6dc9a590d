#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

enum { Q_MODE_PER_CHANNEL = 0, Q_MODE_GROUP_FLOAT = 1, Q_MODE_GROUP_INT = 2 };
enum { Q_OUT_F16 = 0, Q_OUT_BF16 = 1, Q_OUT_I32 = 2 };

struct W4A8Args {
  const int8_t* a;        // int8 [M, lda] activations, K-contiguous
  int lda;                // ≥ K, multiple of 16
  const float* aScale;    // f32 [M] (aScaleStride 1) or [1] (aScaleStride 0)
  int aScaleStride;
  const void* w;          // packed weights, see w4a8_mma.cu (16-byte aligned)
  const float* wScale;    // f32 per-channel scales [N] (G = 1) or group scales tiled [N/16][G][16]
  const int32_t* qScale;  // i32 Integer Scale factors tiled [N/16][G][16] (group-int only)
  const float* unit;      // f32 [N] Integer Scale unit (group-int only)
  const float* bias;      // f32 [N] or null
  const void* residual;   // [M, N] in the output dtype, or null
  void* out;              // fp16/bf16/int32 [M, N]
  int M, N, K;            // K = kPadded, multiple of 16
  int groupSize, G;       // G = K / groupSize (1 for per-channel)
  int kTiles;             // ceil(K / 64)
  int mode, outType;
  int variant;            // 0 auto; > 0 a forced kernel variant; < 0 a preferred one (see w4a8_mma.cu)
  void* stream;
  void* work;             // split-K partials [splits][M][N] (4 bytes each); set by the launcher, not the caller
};

extern "C" cudaError_t q_w4a8_gemm(const W4A8Args* a);

// The sm_90a wgmma path (w4a8_wgmma.cu): N % 128 == 0; wide: 256 tokens per block (per-channel).
extern "C" bool q_wgmma_supported();
extern "C" cudaError_t q_w4a8_gemm_wgmma(const W4A8Args* a, int mode, bool wide);

// The warp-specialized sm_90a prefill path (w4a8_ws.cu): TMA producer warpgroup, two wgmma consumer warpgroups.
// forced: ignore the Q_W4A8_WS=0 switch (benchmark variant 20).
extern "C" bool q_ws_applicable(const W4A8Args* a, bool forced);
// tokens: tokens per tile; 0 picks the default (256 per-channel, 192 group modes), 128 or 192 for benchmarks,
// -160 / -128 the group modes with split accumulators at 160 / 128 tokens.
// cluster: 2 for two-CTA clusters sharing the activation tile (default widths), otherwise 1.
extern "C" cudaError_t q_w4a8_gemm_ws(const W4A8Args* a, int mode, int tokens, int cluster);
