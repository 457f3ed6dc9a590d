// Helpers shared by the glue files: argument decoding and errors whose message starts with a QError code
// ("E_CUDA: ..."), which the TypeScript side turns into a QError.
#pragma once
#include <napi.h>
#include <cuda_runtime.h>
#include <cstdint>
#include <string>

namespace qcomm {

[[noreturn]] inline void Fail(Napi::Env env, const std::string& code, const std::string& msg) {
  throw Napi::Error::New(env, code + ": " + msg);
}

inline void CheckCuda(Napi::Env env, cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear a sticky-free error so the next call starts clean
    Fail(env, "E_CUDA", std::string(what) + " failed: " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
  }
}

inline uint64_t U64(const Napi::Value& v, const char* name) {
  if (v.IsBigInt()) {
    bool lossless = true;
    return v.As<Napi::BigInt>().Uint64Value(&lossless);
  }
  if (v.IsNumber()) return static_cast<uint64_t>(v.As<Napi::Number>().Int64Value());
  Fail(v.Env(), "E_ARG", std::string("Expected a bigint or number for ") + name + " but received another type");
}

inline void* Ptr(const Napi::Value& v, const char* name) { return reinterpret_cast<void*>(U64(v, name)); }

inline int64_t I64(const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  if (!v.IsNumber() && !v.IsBigInt()) Fail(o.Env(), "E_ARG", std::string("Expected a number for ") + key + " but received none");
  return v.IsBigInt() ? static_cast<int64_t>(U64(v, key)) : v.As<Napi::Number>().Int64Value();
}

inline void* OPtr(const Napi::Object& o, const char* key) { return Ptr(o.Get(key), key); }

inline Napi::BigInt Big(Napi::Env env, const void* p) {
  return Napi::BigInt::New(env, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p)));
}

}  // namespace qcomm
