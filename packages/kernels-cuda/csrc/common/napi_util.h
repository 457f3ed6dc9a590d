// Helpers shared by the N-API glue files: pointer arguments as BigInt, the kernels' packed argument block,
// typed JS errors with a q error code, and CUDA status → error-name conversion. Errors are thrown as JS
// exceptions (never exit/abort) whose `code` property is set here; the TypeScript side copies it into a
// QError and never parses a message.
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

// The launch arguments of a kernel, written by TypeScript into one reused typed array (src/args.ts): reading
// a few dozen properties of an object of BigInts cost more than a small kernel runs. Keep the layout in step
// with ARG_* in src/args.ts.
constexpr int kArgPtrs = 16;
constexpr int kArgInts = 16;
constexpr int kArgFloats = 8;
struct ArgBlock {
  uint64_t p[kArgPtrs];  // device pointers and the stream
  int32_t i[kArgInts];   // sizes, strides, modes
  float f[kArgFloats];   // scalars
};

// The argument block of a launch: one N-API call, no copy.
inline const ArgBlock& Args(const Napi::Value& v, const char* op) {
  napi_typedarray_type type;
  size_t length = 0;
  void* data = nullptr;
  napi_value ab;
  size_t offset = 0;
  if (napi_get_typedarray_info(v.Env(), v, &type, &length, &data, &ab, &offset) != napi_ok ||
      type != napi_biguint64_array || length * 8 < sizeof(ArgBlock)) {
    Throw(v.Env(), "E_ARG", std::string("Expected the argument block (BigUint64Array of ") +
                                std::to_string(sizeof(ArgBlock) / 8) + ") for " + op);
  }
  return *static_cast<const ArgBlock*>(data);
}

template <typename T>
inline T* ArgPtr(const ArgBlock& a, int slot) {
  return reinterpret_cast<T*>(static_cast<uintptr_t>(a.p[slot]));
}

}  // namespace q
