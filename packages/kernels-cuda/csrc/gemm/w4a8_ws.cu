// W4A8 GEMM, warp-specialized prefill path for Hopper (sm_90a).
//
// Compiled for sm_90a only (scripts/build-addon.mjs): wgmma and TMA multicast exist nowhere else;
// q_ws_applicable() keeps other GPUs off this path at run time.
//
// C^T = W · A^T as in w4a8_wgmma.cu: the packed int4 weights are wgmma's register operand A, the int8
// activations the shared-memory operand B, both K-major. What differs:
//
// - Roles. Warpgroup 0 is the producer (setmaxnreg down to 40): one thread streams every stage with TMA
//   (activations: one 2-D cp.async.bulk.tensor box of BT tokens × 128 k, 128-byte swizzle, zero fill past M
//   and K) and cp.async.bulk (weights: eight 1 KB runs of the packed layout, 16 rows × k128 each), both
//   completing on the stage's "full" mbarrier. Warpgroups 1 and 2 are consumers (setmaxnreg up to 232), 64
//   weight rows each; they never meet a block-wide barrier: each warp arrives on the stage's "empty" mbarrier
//   once the wgmmas that read it have retired.
// - Activations in natural k order. The packed weights hold, in lane t of a quad, the 16 consecutive k of
//   [16t, 16t + 16) of each 64-k tile; wgmma's A fragment wants k = 4t..4t+3 and 16+4t..16+4t+3 of each k32
//   step. A 4×4 transpose of 32-bit words across the quad (two shuffle rounds) gives exactly that, so B is the
//   plain K-major activation tile TMA delivers, instead of a 4-byte-granular permuted copy.
// - Persistent grid: one CTA per SM walks the (token tile, 128-row tile) pairs, token tiles fastest so the
//   CTAs in flight share weight tiles in L2; the producer runs ahead into the next tile while the consumers
//   write the epilogue.
// - Group modes: the group boundary falls on a 64-k tile (group sizes are multiples of 64); at its end the
//   consumer retires its wgmmas, folds P_g = acc >> 4 into an int32 (Integer Scale) or f32 sum in registers,
//   and restarts the accumulators with scale-d = 0; the other consumer warpgroup keeps the tensor cores busy.
//   Two accumulator sets of BT/2 registers limit these modes to 192 tokens per tile.
// - Variants kept for measurement (NOTES.md, version 16): SPLIT (two half-width accumulator sets, one folded
//   while the other computes) and CL = 2 (two-CTA clusters sharing the activation tile by TMA multicast) are
//   exact but were measured slower than the plain form, which is what dispatch uses.
//
// Constraints: N % 128 == 0, K % 16 == 0, lda % 16 == 0, activations 16-byte aligned, group modes
// groupSize % 64 == 0. M arbitrary.
#include <cuda.h>  // CUtensorMap and its enums only: the encoder comes from the runtime's driver entry point
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdlib.h>

#include <type_traits>

#include "w4a8.h"
#include "w4a8_epilogue.cuh"

#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define Q_WS_WGMMA 1
#include "wgmma_rs.h"
#endif

namespace {

constexpr int kRows = 128;                  // weight rows per CTA: 2 consumer warpgroups × 64
constexpr int kWStageBytes = kRows * 64;    // packed weights per stage: 128 rows × k128 × 4 bits
constexpr int kThreads = 384;

template <int BT>
struct WsCfg {
  static constexpr int kActBytes = BT * 128;  // one stage of activations, k = 128
  static constexpr int kStageBytes = kActBytes + kWStageBytes;
  static constexpr int kStages = (200 * 1024) / kStageBytes < 6 ? (200 * 1024) / kStageBytes : 6;
  static constexpr int kSmem = kStages * kStageBytes + 1024 /* alignment */ + 256 /* barriers */;
};

#ifdef Q_WS_WGMMA
__device__ __forceinline__ void mbarInit(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ uint32_t mbarTry(uint32_t bar, uint32_t parity) {
  uint32_t ok;
  asm volatile(
      "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(ok)
      : "r"(bar), "r"(parity)
      : "memory");
  return ok;
}
// A stage that never completes is a bug (a byte count or parity out of step): trap after ~10 s instead of
// hanging the process, so the caller sees a launch failure.
__device__ __forceinline__ void mbarWait(uint32_t bar, uint32_t parity) {
  if (mbarTry(bar, parity)) return;
  const long long t0 = clock64();
  while (!mbarTry(bar, parity)) {
    if (clock64() - t0 > 20000000000LL) __trap();
  }
}
__device__ __forceinline__ void mbarArrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbarExpectTx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void tmaLoad2d(uint32_t dst, const CUtensorMap* map, int c0, int c1, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], "
      "[%4];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar)
      : "memory");
}
// The same box, written to the same offset of every CTA in ctaMask (cluster multicast); each destination's
// mbarrier at offset `bar` receives the bytes.
__device__ __forceinline__ void tmaLoad2dMulticast(uint32_t dst, const CUtensorMap* map, int c0, int c1, uint32_t bar,
                                                   uint16_t ctaMask) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.multicast::cluster [%0], "
      "[%1, {%2, %3}], [%4], %5;\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar), "h"(ctaMask)
      : "memory");
}
// Arrives on the mbarrier at the same offset in CTA `rank` of the cluster.
__device__ __forceinline__ void mbarArriveRemote(uint32_t bar, uint32_t rank) {
  asm volatile(
      "{\n.reg .b32 r;\nmapa.shared::cluster.u32 r, %0, %1;\nmbarrier.arrive.release.cluster.shared::cluster.b64 _, [r];\n}\n" ::"r"(
          bar),
      "r"(rank)
      : "memory");
}
__device__ __forceinline__ void clusterSync() {
  asm volatile("barrier.cluster.arrive.release;\nbarrier.cluster.wait.acquire;\n" ::: "memory");
}
__device__ __forceinline__ void bulkLoad(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                   dst),
               "l"(src), "r"(bytes), "r"(bar)
               : "memory");
}
// K-major B operand, 128-byte swizzle: 8-token × 128-byte atoms 1024 bytes apart (SBO); the k32 step is
// selected by advancing the start address 32 bytes inside the atom, as the swizzle is applied on the address.
__device__ __forceinline__ uint64_t descSw128(uint32_t addr) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (static_cast<uint64_t>(1) << 16) |
         (static_cast<uint64_t>(1024 >> 4) << 32) | (static_cast<uint64_t>(1) << 62);
}
// Swaps word slot `mine ? x : y` with lane ^ xorMask: one round of the quad's 4×4 word transpose.
__device__ __forceinline__ void swapRound(uint32_t& x, uint32_t& y, bool mine, int xorMask) {
  const uint32_t send = mine ? x : y;
  const uint32_t recv = __shfl_xor_sync(0xffffffffu, send, xorMask);
  if (mine) {
    x = recv;
  } else {
    y = recv;
  }
}

template <int BT>
__device__ __forceinline__ void wgmmaRs(int (&d)[BT / 2], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                        uint64_t desc, int scaleD) {
  if constexpr (BT == 64) {
    wgmmaRs64(d, a0, a1, a2, a3, desc, scaleD);
  } else if constexpr (BT == 80) {
    wgmmaRs80(d, a0, a1, a2, a3, desc, scaleD);
  } else if constexpr (BT == 96) {
    wgmmaRs96(d, a0, a1, a2, a3, desc, scaleD);
  } else if constexpr (BT == 128) {
    wgmmaRs128(d, a0, a1, a2, a3, desc, scaleD);
  } else if constexpr (BT == 160) {
    wgmmaRs160(d, a0, a1, a2, a3, desc, scaleD);
  } else if constexpr (BT == 192) {
    wgmmaRs192(d, a0, a1, a2, a3, desc, scaleD);
  } else {
    wgmmaRs256(d, a0, a1, a2, a3, desc, scaleD);
  }
}
#endif

// BT: tokens per tile (wgmma N). tilesM: token tiles; the tile index runs token tiles fastest.
// CL = 2: clusters of two CTAs on neighbouring 128-row tiles of the same tokens; each CTA loads half of the
// activation box and multicasts it to both, halving the activation traffic from L2. A stage is refilled only
// when the consumers of both CTAs have released it (the empty barriers count 16 arrivals).
// SPLIT (group modes): each consumer keeps two half-width accumulator sets (tokens [0, BT/2) and [BT/2, BT))
// and folds one half while the other half's wgmmas run, instead of draining the tensor cores at every group.
template <int MODE, int BT, bool SPLIT, int CL>
__global__ void __launch_bounds__(kThreads, 1)
    w4a8WsKernel(const __grid_constant__ CUtensorMap actMap, const W4A8Args p, int tilesM, int nTiles) {
#ifdef Q_WS_WGMMA
  using C = WsCfg<BT>;
  constexpr int S = C::kStages;
  extern __shared__ uint8_t smemRaw[];
  const uint32_t rawBase = static_cast<uint32_t>(__cvta_generic_to_shared(smemRaw));
  const uint32_t sbase = (rawBase + 1023) & ~1023u;  // 128-byte swizzle atoms need 1024-byte alignment
  const uint32_t bars = sbase + S * C::kStageBytes;  // full[S], then empty[S]
  const int tid = threadIdx.x;
  const int kTiles = p.kTiles;
  const int nStages = (kTiles + 1) / 2;

  if (tid == 0) {
    for (int s = 0; s < S; ++s) {
      mbarInit(bars + 8 * s, 1);
      mbarInit(bars + 8 * (S + s), 8 * CL);  // one arrival per consumer warp of each CTA in the cluster
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(&actMap)) : "memory");
  }
  __syncthreads();
  if constexpr (CL > 1) clusterSync();  // the peer's barriers exist before anything is multicast into it
  const int rank = CL > 1 ? static_cast<int>(blockIdx.x % CL) : 0;

  const int wg = tid >> 7;
  if (wg == 0) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
    if (tid == 0) {
      int it = 0;
      for (int tile = blockIdx.x / CL; tile < nTiles; tile += gridDim.x / CL) {
        const int m0 = (tile % tilesM) * BT;
        const int n0 = ((tile / tilesM) * CL + rank) * kRows;
        const uint8_t* wsrc = static_cast<const uint8_t*>(p.w) + static_cast<size_t>(n0 / 16) * kTiles * 512;
        for (int ks = 0; ks < nStages; ++ks, ++it) {
          const int slot = it % S;
          const uint32_t full = bars + 8 * slot, empty = bars + 8 * (S + slot);
          mbarWait(empty, ((it / S) & 1) ^ 1);
          const int nt = kTiles - 2 * ks < 2 ? 1 : 2;
          const uint32_t st = sbase + slot * C::kStageBytes;
          mbarExpectTx(full, C::kActBytes + 8 * nt * 512);
          if constexpr (CL > 1) {
            tmaLoad2dMulticast(st + rank * (BT / CL) * 128, &actMap, ks * 128, m0 + rank * (BT / CL), full,
                               static_cast<uint16_t>((1 << CL) - 1));
          } else {
            tmaLoad2d(st, &actMap, ks * 128, m0, full);
          }
#pragma unroll
          for (int r = 0; r < 8; ++r)
            bulkLoad(st + C::kActBytes + r * 1024, wsrc + (static_cast<size_t>(r) * kTiles + 2 * ks) * 512, nt * 512,
                     full);
        }
      }
    }
    if constexpr (CL > 1) {
      __syncwarp();
      clusterSync();  // the peer may still multicast into, and arrive on, this CTA's shared memory
    }
    return;
  }

  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
  const int lane = tid & 31;
  const int g = lane >> 2, t = lane & 3;
  const int rg = (tid - 128) >> 5;  // this warp's 16-row group in the CTA tile, 0..7
  const bool t0 = t & 1, t1 = (t >> 1) & 1;
  const int tpg = MODE == Q_MODE_PER_CHANNEL ? (1 << 30) : p.groupSize / 64;
  // Hands a stage back to the producers that refill it: this CTA's, and with CL = 2 the peer's (which
  // multicasts its half of the activations into this CTA's stage).
  auto release = [&](int slot) {
    mbarArrive(bars + 8 * (S + slot));
    if constexpr (CL > 1) mbarArriveRemote(bars + 8 * (S + slot), static_cast<uint32_t>(rank ^ 1));
  };
  typedef typename std::conditional<MODE == Q_MODE_GROUP_FLOAT, float, int>::type AccT;
  int d[BT / 2];
  AccT acc[MODE == Q_MODE_PER_CHANNEL ? 1 : BT / 2];
  int it = 0;
  for (int tile = blockIdx.x / CL; tile < nTiles; tile += gridDim.x / CL) {
    const int m0 = (tile % tilesM) * BT;
    const int n0 = ((tile / tilesM) * CL + rank) * kRows;
    const int rowA = n0 + rg * 16 + g;  // rows of this thread's accumulators: rowA, rowA + 8
    if constexpr (MODE != Q_MODE_PER_CHANNEL) {
#pragma unroll
      for (int i = 0; i < BT / 2; ++i) acc[i] = 0;
    }
    if constexpr (SPLIT) {
      constexpr int H = BT / 4;  // accumulators per half
      int dA[H], dB[H];
      bool pendingB = false;
      AccT pb0 = 0, pb1 = 0;
      // Folds half h (0: dA, 1: dB) of the group sums into acc with the group's row scales.
      auto fold = [&](const int (&dh)[H], int h, AccT s0, AccT s1) {
#pragma unroll
        for (int i = 0; i < H; i += 4) {
          if constexpr (MODE == Q_MODE_GROUP_FLOAT) {
            acc[h * H + i] += static_cast<float>(dh[i] >> 4) * s0;
            acc[h * H + i + 1] += static_cast<float>(dh[i + 1] >> 4) * s0;
            acc[h * H + i + 2] += static_cast<float>(dh[i + 2] >> 4) * s1;
            acc[h * H + i + 3] += static_cast<float>(dh[i + 3] >> 4) * s1;
          } else {
            acc[h * H + i] += s0 * (dh[i] >> 4);
            acc[h * H + i + 1] += s0 * (dh[i + 1] >> 4);
            acc[h * H + i + 2] += s1 * (dh[i + 2] >> 4);
            acc[h * H + i + 3] += s1 * (dh[i + 3] >> 4);
          }
        }
      };
      int prevEmpty = -1;
      for (int ks = 0; ks < nStages; ++ks, ++it) {
        const int slot = it % S;
        mbarWait(bars + 8 * slot, (it / S) & 1);
        const uint32_t st = sbase + slot * C::kStageBytes;
        const int nt = kTiles - 2 * ks < 2 ? 1 : 2;
#pragma unroll
        for (int sub = 0; sub < 2; ++sub) {
          const int kk = 2 * ks + sub;
          if (sub >= nt) break;
          uint32_t w[4];
          asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                       : "=r"(w[0]), "=r"(w[1]), "=r"(w[2]), "=r"(w[3])
                       : "r"(st + C::kActBytes + rg * 1024 + sub * 512 + lane * 16));
          swapRound(w[0], w[2], t1, 2);
          swapRound(w[1], w[3], t1, 2);
          swapRound(w[0], w[1], t0, 1);
          swapRound(w[2], w[3], t0, 1);
          const bool groupEnd = kk % tpg == tpg - 1;
          AccT sc0 = 0, sc1 = 0;
          if (groupEnd) {
            const size_t sb = (static_cast<size_t>(rowA >> 4) * p.G + kk / tpg) * 16 + g;  // tiled [N/16][G][16]
            if constexpr (MODE == Q_MODE_GROUP_FLOAT) {
              sc0 = __ldg(p.wScale + sb);
              sc1 = __ldg(p.wScale + sb + 8);
            } else {
              sc0 = __ldg(p.qScale + sb);
              sc1 = __ldg(p.qScale + sb + 8);
            }
          }
          const int first = kk % tpg == 0 ? 0 : 1;
          const uint32_t a0 = (w[0] << 4) & 0xF0F0F0F0u, a1 = w[0] & 0xF0F0F0F0u;
          const uint32_t a2 = (w[1] << 4) & 0xF0F0F0F0u, a3 = w[1] & 0xF0F0F0F0u;
          const uint32_t b0 = (w[2] << 4) & 0xF0F0F0F0u, b1 = w[2] & 0xF0F0F0F0u;
          const uint32_t b2 = (w[3] << 4) & 0xF0F0F0F0u, b3 = w[3] & 0xF0F0F0F0u;
          const uint32_t dsc = st + sub * 64;
          constexpr uint32_t kHalf = (BT / 2) * 128;  // bytes of the first half's tokens in the stage
          asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
          wgmmaRs<BT / 2>(dA, a0, a1, a2, a3, descSw128(dsc), first);
          wgmmaRs<BT / 2>(dA, b0, b1, b2, b3, descSw128(dsc + 32), 1);
          asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
          // The previous group's second half has retired: fold it before dB is restarted.
          asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
          if (pendingB) {
            fold(dB, 1, pb0, pb1);
            pendingB = false;
          }
          // Everything before this stage has retired: the previous stage's buffers go back to the producer.
          if (sub == 0 && prevEmpty >= 0 && lane == 0) release(prevEmpty);
          asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
          wgmmaRs<BT / 2>(dB, a0, a1, a2, a3, descSw128(dsc + kHalf), first);
          wgmmaRs<BT / 2>(dB, b0, b1, b2, b3, descSw128(dsc + kHalf + 32), 1);
          asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
          if (groupEnd) {  // first half retired; the second keeps the tensor cores busy meanwhile
            asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
            fold(dA, 0, sc0, sc1);
            pendingB = true;
            pb0 = sc0;
            pb1 = sc1;
          }
        }
        prevEmpty = slot;
      }
      asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
      if (pendingB) fold(dB, 1, pb0, pb1);
      if (prevEmpty >= 0 && lane == 0) release(prevEmpty);
    } else {
    int prevEmpty = -1;
      for (int ks = 0; ks < nStages; ++ks, ++it) {
        const int slot = it % S;
        mbarWait(bars + 8 * slot, (it / S) & 1);
        const uint32_t st = sbase + slot * C::kStageBytes;
        const int nt = kTiles - 2 * ks < 2 ? 1 : 2;
        // Per-channel: both 64-k tiles' A fragments are ready before the first wgmma of the stage, so the four
        // wgmmas go out back to back. The group modes at 192 tokens load each tile's fragment just before its
        // wgmmas (registers: two accumulator sets of 96).
        constexpr bool kAhead = MODE == Q_MODE_PER_CHANNEL || BT < 192;
        uint32_t x[2][4];
        auto loadFrag = [&](int sub) {
          asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                       : "=r"(x[sub][0]), "=r"(x[sub][1]), "=r"(x[sub][2]), "=r"(x[sub][3])
                       : "r"(st + C::kActBytes + rg * 1024 + sub * 512 + lane * 16));
          // Quad transpose: afterwards word q of lane t holds k = 16q + 4t .. +3 of this 64-k tile.
          swapRound(x[sub][0], x[sub][2], t1, 2);
          swapRound(x[sub][1], x[sub][3], t1, 2);
          swapRound(x[sub][0], x[sub][1], t0, 1);
          swapRound(x[sub][2], x[sub][3], t0, 1);
        };
        if constexpr (kAhead) {
  #pragma unroll
          for (int sub = 0; sub < 2; ++sub)
            if (sub < nt) loadFrag(sub);
        }
  #pragma unroll
        for (int sub = 0; sub < 2; ++sub) {
          const int kk = 2 * ks + sub;
          if (sub >= nt) break;
          const bool groupEnd = MODE != Q_MODE_PER_CHANNEL && kk % tpg == tpg - 1;
          // The group's scales are requested before its last wgmmas, so their latency hides behind them.
          AccT sc0 = 0, sc1 = 0;
          if constexpr (MODE != Q_MODE_PER_CHANNEL) {
            if (groupEnd) {
              const size_t sb = (static_cast<size_t>(rowA >> 4) * p.G + kk / tpg) * 16 + g;  // tiled [N/16][G][16]
              if constexpr (MODE == Q_MODE_GROUP_FLOAT) {
                sc0 = __ldg(p.wScale + sb);
                sc1 = __ldg(p.wScale + sb + 8);
              } else {
                sc0 = __ldg(p.qScale + sb);
                sc1 = __ldg(p.qScale + sb + 8);
              }
            }
          }
          const int first = (MODE == Q_MODE_PER_CHANNEL ? kk : kk % tpg) == 0 ? 0 : 1;
          if constexpr (!kAhead) loadFrag(sub);
          const uint32_t* w = x[sub];
          asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
          wgmmaRs<BT>(d, (w[0] << 4) & 0xF0F0F0F0u, w[0] & 0xF0F0F0F0u, (w[1] << 4) & 0xF0F0F0F0u, w[1] & 0xF0F0F0F0u,
                      descSw128(st + sub * 64), first);
          wgmmaRs<BT>(d, (w[2] << 4) & 0xF0F0F0F0u, w[2] & 0xF0F0F0F0u, (w[3] << 4) & 0xF0F0F0F0u, w[3] & 0xF0F0F0F0u,
                      descSw128(st + sub * 64 + 32), 1);
          if constexpr (MODE != Q_MODE_PER_CHANNEL) {
            if (groupEnd) {
              asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
              asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
  #pragma unroll
              for (int i = 0; i < BT / 2; i += 4) {
                if constexpr (MODE == Q_MODE_GROUP_FLOAT) {
                  acc[i] += static_cast<float>(d[i] >> 4) * sc0;
                  acc[i + 1] += static_cast<float>(d[i + 1] >> 4) * sc0;
                  acc[i + 2] += static_cast<float>(d[i + 2] >> 4) * sc1;
                  acc[i + 3] += static_cast<float>(d[i + 3] >> 4) * sc1;
                } else {
                  acc[i] += sc0 * (d[i] >> 4);
                  acc[i + 1] += sc0 * (d[i + 1] >> 4);
                  acc[i + 2] += sc1 * (d[i + 2] >> 4);
                  acc[i + 3] += sc1 * (d[i + 3] >> 4);
                }
              }
            }
          }
        }
        // One group per stage (possibly empty in the group modes): after waiting for all but it, the previous
        // stage's wgmmas have retired and its buffers go back to the producer.
        asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
        asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
        if (prevEmpty >= 0 && lane == 0) release(prevEmpty);
        prevEmpty = slot;
      }
      asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
      if (prevEmpty >= 0 && lane == 0) release(prevEmpty);
  
    }

    // Epilogue: accumulator i of n8 chunk j = i / 4 is (row rowA + 8·((i>>1)&1), token m0 + 8j + 2t + (i&1)).
    // Token scales are loaded 8 at a time before the stores: the stores may alias them as far as the compiler
    // knows, so loads interleaved with stores would each wait a full memory latency.
    const bool i32 = p.outType == Q_OUT_I32;
    float rs0 = 0.f, rs1 = 0.f;  // per-row factor: per-channel scale or Integer Scale unit
    if (!i32 && MODE != Q_MODE_GROUP_FLOAT) {
      const float* rsrc = MODE == Q_MODE_PER_CHANNEL ? p.wScale : p.unit;
      rs0 = __ldg(rsrc + rowA);
      rs1 = __ldg(rsrc + rowA + 8);
    }
#pragma unroll
    for (int c = 0; c < BT / 32; ++c) {
      float as[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        int m = m0 + 32 * c + 8 * (e >> 1) + 2 * t + (e & 1);
        m = m < p.M ? m : p.M - 1;
        as[e] = i32 ? 0.f : __ldg(p.aScale + static_cast<size_t>(m) * p.aScaleStride);
      }
#pragma unroll
      for (int i = 16 * c; i < 16 * c + 16; ++i) {
        const int e = 2 * ((i >> 2) - 4 * c) + (i & 1);
        const int m = m0 + 8 * (i >> 2) + 2 * t + (i & 1);
        const bool hi = (i >> 1) & 1;
        const int n = rowA + (hi ? 8 : 0);
        if (m >= p.M) continue;
        if constexpr (MODE == Q_MODE_PER_CHANNEL) {
          const int P = d[i] >> 4;
          w4a8StoreOut(p, m, n, static_cast<float>(P) * as[e] * (hi ? rs1 : rs0), P);
        } else if constexpr (MODE == Q_MODE_GROUP_FLOAT) {
          w4a8StoreOut(p, m, n, static_cast<float>(acc[i]) * as[e], 0);
        } else {
          const int a = static_cast<int>(acc[i]);
          w4a8StoreOut(p, m, n, static_cast<float>(a) * as[e] * (hi ? rs1 : rs0), a);
        }
      }
    }
  }
  if constexpr (CL > 1) clusterSync();
#endif
}

typedef CUresult (*EncodeTiledFn)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                  const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                  CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

EncodeTiledFn encoder() {
  static EncodeTiledFn fn = nullptr;
  static bool tried = false;
  if (!tried) {
    tried = true;
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q) ==
            cudaSuccess &&
        q == cudaDriverEntryPointSuccess)
      fn = reinterpret_cast<EncodeTiledFn>(f);
  }
  return fn;
}

template <int MODE, int BT, bool SPLIT = false, int CL = 1>
cudaError_t launchWs(const W4A8Args& a) {
  using C = WsCfg<BT>;
  EncodeTiledFn enc = encoder();
  if (!enc) return cudaErrorNotSupported;
  if (CL > 1 && a.N % (kRows * CL) != 0) return launchWs<MODE, BT, SPLIT, 1>(a);
  CUtensorMap map;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(a.K), static_cast<cuuint64_t>(a.M)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(a.lda)};
  const cuuint32_t box[2] = {128, static_cast<cuuint32_t>(BT / CL)};  // with CL = 2 each CTA loads half
  const cuuint32_t estr[2] = {1, 1};
  if (enc(&map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, const_cast<int8_t*>(a.a), dims, strides, box, estr,
          CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
          CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS)
    return cudaErrorInvalidValue;
  auto kernel = w4a8WsKernel<MODE, BT, SPLIT, CL>;
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmem);
  if (e != cudaSuccess) return e;
  int dev = 0, sms = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  const int tilesM = (a.M + BT - 1) / BT;
  const int nTiles = tilesM * (a.N / (kRows * CL));  // work items: tiles, or tile pairs of a cluster
  const int slots = sms / CL;
  const int grid = (nTiles < slots ? nTiles : slots) * CL;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(grid);
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = C::kSmem;
  cfg.stream = reinterpret_cast<cudaStream_t>(a.stream);
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = CL;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cudaLaunchKernelEx(&cfg, kernel, map, a, tilesM, nTiles);
}

}  // namespace

// The warp-specialized sm_90a path: per-channel with 256 tokens per tile, the group modes with 192 (their
// second accumulator set would not fit beside 256). False when this binary or device cannot run it, or the
// arguments break its constraints; the caller then takes another path.
// Q_W4A8_WS=0 in the environment turns the path off (the previous wgmma kernel serves instead).
extern "C" bool q_ws_applicable(const W4A8Args* a, bool forced) {
  static const bool off = [] {
    const char* v = getenv("Q_W4A8_WS");
    return v != nullptr && v[0] == '0';
  }();
  return (forced || !off) && q_wgmma_supported() && a->N % kRows == 0 && a->lda % 16 == 0 && a->K % 16 == 0 &&
         (reinterpret_cast<uintptr_t>(a->a) & 15) == 0 && encoder() != nullptr &&
         (a->mode == Q_MODE_PER_CHANNEL || a->groupSize % 64 == 0);
}

template <int BT>
cudaError_t launchWsMode(const W4A8Args& a, int mode) {
  switch (mode) {
    case Q_MODE_PER_CHANNEL:
      return launchWs<Q_MODE_PER_CHANNEL, BT>(a);
    case Q_MODE_GROUP_FLOAT:
      return launchWs<Q_MODE_GROUP_FLOAT, BT>(a);
    default:
      return launchWs<Q_MODE_GROUP_INT, BT>(a);
  }
}

// tokens: tokens per tile, 0 for the default (256 per-channel, 192 group modes), or 128 / 192 (benchmarks);
// -160 / -128: the group modes with split accumulators (SPLIT above) at 160 / 128 tokens, per-channel at 256.
// cluster 2: per-channel with two-CTA clusters sharing the activation tile (CL above; N % 256 == 0).
extern "C" cudaError_t q_w4a8_gemm_ws(const W4A8Args* args, int mode, int tokens, int cluster) {
  const W4A8Args& a = *args;
  // Only per-channel: the group modes' two accumulator sets spill with the cluster bookkeeping.
  if (cluster == 2 && mode == Q_MODE_PER_CHANNEL) return launchWs<Q_MODE_PER_CHANNEL, 256, false, 2>(a);
  if (tokens < 0) {
    if (mode == Q_MODE_PER_CHANNEL) return launchWs<Q_MODE_PER_CHANNEL, 256>(a);
    if (tokens == -128)
      return mode == Q_MODE_GROUP_FLOAT ? launchWs<Q_MODE_GROUP_FLOAT, 128, true>(a)
                                        : launchWs<Q_MODE_GROUP_INT, 128, true>(a);
    return mode == Q_MODE_GROUP_FLOAT ? launchWs<Q_MODE_GROUP_FLOAT, 160, true>(a)
                                      : launchWs<Q_MODE_GROUP_INT, 160, true>(a);
  }
  if (tokens == 128) return launchWsMode<128>(a, mode);
  if (tokens == 192) return launchWsMode<192>(a, mode);
  return mode == Q_MODE_PER_CHANNEL ? launchWs<Q_MODE_PER_CHANNEL, 256>(a) : launchWsMode<192>(a, mode);
}
