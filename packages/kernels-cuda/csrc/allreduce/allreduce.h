// Launchers of the quantized all-reduce kernels (allreduce.cu). Each returns a CUDA status; the glue throws.
#pragma once
#include <cuda_runtime.h>
#include <cstdint>

namespace q {

constexpr int kMaxRanks = 8;
constexpr int kMaxBlocks = 512;
// Flag barriers: [slot 0..2][block][source rank] u32 (slots 0 and 1 in use), at the start of each rank's registered allocation.
constexpr int kSignalBytes = 3 * kMaxBlocks * kMaxRanks * 4;
constexpr int64_t kSignalRegion = 64 * 1024;  // data starts here, 64 KiB aligned

struct ArLayout {
  int64_t n;          // elements of the message (n % 8 == 0)
  int world;          // ranks, 1..8
  int rank;           // this rank
  int64_t chunk;      // C: elements per chunk, a multiple of groupSize
  int64_t rb;         // bytes of one chunk record (16-aligned)
  int64_t scalesOff;  // record offset of the f32 scales
  int64_t zerosOff;   // record offset of the u8 zero points
  int groupSize;      // 128 on the GPU
  int bits;           // 8, 4, or 0 (unquantized: the record is the chunk in the payload dtype)
  bool sym;           // symmetric codes
  int dtype;          // 0 f16, 1 bf16
};

struct ArPtrs {
  char* p[kMaxRanks];
};

// NCCL path, local buffers: quantize the W chunks of `in` into `send` (W records back to back).
cudaError_t LaunchQuantize(const ArLayout& L, const void* in, char* send, int sms, cudaStream_t s);
// Dequantize-sum the W records in `recv` (record r from rank r, all of chunk L.rank), requantize into `reduced`.
cudaError_t LaunchReduce(const ArLayout& L, const char* recv, char* reduced, int sms, cudaStream_t s);
// Dequantize the W gathered records (record j = chunk j) into `out`.
cudaError_t LaunchDequant(const ArLayout& L, const char* gathered, void* out, int sms, cudaStream_t s);
// Fused intra-node kernel over peer memory. `data.p[r]` is rank r's registered data region (own included, as
// mapped here) for this call's half, `sig.p[r]` its signal region. `epoch` grows by one per call on every rank;
// the host alternates halves by epoch parity.
cudaError_t LaunchFused(const ArLayout& L, const void* in, void* out, const ArPtrs& data, const ArPtrs& sig,
                        uint32_t epoch, bool oneShot, int sms, uint64_t timeoutNs, cudaStream_t s);

}  // namespace q
