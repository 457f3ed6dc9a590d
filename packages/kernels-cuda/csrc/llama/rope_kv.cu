// Rotary position embedding on q and k, fused with writing k and v into the paged KV cache.
//   For token t at position p = positions[t] and frequency i < hd/2: angle = p · invFreq[i] (in double, then
//   cos/sin rounded to f32: at positions of 10^5 an f32 product would already be off by ~0.01 rad), and each
//   pair (a, b) of every q and k head becomes (a·cos − b·sin, a·sin + b·cos) in f32, rounded to bf16 in place.
//   Pairs are (2i, 2i+1) in the interleaved style (Meta's checkpoints) and (i, i + hd/2) in the half style
//   (Hugging Face's rotate_half).
//   Then the rotated k heads and the v heads of the token are copied to the cache page
//   pageTable[seqOfToken[t], p / pageSize], slot p % pageSize.
//
// Layout: qkv bf16 [T, (nh + 2·nkv)·hd] (q heads, then k heads, then v heads: one fused GEMM's output); caches
// k, v bf16 [pages, pageSize, nkv, hd] (one slot holds a token's nkv heads contiguously, so a token's k and v are
// each one contiguous run of nkv·hd elements); pageTable i32 [S, maxPages]; positions, seqOfToken i32 [T];
// invFreq f32 [hd/2] (theta, linear and llama3 scaling folded in on the host).
// Constraints: hd % 16 == 0 and hd ≤ 256 (checked by the caller): every thread moves 16-byte chunks (4 pairs
// interleaved, 8 + 8 elements in the half style). One block per token; cos/sin are computed once per token
// into shared memory and reused by its nh + nkv heads. A token whose sequence, position or page lies outside
// the page table or the cache is rotated but not written to the cache (no out-of-bounds write; the runtime
// checks capacity on the host before it schedules a step).
#include <cuda_bf16.h>

#include "llama.h"
#include "vec.cuh"

namespace q {
namespace {

constexpr int kThreads = 128;
constexpr int kMaxHalf = 128;

template <bool kHalf>
__global__ void __launch_bounds__(kThreads) ropeKvKernel(RopeKvArgs a) {
  __shared__ float cs[kMaxHalf], sn[kMaxHalf];
  const int64_t t = blockIdx.x;
  const int hd = a.headDim, half = hd / 2;
  const int pos = a.positions[t];
  for (int i = threadIdx.x; i < half; i += kThreads) {
    double s, c;
    // sincospi needs no Payne-Hanek reduction (exact in units of pi), so it takes no local memory.
    sincospi(static_cast<double>(pos) * (static_cast<double>(a.invFreq[i]) * M_1_PI), &s, &c);
    cs[i] = static_cast<float>(c);
    sn[i] = static_cast<float>(s);
  }
  // Where the token's k and v go, or null when its page lies outside the table or the pool.
  __nv_bfloat16 *kDst = nullptr, *vDst = nullptr;
  {
    const int seq = a.seqOfToken[t];
    const int pi = pos >= 0 ? pos / a.pageSize : -1;
    if (seq >= 0 && seq < a.S && pi >= 0 && pi < a.maxPages) {
      const int page = a.pageTable[static_cast<int64_t>(seq) * a.maxPages + pi];
      if (page >= 0 && page < a.pages) {
        const int64_t off = (static_cast<int64_t>(page) * a.pageSize + pos % a.pageSize) * a.numKvHeads * hd;
        kDst = static_cast<__nv_bfloat16*>(a.k) + off;
        vDst = static_cast<__nv_bfloat16*>(a.v) + off;
      }
    }
  }
  __syncthreads();
  const int nh = a.numHeads, nkv = a.numKvHeads;
  __nv_bfloat16* row = static_cast<__nv_bfloat16*>(a.qkv) + t * static_cast<int64_t>(nh + 2 * nkv) * hd;
  // A chunk: 8 consecutive elements (4 pairs) interleaved; 8 elements of each half (8 pairs) in the half style.
  const int perHead = kHalf ? half / 8 : hd / 8;
  for (int w = threadIdx.x; w < (nh + nkv) * perHead; w += kThreads) {
    const int h = w / perHead, c = w - h * perHead;
    __nv_bfloat16* p = row + h * hd + c * 8;
    float x[8];
    loadBf16x8(p, x);
    if constexpr (kHalf) {
      float y[8];
      loadBf16x8(p + half, y);
#pragma unroll
      for (int j = 0; j < 8; j++) {
        const float co = cs[c * 8 + j], si = sn[c * 8 + j];
        const float a0 = x[j], b0 = y[j];
        x[j] = a0 * co - b0 * si;
        y[j] = a0 * si + b0 * co;
      }
      storeBf16x8(p, x);
      storeBf16x8(p + half, y);
      if (h >= nh && kDst != nullptr) {
        __nv_bfloat16* k = kDst + (h - nh) * hd + c * 8;
        storeBf16x8(k, x);
        storeBf16x8(k + half, y);
      }
    } else {
#pragma unroll
      for (int j = 0; j < 4; j++) {
        const float co = cs[c * 4 + j], si = sn[c * 4 + j];
        const float a0 = x[2 * j], b0 = x[2 * j + 1];
        x[2 * j] = a0 * co - b0 * si;
        x[2 * j + 1] = a0 * si + b0 * co;
      }
      storeBf16x8(p, x);
      if (h >= nh && kDst != nullptr) storeBf16x8(kDst + (h - nh) * hd + c * 8, x);
    }
  }
  if (vDst != nullptr) {
    const uint4* src = reinterpret_cast<const uint4*>(row + (nh + nkv) * hd);
    uint4* dst = reinterpret_cast<uint4*>(vDst);
    for (int w = threadIdx.x; w < nkv * hd / 8; w += kThreads) dst[w] = src[w];
  }
}

}  // namespace

cudaError_t LaunchRopeKvWrite(const RopeKvArgs& a, cudaStream_t stream) {
  if (a.T == 0) return cudaSuccess;
  if (a.headDim % 16 != 0 || a.headDim / 2 > kMaxHalf || a.pageSize <= 0) return cudaErrorInvalidValue;
  if (!Aligned(a.qkv, 16) || !Aligned(a.k, 16) || !Aligned(a.v, 16)) return cudaErrorMisalignedAddress;
  if (a.half)
    ropeKvKernel<true><<<a.T, kThreads, 0, stream>>>(a);
  else
    ropeKvKernel<false><<<a.T, kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace q
