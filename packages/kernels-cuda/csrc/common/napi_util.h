// Helpers shared by the N-API glue files: pointer arguments as BigInt, typed JS errors with a q error code,
// and CUDA status → error-name conversion. Errors are thrown as JS exceptions (never exit/abort); the
// TypeScript side turns `err.code` into a QError.
#pragma once
#include <napi.h>
#include <cuda_runtime.h>
#include <cstdint>
#include <string>

namespace q {

// Throws a JS Error whose `code` property is one of q's error codes (E_CUDA, E_ARG, ...).
[[noreturn]] inline void Throw(Napi::Env env, const char* code, const std::string& msg) {
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, code));
  throw e;
}

inline std::string CudaMsg(const char* what, cudaError_t err) {
  return std::string(what) + " failed: " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")";
}

// Clears the sticky-free last error and throws E_CUDA naming the failed call and the CUDA error name.
inline void Check(Napi::Env env, cudaError_t err, const char* what) {
  if (err == cudaSuccess) return;
  cudaGetLastError();
  Throw(env, "E_CUDA", CudaMsg(what, err));
}

inline uint64_t U64(const Napi::Value& v, const char* name) {
  Napi::Env env = v.Env();
  if (v.IsBigInt()) {
    bool lossless = true;
    uint64_t x = v.As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) Throw(env, "E_ARG", std::string("Expected a 64-bit pointer for ") + name);
    return x;
  }
  if (v.IsNumber()) {
    double d = v.As<Napi::Number>().DoubleValue();
    if (d < 0 || d != static_cast<double>(static_cast<uint64_t>(d)))
      Throw(env, "E_ARG", std::string("Expected a non-negative integer for ") + name);
    return static_cast<uint64_t>(d);
  }
  if (v.IsNull() || v.IsUndefined()) return 0;
  Throw(env, "E_ARG", std::string("Expected a bigint for ") + name);
}

inline void* Ptr(const Napi::Value& v, const char* name) {
  return reinterpret_cast<void*>(static_cast<uintptr_t>(U64(v, name)));
}

inline cudaStream_t Stream(const Napi::Value& v) {
  return reinterpret_cast<cudaStream_t>(static_cast<uintptr_t>(U64(v, "stream")));
}

inline int64_t I64(const Napi::Value& v, const char* name) {
  if (!v.IsNumber()) Throw(v.Env(), "E_ARG", std::string("Expected a number for ") + name);
  return static_cast<int64_t>(v.As<Napi::Number>().Int64Value());
}

inline Napi::BigInt Big(Napi::Env env, const void* p) {
  return Napi::BigInt::New(env, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p)));
}

inline Napi::Value Field(const Napi::Object& o, const char* key) { return o.Get(key); }

// Byte view (pointer, length) of an ArrayBuffer or any TypedArray/DataView.
inline void HostBytes(const Napi::Value& v, const char* name, void** data, size_t* len) {
  Napi::Env env = v.Env();
  if (v.IsArrayBuffer()) {
    auto ab = v.As<Napi::ArrayBuffer>();
    *data = ab.Data();
    *len = ab.ByteLength();
    return;
  }
  if (v.IsTypedArray()) {
    auto ta = v.As<Napi::TypedArray>();
    *data = static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
    *len = ta.ByteLength();
    return;
  }
  if (v.IsDataView()) {
    auto dv = v.As<Napi::DataView>();
    *data = static_cast<uint8_t*>(dv.ArrayBuffer().Data()) + dv.ByteOffset();
    *len = dv.ByteLength();
    return;
  }
  Throw(env, "E_ARG", std::string("Expected an ArrayBuffer or typed array for ") + name);
}

}  // namespace q
