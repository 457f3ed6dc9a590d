// N-API glue of the all-reduce launchers: decodes the layout object, checks it, launches, throws with numbers.
#include "glue.h"

#include "allreduce.h"

#include <string>

#include "../common/napi_util.h"

namespace q {
namespace {

ArLayout Layout(const Napi::Object& o) {
  ArLayout L;
  L.n = I64(o.Get("n"), "n");
  L.world = static_cast<int>(I64(o.Get("world"), "world"));
  L.rank = static_cast<int>(I64(o.Get("rank"), "rank"));
  L.chunk = I64(o.Get("chunkElems"), "chunkElems");
  L.rb = I64(o.Get("recordBytes"), "recordBytes");
  L.scalesOff = I64(o.Get("scalesOffset"), "scalesOffset");
  L.zerosOff = I64(o.Get("zerosOffset"), "zerosOffset");
  L.groupSize = static_cast<int>(I64(o.Get("groupSize"), "groupSize"));
  L.bits = static_cast<int>(I64(o.Get("bits"), "bits"));
  L.sym = o.Get("symmetric").ToBoolean();
  L.dtype = static_cast<int>(I64(o.Get("dtype"), "dtype"));
  Napi::Env env = o.Env();
  if (L.n < 8 || L.n % 8 != 0) Throw(env, "E_SHAPE", "allreduce: n=" + std::to_string(L.n) + " is not a positive multiple of 8");
  if (L.groupSize != 128) Throw(env, "E_UNSUPPORTED", "allreduce: groupSize=" + std::to_string(L.groupSize) + " (the GPU kernels use 128)");
  if (L.world < 1 || L.world > kMaxRanks) Throw(env, "E_UNSUPPORTED", "allreduce: world=" + std::to_string(L.world) + " is outside 1.." + std::to_string(kMaxRanks));
  if (L.rank < 0 || L.rank >= L.world) Throw(env, "E_ARG", "allreduce: rank=" + std::to_string(L.rank) + " is outside the world");
  if (L.bits != 0 && L.bits != 4 && L.bits != 8) Throw(env, "E_ARG", "allreduce: bits=" + std::to_string(L.bits));
  if (L.dtype != 0 && L.dtype != 1) Throw(env, "E_DTYPE", "allreduce: dtype code " + std::to_string(L.dtype) + " (f16=0, bf16=1)");
  if (L.chunk % 128 != 0 || L.rb % 16 != 0) Throw(env, "E_ARG", "allreduce: chunkElems=" + std::to_string(L.chunk) + " recordBytes=" + std::to_string(L.rb) + " are not aligned");
  return L;
}

ArPtrs Ptrs(const Napi::Value& v, int world, const char* name) {
  ArPtrs p{};
  Napi::Array a = v.As<Napi::Array>();
  if (static_cast<int>(a.Length()) != world) Throw(v.Env(), "E_ARG", std::string("allreduce: ") + name + " has " + std::to_string(a.Length()) + " pointers for world " + std::to_string(world));
  for (int i = 0; i < world; i++) p.p[i] = static_cast<char*>(Ptr(a.Get(i), name));
  return p;
}

cudaStream_t S(const Napi::Value& v) { return static_cast<cudaStream_t>(Ptr(v, "stream")); }
int Sms(const Napi::Value& v) { return static_cast<int>(U64(v, "sms")); }

// (layout, in, send, sms, stream)
Napi::Value Quantize(const Napi::CallbackInfo& info) {
  ArLayout L = Layout(info[0].As<Napi::Object>());
  Check(info.Env(), LaunchQuantize(L, Ptr(info[1], "in"), static_cast<char*>(Ptr(info[2], "send")), Sms(info[3]), S(info[4])), "allreduce quantize kernel");
  return info.Env().Undefined();
}

// (layout, recv, reduced, sms, stream)
Napi::Value Reduce(const Napi::CallbackInfo& info) {
  ArLayout L = Layout(info[0].As<Napi::Object>());
  Check(info.Env(), LaunchReduce(L, static_cast<char*>(Ptr(info[1], "recv")), static_cast<char*>(Ptr(info[2], "reduced")), Sms(info[3]), S(info[4])), "allreduce reduce kernel");
  return info.Env().Undefined();
}

// (layout, gathered, out, sms, stream)
Napi::Value Dequant(const Napi::CallbackInfo& info) {
  ArLayout L = Layout(info[0].As<Napi::Object>());
  Check(info.Env(), LaunchDequant(L, static_cast<char*>(Ptr(info[1], "gathered")), Ptr(info[2], "out"), Sms(info[3]), S(info[4])), "allreduce dequantize kernel");
  return info.Env().Undefined();
}

// (layout, in, out, dataPtrs[], sigPtrs[], epoch, oneShot, sms, timeoutMs, stream)
Napi::Value Fused(const Napi::CallbackInfo& info) {
  ArLayout L = Layout(info[0].As<Napi::Object>());
  ArPtrs data = Ptrs(info[3], L.world, "data");
  ArPtrs sig = Ptrs(info[4], L.world, "signals");
  uint32_t epoch = static_cast<uint32_t>(U64(info[5], "epoch"));
  bool oneShot = info[6].ToBoolean();
  double timeoutMs = info[8].As<Napi::Number>().DoubleValue();
  Check(info.Env(), LaunchFused(L, Ptr(info[1], "in"), Ptr(info[2], "out"), data, sig, epoch, oneShot, Sms(info[7]), static_cast<uint64_t>(timeoutMs * 1e6), S(info[9])), "fused all-reduce kernel");
  return info.Env().Undefined();
}

Napi::Value Constants(const Napi::CallbackInfo& info) {
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("maxRanks", kMaxRanks);
  o.Set("maxBlocks", kMaxBlocks);
  o.Set("signalBytes", kSignalBytes);
  o.Set("signalRegion", static_cast<double>(kSignalRegion));
  return o;
}

}  // namespace

void RegisterAllreduce(Napi::Env env, Napi::Object exports) {
  exports.Set("arQuantize", Napi::Function::New(env, Quantize));
  exports.Set("arReduce", Napi::Function::New(env, Reduce));
  exports.Set("arDequant", Napi::Function::New(env, Dequant));
  exports.Set("arFused", Napi::Function::New(env, Fused));
  exports.Set("arConstants", Napi::Function::New(env, Constants));
}

}  // namespace q
