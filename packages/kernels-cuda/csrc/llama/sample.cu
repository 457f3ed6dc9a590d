// Token sampling on the device, one token per row of logits, so that only token ids cross to the host.
//   temperature ≤ 0 (or NaN): greedy, the argmax with the lowest index on ties (as the CPU `argmax`);
//   otherwise a draw from softmax(logits / temperature) restricted, as the CPU `sampleToken` does, to the k
//   largest logits (topK > 0; ties broken toward the lower index) and then to the smallest prefix of those,
//   in descending order, whose renormalized probability reaches topP (topP < 1).
//
// Layout: logits f32 [B, V]; temperature f32 [B]; topK i32 [B]; topP f32 [B]; seeds u32 [B]; steps i32 [B];
// out i32 [B]. One block of 512 threads per row (B is the decode batch; V up to 2^23), 16-byte loads when
// V % 4 == 0 and the row is aligned.
//
// How, without sorting: every element gets a 64-bit key (order-preserving bits of the logit, then the
// complement of its index), unique and descending in the CPU's sort order. The top-k cut is the k-th largest key
// and the top-p cut the first key (descending) at which the cumulative probability mass reaches p·Z; each is found
// by a radix select over the key, 8 bits per pass: a shared-memory histogram (count, and mass for top-p) of the
// candidates that share the prefix chosen so far, one warp picks the bin where the running total crosses the
// target, and the select stops as soon as that bin holds exactly what is still needed (usually after 2–4
// passes). Mass is exp((l − max)/T) in 40-bit fixed point, so the histograms are integer sums: the cut does not
// depend on the order of atomics, and the same seed and step give the same token on every run. Then the draw is
// Gumbel-max over the allowed keys: argmax of (l − max)/T − log(−log u_i) with u_i from Philox4x32-10 keyed by
// the row's seed, counter (i/4, step): an exact sample from the restricted softmax with no normalizing sum and
// no scan. Fixed-point truncation (2^-40 of the top token's mass per token) only moves a cut that lies within
// ~V·2^-40 of a boundary.
#include <math.h>
#include <stdint.h>

#include "actquant/quant_rule.cuh"
#include "llama.h"

namespace q {
namespace {

constexpr int kThreads = 512;
constexpr int kBins = 256;

struct SampleShared {
  unsigned int count[kBins];
  unsigned long long mass[kBins];
  float redV[32];
  int redI[32];
  int bin;
  unsigned int binCount;
  unsigned long long above;  // weight of the bins above the chosen one
  double target;
};

__device__ __forceinline__ uint4 philox4x32(uint4 c, uint2 k) {
#pragma unroll
  for (int r = 0; r < 10; r++) {
    const uint32_t hi0 = __umulhi(0xD2511F53u, c.x), lo0 = 0xD2511F53u * c.x;
    const uint32_t hi1 = __umulhi(0xCD9E8D57u, c.z), lo1 = 0xCD9E8D57u * c.z;
    c = make_uint4(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
    k.x += 0x9E3779B9u;
    k.y += 0xBB67AE85u;
  }
  return c;
}

__device__ __forceinline__ float sanitize(float v) { return isnan(v) ? -INFINITY : v; }

// Descending order of logits, then ascending order of indices, as an ascending unsigned key.
__device__ __forceinline__ uint64_t keyOf(float v, int i) {
  uint32_t u = __float_as_uint(v);
  u ^= (u >> 31) ? 0xFFFFFFFFu : 0x80000000u;
  return (static_cast<uint64_t>(u) << 32) | static_cast<uint32_t>(~static_cast<uint32_t>(i));
}

// Elements 4j..4j+3 of the row; −inf past V.
__device__ __forceinline__ void loadGroup(const float* row, int V, bool vec, int j, float (&v)[4]) {
  if (vec && 4 * j + 3 < V) {
    float4 f = reinterpret_cast<const float4*>(row)[j];
    v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
  } else {
#pragma unroll
    for (int e = 0; e < 4; e++) v[e] = 4 * j + e < V ? row[4 * j + e] : -INFINITY;
  }
#pragma unroll
  for (int e = 0; e < 4; e++) v[e] = sanitize(v[e]);
}

__device__ __forceinline__ void better(float& v, int& i, float ov, int oi) {
  if (ov > v || (ov == v && oi < i)) v = ov, i = oi;
}

// Block argmax (largest value, lowest index on ties); every thread gets the index.
__device__ int blockArgmax(float v, int i, SampleShared& sh) {
  for (int o = 16; o > 0; o >>= 1) better(v, i, __shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, i, o));
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) sh.redV[warp] = v, sh.redI[warp] = i;
  __syncthreads();
  if (warp == 0) {
    v = lane < kThreads / 32 ? sh.redV[lane] : -INFINITY;
    i = lane < kThreads / 32 ? sh.redI[lane] : INT32_MAX;
    for (int o = 16; o > 0; o >>= 1)
      better(v, i, __shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, i, o));
    if (lane == 0) sh.redI[0] = i;
  }
  __syncthreads();
  const int r = sh.redI[0];
  __syncthreads();
  return r;
}

// Radix select over the keys ≥ floor: the largest key K such that the weight of the candidates with key ≥ K
// reaches the target (kMass: mass ≥ frac · total mass; otherwise count ≥ need). Returns a threshold T with
// {key ≥ max(T, floor)} = {candidates with key ≥ K}.
template <bool kMass>
__device__ uint64_t radixSelect(const float* row, int V, bool vec, uint64_t floor, float mx, float temp, float frac,
                                unsigned long long need, SampleShared& sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int groups = (V + 3) / 4;
  uint64_t prefix = 0;
  unsigned long long base = 0;  // weight of the candidates above the prefix's range
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < kBins; b += kThreads) sh.count[b] = 0, sh.mass[b] = 0;
    __syncthreads();
    const uint64_t hiMask = shift == 56 ? 0 : (~0ull << (shift + 8));
    // Warp-uniform trip count, so that every lane takes part in the warp-aggregated histogram updates.
    for (int j0 = warp * 32; j0 < groups; j0 += kThreads) {
      const int j = j0 + lane;
      float v[4];
      loadGroup(row, V, vec, j < groups ? j : 0, v);
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int i = 4 * j + e;
        const uint64_t key = keyOf(v[e], i);
        const bool cand = j < groups && i < V && key >= floor && (key & hiMask) == prefix;
        const int d = cand ? static_cast<int>((key >> shift) & 0xFF) : kBins;
        // Logits share their exponent bits, so most lanes hit one bin: one atomic per distinct bin per warp.
        const unsigned peers = __match_any_sync(0xffffffffu, d);
        const bool leader = lane == __ffs(peers) - 1;
        if constexpr (kMass) {
          const unsigned long long m = cand ? __float2ull_rn(expf((v[e] - mx) / temp) * 0x1p40f) : 0ull;
          const unsigned lo = __reduce_add_sync(peers, static_cast<unsigned>(m & 0xFFFFF));
          const unsigned hi = __reduce_add_sync(peers, static_cast<unsigned>(m >> 20));
          if (leader && cand) atomicAdd(&sh.mass[d], (static_cast<unsigned long long>(hi) << 20) + lo);
        }
        if (leader && cand) atomicAdd(&sh.count[d], static_cast<unsigned>(__popc(peers)));
      }
    }
    __syncthreads();
    if (warp == 0) {
      // Lane l holds bins 255 − 8l down to 248 − 8l: lanes in descending key order.
      unsigned long long w[8], sum = 0;
      unsigned c[8];
#pragma unroll
      for (int k = 0; k < 8; k++) {
        const int b = kBins - 1 - 8 * lane - k;
        c[k] = sh.count[b];
        w[k] = kMass ? sh.mass[b] : c[k];
        sum += w[k];
      }
      unsigned long long incl = sum;
      for (int o = 1; o < 32; o <<= 1) {
        const unsigned long long y = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += y;
      }
      if (shift == 56 && kMass) {
        const unsigned long long total = __shfl_sync(0xffffffffu, incl, 31);
        if (lane == 0) sh.target = static_cast<double>(frac) * static_cast<double>(total);
      }
      __syncwarp();
      const double target = kMass ? sh.target : static_cast<double>(need);
      unsigned long long cum = base + incl - sum;
      int found = -1, last = -1;
      unsigned countFound = 0, countLast = 0;
      unsigned long long aboveFound = 0, aboveLast = 0;
#pragma unroll
      for (int k = 0; k < 8; k++) {
        if (c[k] > 0) {
          if (found < 0 && static_cast<double>(cum + w[k]) >= target) found = k, countFound = c[k], aboveFound = cum;
          last = k, countLast = c[k], aboveLast = cum;
        }
        cum += w[k];
      }
      const unsigned hit = __ballot_sync(0xffffffffu, found >= 0);
      const unsigned any = __ballot_sync(0xffffffffu, last >= 0);
      // The first bin (descending) that reaches the target; the lowest non-empty bin if rounding left none.
      const int src = hit ? __ffs(hit) - 1 : 31 - __clz(any);
      if (lane == src) {
        const int k = hit ? found : last;
        sh.bin = kBins - 1 - 8 * lane - k;
        sh.binCount = hit ? countFound : countLast;
        sh.above = hit ? aboveFound : aboveLast;
      }
    }
    __syncthreads();
    const int bin = sh.bin;
    const unsigned binCount = sh.binCount;
    const unsigned long long above = sh.above;
    prefix |= static_cast<uint64_t>(bin) << shift;
    if constexpr (kMass) {
      base = above;
      if (binCount <= 1) break;
    } else {
      need -= above;
      if (binCount == need) break;
    }
  }
  return prefix;
}

__global__ void __launch_bounds__(kThreads) sampleKernel(SampleArgs a) {
  __shared__ SampleShared sh;
  const int64_t r = blockIdx.x;
  const int V = a.V;
  const float* row = a.logits + r * V;
  const bool vec = (reinterpret_cast<uintptr_t>(row) & 15) == 0;
  const int groups = (V + 3) / 4;
  const float temp = a.temperature[r];

  if (!(temp > 0.f)) {
    float bv = -INFINITY;
    int bi = INT32_MAX;
    for (int j = threadIdx.x; j < groups; j += kThreads) {
      float v[4];
      loadGroup(row, V, vec, j, v);
#pragma unroll
      for (int e = 0; e < 4; e++)
        if (4 * j + e < V) better(bv, bi, v[e], 4 * j + e);
    }
    const int best = blockArgmax(bv, bi, sh);
    if (threadIdx.x == 0) a.out[r] = best < V ? best : 0;
    return;
  }

  float mx = -INFINITY;
  for (int j = threadIdx.x; j < groups; j += kThreads) {
    float v[4];
    loadGroup(row, V, vec, j, v);
    mx = fmaxf(mx, fmaxf(fmaxf(v[0], v[1]), fmaxf(v[2], v[3])));
  }
  mx = blockReduce<kThreads, true>(mx, sh.redV);
  if (!(mx > -INFINITY)) {  // every logit −inf or NaN: nothing to draw from; as the CPU argmax, token 0
    if (threadIdx.x == 0) a.out[r] = 0;
    return;
  }

  const int k = a.topK[r];
  const float p = a.topP[r];
  uint64_t thr = 0;
  if (k > 0 && k < V) thr = radixSelect<false>(row, V, vec, 0, mx, temp, 1.f, static_cast<unsigned long long>(k), sh);
  if (p < 1.f) {
    const uint64_t t = radixSelect<true>(row, V, vec, thr, mx, temp, p, 0, sh);
    thr = t > thr ? t : thr;
  }

  const uint2 key = make_uint2(a.seeds[r], 0x5EED5EEDu);
  const uint32_t step = static_cast<uint32_t>(a.steps[r]);
  float bs = -INFINITY;
  int bi = INT32_MAX;
  for (int j = threadIdx.x; j < groups; j += kThreads) {
    float v[4];
    loadGroup(row, V, vec, j, v);
    const uint4 x = philox4x32(make_uint4(static_cast<uint32_t>(j), step, 0u, 0u), key);
    const uint32_t xs[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
    for (int e = 0; e < 4; e++) {
      const int i = 4 * j + e;
      if (i >= V || keyOf(v[e], i) < thr) continue;
      const float u = (static_cast<float>(xs[e] >> 9) + 0.5f) * 0x1p-23f;  // in (0, 1), exactly
      const float g = -logf(-logf(u));
      better(bs, bi, (v[e] - mx) / temp + g, i);
    }
  }
  const int best = blockArgmax(bs, bi, sh);
  if (threadIdx.x == 0) a.out[r] = best < V ? best : 0;
}

}  // namespace

cudaError_t LaunchSample(const SampleArgs& a, cudaStream_t stream) {
  if (a.B == 0) return cudaSuccess;
  if (a.V <= 0 || a.V > (1 << 23)) return cudaErrorInvalidValue;
  sampleKernel<<<a.B, kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace q
