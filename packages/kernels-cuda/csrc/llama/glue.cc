// N-API glue of the Llama-layer kernels. Arguments are positional (pointers as BigInt, sizes as numbers, in the
// order of src/llama-ops.ts), never an options object: these run hundreds of times per prefill, and reading
// named properties costs more than the launch. Shapes and dtypes are checked in TypeScript; the checks here
// guard only what would touch memory out of bounds.
#include "glue.h"

#include <string>

#include "../common/napi_util.h"
#include "llama.h"

namespace q {
namespace {

int Int(const Napi::CallbackInfo& info, int i, const char* name) {
  return static_cast<int>(I64(info[i], name));
}

float Float(const Napi::CallbackInfo& info, int i, const char* name) {
  if (!info[i].IsNumber()) Throw(info.Env(), "E_ARG", std::string("Expected a number for ") + name);
  return static_cast<float>(info[i].As<Napi::Number>().DoubleValue());
}

void Done(Napi::Env env, const char* what, cudaError_t err) {
  if (err != cudaSuccess) Throw(env, "E_CUDA", CudaMsg(what, err));
}

void Need(Napi::Env env, bool ok, const char* what) {
  if (!ok) Throw(env, "E_ARG", std::string(what));
}

// (ids, table, out, T, d, V, stream)
Napi::Value Embedding(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto* ids = static_cast<const int32_t*>(Ptr(info[0], "ids"));
  const void* table = Ptr(info[1], "table");
  auto* out = static_cast<float*>(Ptr(info[2], "out"));
  const int T = Int(info, 3, "T"), d = Int(info, 4, "d"), V = Int(info, 5, "V");
  Need(env, T == 0 || (ids && table && out), "embedding: a required device pointer is null");
  Done(env, "embedding kernel launch", LaunchEmbedding(ids, table, out, T, d, V, Stream(info[6])));
  return env.Undefined();
}

// (x, r, gain, eps, out, ldo, mode, staticScale, scales, T, d, stream)
Napi::Value AddRmsNorm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto* x = static_cast<float*>(Ptr(info[0], "x"));
  const void* r = Ptr(info[1], "r");
  auto* gain = static_cast<const float*>(Ptr(info[2], "gain"));
  const float eps = Float(info, 3, "eps");
  void* out = Ptr(info[4], "out");
  const int ldo = Int(info, 5, "ldo"), mode = Int(info, 6, "mode");
  const float staticScale = Float(info, 7, "staticScale");
  auto* scales = static_cast<float*>(Ptr(info[8], "scales"));
  const int T = Int(info, 9, "T"), d = Int(info, 10, "d");
  Need(env, ldo >= d, "addRmsNorm: ldo < d");
  Need(env, T == 0 || (x && gain && out && (mode != kOutInt8Dynamic || scales)),
       "addRmsNorm: a required device pointer is null");
  Done(env, "addRmsNorm kernel launch",
       LaunchAddRmsNorm(x, r, gain, eps, out, ldo, mode, staticScale, scales, T, d, Stream(info[11])));
  return env.Undefined();
}

// (gateUp, out, ldo, mode, staticScale, scales, T, ff, stream)
Napi::Value SiluMul(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const void* gu = Ptr(info[0], "gateUp");
  void* out = Ptr(info[1], "out");
  const int ldo = Int(info, 2, "ldo"), mode = Int(info, 3, "mode");
  const float staticScale = Float(info, 4, "staticScale");
  auto* scales = static_cast<float*>(Ptr(info[5], "scales"));
  const int T = Int(info, 6, "T"), ff = Int(info, 7, "ff");
  Need(env, ldo >= ff, "siluMul: ldo < ff");
  Need(env, T == 0 || (gu && out && (mode != kOutInt8Dynamic || scales)), "siluMul: a required device pointer is null");
  Done(env, "siluMul kernel launch", LaunchSiluMul(gu, out, ldo, mode, staticScale, scales, T, ff, Stream(info[8])));
  return env.Undefined();
}

// (qkv, positions, seqOfToken, pageTable, k, v, invFreq, T, numHeads, numKvHeads, headDim, S, maxPages, pages,
//  pageSize, half, stream)
Napi::Value RopeKvWrite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  RopeKvArgs a{};
  a.qkv = Ptr(info[0], "qkv");
  a.positions = static_cast<const int32_t*>(Ptr(info[1], "positions"));
  a.seqOfToken = static_cast<const int32_t*>(Ptr(info[2], "seqOfToken"));
  a.pageTable = static_cast<const int32_t*>(Ptr(info[3], "pageTable"));
  a.k = Ptr(info[4], "k");
  a.v = Ptr(info[5], "v");
  a.invFreq = static_cast<const float*>(Ptr(info[6], "invFreq"));
  a.T = Int(info, 7, "T");
  a.numHeads = Int(info, 8, "numHeads");
  a.numKvHeads = Int(info, 9, "numKvHeads");
  a.headDim = Int(info, 10, "headDim");
  a.S = Int(info, 11, "S");
  a.maxPages = Int(info, 12, "maxPages");
  a.pages = Int(info, 13, "pages");
  a.pageSize = Int(info, 14, "pageSize");
  a.half = Int(info, 15, "half");
  Need(env, a.headDim % 16 == 0 && a.headDim <= 256 && a.pageSize > 0,
       "ropeKvWrite: headDim must be a multiple of 16 up to 256 and pageSize positive");
  Need(env, a.T == 0 || (a.qkv && a.positions && a.seqOfToken && a.pageTable && a.k && a.v && a.invFreq),
       "ropeKvWrite: a required device pointer is null");
  Done(env, "ropeKvWrite kernel launch", LaunchRopeKvWrite(a, Stream(info[16])));
  return env.Undefined();
}

// (logits, temperature, topK, topP, seeds, steps, out, B, V, stream)
Napi::Value Sample(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  SampleArgs a{};
  a.logits = static_cast<const float*>(Ptr(info[0], "logits"));
  a.temperature = static_cast<const float*>(Ptr(info[1], "temperature"));
  a.topK = static_cast<const int32_t*>(Ptr(info[2], "topK"));
  a.topP = static_cast<const float*>(Ptr(info[3], "topP"));
  a.seeds = static_cast<const uint32_t*>(Ptr(info[4], "seeds"));
  a.steps = static_cast<const int32_t*>(Ptr(info[5], "steps"));
  a.out = static_cast<int32_t*>(Ptr(info[6], "out"));
  a.B = Int(info, 7, "B");
  a.V = Int(info, 8, "V");
  Need(env, a.V > 0 && a.V <= (1 << 23), "sample: V must be in [1, 2^23]");
  Need(env, a.B == 0 || (a.logits && a.temperature && a.topK && a.topP && a.seeds && a.steps && a.out),
       "sample: a required device pointer is null");
  Done(env, "sample kernel launch", LaunchSample(a, Stream(info[9])));
  return env.Undefined();
}

}  // namespace

void RegisterLlama(Napi::Env env, Napi::Object exports) {
  exports.Set("llamaEmbedding", Napi::Function::New(env, Embedding));
  exports.Set("llamaAddRmsNorm", Napi::Function::New(env, AddRmsNorm));
  exports.Set("llamaSiluMul", Napi::Function::New(env, SiluMul));
  exports.Set("llamaRopeKvWrite", Napi::Function::New(env, RopeKvWrite));
  exports.Set("llamaSample", Napi::Function::New(env, Sample));
}

}  // namespace q
