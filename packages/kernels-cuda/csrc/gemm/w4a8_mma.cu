// W4A8 GEMM: out[m, n] = epilogue(Σ_k a[m, k] · w[n, k]) with int8 activations a and int4 weights w, on the
// int8 tensor cores through mma.sync.m16n8k32 (sm_80 and later; on sm_90a this is the decode path).
//
// We compute C^T = W · A^T: the weights are mma operand A (16 output channels per fragment) and the tokens
// are operand B (8 tokens per fragment). At decode (M ≤ 16) a token tile of 8 wastes little, while the other
// orientation would waste 15 of 16 rows.
//
// int4 → int8 without sign extension (FastGEMM): each packed byte holds two signed nibbles; for a 32-bit word
// x, (x << 4) & 0xF0F0F0F0 holds the low nibbles and x & 0xF0F0F0F0 the high nibbles, each as an int8 lane
// equal to 16·w. The int32 accumulator is therefore 16·P, exactly divisible by 16; it is shifted back (>> 4)
// before any scale is applied, so the int32 bound that @q/quant checks for Integer Scale holds unchanged.
//
// Packed weight layout (written by packForGemm in src/pack.ts): tiles of 16 output channels × 64 k, ordered
// [N/16][kTiles][lane 0..31][16 bytes]. Lane l = 4·g + t owns rows n0+g and n0+g+8 and k = k0+16t … k0+16t+15;
// byte i of its 16 holds w[n0+g, k0+16t+i] in the low nibble and w[n0+g+8, k0+16t+i] in the high nibble.
// So one 16-byte load gives a lane its A fragments for two k32 mma steps, and the activations it pairs them
// with are the 16 contiguous bytes a[m, k0+16t … +15] (one 16-byte load per token tile). The k order inside
// an mma step is permuted the same way on both operands, which leaves the dot product unchanged.
//
// Group scales (f32 or Integer Scale i32) are stored tiled like the weights, [N/16][G][16] (uploadGemmWeights
// reorders them), so the 16 rows of a tile read one group's scales from 64 contiguous bytes.
//
// Constraints: N % 16 == 0; K % 16 == 0 (K is the zero-padded kPadded); lda % 16 == 0; group modes need
// groupSize % 64 == 0. Pointers 16-byte aligned.
//
// Work split: a block of 16 (MT = 1) or 8 warps owns 16 output channels × (8·MT) tokens; its warps split K
// (round-robin over whole groups, so group scales apply inside one warp) and the partial results are summed in
// shared memory in a fixed warp order, so results are deterministic and integer results exact.
//
// Split-K (variants 100·S + MT): grid.z = S blocks share one output tile, the S·warps workers taking the units
// round-robin. Each block writes its warp-reduced partial (int32 16·P sums per-channel, int32 Σ q·P group-int,
// f32 group-float) to a workspace [S][M][N], and a second kernel sums the S partials in split order and applies
// the same epilogue: int32 sums are exact in any order (two's-complement addition is associative, and the final
// value is the one the unsplit kernel holds), the f32 sums deterministic.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <mutex>
#include <vector>

#include "w4a8.h"
#include "w4a8_epilogue.cuh"

namespace {

// Warps per block splitting K: 16 at ≤ 8 tokens (each warp then streams half as many tiles, so a 4096-deep
// layer is one round of loads per warp: 7B o M=1 5.0 → 4.8 µs, 7B down 10.2 → 9.3 µs); 8 above, where 16 warps
// of ~90 registers leave one block per SM (measured 1.5x slower at M=16).
template <int MT>
__host__ __device__ constexpr int warpsFor() {
  return MT == 1 ? 16 : 8;
}

__device__ __forceinline__ uint4 ldgStream(const void* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

__device__ __forceinline__ uint4 ldgAct(const void* p) {
  uint4 r;
  asm volatile("ld.global.nc.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
  return r;
}

__device__ __forceinline__ void mma(int (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                    uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t lo4(uint32_t x) { return (x << 4) & 0xF0F0F0F0u; }
__device__ __forceinline__ uint32_t hi4(uint32_t x) { return x & 0xF0F0F0F0u; }

// One 16×64 weight tile against MT token tiles: two k32 mma steps each.
template <int MT>
__device__ __forceinline__ void tileMma(int (&c)[MT][4], const uint4& w, const uint4 (&a)[MT]) {
  const uint32_t w0 = w.x, w1 = w.y, w2 = w.z, w3 = w.w;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    mma(c[mt], lo4(w0), hi4(w0), lo4(w1), hi4(w1), a[mt].x, a[mt].y);
    mma(c[mt], lo4(w2), hi4(w2), lo4(w3), hi4(w3), a[mt].z, a[mt].w);
  }
}

template <int MODE>
struct Acc;  // per-thread accumulator kind after the group epilogue
template <>
struct Acc<Q_MODE_PER_CHANNEL> {
  typedef int T;
};
template <>
struct Acc<Q_MODE_GROUP_FLOAT> {
  typedef float T;
};
template <>
struct Acc<Q_MODE_GROUP_INT> {
  typedef int T;
};

// The epilogue of one output from its reduced accumulator s (see Acc): shared by the kernel and the split-K reduce.
template <int MODE, typename AccT>
__device__ __forceinline__ void mmaEpilogue(const W4A8Args& p, int m, int n, AccT s) {
  const float as = p.aScale[static_cast<size_t>(m) * p.aScaleStride];
  if (MODE == Q_MODE_PER_CHANNEL) {
    const int P = static_cast<int>(s) >> 4;
    w4a8StoreOut(p, m, n, static_cast<float>(P) * as * p.wScale[n], P);
  } else if (MODE == Q_MODE_GROUP_FLOAT) {
    w4a8StoreOut(p, m, n, static_cast<float>(s) * as, 0);
  } else {
    const int acc = static_cast<int>(s);
    w4a8StoreOut(p, m, n, static_cast<float>(acc) * as * p.unit[n], acc);
  }
}

// TPG: 64-wide k tiles per group when known at compile time (groupSize 64 → 1, 128 → 2, 256 → 4), so that the
// group bookkeeping of the unrolled loop folds into constants; 0 reads it at run time.
template <int MT, int MODE, int U, int TPG, bool SPLIT>
__global__ void __launch_bounds__(warpsFor<MT>() * 32) w4a8MmaKernel(const W4A8Args p) {
  constexpr int kWarps = warpsFor<MT>();
  typedef typename Acc<MODE>::T AccT;
  __shared__ AccT red[kWarps][MT * 4][32];

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const int n0 = blockIdx.x * 16;
  const int m0 = blockIdx.y * (8 * MT);

  const int8_t* arow[MT];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    int m = m0 + mt * 8 + g;
    m = m < p.M ? m : p.M - 1;  // rows past M load a valid row; their outputs are never stored
    arow[mt] = p.a + static_cast<size_t>(m) * p.lda + t * 16;
  }
  const uint4* wt = static_cast<const uint4*>(p.w) + static_cast<size_t>(blockIdx.x) * p.kTiles * 32 + lane;

  // Units distributed round-robin over warps: k tiles (per-channel) or whole groups.
  const int tpg = MODE == Q_MODE_PER_CHANNEL ? 1 : (TPG > 0 ? TPG : p.groupSize / 64);
  // With a compile-time TPG dividing U, every unrolled step starts on a group boundary.
  constexpr bool kStatic = MODE == Q_MODE_PER_CHANNEL || (TPG > 0 && U % TPG == 0);
  constexpr int kTpg = MODE == Q_MODE_PER_CHANNEL ? 1 : (TPG > 0 ? TPG : 1);
  const int nUnits = MODE == Q_MODE_PER_CHANNEL ? p.kTiles : p.G;
  // The worker's index and the number of workers: this block's warps, or with split-K those of all grid.z blocks.
  const int wid = SPLIT ? static_cast<int>(blockIdx.z) * kWarps + warp : warp;
  const int nw = SPLIT ? static_cast<int>(gridDim.z) * kWarps : kWarps;
  const int myUnits = wid < nUnits ? (nUnits - wid + nw - 1) / nw : 0;
  const int myTiles = myUnits * tpg;

  int c[MT][4];
  AccT acc[MT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      c[mt][r] = 0;
      acc[mt][r] = 0;
    }

  for (int i0 = 0; i0 < myTiles; i0 += U) {
    uint4 wv[U];
    uint4 av[U][MT];
    // Group scales are fetched with the tile that closes the group, so their latency hides behind the
    // weight loads instead of stalling the epilogue.
    uint32_t sc0[U], sc1[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int i = i0 + u;
      if (i < myTiles) {
        const int unit = kStatic ? wid + (i0 / kTpg + u / kTpg) * nw : wid + (i / tpg) * nw;
        const int kt = kStatic ? unit * kTpg + u % kTpg : unit * tpg + i % tpg;
        wv[u] = ldgStream(wt + static_cast<size_t>(kt) * 32);
        const int k = kt * 64;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
          av[u][mt] = (k + t * 16 < p.K) ? ldgAct(arow[mt] + k) : make_uint4(0, 0, 0, 0);
        if (MODE != Q_MODE_PER_CHANNEL) {
          const uint32_t* src = MODE == Q_MODE_GROUP_FLOAT ? reinterpret_cast<const uint32_t*>(p.wScale)
                                                           : reinterpret_cast<const uint32_t*>(p.qScale);
          const size_t base = (static_cast<size_t>(blockIdx.x) * p.G + unit) * 16 + g;
          sc0[u] = __ldg(src + base);
          sc1[u] = __ldg(src + base + 8);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int i = i0 + u;
      if (i < myTiles) {
        tileMma<MT>(c, wv[u], av[u]);
        if (MODE != Q_MODE_PER_CHANNEL && (kStatic ? u % kTpg == kTpg - 1 : i % tpg == tpg - 1)) {
          if (MODE == Q_MODE_GROUP_FLOAT) {
            const float s0 = __uint_as_float(sc0[u]), s1 = __uint_as_float(sc1[u]);
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
              acc[mt][0] += static_cast<float>(c[mt][0] >> 4) * s0;
              acc[mt][1] += static_cast<float>(c[mt][1] >> 4) * s0;
              acc[mt][2] += static_cast<float>(c[mt][2] >> 4) * s1;
              acc[mt][3] += static_cast<float>(c[mt][3] >> 4) * s1;
            }
          } else {
            const int q0 = static_cast<int>(sc0[u]), q1 = static_cast<int>(sc1[u]);
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
              acc[mt][0] += q0 * (c[mt][0] >> 4);
              acc[mt][1] += q0 * (c[mt][1] >> 4);
              acc[mt][2] += q1 * (c[mt][2] >> 4);
              acc[mt][3] += q1 * (c[mt][3] >> 4);
            }
          }
#pragma unroll
          for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int r = 0; r < 4; ++r) c[mt][r] = 0;
        }
      }
    }
  }

#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int r = 0; r < 4; ++r) red[warp][mt * 4 + r][lane] = MODE == Q_MODE_PER_CHANNEL ? c[mt][r] : acc[mt][r];
  __syncthreads();

  for (int idx = threadIdx.x; idx < MT * 4 * 32; idx += kWarps * 32) {
    const int v = idx >> 5, ln = idx & 31;
    AccT s = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) s += red[w][v][ln];
    const int mt = v >> 2, r = v & 3;
    const int n = n0 + (ln >> 2) + (r >= 2 ? 8 : 0);
    const int m = m0 + mt * 8 + 2 * (ln & 3) + (r & 1);
    if (m >= p.M) continue;
    if (SPLIT) {
      const size_t total = static_cast<size_t>(p.M) * p.N;
      static_cast<AccT*>(p.work)[blockIdx.z * total + static_cast<size_t>(m) * p.N + n] = s;
    } else {
      mmaEpilogue<MODE>(p, m, n, s);
    }
  }
}

// Sums the split-K partials in split order and applies the epilogue.
template <int MODE>
__global__ void __launch_bounds__(256) w4a8SplitReduce(const W4A8Args p, int splits) {
  typedef typename Acc<MODE>::T AccT;
  const size_t total = static_cast<size_t>(p.M) * p.N;
  const AccT* part = static_cast<const AccT*>(p.work);
  for (size_t idx = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<size_t>(gridDim.x) * blockDim.x) {
    AccT s = 0;
    for (int z = 0; z < splits; ++z) s += part[z * total + idx];
    mmaEpilogue<MODE>(p, static_cast<int>(idx / p.N), static_cast<int>(idx % p.N), s);
  }
}

template <int MT, int MODE, int TPG>
cudaError_t launchMma(const W4A8Args& a, int splits) {
  // 4 tiles in flight per warp at M ≤ 16: 8 measured slower at M = 1 (more registers, fewer resident blocks).
  constexpr int U0 = MT <= 2 ? 4 : (MT == 4 ? 2 : 1);
  constexpr int U = TPG > U0 ? TPG : U0;
  const cudaStream_t st = reinterpret_cast<cudaStream_t>(a.stream);
  dim3 grid(a.N / 16, (a.M + 8 * MT - 1) / (8 * MT), splits);
  if (splits <= 1) {
    w4a8MmaKernel<MT, MODE, U, TPG, false><<<grid, warpsFor<MT>() * 32, 0, st>>>(a);
    return cudaGetLastError();
  }
  w4a8MmaKernel<MT, MODE, U, TPG, true><<<grid, warpsFor<MT>() * 32, 0, st>>>(a);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const size_t total = static_cast<size_t>(a.M) * a.N;
  const size_t blocks = (total + 255) / 256;
  w4a8SplitReduce<MODE><<<static_cast<unsigned>(blocks < 65536 ? blocks : 65536), 256, 0, st>>>(a, splits);
  return cudaGetLastError();
}

template <int MT, int MODE>
cudaError_t launchMmaG(const W4A8Args& a, int splits) {
  if constexpr (MODE == Q_MODE_PER_CHANNEL) {
    return launchMma<MT, MODE, 1>(a, splits);
  } else {
    switch (a.groupSize) {
      case 64:
        return launchMma<MT, MODE, 1>(a, splits);
      case 128:
        return launchMma<MT, MODE, 2>(a, splits);
      default:
        return launchMma<MT, MODE, 0>(a, splits);
    }
  }
}

template <int MODE>
cudaError_t dispatchM(const W4A8Args& a, int mt, int splits) {
  switch (mt) {
    case 1:
      return launchMmaG<1, MODE>(a, splits);
    case 2:
      return launchMmaG<2, MODE>(a, splits);
    case 4:
      return launchMmaG<4, MODE>(a, splits);
    default:
      return launchMmaG<8, MODE>(a, splits);
  }
}

// The split-K workspace, one per (device, stream) so that GEMMs on different streams never share partials.
// A buffer grows (to a power of two) on first use outside stream capture and is never freed while the process
// runs: a captured graph keeps the pointer it was captured with, so a retired buffer stays valid for it. The
// buffers are freed at exit.
constexpr size_t kWorkMax = size_t(1) << 30;
struct WorkBuf {
  int device;
  void* stream;
  void* ptr;
  size_t bytes;
};
struct WorkPool {
  std::mutex mu;
  std::vector<WorkBuf> live;
  std::vector<WorkBuf> retired;
  ~WorkPool() {
    for (const WorkBuf& b : live) cudaFree(b.ptr);
    for (const WorkBuf& b : retired) cudaFree(b.ptr);
  }
};
WorkPool& workPool() {
  static WorkPool pool;
  return pool;
}

// A workspace of at least `bytes` for this stream, or null: too large, or it would have to grow during stream
// capture (no allocation may be captured) or the allocation failed. Never leaves a CUDA error pending.
void* splitWorkspace(void* stream, size_t bytes) {
  if (bytes > kWorkMax) return nullptr;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    cudaGetLastError();
    return nullptr;
  }
  WorkPool& pool = workPool();
  std::lock_guard<std::mutex> lock(pool.mu);
  WorkBuf* found = nullptr;
  for (WorkBuf& b : pool.live)
    if (b.device == dev && b.stream == stream) found = &b;
  if (found && found->bytes >= bytes) return found->ptr;
  cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(reinterpret_cast<cudaStream_t>(stream), &cap) != cudaSuccess ||
      cap != cudaStreamCaptureStatusNone) {
    cudaGetLastError();
    return nullptr;
  }
  size_t size = size_t(16) << 20;
  while (size < bytes) size <<= 1;
  void* p = nullptr;
  // This stream is not capturing, but another thread's global-mode capture would forbid cudaMalloc here (and
  // be invalidated by it); relaxed mode for this one call is the documented way to allocate beside a capture.
  cudaStreamCaptureMode capMode = cudaStreamCaptureModeRelaxed;
  cudaThreadExchangeStreamCaptureMode(&capMode);
  const cudaError_t mallocErr = cudaMalloc(&p, size);
  cudaThreadExchangeStreamCaptureMode(&capMode);
  if (mallocErr != cudaSuccess) {
    cudaGetLastError();
    return nullptr;
  }
  if (found) {
    pool.retired.push_back(*found);
    found->ptr = p;
    found->bytes = size;
  } else {
    pool.live.push_back(WorkBuf{dev, stream, p, size});
  }
  return p;
}

bool splitVariant(int v, int* splits, int* mt) {
  const int s = v / 100, t = v % 100;
  if (s < 2 || s > 16 || (t != 1 && t != 2 && t != 4 && t != 8)) return false;
  *splits = s;
  *mt = t;
  return true;
}

// Whether variant v can serve this call; for split-K it also reserves the workspace (a.work).
bool variantApplicable(W4A8Args& a, int v) {
  if (v == 1 || v == 2 || v == 4 || v == 8) return true;
  if (v == 16 || v == 18) return a.N % 128 == 0 && q_wgmma_supported();
  if (v >= 20 && v <= 25) return q_ws_applicable(&a, true);
  int s = 0, mt = 0;
  if (!splitVariant(v, &s, &mt)) return false;
  a.work = splitWorkspace(a.stream, static_cast<size_t>(s) * a.M * a.N * 4);
  return a.work != nullptr;
}

}  // namespace

extern "C" cudaError_t q_w4a8_gemm(const W4A8Args* args) {
  if (args->M == 0 || args->N == 0) return cudaSuccess;
  W4A8Args a = *args;
  a.work = nullptr;
  // A negative variant is a preference (the measured dispatch table's choice): used where it applies, otherwise
  // the rules below decide, so that a table measured on other shapes can never make a call fail.
  if (a.variant < 0) a.variant = variantApplicable(a, -a.variant) ? -a.variant : 0;
  int mode = a.mode;
  // The raw int32 output of group-float is Σ_g P_g, which the per-channel kernel computes.
  if (mode == Q_MODE_GROUP_FLOAT && a.outType == Q_OUT_I32) mode = Q_MODE_PER_CHANNEL;
  // Variants: 0 auto; 1/2/4/8 force the mma.sync kernel with that many 8-token tiles per block; 16 forces the
  // wgmma kernel with 128 tokens per block, 18 with 256 (per-channel; other modes use 128).
  // 20 forces the warp-specialized wgmma kernel (w4a8_ws.cu), which auto picks above 64 tokens where it applies.
  // 21 and 22 force it with 128 / 192 tokens per tile in every mode; 23 and 24 with split accumulators in the
  // group modes at 160 / 128 tokens (per-channel as 20); 25 as 20, per-channel with two-CTA clusters that
  // share the activation tile through TMA multicast. 100·S + MT (S 2…16, MT 1/2/4/8): the mma.sync kernel with MT
  // token tiles and K split over S blocks (split-K; needs the workspace, which cannot grow during capture).
  const bool wsForced = a.variant >= 20 && a.variant <= 25;
  if (wsForced || (a.variant == 0 && a.M > 64 && q_ws_applicable(&a, false))) {
    if (!q_ws_applicable(&a, true)) return cudaErrorInvalidValue;
    int tokens = a.variant == 21 ? 128 : a.variant == 22 ? 192 : a.variant == 23 ? -160 : a.variant == 24 ? -128 : 0;
    // Auto: 128-token tiles (variant 21) while the wider ones would leave SMs idle — per-channel up to 128
    // tokens, the group modes up to 256; measured faster there on every benchmark shape (NOTES.md, version 16).
    if (a.variant == 0 && a.M <= (mode == Q_MODE_PER_CHANNEL ? 128 : 256)) tokens = 128;
    return q_w4a8_gemm_ws(&a, mode, tokens, a.variant == 25 ? 2 : 1);
  }
  if (a.variant == 16 || a.variant == 18 ||
      (a.variant == 0 && a.M > 64 && a.N % 128 == 0 && q_wgmma_supported())) {
    if (a.N % 128 != 0) return cudaErrorInvalidValue;
    const bool wide = a.variant == 18;  // measured no faster than two 128-token blocks per SM (NOTES.md)
    return q_w4a8_gemm_wgmma(&a, mode, wide);
  }
  // 8-token tiles per block. Above 32 tokens the group modes stay at 4 tiles (a second block row re-reads the
  // weights from L2): with 8 tiles their two accumulator sets need ~170 registers and occupancy halves.
  int mt = a.M <= 8 ? 1 : (a.M <= 16 ? 2 : (a.M <= 32 || mode != Q_MODE_PER_CHANNEL ? 4 : 8));
  int splits = 1;
  if (a.variant >= 1 && a.variant <= 8) {
    mt = a.variant;
  } else if (a.variant >= 100) {
    if (!splitVariant(a.variant, &splits, &mt)) return cudaErrorInvalidValue;
    if (!a.work) a.work = splitWorkspace(a.stream, static_cast<size_t>(splits) * a.M * a.N * 4);
    // No workspace: too large, or it would have to grow inside a stream capture (run the call once before).
    if (!a.work) return cudaErrorMemoryAllocation;
  } else if (a.variant != 0) {
    return cudaErrorInvalidValue;
  }
  switch (mode) {
    case Q_MODE_PER_CHANNEL:
      return dispatchM<Q_MODE_PER_CHANNEL>(a, mt, splits);
    case Q_MODE_GROUP_FLOAT:
      return dispatchM<Q_MODE_GROUP_FLOAT>(a, mt, splits);
    default:
      return dispatchM<Q_MODE_GROUP_INT>(a, mt, splits);
  }
}
