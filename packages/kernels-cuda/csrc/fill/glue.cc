// N-API glue of the fill kernels: positional arguments (pointers as BigInt), checked only where memory is at
// stake; shapes and dtypes are validated in src/fill.ts.
#include "fill/glue.h"

#include <string>

#include "common/napi_util.h"
#include "fill/fill.h"

namespace q {
namespace {

// fillRandom(ptr, count, kind, seed, lo, hi, stream)
Napi::Value FillRandom(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  void* p = Ptr(info[0], "ptr");
  const int64_t count = I64(info[1], "count");
  const int kind = static_cast<int>(I64(info[2], "kind"));
  const uint32_t seed = static_cast<uint32_t>(I64(info[3], "seed"));
  const float lo = static_cast<float>(info[4].As<Napi::Number>().DoubleValue());
  const float hi = static_cast<float>(info[5].As<Napi::Number>().DoubleValue());
  void* stream = Ptr(info[6], "stream");
  if (!p || count < 0 || kind < 0 || kind > 3) Throw(env, "E_ARG", "fillRandom: null pointer, bad count or kind");
  cudaError_t err = q_fill_random(p, static_cast<uint64_t>(count), kind, seed, lo, hi, stream);
  if (err != cudaSuccess) Throw(env, "E_CUDA", CudaMsg("fillRandom kernel launch", err));
  return env.Undefined();
}

// addBias(out, bias, m, n, stream)
Napi::Value AddBias(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  void* out = Ptr(info[0], "out");
  const float* bias = static_cast<const float*>(Ptr(info[1], "bias"));
  const int m = static_cast<int>(I64(info[2], "m"));
  const int n = static_cast<int>(I64(info[3], "n"));
  void* stream = Ptr(info[4], "stream");
  if (!out || !bias || m < 0 || n < 0) Throw(env, "E_ARG", "addBias: null pointer or negative shape");
  cudaError_t err = q_add_bias_bf16(out, bias, m, n, stream);
  if (err != cudaSuccess) Throw(env, "E_CUDA", CudaMsg("addBias kernel launch", err));
  return env.Undefined();
}

}  // namespace

void RegisterFill(Napi::Env env, Napi::Object exports) {
  exports.Set("fillRandom", Napi::Function::New(env, FillRandom));
  exports.Set("addBias", Napi::Function::New(env, AddBias));
}

}  // namespace q
