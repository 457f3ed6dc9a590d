// Launchers of the paged-KV attention kernels (prefill.cu, decode.cu). Pointers are device pointers; every
// launch is asynchronous on `stream`, allocates nothing and reads nothing back, so both are CUDA-graph
// capturable. The glue (glue.cc) checks what would corrupt memory; shapes are validated in TypeScript.
#pragma once
#include <cuda_runtime.h>
#include <cstdint>

namespace q {

// The cache of one layer: k, v bf16 [pages, pageSize, kvHeads, headDim]; pageTable i32 [S, maxPagesPerSeq].
struct PagedKv {
  const void* k;
  const void* v;
  const int32_t* pageTable;
  int maxPagesPerSeq;
  int pageSize;
};

struct AttentionPrefillArgs {
  const void* q;   // bf16 [T, qStride], head h of token t at q + t*qStride + h*headDim
  int qStride;     // elements, a multiple of 8
  PagedKv kv;
  const int32_t* qStart;       // [S+1]
  const int32_t* contextLens;  // [S]
  const int32_t* positions;    // [T]
  int S;
  int numHeads;
  int numKvHeads;
  int headDim;  // 64 or 128
  float scale;
  void* out;  // bf16 [T, numHeads*headDim]
  int maxQLen;  // ≥ every qStart[s+1]-qStart[s]; sizes the grid
  cudaStream_t stream;
};

struct AttentionDecodeArgs {
  const void* q;  // bf16 [S, qStride]
  int qStride;
  PagedKv kv;
  const int32_t* contextLens;  // [S]
  int S;
  int numHeads;
  int numKvHeads;
  int headDim;
  float scale;
  void* out;          // bf16 [S, numHeads*headDim]
  float* workspace;   // f32, q_attention_decode_workspace_floats(...) of them
  int maxContext;     // sizes the grid: ceil(maxContext / chunkSize) chunks per sequence
  int chunkSize;      // positions per split block, a multiple of 64 (chosen in TypeScript, see attention.ts)
  cudaStream_t stream;
};

cudaError_t q_attention_prefill(const AttentionPrefillArgs* a);
cudaError_t q_attention_decode(const AttentionDecodeArgs* a);
// f32 elements of the decode workspace: per (sequence, head, chunk) a max, a sum and headDim outputs.
inline int64_t q_attention_decode_workspace_floats(int S, int numHeads, int headDim, int chunks) {
  return static_cast<int64_t>(S) * numHeads * chunks * (headDim + 2);
}

}  // namespace q
