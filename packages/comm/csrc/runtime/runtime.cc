// CUDA runtime glue: devices, memory, streams, events and IPC handles for the communicator. The addon links
// cudart statically, so loading it needs no CUDA library; every call reports failure as E_CUDA / E_NO_DEVICE.
#include "common/napi_util.h"
#include <cstring>

namespace qcomm {
namespace {

Napi::Value DeviceCount(const Napi::CallbackInfo& info) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("count", e == cudaSuccess ? n : 0);
  if (e != cudaSuccess) {
    cudaGetLastError();
    o.Set("error", std::string(cudaGetErrorName(e)) + " (" + cudaGetErrorString(e) + ")");
  }
  return o;
}

Napi::Value SetDevice(const Napi::CallbackInfo& info) {
  int d = static_cast<int>(U64(info[0], "device"));
  CheckCuda(info.Env(), cudaSetDevice(d), "cudaSetDevice");
  CheckCuda(info.Env(), cudaFree(nullptr), "cudaFree(0) (context creation)");
  return info.Env().Undefined();
}

Napi::Value DeviceInfo(const Napi::CallbackInfo& info) {
  int d = static_cast<int>(U64(info[0], "device"));
  cudaDeviceProp p;
  CheckCuda(info.Env(), cudaGetDeviceProperties(&p, d), "cudaGetDeviceProperties");
  char bus[32] = {0};
  cudaDeviceGetPCIBusId(bus, sizeof bus, d);
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("name", p.name);
  o.Set("major", p.major);
  o.Set("minor", p.minor);
  o.Set("multiProcessorCount", p.multiProcessorCount);
  o.Set("pciBusId", bus);
  return o;
}

Napi::Value CanAccessPeer(const Napi::CallbackInfo& info) {
  int a = static_cast<int>(U64(info[0], "a")), b = static_cast<int>(U64(info[1], "b"));
  int ok = 0;
  CheckCuda(info.Env(), cudaDeviceCanAccessPeer(&ok, a, b), "cudaDeviceCanAccessPeer");
  return Napi::Boolean::New(info.Env(), ok != 0);
}

Napi::Value Malloc(const Napi::CallbackInfo& info) {
  size_t bytes = U64(info[0], "bytes");
  void* p = nullptr;
  CheckCuda(info.Env(), cudaMalloc(&p, bytes ? bytes : 1), "cudaMalloc");
  return Big(info.Env(), p);
}

Napi::Value Free(const Napi::CallbackInfo& info) {
  CheckCuda(info.Env(), cudaFree(Ptr(info[0], "ptr")), "cudaFree");
  return info.Env().Undefined();
}

Napi::Value Memset(const Napi::CallbackInfo& info) {
  CheckCuda(info.Env(), cudaMemset(Ptr(info[0], "ptr"), static_cast<int>(U64(info[1], "value")), U64(info[2], "bytes")), "cudaMemset");
  return info.Env().Undefined();
}

Napi::Value CopyHtoD(const Napi::CallbackInfo& info) {
  Napi::TypedArray a = info[1].As<Napi::TypedArray>();
  auto* src = static_cast<uint8_t*>(a.ArrayBuffer().Data()) + a.ByteOffset();
  CheckCuda(info.Env(), cudaMemcpy(Ptr(info[0], "ptr"), src, a.ByteLength(), cudaMemcpyHostToDevice), "cudaMemcpy HtoD");
  return info.Env().Undefined();
}

Napi::Value CopyDtoH(const Napi::CallbackInfo& info) {
  Napi::TypedArray a = info[1].As<Napi::TypedArray>();
  auto* dst = static_cast<uint8_t*>(a.ArrayBuffer().Data()) + a.ByteOffset();
  CheckCuda(info.Env(), cudaMemcpy(dst, Ptr(info[0], "ptr"), a.ByteLength(), cudaMemcpyDeviceToHost), "cudaMemcpy DtoH");
  return info.Env().Undefined();
}

Napi::Value StreamCreate(const Napi::CallbackInfo& info) {
  cudaStream_t s;
  CheckCuda(info.Env(), cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
  return Big(info.Env(), s);
}

Napi::Value StreamDestroy(const Napi::CallbackInfo& info) {
  CheckCuda(info.Env(), cudaStreamDestroy(static_cast<cudaStream_t>(Ptr(info[0], "stream"))), "cudaStreamDestroy");
  return info.Env().Undefined();
}

Napi::Value StreamSynchronize(const Napi::CallbackInfo& info) {
  CheckCuda(info.Env(), cudaStreamSynchronize(static_cast<cudaStream_t>(Ptr(info[0], "stream"))), "cudaStreamSynchronize");
  return info.Env().Undefined();
}

Napi::Value EventCreate(const Napi::CallbackInfo& info) {
  cudaEvent_t e;
  CheckCuda(info.Env(), cudaEventCreate(&e), "cudaEventCreate");
  return Big(info.Env(), e);
}

Napi::Value EventDestroy(const Napi::CallbackInfo& info) {
  CheckCuda(info.Env(), cudaEventDestroy(static_cast<cudaEvent_t>(Ptr(info[0], "event"))), "cudaEventDestroy");
  return info.Env().Undefined();
}

Napi::Value EventRecord(const Napi::CallbackInfo& info) {
  CheckCuda(info.Env(), cudaEventRecord(static_cast<cudaEvent_t>(Ptr(info[0], "event")), static_cast<cudaStream_t>(Ptr(info[1], "stream"))), "cudaEventRecord");
  return info.Env().Undefined();
}

Napi::Value EventElapsedMs(const Napi::CallbackInfo& info) {
  auto a = static_cast<cudaEvent_t>(Ptr(info[0], "start")), b = static_cast<cudaEvent_t>(Ptr(info[1], "end"));
  CheckCuda(info.Env(), cudaEventSynchronize(b), "cudaEventSynchronize");
  float ms = 0;
  CheckCuda(info.Env(), cudaEventElapsedTime(&ms, a, b), "cudaEventElapsedTime");
  return Napi::Number::New(info.Env(), ms);
}

Napi::Value IpcGetHandle(const Napi::CallbackInfo& info) {
  cudaIpcMemHandle_t h;
  CheckCuda(info.Env(), cudaIpcGetMemHandle(&h, Ptr(info[0], "ptr")), "cudaIpcGetMemHandle");
  Napi::Uint8Array out = Napi::Uint8Array::New(info.Env(), sizeof h);
  std::memcpy(out.Data(), &h, sizeof h);
  return out;
}

Napi::Value IpcOpenHandle(const Napi::CallbackInfo& info) {
  Napi::Uint8Array a = info[0].As<Napi::Uint8Array>();
  cudaIpcMemHandle_t h;
  if (a.ByteLength() != sizeof h) Fail(info.Env(), "E_ARG", "Expected a 64-byte CUDA IPC handle but received " + std::to_string(a.ByteLength()) + " bytes");
  std::memcpy(&h, a.Data(), sizeof h);
  void* p = nullptr;
  CheckCuda(info.Env(), cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess), "cudaIpcOpenMemHandle");
  return Big(info.Env(), p);
}

Napi::Value IpcCloseHandle(const Napi::CallbackInfo& info) {
  CheckCuda(info.Env(), cudaIpcCloseMemHandle(Ptr(info[0], "ptr")), "cudaIpcCloseMemHandle");
  return info.Env().Undefined();
}

Napi::Value DeviceSynchronize(const Napi::CallbackInfo& info) {
  CheckCuda(info.Env(), cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  return info.Env().Undefined();
}

}  // namespace

void RegisterRuntime(Napi::Env env, Napi::Object exports) {
  exports.Set("deviceCount", Napi::Function::New(env, DeviceCount));
  exports.Set("setDevice", Napi::Function::New(env, SetDevice));
  exports.Set("deviceInfo", Napi::Function::New(env, DeviceInfo));
  exports.Set("canAccessPeer", Napi::Function::New(env, CanAccessPeer));
  exports.Set("malloc", Napi::Function::New(env, Malloc));
  exports.Set("free", Napi::Function::New(env, Free));
  exports.Set("memset", Napi::Function::New(env, Memset));
  exports.Set("copyHtoD", Napi::Function::New(env, CopyHtoD));
  exports.Set("copyDtoH", Napi::Function::New(env, CopyDtoH));
  exports.Set("streamCreate", Napi::Function::New(env, StreamCreate));
  exports.Set("streamDestroy", Napi::Function::New(env, StreamDestroy));
  exports.Set("streamSynchronize", Napi::Function::New(env, StreamSynchronize));
  exports.Set("eventCreate", Napi::Function::New(env, EventCreate));
  exports.Set("eventDestroy", Napi::Function::New(env, EventDestroy));
  exports.Set("eventRecord", Napi::Function::New(env, EventRecord));
  exports.Set("eventElapsedMs", Napi::Function::New(env, EventElapsedMs));
  exports.Set("ipcGetHandle", Napi::Function::New(env, IpcGetHandle));
  exports.Set("ipcOpenHandle", Napi::Function::New(env, IpcOpenHandle));
  exports.Set("ipcCloseHandle", Napi::Function::New(env, IpcCloseHandle));
  exports.Set("deviceSynchronize", Napi::Function::New(env, DeviceSynchronize));
}

}  // namespace qcomm
