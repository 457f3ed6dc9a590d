// Quantized two-step all-reduce kernels (Flash Communication) and their fused intra-node form.
//
// What they compute: exactly the semantics of packages/comm/src/reference.ts (quantize.ts for the rounding):
// chunk j = elements [j*C, min(n,(j+1)*C)); every chunk is quantized group-wise (groupSize 128) into a record
// [codes | f32 scales | u8 zeros]; rank j dequantizes the W records of chunk j, sums them in f32 in rank order,
// requantizes; every rank dequantizes all reduced records. f32 ops use __fdiv_rn/__fmul_rn/__fadd_rn and
// __float2int_rn so no contraction or reciprocal changes a bit.
//
// Layout and work split: one thread holds 8 consecutive elements (16-byte loads of f16/bf16), so a group of 128
// is 16 lanes and a warp does 2 groups ("a unit"). Group statistics are 16-lane shuffles; lanes past the end hold
// 0, which changes neither amax nor the asymmetric range (that always includes 0). n must be a multiple of 8, so
// a thread's 8 elements are all in range or all out.
//
// The fused kernel: phase A quantizes this rank's whole input into its own registered buffer; flag barrier;
// one-shot: every rank reads every rank's records of every chunk and reduces locally (same bits as two-shot, as
// steps 4-6 are deterministic); two-shot: phase A writes chunk j's record into rank j's buffer (remote stores:
// NVLink writes need no round trip, about 15% faster than reading peers for the quantized kernels at 16-128 MiB), barrier, rank j
// reduces its chunk and writes the result into every rank's buffer, barrier, every rank dequantizes locally. Block b of every rank processes the same work items in every
// phase, so a barrier between block b of each rank pair is enough. The host alternates between two halves of the
// registered buffer (epoch parity), so no closing barrier is needed: a rank reuses a half two calls later, after
// the barrier of the call in between, which no peer passes before it finished reading. Peer data is read with
// ld.global.cg (L2, never a stale L1 line).
#include "allreduce/allreduce.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

namespace q {
namespace {

constexpr int kThreads = 512;  // 16 warps
constexpr int kWarps = kThreads / 32;
constexpr int kG = 128;        // group size on the GPU
constexpr int kTPG = kG / 8;   // lanes per group
constexpr int kGPW = 32 / kTPG;  // groups per warp

struct F8 {
  float v[8];
};

template <typename T>
__device__ __forceinline__ F8 load8(const T* p) {
  uint4 raw = *reinterpret_cast<const uint4*>(p);
  const T* h = reinterpret_cast<const T*>(&raw);
  F8 f;
#pragma unroll
  for (int i = 0; i < 8; i++) {
    if constexpr (sizeof(T) == 2 && std::is_same<T, __half>::value) f.v[i] = __half2float(h[i]);
    else f.v[i] = __bfloat162float(h[i]);
  }
  return f;
}

template <typename T>
__device__ __forceinline__ F8 load8cg(const T* p) {
  uint4 raw = __ldcg(reinterpret_cast<const uint4*>(p));
  const T* h = reinterpret_cast<const T*>(&raw);
  F8 f;
#pragma unroll
  for (int i = 0; i < 8; i++) {
    if constexpr (std::is_same<T, __half>::value) f.v[i] = __half2float(h[i]);
    else f.v[i] = __bfloat162float(h[i]);
  }
  return f;
}

template <typename T>
__device__ __forceinline__ void store8(T* p, const F8& f) {
  uint4 raw;
  T* h = reinterpret_cast<T*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; i++) {
    if constexpr (std::is_same<T, __half>::value) h[i] = __float2half_rn(f.v[i]);
    else h[i] = __float2bfloat16_rn(f.v[i]);
  }
  *reinterpret_cast<uint4*>(p) = raw;
}

__device__ __forceinline__ float segMax(float v) {
#pragma unroll
  for (int o = kTPG / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float segMin(float v) {
#pragma unroll
  for (int o = kTPG / 2; o > 0; o >>= 1) v = fminf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Raw codes of one thread's 8 elements plus its group's scale and zero point.
struct Raw {
  uint2 codes;  // int8: 8 bytes; int4: codes.x only
  float scale;
  int zero;
};

template <int BITS, bool SYM>
__device__ __forceinline__ Raw loadRaw(const char* rec, const ArLayout& L, int g, int t) {
  Raw r;
  if constexpr (BITS == 8) r.codes = __ldcg(reinterpret_cast<const uint2*>(rec + g * kG + t * 8));
  else r.codes = make_uint2(__ldcg(reinterpret_cast<const unsigned*>(rec + g * (kG / 2) + t * 4)), 0u);
  r.scale = __ldcg(reinterpret_cast<const float*>(rec + L.scalesOff) + g);
  r.zero = SYM ? 0 : static_cast<int>(__ldcg(reinterpret_cast<const unsigned char*>(rec + L.zerosOff) + g));
  return r;
}

template <int BITS, bool SYM>
__device__ __forceinline__ F8 dequant(const Raw& r) {
  F8 f;
#pragma unroll
  for (int i = 0; i < 8; i++) {
    int q;
    if constexpr (BITS == 8) {
      unsigned w = i < 4 ? r.codes.x : r.codes.y;
      unsigned b = (w >> ((i & 3) * 8)) & 0xffu;
      q = SYM ? static_cast<int>(static_cast<signed char>(b)) : static_cast<int>(b);
    } else {
      unsigned nib = (r.codes.x >> (i * 4)) & 0xfu;
      q = SYM ? (static_cast<int>(nib << 28) >> 28) : static_cast<int>(nib);
    }
    f.v[i] = __fmul_rn(static_cast<float>(q - r.zero), r.scale);
  }
  return f;
}

// Quantizes one thread's 8 values (zeros when out of range) with its 16-lane group; every lane must call it.
template <int BITS, bool SYM>
__device__ __forceinline__ Raw quantize(const F8& x) {
  Raw r;
  float scale;
  int zero = 0, lo, hi;
  if constexpr (SYM) {
    constexpr float qmax = BITS == 8 ? 127.f : 7.f;
    float a = 0.f;
#pragma unroll
    for (int i = 0; i < 8; i++) a = fmaxf(a, fabsf(x.v[i]));
    a = segMax(a);
    scale = __fdiv_rn(a, qmax);
    if (scale == 0.f) scale = 1.f;
    lo = -static_cast<int>(qmax);
    hi = static_cast<int>(qmax);
  } else {
    constexpr float qmaxU = BITS == 8 ? 255.f : 15.f;
    float mn = 0.f, mx = 0.f;
#pragma unroll
    for (int i = 0; i < 8; i++) {
      mn = fminf(mn, x.v[i]);
      mx = fmaxf(mx, x.v[i]);
    }
    mn = segMin(mn);
    mx = segMax(mx);
    scale = __fdiv_rn(__fsub_rn(mx, mn), qmaxU);
    if (scale == 0.f) scale = 1.f;
    zero = min(static_cast<int>(qmaxU), max(0, __float2int_rn(__fdiv_rn(-mn, scale))));
    lo = 0;
    hi = static_cast<int>(qmaxU);
  }
  unsigned w0 = 0, w1 = 0;
#pragma unroll
  for (int i = 0; i < 8; i++) {
    int q = __float2int_rn(__fdiv_rn(x.v[i], scale)) + zero;
    q = min(hi, max(lo, q));
    if constexpr (BITS == 8) {
      unsigned b = static_cast<unsigned>(q) & 0xffu;
      if (i < 4) w0 |= b << (i * 8);
      else w1 |= b << ((i - 4) * 8);
    } else {
      w0 |= (static_cast<unsigned>(q) & 0xfu) << (i * 4);
    }
  }
  r.codes = make_uint2(w0, w1);
  r.scale = scale;
  r.zero = zero;
  return r;
}

template <int BITS, bool SYM>
__device__ __forceinline__ void storeRaw(char* rec, const ArLayout& L, int g, int t, const Raw& r, bool valid) {
  if (!valid) return;
  if constexpr (BITS == 8) *reinterpret_cast<uint2*>(rec + g * kG + t * 8) = r.codes;
  else *reinterpret_cast<unsigned*>(rec + g * (kG / 2) + t * 4) = r.codes.x;
  if (t == 0) {
    reinterpret_cast<float*>(rec + L.scalesOff)[g] = r.scale;
    if constexpr (!SYM) reinterpret_cast<unsigned char*>(rec + L.zerosOff)[g] = static_cast<unsigned char>(r.zero);
  }
}

struct Lane {
  int sub, t;
};
__device__ __forceinline__ Lane lane() {
  int l = threadIdx.x & 31;
  return {l / kTPG, l % kTPG};
}

__host__ __device__ __forceinline__ int64_t unitsOf(const ArLayout& L) {
  int64_t gpc = L.chunk / kG;
  return (gpc + kGPW - 1) / kGPW;
}

// ---- phases, shared by the NCCL-path kernels and the fused kernel -------------------------------------------

// A: this rank's input, all chunks, into records at dst[j] (j = 0..W-1). All W loads are issued before any
// arithmetic, so a warp keeps W x 512 bytes in flight.
template <typename T, int BITS, bool SYM, int MW>
__device__ void phaseQuantize(const ArLayout& L, const T* in, const ArPtrs& dst, int64_t u) {
  Lane ln = lane();
  int g = static_cast<int>(u * kGPW + ln.sub);
  bool gIn = g < L.chunk / kG;
  uint4 raw[MW];
#pragma unroll
  for (int j = 0; j < MW; j++) {
    int64_t e = j * L.chunk + static_cast<int64_t>(g) * kG + ln.t * 8;
    raw[j] = j < L.world && gIn && e < L.n ? *reinterpret_cast<const uint4*>(in + e) : make_uint4(0, 0, 0, 0);
  }
#pragma unroll
  for (int j = 0; j < MW; j++) {
    if (j >= L.world) break;
    int64_t e = j * L.chunk + static_cast<int64_t>(g) * kG + ln.t * 8;
    bool valid = gIn && e < L.n;
    if constexpr (BITS == 0) {
      if (valid) *reinterpret_cast<uint4*>(dst.p[j] + (static_cast<int64_t>(g) * kG + ln.t * 8) * sizeof(T)) = raw[j];
    } else {
      // Out-of-range lanes hold 0 (bits 0 are +0 in f16 and bf16), which leaves the group statistics unchanged.
      const T* h = reinterpret_cast<const T*>(&raw[j]);
      F8 x;
#pragma unroll
      for (int i = 0; i < 8; i++) {
        if constexpr (std::is_same<T, __half>::value) x.v[i] = __half2float(h[i]);
        else x.v[i] = __bfloat162float(h[i]);
      }
      Raw r = quantize<BITS, SYM>(x);
      storeRaw<BITS, SYM>(dst.p[j], L, g, ln.t, r, valid);
    }
  }
}

// A for one (chunk j, unit u) item: the one-shot kernel spreads items over W times more warps.
template <typename T, int BITS, bool SYM>
__device__ void phaseQuantizeOne(const ArLayout& L, const T* in, char* dst, int j, int64_t u) {
  Lane ln = lane();
  int g = static_cast<int>(u * kGPW + ln.sub);
  int64_t e = j * L.chunk + static_cast<int64_t>(g) * kG + ln.t * 8;
  bool valid = g < L.chunk / kG && e < L.n;
  uint4 raw = valid ? *reinterpret_cast<const uint4*>(in + e) : make_uint4(0, 0, 0, 0);
  if constexpr (BITS == 0) {
    if (valid) *reinterpret_cast<uint4*>(dst + (static_cast<int64_t>(g) * kG + ln.t * 8) * sizeof(T)) = raw;
  } else {
    const T* h = reinterpret_cast<const T*>(&raw);
    F8 x;
#pragma unroll
    for (int i = 0; i < 8; i++) {
      if constexpr (std::is_same<T, __half>::value) x.v[i] = __half2float(h[i]);
      else x.v[i] = __bfloat162float(h[i]);
    }
    storeRaw<BITS, SYM>(dst, L, g, ln.t, quantize<BITS, SYM>(x), valid);
  }
}

// Sum of chunk `j`'s slice from the W source records, in rank order.
template <typename T, int BITS, bool SYM, int MW>
__device__ __forceinline__ F8 sumSources(const ArLayout& L, const ArPtrs& src, int g, int t, bool valid) {
  F8 acc;
#pragma unroll
  for (int i = 0; i < 8; i++) acc.v[i] = 0.f;
  if (!valid) return acc;
  if constexpr (BITS == 0) {
    uint4 raw[MW];
#pragma unroll
    for (int r = 0; r < MW; r++)
      if (r < L.world) raw[r] = __ldcg(reinterpret_cast<const uint4*>(src.p[r] + (static_cast<int64_t>(g) * kG + t * 8) * sizeof(T)));
#pragma unroll
    for (int r = 0; r < MW; r++) {
      if (r >= L.world) break;
      const T* h = reinterpret_cast<const T*>(&raw[r]);
#pragma unroll
      for (int i = 0; i < 8; i++) {
        float v;
        if constexpr (std::is_same<T, __half>::value) v = __half2float(h[i]);
        else v = __bfloat162float(h[i]);
        acc.v[i] = r == 0 ? v : __fadd_rn(acc.v[i], v);
      }
    }
  } else {
    Raw raw[MW];
#pragma unroll
    for (int r = 0; r < MW; r++)
      if (r < L.world) raw[r] = loadRaw<BITS, SYM>(src.p[r], L, g, t);
#pragma unroll
    for (int r = 0; r < MW; r++) {
      if (r >= L.world) break;
      F8 d = dequant<BITS, SYM>(raw[r]);
#pragma unroll
      for (int i = 0; i < 8; i++) acc.v[i] = r == 0 ? d.v[i] : __fadd_rn(acc.v[i], d.v[i]);
    }
  }
  return acc;
}

// B: reduce chunk L.rank from src records (one per rank) into the record at dst.
template <typename T, int BITS, bool SYM, int MW>
__device__ void phaseReduce(const ArLayout& L, const ArPtrs& src, char* dst, int64_t u) {
  Lane ln = lane();
  int g = static_cast<int>(u * kGPW + ln.sub);
  int64_t e = L.rank * L.chunk + static_cast<int64_t>(g) * kG + ln.t * 8;
  bool valid = g < L.chunk / kG && e < L.n;
  F8 acc = sumSources<T, BITS, SYM, MW>(L, src, g, ln.t, valid);
  if constexpr (BITS == 0) {
    if (valid) store8<T>(reinterpret_cast<T*>(dst) + static_cast<int64_t>(g) * kG + ln.t * 8, acc);
  } else {
    Raw r = quantize<BITS, SYM>(acc);
    storeRaw<BITS, SYM>(dst, L, g, ln.t, r, valid);
  }
}

// B, push form: reduce chunk L.rank from the records in src and write the result into every rank's record at
// dst.p[r] (remote stores: NVLink writes need no round trip, unlike reads).
template <typename T, int BITS, bool SYM, int MW>
__device__ void phaseReducePush(const ArLayout& L, const ArPtrs& src, const ArPtrs& dst, int64_t u) {
  Lane ln = lane();
  int g = static_cast<int>(u * kGPW + ln.sub);
  int64_t e = L.rank * L.chunk + static_cast<int64_t>(g) * kG + ln.t * 8;
  bool valid = g < L.chunk / kG && e < L.n;
  F8 acc = sumSources<T, BITS, SYM, MW>(L, src, g, ln.t, valid);
  if constexpr (BITS == 0) {
    if (valid) {
      uint4 raw;
      T* h = reinterpret_cast<T*>(&raw);
#pragma unroll
      for (int i = 0; i < 8; i++) {
        if constexpr (std::is_same<T, __half>::value) h[i] = __float2half_rn(acc.v[i]);
        else h[i] = __float2bfloat16_rn(acc.v[i]);
      }
#pragma unroll
      for (int r = 0; r < MW; r++)
        if (r < L.world) *reinterpret_cast<uint4*>(dst.p[r] + (static_cast<int64_t>(g) * kG + ln.t * 8) * sizeof(T)) = raw;
    }
  } else {
    Raw q = quantize<BITS, SYM>(acc);
#pragma unroll
    for (int r = 0; r < MW; r++)
      if (r < L.world) storeRaw<BITS, SYM>(dst.p[r], L, g, ln.t, q, valid);
  }
}

// C: dequantize reduced record j (at src.p[j]) of every chunk into out; all W (remote) loads first.
template <typename T, int BITS, bool SYM, int MW>
__device__ void phaseDequant(const ArLayout& L, const ArPtrs& src, T* out, int64_t u) {
  Lane ln = lane();
  int g = static_cast<int>(u * kGPW + ln.sub);
  bool gIn = g < L.chunk / kG;
  if constexpr (BITS == 0) {
    uint4 raw[MW];
#pragma unroll
    for (int j = 0; j < MW; j++) {
      int64_t e = j * L.chunk + static_cast<int64_t>(g) * kG + ln.t * 8;
      if (j < L.world && gIn && e < L.n) raw[j] = __ldcg(reinterpret_cast<const uint4*>(src.p[j] + (static_cast<int64_t>(g) * kG + ln.t * 8) * sizeof(T)));
    }
#pragma unroll
    for (int j = 0; j < MW; j++) {
      int64_t e = j * L.chunk + static_cast<int64_t>(g) * kG + ln.t * 8;
      if (j < L.world && gIn && e < L.n) *reinterpret_cast<uint4*>(out + e) = raw[j];
    }
  } else {
    Raw raw[MW];
#pragma unroll
    for (int j = 0; j < MW; j++) {
      int64_t e = j * L.chunk + static_cast<int64_t>(g) * kG + ln.t * 8;
      if (j < L.world && gIn && e < L.n) raw[j] = loadRaw<BITS, SYM>(src.p[j], L, g, ln.t);
    }
#pragma unroll
    for (int j = 0; j < MW; j++) {
      int64_t e = j * L.chunk + static_cast<int64_t>(g) * kG + ln.t * 8;
      if (j < L.world && gIn && e < L.n) store8<T>(out + e, dequant<BITS, SYM>(raw[j]));
    }
  }
}

// One-shot, one (chunk j, unit u) item: reduced here from every rank's record j, requantized and dequantized in
// registers.
template <typename T, int BITS, bool SYM, int MW>
__device__ void phaseOneShotOne(const ArLayout& L, const ArPtrs& data, T* out, int j, int64_t u) {
  Lane ln = lane();
  int g = static_cast<int>(u * kGPW + ln.sub);
  int64_t e = j * L.chunk + static_cast<int64_t>(g) * kG + ln.t * 8;
  bool valid = g < L.chunk / kG && e < L.n;
  ArPtrs src;
#pragma unroll
  for (int r = 0; r < MW; r++) src.p[r] = r < L.world ? data.p[r] + j * L.rb : nullptr;
  F8 acc = sumSources<T, BITS, SYM, MW>(L, src, g, ln.t, valid);
  if constexpr (BITS != 0) acc = dequant<BITS, SYM>(quantize<BITS, SYM>(acc));
  if (valid) store8<T>(out + e, acc);
}

// ---- kernels ------------------------------------------------------------------------------------------------

template <typename T, int BITS, bool SYM>
__global__ void __launch_bounds__(kThreads) quantizeKernel(ArLayout L, const T* in, char* send) {
  ArPtrs dst;
#pragma unroll
  for (int j = 0; j < kMaxRanks; j++) dst.p[j] = send + j * L.rb;
  int64_t units = unitsOf(L);
  for (int64_t u = blockIdx.x * kWarps + threadIdx.x / 32; u < units; u += static_cast<int64_t>(gridDim.x) * kWarps)
    phaseQuantize<T, BITS, SYM, kMaxRanks>(L, in, dst, u);
}

template <typename T, int BITS, bool SYM>
__global__ void __launch_bounds__(kThreads) reduceKernel(ArLayout L, const char* recv, char* reduced) {
  ArPtrs src;
#pragma unroll
  for (int r = 0; r < kMaxRanks; r++) src.p[r] = const_cast<char*>(recv) + r * L.rb;
  int64_t units = unitsOf(L);
  for (int64_t u = blockIdx.x * kWarps + threadIdx.x / 32; u < units; u += static_cast<int64_t>(gridDim.x) * kWarps)
    phaseReduce<T, BITS, SYM, kMaxRanks>(L, src, reduced, u);
}

template <typename T, int BITS, bool SYM>
__global__ void __launch_bounds__(kThreads) dequantKernel(ArLayout L, const char* gathered, T* out) {
  ArPtrs src;
#pragma unroll
  for (int j = 0; j < kMaxRanks; j++) src.p[j] = const_cast<char*>(gathered) + j * L.rb;
  int64_t units = unitsOf(L);
  for (int64_t u = blockIdx.x * kWarps + threadIdx.x / 32; u < units; u += static_cast<int64_t>(gridDim.x) * kWarps)
    phaseDequant<T, BITS, SYM, kMaxRanks>(L, src, out, u);
}

__device__ __forceinline__ uint64_t nowNs() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
__device__ __forceinline__ void stRelease(uint32_t* p, uint32_t v) {
  asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ uint32_t ldAcquire(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// Block b of this rank meets block b of every rank at `slot`. A peer that never arrives traps the kernel after
// the deadline, so the host sees an error instead of a hang.
__device__ void flagBarrier(const ArLayout& L, const ArPtrs& sig, int slot, uint32_t epoch, uint64_t deadline) {
  __syncthreads();
  if (threadIdx.x < L.world) {
    int peer = threadIdx.x;
    __threadfence_system();
    uint32_t* remote = reinterpret_cast<uint32_t*>(sig.p[peer]) + (slot * kMaxBlocks + blockIdx.x) * kMaxRanks + L.rank;
    stRelease(remote, epoch);
    const uint32_t* mine = reinterpret_cast<const uint32_t*>(sig.p[L.rank]) + (slot * kMaxBlocks + blockIdx.x) * kMaxRanks + peer;
    while (static_cast<int32_t>(ldAcquire(mine) - epoch) < 0) {
      if (nowNs() > deadline) __trap();
    }
  }
  __syncthreads();
}

template <typename T, int BITS, bool SYM, int MW>
__global__ void __launch_bounds__(kThreads) fusedKernel(ArLayout L, const T* in, T* out, ArPtrs data, ArPtrs sig,
                                                          uint32_t epoch, bool oneShot, uint64_t timeoutNs) {
  uint64_t deadline = nowNs() + timeoutNs;
  int64_t units = unitsOf(L);
  int64_t w0 = blockIdx.x * kWarps + threadIdx.x / 32, stride = static_cast<int64_t>(gridDim.x) * kWarps;
  if (oneShot) {
    // Items (chunk j, unit u), item i = j * units + u, warp w takes items w, w + stride, ...: the same items in
    // both phases, so block b reads only what block b of each peer wrote.
    int64_t items = units * L.world;
    for (int64_t i = w0; i < items; i += stride) {
      int j = static_cast<int>(i / units);
      phaseQuantizeOne<T, BITS, SYM>(L, in, data.p[L.rank] + j * L.rb, j, i - j * units);
    }
    flagBarrier(L, sig, 0, epoch, deadline);
    for (int64_t i = w0; i < items; i += stride) {
      int j = static_cast<int>(i / units);
      phaseOneShotOne<T, BITS, SYM, MW>(L, data, out, j, i - j * units);
    }
    return;
  }
  // Two-shot, push: phase A writes chunk j's record straight into rank j's slot [this rank]; phase B reduces the
  // local slots and writes the result into every rank's gathered slot [this rank]; phase C reads only local
  // memory. Layout of a half: W receive slots, then W gathered slots.
  ArPtrs sendTo;
#pragma unroll
  for (int j = 0; j < MW; j++) sendTo.p[j] = j < L.world ? data.p[j] + L.rank * L.rb : nullptr;
  for (int64_t u = w0; u < units; u += stride) phaseQuantize<T, BITS, SYM, MW>(L, in, sendTo, u);
  flagBarrier(L, sig, 0, epoch, deadline);
  ArPtrs recv, gatherTo;
#pragma unroll
  for (int r = 0; r < MW; r++) {
    recv.p[r] = r < L.world ? data.p[L.rank] + r * L.rb : nullptr;
    gatherTo.p[r] = r < L.world ? data.p[r] + (L.world + L.rank) * L.rb : nullptr;
  }
  for (int64_t u = w0; u < units; u += stride) phaseReducePush<T, BITS, SYM, MW>(L, recv, gatherTo, u);
  flagBarrier(L, sig, 1, epoch, deadline);
  ArPtrs gathered;
#pragma unroll
  for (int j = 0; j < MW; j++) gathered.p[j] = j < L.world ? data.p[L.rank] + (L.world + j) * L.rb : nullptr;
  for (int64_t u = w0; u < units; u += stride) phaseDequant<T, BITS, SYM, MW>(L, gathered, out, u);
}

int blocksFor(int64_t warpItems, int sms, int perSm) {
  int64_t blocks = (warpItems + kWarps - 1) / kWarps;
  int64_t cap = static_cast<int64_t>(sms) * perSm;
  return static_cast<int>(blocks < 1 ? 1 : blocks < cap ? blocks : cap);
}

int gridFor(const ArLayout& L, int sms, int perSm) { return blocksFor(unitsOf(L), sms, perSm); }

// Calls f.template operator()<T, BITS, SYM>() for the layout's dtype and scheme.
template <typename F>
cudaError_t dispatch(const ArLayout& L, F&& f) {
  auto byScheme = [&](auto tag) -> cudaError_t {
    using T = decltype(tag);
    if (L.bits == 0) return f.template operator()<T, 0, true>();
    if (L.bits == 8) return L.sym ? f.template operator()<T, 8, true>() : f.template operator()<T, 8, false>();
    if (L.bits == 4) return L.sym ? f.template operator()<T, 4, true>() : f.template operator()<T, 4, false>();
    return cudaErrorInvalidValue;
  };
  if (L.groupSize != kG || L.world < 1 || L.world > kMaxRanks || L.n % 8 != 0) return cudaErrorInvalidValue;
  return L.dtype == 0 ? byScheme(__half{}) : byScheme(__nv_bfloat16{});
}

}  // namespace

cudaError_t LaunchQuantize(const ArLayout& L, const void* in, char* send, int sms, cudaStream_t s) {
  return dispatch(L, [&]<typename T, int B, bool S>() {
    quantizeKernel<T, B, S><<<gridFor(L, sms, 4), kThreads, 0, s>>>(L, static_cast<const T*>(in), send);
    return cudaGetLastError();
  });
}

cudaError_t LaunchReduce(const ArLayout& L, const char* recv, char* reduced, int sms, cudaStream_t s) {
  return dispatch(L, [&]<typename T, int B, bool S>() {
    reduceKernel<T, B, S><<<gridFor(L, sms, 4), kThreads, 0, s>>>(L, recv, reduced);
    return cudaGetLastError();
  });
}

cudaError_t LaunchDequant(const ArLayout& L, const char* gathered, void* out, int sms, cudaStream_t s) {
  return dispatch(L, [&]<typename T, int B, bool S>() {
    dequantKernel<T, B, S><<<gridFor(L, sms, 4), kThreads, 0, s>>>(L, gathered, static_cast<T*>(out));
    return cudaGetLastError();
  });
}

template <typename T, int B, bool S, int MW>
cudaError_t launchFusedW(const ArLayout& L, const void* in, void* out, const ArPtrs& data, const ArPtrs& sig,
                         uint32_t epoch, bool oneShot, int sms, uint64_t timeoutNs, cudaStream_t s) {
  // Every block spins on its peers' blocks, so all must be resident at once: the grid never exceeds what the
  // occupancy calculator says fits (asked once per kernel instance).
  static int perSm = 0;
  if (perSm == 0) {
    cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&perSm, fusedKernel<T, B, S, MW>, kThreads, 0);
    if (e != cudaSuccess) return e;
    if (perSm < 1) return cudaErrorLaunchOutOfResources;
  }
  int blocks = blocksFor(oneShot ? unitsOf(L) * L.world : unitsOf(L), sms, perSm);
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  fusedKernel<T, B, S, MW><<<blocks, kThreads, 0, s>>>(L, static_cast<const T*>(in), static_cast<T*>(out), data, sig, epoch, oneShot, timeoutNs);
  return cudaGetLastError();
}

cudaError_t LaunchFused(const ArLayout& L, const void* in, void* out, const ArPtrs& data, const ArPtrs& sig,
                        uint32_t epoch, bool oneShot, int sms, uint64_t timeoutNs, cudaStream_t s) {
  return dispatch(L, [&]<typename T, int B, bool S>() {
    if (L.world <= 2) return launchFusedW<T, B, S, 2>(L, in, out, data, sig, epoch, oneShot, sms, timeoutNs, s);
    if (L.world <= 4) return launchFusedW<T, B, S, 4>(L, in, out, data, sig, epoch, oneShot, sms, timeoutNs, s);
    return launchFusedW<T, B, S, 8>(L, in, out, data, sig, epoch, oneShot, sms, timeoutNs, s);
  });
}

}  // namespace q
