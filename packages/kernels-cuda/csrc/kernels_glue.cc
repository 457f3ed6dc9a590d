// N-API glue for the kernels: reads the argument object, runs the launcher, and turns a launcher status
// into a JS error naming the kernel and the CUDA error. Shape and dtype checks happen in TypeScript
// (src/validate.ts) before this is called; the checks here guard only what would corrupt memory.
#include "kernels_glue.h"

#include <string>

#include "actquant/act_quant.h"
#include "common/napi_util.h"
#include "gemm/w4a8.h"

namespace q {
namespace {

int Int(const Napi::Object& o, const char* k) { return static_cast<int>(I64(o.Get(k), k)); }

Napi::Value ActQuant(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = info[0].As<Napi::Object>();
  ActQuantArgs a{};
  a.x = Ptr(o.Get("x"), "x");
  a.gain = Ptr(o.Get("gain"), "gain");
  a.eps = static_cast<float>(o.Get("eps").As<Napi::Number>().DoubleValue());
  a.staticScale = static_cast<float>(o.Get("staticScale").As<Napi::Number>().DoubleValue());
  a.q = Ptr(o.Get("q"), "q");
  a.scales = static_cast<float*>(Ptr(o.Get("scales"), "scales"));
  a.M = Int(o, "m");
  a.K = Int(o, "k");
  a.ldq = Int(o, "ldq");
  a.dtype = Int(o, "dtype");
  a.stream = Ptr(o.Get("stream"), "stream");
  if (a.ldq < a.K) Throw(env, "E_SHAPE", "actQuant: ldq=" + std::to_string(a.ldq) + " < k=" + std::to_string(a.K));
  cudaError_t err = q_act_quant(&a);
  if (err != cudaSuccess) Throw(env, "E_CUDA", CudaMsg("actQuant kernel launch", err));
  return env.Undefined();
}

Napi::Value GemmW4A8(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = info[0].As<Napi::Object>();
  W4A8Args a{};
  a.a = static_cast<const int8_t*>(Ptr(o.Get("a"), "a"));
  a.lda = Int(o, "lda");
  a.aScale = static_cast<const float*>(Ptr(o.Get("aScale"), "aScale"));
  a.aScaleStride = Int(o, "aScaleStride");
  a.w = Ptr(o.Get("w"), "w");
  a.wScale = static_cast<const float*>(Ptr(o.Get("wScale"), "wScale"));
  a.qScale = static_cast<const int32_t*>(Ptr(o.Get("qScale"), "qScale"));
  a.unit = static_cast<const float*>(Ptr(o.Get("unit"), "unit"));
  a.bias = static_cast<const float*>(Ptr(o.Get("bias"), "bias"));
  a.residual = Ptr(o.Get("residual"), "residual");
  a.out = Ptr(o.Get("out"), "out");
  a.M = Int(o, "m");
  a.N = Int(o, "n");
  a.K = Int(o, "k");
  a.groupSize = Int(o, "groupSize");
  a.G = Int(o, "groups");
  a.kTiles = (a.K + 63) / 64;
  a.mode = Int(o, "mode");
  a.outType = Int(o, "outType");
  a.variant = o.Has("variant") ? Int(o, "variant") : 0;
  a.stream = Ptr(o.Get("stream"), "stream");
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
