// Decode attention over a paged KV cache: one query token per sequence, flash-decoding.
//
// Cache layout (one layer): k and v are bf16 [pages, pageSize, kvHeads, headDim]; pageTable i32
// [S, maxPagesPerSeq]; position p of sequence s lives at page pageTable[s][p / pageSize], row p % pageSize.
// Sequence s reads positions [0, contextLens[s]) (its new token's K/V already written there).
//
// Math (split-K softmax): the context is cut into chunks of chunkSize positions, one block per (chunk, group of
// query heads sharing a KV head, sequence). A block computes, in the log2 domain (s' = q·k · scale · log2 e),
// the chunk's max m_c, sum l_c = Σ 2^(s' - m_c) and unnormalized output o_c = Σ 2^(s' - m_c) v, online over its
// keys, and writes (m_c, l_c, o_c) to the workspace. The combine kernel then forms M = max_c m_c and
// out = Σ_c 2^(m_c - M) o_c / Σ_c 2^(m_c - M) l_c, reading only the chunks that hold positions of the
// sequence. Inside a block the same merge joins the partial states of lane groups and warps.
//
// Work split: a key row of headDim bf16 is read by headDim/8 lanes (16 bytes each, one coalesced row), so a
// warp takes 2 (headDim 128) or 4 (headDim 64) keys at a time; each lane keeps the 8 query values of its slice
// for every head of the group, and its group of lanes runs its own online softmax (no cross-lane sync per key
// beyond the dot product's shuffle reduction). Every K/V row is read once for all GB query heads of the block.
//
// Constraints and why: headDim 64 or 128 (one 16-byte slice per lane); any GQA ratio g = numHeads/numKvHeads:
// a block takes GB = the largest divisor of g that is at most 8 heads (the q slices and accumulators of GB
// heads live in registers), so for g ∈ {1..8} one block reads each K/V row once and for g > 8 the g/GB blocks
// of a KV head read it from L2; any pageSize >= 1 (each key looks its page up). CUDA graphs: the grid is fixed
// by maxContext (ceil(maxContext / chunkSize) chunks per sequence, chunkSize chosen in TypeScript from the batch
// and maxContext so that batch 1 with a long context fills the GPU's SMs); blocks whose chunk starts at or past
// the sequence's context exit at once, and the combine reads only the valid chunks. Context lengths are
// clamped to maxContext and to the page table's row (positions past them are never read).
#include <cuda_bf16.h>

#include "attention/attention.h"
#include "attention/common.cuh"

namespace q {
namespace {

using namespace attn;

constexpr int kWarps = 4;

__device__ __forceinline__ void Bf16x8(const uint4& r, float* f) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&r);
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const float2 x = __bfloat1622float2(h[i]);
    f[2 * i] = x.x;
    f[2 * i + 1] = x.y;
  }
}

__device__ __forceinline__ int DecodeContext(const AttentionDecodeArgs& a, int s) {
  return min(min(__ldg(a.contextLens + s), a.maxContext), a.kv.maxPagesPerSeq * a.kv.pageSize);
}

template <int HD, int GB>
__global__ void __launch_bounds__(kWarps * 32, GB <= 4 ? 4 : 2) DecodeSplitKernel(AttentionDecodeArgs a) {
  constexpr int kLanes = HD / 8;       // lanes per key row
  constexpr int kKpw = 32 / kLanes;    // keys per warp step
  constexpr int kU = GB >= 4 ? 2 : 4;  // steps whose loads are in flight together
  constexpr int kStride = kWarps * kKpw;
  __shared__ float sM[kWarps][GB], sL[kWarps][GB];
  __shared__ float sO[kWarps][GB][HD];

  const int chunk = blockIdx.x, s = blockIdx.z;
  const int ctx = DecodeContext(a, s);
  const int beg = chunk * a.chunkSize;
  if (beg >= ctx) return;  // past this sequence's context: the combine never reads this chunk
  const int end = min(ctx, beg + a.chunkSize);
  const int head0 = blockIdx.y * GB;
  const int kvHead = head0 / (a.numHeads / a.numKvHeads);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int grp = lane / kLanes, sub = lane % kLanes;
  const int32_t* table = a.kv.pageTable + static_cast<int64_t>(s) * a.kv.maxPagesPerSeq;
  const __nv_bfloat16* kBase = static_cast<const __nv_bfloat16*>(a.kv.k);
  const __nv_bfloat16* vBase = static_cast<const __nv_bfloat16*>(a.kv.v);
  const float scaleLog2 = a.scale * 1.4426950408889634f;

  float qv[GB][8];
#pragma unroll
  for (int h = 0; h < GB; h++) {
    const __nv_bfloat16* src = static_cast<const __nv_bfloat16*>(a.q) + static_cast<int64_t>(s) * a.qStride +
                               (head0 + h) * HD + sub * 8;
    Bf16x8(__ldg(reinterpret_cast<const uint4*>(src)), qv[h]);
#pragma unroll
    for (int e = 0; e < 8; e++) qv[h][e] *= scaleLog2;
  }
  float m[GB], l[GB], acc[GB][8];
#pragma unroll
  for (int h = 0; h < GB; h++) {
    m[h] = -INFINITY;
    l[h] = 0.f;
#pragma unroll
    for (int e = 0; e < 8; e++) acc[h][e] = 0.f;
  }

  // Warp w, step u of an iteration takes keys base + u·kStride + grp: the 4 warps and kU steps tile
  // kStride·kU consecutive positions, each read once.
  for (int base = beg + warp * kKpw; base < end; base += kStride * kU) {
    uint4 kr[kU], vr[kU];
    bool ok[kU];
#pragma unroll
    for (int u = 0; u < kU; u++) {
      const int key = base + u * kStride + grp;
      ok[u] = key < end;
      if (ok[u]) {
        const int64_t off = CacheOffset(table, a.kv.pageSize, a.numKvHeads, HD, key, kvHead) + sub * 8;
        kr[u] = __ldg(reinterpret_cast<const uint4*>(kBase + off));
        vr[u] = __ldg(reinterpret_cast<const uint4*>(vBase + off));
      } else {
        kr[u] = vr[u] = make_uint4(0, 0, 0, 0);
      }
    }
    float sc[kU][GB];
#pragma unroll
    for (int u = 0; u < kU; u++) {
      float kf[8];
      Bf16x8(kr[u], kf);
#pragma unroll
      for (int h = 0; h < GB; h++) {
        float d = 0.f;
#pragma unroll
        for (int e = 0; e < 8; e++) d = fmaf(qv[h][e], kf[e], d);
#pragma unroll
        for (int off = kLanes / 2; off > 0; off >>= 1) d += __shfl_xor_sync(0xffffffffu, d, off);
        sc[u][h] = ok[u] ? d : -INFINITY;
      }
    }
#pragma unroll
    for (int h = 0; h < GB; h++) {
      float mx = m[h];
#pragma unroll
      for (int u = 0; u < kU; u++) mx = fmaxf(mx, sc[u][h]);
      const float b = mx == -INFINITY ? 0.f : mx;
      const float alpha = exp2f(m[h] - b);
      m[h] = mx;
      l[h] *= alpha;
#pragma unroll
      for (int e = 0; e < 8; e++) acc[h][e] *= alpha;
#pragma unroll
      for (int u = 0; u < kU; u++) {
        const float p = exp2f(sc[u][h] - b);
        l[h] += p;
        float vf[8];
        Bf16x8(vr[u], vf);
#pragma unroll
        for (int e = 0; e < 8; e++) acc[h][e] = fmaf(p, vf[e], acc[h][e]);
      }
    }
  }

  // Merge the lane groups of the warp (they hold the same dims of different keys).
#pragma unroll
  for (int off = kLanes; off < 32; off <<= 1) {
#pragma unroll
    for (int h = 0; h < GB; h++) {
      const float mo = __shfl_xor_sync(0xffffffffu, m[h], off);
      const float lo = __shfl_xor_sync(0xffffffffu, l[h], off);
      const float mx = fmaxf(m[h], mo);
      const float b = mx == -INFINITY ? 0.f : mx;
      const float wa = exp2f(m[h] - b), wb = exp2f(mo - b);
      m[h] = mx;
      l[h] = l[h] * wa + lo * wb;
#pragma unroll
      for (int e = 0; e < 8; e++) {
        const float ao = __shfl_xor_sync(0xffffffffu, acc[h][e], off);
        acc[h][e] = acc[h][e] * wa + ao * wb;
      }
    }
  }
  if (grp == 0) {
#pragma unroll
    for (int h = 0; h < GB; h++) {
#pragma unroll
      for (int e = 0; e < 8; e++) sO[warp][h][sub * 8 + e] = acc[h][e];
      if (sub == 0) {
        sM[warp][h] = m[h];
        sL[warp][h] = l[h];
      }
    }
  }
  __syncthreads();

  // Merge the warps and write the chunk's (m, l, o). Warps that saw no key have m = -inf and weigh 0; at least
  // one warp saw the chunk's first key, so M is finite.
  const int nc = gridDim.x;
  const int64_t rows = static_cast<int64_t>(a.S) * a.numHeads * nc;
  for (int i = threadIdx.x; i < GB * HD; i += kWarps * 32) {
    const int h = i / HD, d = i % HD;
    float mx = sM[0][h];
#pragma unroll
    for (int w = 1; w < kWarps; w++) mx = fmaxf(mx, sM[w][h]);
    float o = 0.f, sum = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; w++) {
      const float wt = exp2f(sM[w][h] - mx);
      o += sO[w][h][d] * wt;
      sum += sL[w][h] * wt;
    }
    const int64_t row = (static_cast<int64_t>(s) * a.numHeads + head0 + h) * nc + chunk;
    a.workspace[2 * rows + row * HD + d] = o;
    if (d == 0) {
      a.workspace[row] = mx;
      a.workspace[rows + row] = sum;
    }
  }
}

// One block per (head, sequence), one thread per output dim.
template <int HD>
__global__ void __launch_bounds__(HD) DecodeCombineKernel(AttentionDecodeArgs a, int nc) {
  const int head = blockIdx.x, s = blockIdx.y, d = threadIdx.x;
  const int ctx = DecodeContext(a, s);
  const int valid = ctx > 0 ? (ctx + a.chunkSize - 1) / a.chunkSize : 0;
  const int64_t rows = static_cast<int64_t>(a.S) * a.numHeads * nc;
  const int64_t row0 = (static_cast<int64_t>(s) * a.numHeads + head) * nc;
  const float* wm = a.workspace + row0;
  const float* wl = a.workspace + rows + row0;
  const float* wo = a.workspace + 2 * rows + row0 * HD + d;
  float mx = -INFINITY;
  for (int c = 0; c < valid; c++) mx = fmaxf(mx, wm[c]);
  float o = 0.f, sum = 0.f;
  for (int c = 0; c < valid; c++) {
    const float wt = exp2f(wm[c] - mx);
    o += wo[static_cast<int64_t>(c) * HD] * wt;
    sum += wl[c] * wt;
  }
  __nv_bfloat16* out = static_cast<__nv_bfloat16*>(a.out) + (static_cast<int64_t>(s) * a.numHeads + head) * HD + d;
  *out = __float2bfloat16_rn(sum > 0.f ? o / sum : 0.f);
}

template <int HD, int GB>
cudaError_t LaunchSplit(const AttentionDecodeArgs* a, int nc) {
  const dim3 grid(nc, a->numHeads / GB, a->S);
  DecodeSplitKernel<HD, GB><<<grid, kWarps * 32, 0, a->stream>>>(*a);
  return cudaGetLastError();
}

template <int HD>
cudaError_t LaunchDecode(const AttentionDecodeArgs* a) {
  const int nc = (a->maxContext + a->chunkSize - 1) / a->chunkSize;
  const int g = a->numHeads / a->numKvHeads;
  int gb = 8;
  while (g % gb != 0) gb--;
  cudaError_t err;
  switch (gb) {
    case 1: err = LaunchSplit<HD, 1>(a, nc); break;
    case 2: err = LaunchSplit<HD, 2>(a, nc); break;
    case 3: err = LaunchSplit<HD, 3>(a, nc); break;
    case 4: err = LaunchSplit<HD, 4>(a, nc); break;
    case 5: err = LaunchSplit<HD, 5>(a, nc); break;
    case 6: err = LaunchSplit<HD, 6>(a, nc); break;
    case 7: err = LaunchSplit<HD, 7>(a, nc); break;
    default: err = LaunchSplit<HD, 8>(a, nc); break;
  }
  if (err != cudaSuccess) return err;
  DecodeCombineKernel<HD><<<dim3(a->numHeads, a->S), HD, 0, a->stream>>>(*a, nc);
  return cudaGetLastError();
}

}  // namespace

cudaError_t q_attention_decode(const AttentionDecodeArgs* a) {
  if (a->S <= 0) return cudaSuccess;
  if (a->chunkSize <= 0 || a->chunkSize % 64 != 0 || a->maxContext <= 0 || a->numKvHeads <= 0 ||
      a->numHeads % a->numKvHeads != 0)
    return cudaErrorInvalidValue;
  switch (a->headDim) {
    case 64:
      return LaunchDecode<64>(a);
    case 128:
      return LaunchDecode<128>(a);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace q
