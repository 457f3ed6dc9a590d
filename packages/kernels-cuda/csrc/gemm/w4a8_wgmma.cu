// W4A8 GEMM, prefill path for Hopper (sm_90a): wgmma with int8 operands.
//
// Compiled for sm_90a only (scripts/build-addon.mjs): wgmma exists nowhere else; q_wgmma_supported() keeps other
// GPUs off this path at run time.
//
// We compute C^T = W · A^T so that the int4 weights are wgmma's register operand A: each warp of a warpgroup
// owns 16 weight rows, and the packed layout of packForGemm (see w4a8_mma.cu) is exactly the register
// fragment of wgmma m64nNk32 for A (the same as mma.m16n8k32's), so a 16-byte fragment becomes int8 (16·w)
// lanes with two AND/shift operations and feeds two k32 steps. The int8 activations are operand B, read by
// the tensor cores from shared memory in the canonical K-major, no-swizzle layout: 8-token × 16-byte core
// matrices, K-adjacent core matrices 128 bytes apart (LBO), 8-token groups 1024 bytes apart (SBO). Both
// operands are K-major, which int8 wgmma requires. The packed weights order k inside each k32 step as the
// mma.sync path wants it (lane t's bytes are k = 16t + 8s + 4h + b); the activation copy applies the same
// permutation with 4-byte cp.async, so that B's core matrices hold exactly the k that A's fragment expects.
//
// Block: 2 warpgroups = 128 weight rows × 128 tokens; K in steps of 128 streamed through a STAGES-deep cp.async
// ring (activations and the weight fragments both land in shared memory; each thread copies exactly the
// weight fragment it later reads, so weights need no barrier). The grid runs token tiles fastest, so the
// blocks resident at one time share weight tiles, and each weight byte comes from DRAM about once.
//
// Scale modes as in w4a8_mma.cu: per-channel accumulates all of K in the wgmma accumulators; the group modes
// restart the accumulators at each group (scale-d = 0) and fold P_g = acc >> 4 into an f32 (group-float) or
// int32 (group-int, Integer Scale) sum after each group.
//
// Constraints: N % 128 == 0, K % 16 == 0, lda % 16 == 0, group modes groupSize % 64 == 0. M arbitrary.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <type_traits>

#include "w4a8.h"
#include "w4a8_epilogue.cuh"

namespace {

constexpr int kStages = 4;       // 96 KB with 128 tokens: two per-channel blocks fit on one SM
constexpr int kBlockRows = 128;  // weight rows per block (2 warpgroups × 64)
constexpr int kWStage = kBlockRows * 128 / 2;  // bytes of packed weights per stage (k = 128)

#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define Q_HAS_WGMMA 1
#endif

#ifdef Q_HAS_WGMMA

// One wgmma m64n128k32 s8·s8→s32: A (16 weight rows per warp, int8 lanes) from registers, B (128 tokens ×
// 32 k) from shared memory through its descriptor. scaleD = 0 starts a new sum (a new group).
__device__ __forceinline__ void wgmma128(int (&d)[64], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint64_t desc, int scaleD) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %70, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p;\n}\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]), "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]), "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]), "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31]), "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]), "+r"(d[36]), "+r"(d[37]), "+r"(d[38]), "+r"(d[39]), "+r"(d[40]), "+r"(d[41]), "+r"(d[42]), "+r"(d[43]), "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47]), "+r"(d[48]), "+r"(d[49]), "+r"(d[50]), "+r"(d[51]), "+r"(d[52]), "+r"(d[53]), "+r"(d[54]), "+r"(d[55]), "+r"(d[56]), "+r"(d[57]), "+r"(d[58]), "+r"(d[59]), "+r"(d[60]), "+r"(d[61]), "+r"(d[62]), "+r"(d[63])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(desc), "n"(0), "r"(scaleD));
}

// The same with 256 tokens (per-channel prefill: twice the work per byte of weights and activations staged).
__device__ __forceinline__ void wgmma256(int (&d)[128], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint64_t desc, int scaleD) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %133, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k32.s32.s8.s8 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, {%128, %129, %130, %131}, %132, p;\n}\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]), "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]), "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]), "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31]), "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]), "+r"(d[36]), "+r"(d[37]), "+r"(d[38]), "+r"(d[39]), "+r"(d[40]), "+r"(d[41]), "+r"(d[42]), "+r"(d[43]), "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47]), "+r"(d[48]), "+r"(d[49]), "+r"(d[50]), "+r"(d[51]), "+r"(d[52]), "+r"(d[53]), "+r"(d[54]), "+r"(d[55]), "+r"(d[56]), "+r"(d[57]), "+r"(d[58]), "+r"(d[59]), "+r"(d[60]), "+r"(d[61]), "+r"(d[62]), "+r"(d[63]), "+r"(d[64]), "+r"(d[65]), "+r"(d[66]), "+r"(d[67]), "+r"(d[68]), "+r"(d[69]), "+r"(d[70]), "+r"(d[71]), "+r"(d[72]), "+r"(d[73]), "+r"(d[74]), "+r"(d[75]), "+r"(d[76]), "+r"(d[77]), "+r"(d[78]), "+r"(d[79]), "+r"(d[80]), "+r"(d[81]), "+r"(d[82]), "+r"(d[83]), "+r"(d[84]), "+r"(d[85]), "+r"(d[86]), "+r"(d[87]), "+r"(d[88]), "+r"(d[89]), "+r"(d[90]), "+r"(d[91]), "+r"(d[92]), "+r"(d[93]), "+r"(d[94]), "+r"(d[95]), "+r"(d[96]), "+r"(d[97]), "+r"(d[98]), "+r"(d[99]), "+r"(d[100]), "+r"(d[101]), "+r"(d[102]), "+r"(d[103]), "+r"(d[104]), "+r"(d[105]), "+r"(d[106]), "+r"(d[107]), "+r"(d[108]), "+r"(d[109]), "+r"(d[110]), "+r"(d[111]), "+r"(d[112]), "+r"(d[113]), "+r"(d[114]), "+r"(d[115]), "+r"(d[116]), "+r"(d[117]), "+r"(d[118]), "+r"(d[119]), "+r"(d[120]), "+r"(d[121]), "+r"(d[122]), "+r"(d[123]), "+r"(d[124]), "+r"(d[125]), "+r"(d[126]), "+r"(d[127])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(desc), "r"(scaleD));
}

template <int BT>
__device__ __forceinline__ void wgmmaN(int (&d)[BT / 2], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                       uint64_t desc, int scaleD) {
  if constexpr (BT == 128) {
    wgmma128(d, a0, a1, a2, a3, desc, scaleD);
  } else {
    wgmma256(d, a0, a1, a2, a3, desc, scaleD);
  }
}

__device__ __forceinline__ void cpAsync16(uint32_t dst, const void* src, int srcBytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(srcBytes));
}

__device__ __forceinline__ uint64_t descB(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (static_cast<uint64_t>(lbo >> 4) << 16) |
         (static_cast<uint64_t>(sbo >> 4) << 32);
}
#endif

template <int MODE, bool SWAP, int BT>
// Per-channel needs ~100 registers, so two blocks share an SM and hide each other's barrier and copy
// stalls; the group modes keep a second accumulator set and run one block per SM.
// BT: tokens per block (wgmma N), 128 or 256.
__global__ void __launch_bounds__(256, MODE == Q_MODE_PER_CHANNEL && BT == 128 ? 2 : 1)
    w4a8WgmmaKernel(const W4A8Args p) {
  constexpr int kBlockTokens = BT;
  constexpr int kActStage = BT * 128;  // bytes of activations per stage (k = 128)
  constexpr int kStageBytes = kActStage + kWStage;
#ifdef Q_HAS_WGMMA
  extern __shared__ __align__(128) uint8_t smem[];
  const int tid = threadIdx.x;
  const int warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t = lane & 3;
  const int m0 = blockIdx.x * kBlockTokens;
  const int n0 = blockIdx.y * kBlockRows;
  const int kTiles = p.kTiles;                // 64-wide k tiles of the packed weights
  const int nStages = (kTiles + 1) / 2;       // 128-wide k steps of the pipeline
  const uint32_t sbase = static_cast<uint32_t>(__cvta_generic_to_shared(smem));

  // Activation copies: this thread moves 4-byte words of tokens r0 and r0 + 64, for each of the 8 (sub-tile,
  // k32 step, half) combinations, with the lane's k position t. A warp then writes 8 tokens × 4 positions of
  // one combination: 32 distinct banks.
  const int r0 = tid >> 2;
  const int8_t* arow[BT / 64];
#pragma unroll
  for (int j = 0; j < BT / 64; ++j) {
    int m = m0 + r0 + 64 * j;
    m = m < p.M ? m : p.M - 1;
    arow[j] = p.a + static_cast<size_t>(m) * p.lda + 16 * t;
  }
  const uint8_t* wsrc = static_cast<const uint8_t*>(p.w) +
                        (static_cast<size_t>(n0 / 16 + warp) * kTiles) * 512 + lane * 16;

  auto issue = [&](int ks) {
    if (ks < nStages) {
      const uint32_t st = sbase + (ks % kStages) * kStageBytes;
#pragma unroll
      for (int sub = 0; sub < 2; ++sub) {
        const int kk = 2 * ks + sub;
        const int k = kk * 64;
        const bool ok = kk < kTiles && k + 16 * t < p.K;
#pragma unroll
        for (int j = 0; j < BT / 64; ++j) {
          const int r = r0 + 64 * j;
#pragma unroll
          for (int c = 0; c < 4; ++c) {  // c = 2·s + half: physical k offset 8s + 4·half inside the lane's 16
            const int s = c >> 1, h = c & 1;
            const uint32_t dst =
                st + static_cast<uint32_t>(((r >> 3) * 8 + 4 * sub + c) * 128 + (r & 7) * 16 + 4 * t);
            const int8_t* src = arow[j] + (ok ? k + 8 * s + 4 * h : 0);
            asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(ok ? 4 : 0));
          }
        }
        cpAsync16(st + kActStage + sub * (kWStage / 2) + tid * 16, wsrc + static_cast<size_t>(kk < kTiles ? kk : 0) * 512,
                  kk < kTiles ? 16 : 0);
      }
    }
    asm volatile("cp.async.commit_group;\n" ::);
  };

  const int tpg = MODE == Q_MODE_PER_CHANNEL ? (1 << 30) : p.groupSize / 64;
  typedef typename std::conditional<MODE == Q_MODE_GROUP_FLOAT, float, int>::type AccT;
  int d[BT / 2];
  AccT acc[MODE == Q_MODE_PER_CHANNEL ? 1 : BT / 2];
#pragma unroll
  for (int i = 0; i < BT / 2; ++i) {
    d[i] = 0;
    if constexpr (MODE != Q_MODE_PER_CHANNEL) acc[i] = 0;
  }

#pragma unroll
  for (int s = 0; s < kStages - 2; ++s) issue(s);

  const int rowA = n0 + warp * 16 + g;  // weight rows of this thread's accumulators: rowA, rowA + 8
  const uint32_t lbo = SWAP ? 1024 : 128, sbo = SWAP ? 128 : 1024;
  for (int ks = 0; ks < nStages; ++ks) {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kStages - 3));
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncthreads();
    // Refills the stage read two steps ago: every thread waited for its wgmmas of that step (wait_group 1
    // at the end of the previous step) before the barrier above.
    issue(ks + kStages - 2);

    const uint32_t st = sbase + (ks % kStages) * kStageBytes;
#pragma unroll
    for (int sub = 0; sub < 2; ++sub) {
      const int kk = 2 * ks + sub;
      if (kk >= kTiles) break;
      uint4 wv;
      asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                   : "=r"(wv.x), "=r"(wv.y), "=r"(wv.z), "=r"(wv.w)
                   : "r"(st + kActStage + sub * (kWStage / 2) + tid * 16));
      const int first = (MODE == Q_MODE_PER_CHANNEL ? kk : kk % tpg) == 0 ? 0 : 1;
      asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
      wgmmaN<BT>(d, (wv.x << 4) & 0xF0F0F0F0u, wv.x & 0xF0F0F0F0u, (wv.y << 4) & 0xF0F0F0F0u, wv.y & 0xF0F0F0F0u,
               descB(st + (4 * sub) * 128, lbo, sbo), first);
      wgmmaN<BT>(d, (wv.z << 4) & 0xF0F0F0F0u, wv.z & 0xF0F0F0F0u, (wv.w << 4) & 0xF0F0F0F0u, wv.w & 0xF0F0F0F0u,
               descB(st + (4 * sub + 2) * 128, lbo, sbo), 1);
      asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
      if constexpr (MODE != Q_MODE_PER_CHANNEL) {
       if (kk % tpg == tpg - 1) {
        asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
        const int grp = kk / tpg;
        if constexpr (MODE == Q_MODE_GROUP_FLOAT) {
          const size_t sb = (static_cast<size_t>(rowA >> 4) * p.G + grp) * 16 + g;  // tiled [N/16][G][16]
          const float s0 = p.wScale[sb];
          const float s1 = p.wScale[sb + 8];
#pragma unroll
          for (int i = 0; i < BT / 2; i += 4) {
            acc[i] += static_cast<float>(d[i] >> 4) * s0;
            acc[i + 1] += static_cast<float>(d[i + 1] >> 4) * s0;
            acc[i + 2] += static_cast<float>(d[i + 2] >> 4) * s1;
            acc[i + 3] += static_cast<float>(d[i + 3] >> 4) * s1;
          }
        } else {
          const size_t sb = (static_cast<size_t>(rowA >> 4) * p.G + grp) * 16 + g;  // tiled [N/16][G][16]
          const int q0 = p.qScale[sb];
          const int q1 = p.qScale[sb + 8];
#pragma unroll
          for (int i = 0; i < BT / 2; i += 4) {
            acc[i] += q0 * (d[i] >> 4);
            acc[i + 1] += q0 * (d[i + 1] >> 4);
            acc[i + 2] += q1 * (d[i + 2] >> 4);
            acc[i + 3] += q1 * (d[i + 3] >> 4);
          }
        }
      }
      }
    }
    asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
  }
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
  asm volatile("cp.async.wait_group 0;\n" ::);

  // Epilogue: accumulator i of n8 chunk j = i / 4 is (row rowA + 8·((i>>1)&1), token m0 + 8j + 2t + (i&1)).
  const float ws0 = MODE == Q_MODE_PER_CHANNEL && p.outType != Q_OUT_I32 ? p.wScale[rowA] : 0.f;
  const float ws1 = MODE == Q_MODE_PER_CHANNEL && p.outType != Q_OUT_I32 ? p.wScale[rowA + 8] : 0.f;
  const float un0 = MODE == Q_MODE_GROUP_INT && p.outType != Q_OUT_I32 ? p.unit[rowA] : 0.f;
  const float un1 = MODE == Q_MODE_GROUP_INT && p.outType != Q_OUT_I32 ? p.unit[rowA + 8] : 0.f;
#pragma unroll
  for (int i = 0; i < BT / 2; ++i) {
    const int m = m0 + 8 * (i >> 2) + 2 * t + (i & 1);
    const bool hi = (i >> 1) & 1;
    const int n = rowA + (hi ? 8 : 0);
    if (m >= p.M) continue;
    const float as = p.aScale[static_cast<size_t>(m) * p.aScaleStride];
    if constexpr (MODE == Q_MODE_PER_CHANNEL) {
      const int P = d[i] >> 4;
      w4a8StoreOut(p, m, n, static_cast<float>(P) * as * (hi ? ws1 : ws0), P);
    } else if constexpr (MODE == Q_MODE_GROUP_FLOAT) {
      w4a8StoreOut(p, m, n, static_cast<float>(acc[i]) * as, 0);
    } else {
      const int a = static_cast<int>(acc[i]);
      w4a8StoreOut(p, m, n, static_cast<float>(a) * as * (hi ? un1 : un0), a);
    }
  }
#endif
}

template <int MODE, int BT>
cudaError_t launchWgmma(const W4A8Args& a) {
  const int smemBytes = kStages * (BT * 128 + kWStage);
  cudaError_t e =
      cudaFuncSetAttribute(w4a8WgmmaKernel<MODE, false, BT>, cudaFuncAttributeMaxDynamicSharedMemorySize, smemBytes);
  if (e != cudaSuccess) return e;
  dim3 grid((a.M + BT - 1) / BT, a.N / kBlockRows);
  w4a8WgmmaKernel<MODE, false, BT><<<grid, 256, smemBytes, reinterpret_cast<cudaStream_t>(a.stream)>>>(a);
  return cudaGetLastError();
}

}  // namespace

// True when the current device can run the sm_90a path compiled into this binary.
extern "C" bool q_wgmma_supported() {
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
  return major == 9 && minor == 0;
}

// wide: 256 tokens per block (per-channel only; the group modes' second accumulator set would not fit).
extern "C" cudaError_t q_w4a8_gemm_wgmma(const W4A8Args* args, int mode, bool wide) {
  const W4A8Args& a = *args;
  switch (mode) {
    case Q_MODE_PER_CHANNEL:
      return wide ? launchWgmma<Q_MODE_PER_CHANNEL, 256>(a) : launchWgmma<Q_MODE_PER_CHANNEL, 128>(a);
    case Q_MODE_GROUP_FLOAT:
      return launchWgmma<Q_MODE_GROUP_FLOAT, 128>(a);
    default:
      return launchWgmma<Q_MODE_GROUP_INT, 128>(a);
  }
}
