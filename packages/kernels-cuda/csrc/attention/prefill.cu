// Prefill attention over a paged KV cache, in the FlashAttention-2 manner.
//
// Cache layout (one layer): k and v are bf16 [pages, pageSize, kvHeads, headDim]; pageTable i32
// [S, maxPagesPerSeq] maps position p of sequence s to page pageTable[s][p / pageSize], row p % pageSize
// (vLLM's PagedAttention layout: a head's row is headDim contiguous values, 128 or 256 bytes). The new tokens'
// K/V are already in the cache (ropeKvWrite runs first), so the kernel reads every key from pages.
//
// Batch: a ragged set of sequences; sequence s owns query rows qStart[s] .. qStart[s+1]-1 (any count, including
// 0) and reads cache positions [0, contextLens[s]). Token t attends to positions <= positions[t] (causal by
// absolute position), so a chunk of new tokens continues a sequence whose earlier positions are cached
// (chunked prefill) without any special case.
//
// Math: one block = 64 query rows of one sequence × one query head (4 warps × 16 rows). K/V tiles of 64
// positions stream through shared memory with cp.async double buffering (tile j+1 loads while tile j is
// used). S = Q·Kᵀ and O += P·V run on bf16 tensor cores (mma.sync m16n8k16, f32 accumulate); P is rounded to
// bf16 for the second product, as FlashAttention does. The softmax is online in f32 in the log2 domain:
// per row m = running max of s·scale·log2(e), l = running Σ 2^(s' - m), and O, l are rescaled by 2^(m_old -
// m_new) when the max grows; O / l is written once at the end. No [S, S] matrix exists anywhere: a block holds
// one 64×64 score tile in registers. Fully masked rows (past the sequence's rows) keep m = -inf and use 0 as
// their exponent base, so they never produce NaN; the zero-filled K/V rows past the context keep stale cache
// contents (even NaN) out of P·V.
//
// Constraints and why: headDim 64 or 128 (Q fragments and the O accumulator live in registers: 128 needs
// 32 + 64 of them per thread); any GQA ratio (a block reads the K/V head h / (numHeads / numKvHeads); the
// other heads of the group read the same tiles from L2); any pageSize >= 1 (every tile row looks its page up,
// so tiles may cross page boundaries and pages may be anywhere; 16 and 64 are tested, 64 is the default:
// one page per K/V tile). qStride, a multiple of 8, lets q be the q part of a fused qkv tensor. Blocks loop
// over query tiles with the grid's stride, so a maxQLen below the longest sequence only costs time.
// Shared memory: (64 + 4·64)·headDim bf16 with an XOR swizzle of 16-byte chunks (row r's chunk c is stored
// at c ^ (r & 7)), so ldmatrix reads of 8 rows hit 8 different bank groups.
#include <cuda_bf16.h>

#include <atomic>

#include "attention/attention.h"
#include "attention/common.cuh"

namespace q {
namespace {

using namespace attn;

constexpr int kBM = 64;  // query rows per block
constexpr int kBN = 64;  // keys per tile
constexpr int kThreads = 128;

template <int HD>
constexpr int PrefillSmemBytes() {
  return (kBM + 4 * kBN) * HD * 2;
}

// Byte offset of (row, 16-byte chunk) in a [rows][HD] bf16 tile with the XOR swizzle.
template <int HD>
__device__ __forceinline__ uint32_t Swz(int row, int chunk) {
  return static_cast<uint32_t>((row * (HD / 8) + (chunk ^ (row & 7))) * 16);
}

template <int HD>
__global__ void __launch_bounds__(kThreads, 2) PrefillKernel(AttentionPrefillArgs a) {
  constexpr int kChunks = HD / 8;   // 16-byte chunks per row
  constexpr int kKSteps = HD / 16;  // k16 steps of Q·Kᵀ
  constexpr int kOTiles = HD / 8;   // n8 tiles of O
  constexpr uint32_t kRowBytes = HD * 2;
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ int sPosMin, sPosMax;
  const uint32_t sQ = SmemAddr(smem);
  const uint32_t sK0 = sQ + kBM * HD * 2;
  const uint32_t sV0 = sK0 + 2 * kBN * HD * 2;

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int head = blockIdx.y, s = blockIdx.z;
  const int group = a.numHeads / a.numKvHeads;
  const int kvHead = head / group;
  const int qBeg = __ldg(a.qStart + s);
  const int qLen = __ldg(a.qStart + s + 1) - qBeg;
  int ctx = __ldg(a.contextLens + s);
  ctx = min(ctx, a.kv.maxPagesPerSeq * a.kv.pageSize);  // never follow the table past its row
  const int32_t* table = a.kv.pageTable + static_cast<int64_t>(s) * a.kv.maxPagesPerSeq;
  const __nv_bfloat16* kBase = static_cast<const __nv_bfloat16*>(a.kv.k);
  const __nv_bfloat16* vBase = static_cast<const __nv_bfloat16*>(a.kv.v);
  const __nv_bfloat16* qBase = static_cast<const __nv_bfloat16*>(a.q);
  __nv_bfloat16* outBase = static_cast<__nv_bfloat16*>(a.out);
  const int outStride = a.numHeads * HD;
  const float scaleLog2 = a.scale * 1.4426950408889634f;

  for (int tile = blockIdx.x; tile * kBM < qLen; tile += gridDim.x) {
    const int row0 = tile * kBM;  // first row of this tile within the sequence
    // Positions of the tile's rows: the causal limit of each row and the key range of the whole tile.
    if (tid == 0) {
      sPosMin = 0x7fffffff;
      sPosMax = -1;
    }
    __syncthreads();
    if (tid < kBM && row0 + tid < qLen) {
      const int p = __ldg(a.positions + qBeg + row0 + tid);
      atomicMin(&sPosMin, p);
      atomicMax(&sPosMax, p);
    }
    // Q tile: rows past the sequence are zero-filled (their outputs are not written).
    for (int i = tid; i < kBM * kChunks; i += kThreads) {
      const int r = i / kChunks, c = i % kChunks;
      const bool ok = row0 + r < qLen;
      const __nv_bfloat16* src =
          ok ? qBase + static_cast<int64_t>(qBeg + row0 + r) * a.qStride + head * HD + c * 8 : qBase;
      CpAsync16(sQ + Swz<HD>(r, c), src, ok);
    }
    CpAsyncCommit();
    __syncthreads();
    const int posMin = sPosMin;
    const int kEnd = min(ctx, sPosMax + 1);  // keys this tile reads: [0, kEnd)
    const int nTiles = kEnd > 0 ? (kEnd + kBN - 1) / kBN : 0;

    // The two rows of each thread in the mma fragments: g and g + 8 of the warp's 16.
    const int g = lane >> 2, q4 = lane & 3;
    // ldmatrix addresses: lane l points at row lr, chunk lc of the first 16×16 block (Swz<HD>(lr, lc)); the
    // block at chunk + 2i is that offset XOR 32i, because rows are 128 or 256 bytes and every row of a block
    // has the same (row & 7) as lr. So one offset per operand serves every k step.
    const uint32_t qOff = Swz<HD>(warp * 16 + (lane & 15), lane >> 4);
    const uint32_t kOff = Swz<HD>((lane & 7) + ((lane >> 4) << 3), (lane >> 3) & 1);
    const uint32_t vOff = Swz<HD>((lane & 7) + (((lane >> 3) & 1) << 3), lane >> 4);
    int rowPos[2];
#pragma unroll
    for (int h = 0; h < 2; h++) {
      const int r = row0 + warp * 16 + g + 8 * h;
      rowPos[h] = r < qLen ? __ldg(a.positions + qBeg + r) : -1;
    }

    auto loadKv = [&](int j, int stage) {
      const uint32_t sK = sK0 + stage * kBN * HD * 2, sV = sV0 + stage * kBN * HD * 2;
      for (int i = tid; i < kBN * kChunks; i += kThreads) {
        const int r = i / kChunks, c = i % kChunks;
        const int p = j * kBN + r;
        const bool ok = p < kEnd;
        const int64_t off = ok ? CacheOffset(table, a.kv.pageSize, a.numKvHeads, HD, p, kvHead) + c * 8 : 0;
        CpAsync16(sK + Swz<HD>(r, c), kBase + off, ok);
        CpAsync16(sV + Swz<HD>(r, c), vBase + off, ok);
      }
      CpAsyncCommit();
    };

    float o[kOTiles][4];
#pragma unroll
    for (int n = 0; n < kOTiles; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
    uint32_t qa[kKSteps][4];

    if (nTiles > 0) loadKv(0, 0);
    CpAsyncWait<0>();  // Q (and tile 0 when there is one; that wait is needed next anyway)
    __syncthreads();
#pragma unroll
    for (int ks = 0; ks < kKSteps; ks++) {
      Ldmatrix4(qa[ks][0], qa[ks][1], qa[ks][2], qa[ks][3], sQ + (qOff ^ (ks * 32)));
    }

    for (int j = 0; j < nTiles; j++) {
      if (j + 1 < nTiles) {
        loadKv(j + 1, (j + 1) & 1);
        CpAsyncWait<1>();
      } else {
        CpAsyncWait<0>();
      }
      __syncthreads();
      const uint32_t sK = sK0 + (j & 1) * kBN * HD * 2, sV = sV0 + (j & 1) * kBN * HD * 2;

      // S = Q · Kᵀ for the warp's 16 rows × 64 keys: 8 n-tiles of 8 keys.
      float sc[8][4];
#pragma unroll
      for (int n = 0; n < 8; n++) sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.f;
#pragma unroll
      for (int ks = 0; ks < kKSteps; ks++) {
#pragma unroll
        for (int np = 0; np < 4; np++) {
          uint32_t b0, b1, b2, b3;
          Ldmatrix4(b0, b1, b2, b3, sK + np * 16 * kRowBytes + (kOff ^ (ks * 32)));
          MmaBf16(sc[2 * np], qa[ks], b0, b1);
          MmaBf16(sc[2 * np + 1], qa[ks], b2, b3);
        }
      }

      // Causal and context mask, only on tiles that reach past the smallest row position or the context.
      const int key0 = j * kBN;
      const bool needMask = key0 + kBN - 1 > posMin || key0 + kBN > ctx;
#pragma unroll
      for (int n = 0; n < 8; n++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
          float x = sc[n][e] * scaleLog2;
          if (needMask) {
            const int key = key0 + n * 8 + 2 * q4 + (e & 1);
            if (key > rowPos[e >> 1] || key >= ctx) x = -INFINITY;
          }
          sc[n][e] = x;
        }
      }

      // Online softmax: new row max over the 4 lanes that share a row, rescale O and l, exponentiate.
#pragma unroll
      for (int h = 0; h < 2; h++) {
        float mx = m[h];
#pragma unroll
        for (int n = 0; n < 8; n++) mx = fmaxf(mx, fmaxf(sc[n][2 * h], sc[n][2 * h + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float base = mx == -INFINITY ? 0.f : mx;
        const float alpha = exp2f(m[h] - base);  // 0 when m was -inf
        m[h] = mx;
        float sum = 0.f;
#pragma unroll
        for (int n = 0; n < 8; n++) {
          sc[n][2 * h] = exp2f(sc[n][2 * h] - base);
          sc[n][2 * h + 1] = exp2f(sc[n][2 * h + 1] - base);
          sum += sc[n][2 * h] + sc[n][2 * h + 1];
        }
        l[h] = l[h] * alpha + sum;
#pragma unroll
        for (int n = 0; n < kOTiles; n++) {
          o[n][2 * h] *= alpha;
          o[n][2 * h + 1] *= alpha;
        }
      }

      // O += P · V: P's accumulator fragments are the A fragments of the next mma (k = keys).
#pragma unroll
      for (int kk = 0; kk < 4; kk++) {
        uint32_t pa[4];
        pa[0] = PackBf16(sc[2 * kk][0], sc[2 * kk][1]);
        pa[1] = PackBf16(sc[2 * kk][2], sc[2 * kk][3]);
        pa[2] = PackBf16(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
        pa[3] = PackBf16(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
#pragma unroll
        for (int dp = 0; dp < kOTiles / 2; dp++) {
          uint32_t b0, b1, b2, b3;
          Ldmatrix4T(b0, b1, b2, b3, sV + kk * 16 * kRowBytes + (vOff ^ (dp * 32)));
          MmaBf16(o[2 * dp], pa, b0, b1);
          MmaBf16(o[2 * dp + 1], pa, b2, b3);
        }
      }
      __syncthreads();  // every warp is done with this stage before it is refilled
    }

    // O / l, each row's l summed over the 4 lanes that hold it; rows past the sequence are not written.
#pragma unroll
    for (int h = 0; h < 2; h++) {
      float sum = l[h];
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      const float inv = sum > 0.f ? 1.f / sum : 0.f;
      const int r = row0 + warp * 16 + g + 8 * h;
      if (r < qLen) {
        __nv_bfloat16* dst = outBase + static_cast<int64_t>(qBeg + r) * outStride + head * HD + 2 * q4;
#pragma unroll
        for (int n = 0; n < kOTiles; n++) {
          *reinterpret_cast<__nv_bfloat162*>(dst + n * 8) =
              __floats2bfloat162_rn(o[n][2 * h] * inv, o[n][2 * h + 1] * inv);
        }
      }
    }
    __syncthreads();  // the next tile's Q and positions may be written only after every warp read these
  }
}

template <int HD>
cudaError_t LaunchPrefill(const AttentionPrefillArgs* a) {
  constexpr int smem = PrefillSmemBytes<HD>();
  // Once per device (not per launch): the attribute call then never lands inside a CUDA-graph capture.
  static std::atomic<uint64_t> ready{0};
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  const uint64_t bit = uint64_t{1} << (dev & 63);
  if (!(ready.load(std::memory_order_acquire) & bit)) {
    err = cudaFuncSetAttribute(PrefillKernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
    ready.fetch_or(bit, std::memory_order_release);
  }
  const dim3 grid((a->maxQLen + kBM - 1) / kBM, a->numHeads, a->S);
  PrefillKernel<HD><<<grid, kThreads, smem, a->stream>>>(*a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t q_attention_prefill(const AttentionPrefillArgs* a) {
  if (a->S <= 0 || a->maxQLen <= 0) return cudaSuccess;
  switch (a->headDim) {
    case 64:
      return LaunchPrefill<64>(a);
    case 128:
      return LaunchPrefill<128>(a);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace q
