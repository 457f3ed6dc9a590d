// N-API glue for the kernels: reads the argument block (src/args.ts), runs the launcher, and turns a launcher
// status into a JS error naming the kernel and the CUDA error. Shape and dtype checks happen in TypeScript
// (src/ops.ts) before this is called; the checks here guard only what would corrupt memory.
#include "kernels_glue.h"

#include <cstdio>
#include <string>

#include "actquant/act_quant.h"
#include "common/napi_util.h"
#include "gemm/w4a8.h"

namespace q {
namespace {

std::string Hex(uint64_t p) {
  char b[24];
  snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(p));
  return b;
}

// The last guard before memory is touched: a misaligned pointer would fault inside the kernel.
void Aligned(Napi::Env env, const char* op, const char* name, uint64_t p, uint64_t bytes) {
  if (p % bytes != 0)
    Throw(env, "E_ARG", std::string(op) + ": Expected a " + std::to_string(bytes) + "-byte aligned device pointer for " +
                            name + " but received " + Hex(p));
}

// actQuant(block): p = [x, gain, q, scales, stream], i = [m, k, ldq, dtype], f = [eps, staticScale].
Napi::Value ActQuant(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const ArgBlock& b = Args(info[0], "actQuant");
  ActQuantArgs a{};
  a.x = ArgPtr<void>(b, 0);
  a.gain = ArgPtr<void>(b, 1);
  a.q = ArgPtr<void>(b, 2);
  a.scales = ArgPtr<float>(b, 3);
  a.stream = ArgPtr<void>(b, 4);
  a.M = b.i[0];
  a.K = b.i[1];
  a.ldq = b.i[2];
  a.dtype = b.i[3];
  a.eps = b.f[0];
  a.staticScale = b.f[1];
  if (a.ldq < a.K) Throw(env, "E_SHAPE", "actQuant: ldq=" + std::to_string(a.ldq) + " < k=" + std::to_string(a.K));
  Aligned(env, "actQuant", "x", b.p[0], 2);
  cudaError_t err = q_act_quant(&a);
  if (err != cudaSuccess) Throw(env, "E_CUDA", CudaMsg("actQuant kernel launch", err));
  return env.Undefined();
}

// gemmW4A8(block): p = [a, aScale, w, wScale, qScale, unit, bias, residual, out, stream],
// i = [lda, aScaleStride, m, n, k, groupSize, groups, mode, outType, variant].
Napi::Value GemmW4A8(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const ArgBlock& b = Args(info[0], "gemmW4A8");
  W4A8Args a{};
  a.a = ArgPtr<const int8_t>(b, 0);
  a.aScale = ArgPtr<const float>(b, 1);
  a.w = ArgPtr<const void>(b, 2);
  a.wScale = ArgPtr<const float>(b, 3);
  a.qScale = ArgPtr<const int32_t>(b, 4);
  a.unit = ArgPtr<const float>(b, 5);
  a.bias = ArgPtr<const float>(b, 6);
  a.residual = ArgPtr<const void>(b, 7);
  a.out = ArgPtr<void>(b, 8);
  a.stream = ArgPtr<void>(b, 9);
  a.lda = b.i[0];
  a.aScaleStride = b.i[1];
  a.M = b.i[2];
  a.N = b.i[3];
  a.K = b.i[4];
  a.groupSize = b.i[5];
  a.G = b.i[6];
  a.mode = b.i[7];
  a.outType = b.i[8];
  a.variant = b.i[9];
  a.kTiles = (a.K + 63) / 64;
  // The last guard before memory is touched: these would read out of bounds.
  if (a.N % 16 != 0) Throw(env, "E_SHAPE", "gemmW4A8: n=" + std::to_string(a.N) + " is not a multiple of 16");
  if (a.K % 16 != 0 || a.lda % 16 != 0 || a.lda < a.K)
    Throw(env, "E_SHAPE",
          "gemmW4A8: k=" + std::to_string(a.K) + ", lda=" + std::to_string(a.lda) + " must be multiples of 16 with lda >= k");
  if (a.mode != Q_MODE_PER_CHANNEL && (a.groupSize % 64 != 0 || a.G * a.groupSize != a.K))
    Throw(env, "E_SHAPE",
          "gemmW4A8: k=" + std::to_string(a.K) + " is not groups=" + std::to_string(a.G) +
              " × groupSize=" + std::to_string(a.groupSize) + " with groupSize a multiple of 64");
  if (!a.a || !a.aScale || !a.w || !a.out || (a.outType != Q_OUT_I32 && !a.wScale) ||
      (a.mode == Q_MODE_GROUP_INT && (!a.qScale || !a.unit)))
    Throw(env, "E_ARG", "gemmW4A8: a required device pointer is null");
  Aligned(env, "gemmW4A8", "a", b.p[0], 16);
  Aligned(env, "gemmW4A8", "weights.packed", b.p[2], 16);
  Aligned(env, "gemmW4A8", "out", b.p[8], a.outType == Q_OUT_I32 ? 4 : 2);
  cudaError_t err = q_w4a8_gemm(&a);
  if (err != cudaSuccess) Throw(env, "E_CUDA", CudaMsg("gemmW4A8 kernel launch", err));
  return env.Undefined();
}

Napi::Value LastError(const Napi::CallbackInfo& info) {
  cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) return info.Env().Null();
  return Napi::String::New(info.Env(), std::string(cudaGetErrorName(err)));
}

}  // namespace

void RegisterKernels(Napi::Env env, Napi::Object exports) {
  exports.Set("actQuant", Napi::Function::New(env, ActQuant));
  exports.Set("gemmW4A8", Napi::Function::New(env, GemmW4A8));
  exports.Set("lastError", Napi::Function::New(env, LastError));
}

}  // namespace q
