// N-API glue for the CUDA runtime, the only one in the addon: devices and their properties, peer access,
// device memory and CUDA IPC handles, asynchronous copies, pinned host buffers, streams, events and graphs. Pointers, streams and events cross into JavaScript as BigInt
// handles; the TypeScript layer (src/device.ts) owns them and frees them exactly once.
#include "runtime.h"

#include <cuda_runtime.h>

#include <cstring>
#include <string>

#include "../common/napi_util.h"

namespace q {
namespace {

// Returns {count, error}: error is the CUDA error name when the driver is absent or too old, so that the
// caller can explain why no GPU is usable instead of failing.
Napi::Value DeviceCount(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  Napi::Object r = Napi::Object::New(env);
  if (err != cudaSuccess) {
    cudaGetLastError();
    r.Set("count", 0);
    r.Set("error", std::string(cudaGetErrorName(err)) + " (" + cudaGetErrorString(err) + ")");
  } else {
    r.Set("count", n);
  }
  int drv = 0, rt = 0;
  cudaDriverGetVersion(&drv);
  cudaRuntimeGetVersion(&rt);
  r.Set("driverVersion", drv);
  r.Set("runtimeVersion", rt);
  return r;
}

Napi::Value DeviceProperties(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int dev = static_cast<int>(I64(info[0], "device"));
  cudaDeviceProp p;
  Check(env, cudaGetDeviceProperties(&p, dev), "cudaGetDeviceProperties");
  Napi::Object o = Napi::Object::New(env);
  o.Set("index", dev);
  o.Set("name", std::string(p.name));
  o.Set("major", p.major);
  o.Set("minor", p.minor);
  o.Set("multiProcessorCount", p.multiProcessorCount);
  o.Set("totalGlobalMem", static_cast<double>(p.totalGlobalMem));
  o.Set("l2CacheSize", p.l2CacheSize);
  o.Set("sharedMemPerBlockOptin", static_cast<double>(p.sharedMemPerBlockOptin));
  o.Set("memoryBusWidth", p.memoryBusWidth);
  int clock = 0, memClock = 0;
  cudaDeviceGetAttribute(&clock, cudaDevAttrClockRate, dev);
  cudaDeviceGetAttribute(&memClock, cudaDevAttrMemoryClockRate, dev);
  o.Set("clockRateKHz", clock);
  o.Set("memoryClockRateKHz", memClock);
  char bus[32] = {0};
  if (cudaDeviceGetPCIBusId(bus, sizeof bus, dev) == cudaSuccess) o.Set("pciBusId", std::string(bus));
  cudaGetLastError();
  return o;
}

Napi::Value SetDevice(const Napi::CallbackInfo& info) {
  Check(info.Env(), cudaSetDevice(static_cast<int>(I64(info[0], "device"))), "cudaSetDevice");
  return info.Env().Undefined();
}

Napi::Value GetDevice(const Napi::CallbackInfo& info) {
  int d = 0;
  Check(info.Env(), cudaGetDevice(&d), "cudaGetDevice");
  return Napi::Number::New(info.Env(), d);
}

Napi::Value MemGetInfo(const Napi::CallbackInfo& info) {
  size_t f = 0, t = 0;
  Check(info.Env(), cudaMemGetInfo(&f, &t), "cudaMemGetInfo");
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("free", static_cast<double>(f));
  o.Set("total", static_cast<double>(t));
  return o;
}

Napi::Value Malloc(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t bytes = U64(info[0], "bytes");
  void* p = nullptr;
  cudaError_t err = cudaMalloc(&p, bytes == 0 ? 1 : bytes);
  if (err != cudaSuccess) {
    cudaGetLastError();
    Throw(env, "E_CUDA", "cudaMalloc(" + std::to_string(bytes) + " bytes) failed: " + cudaGetErrorName(err) + " (" +
                             cudaGetErrorString(err) + ")");
  }
  return Big(env, p);
}

Napi::Value Free(const Napi::CallbackInfo& info) {
  Check(info.Env(), cudaFree(Ptr(info[0], "ptr")), "cudaFree");
  return info.Env().Undefined();
}

// memcpyHtoD(dstPtr, srcBytes, stream): srcBytes is an ArrayBuffer or typed array.
Napi::Value MemcpyHtoD(const Napi::CallbackInfo& info) {
  void* src;
  size_t len;
  HostBytes(info[1], "src", &src, &len);
  Check(info.Env(), cudaMemcpyAsync(Ptr(info[0], "dst"), src, len, cudaMemcpyHostToDevice, Stream(info[2])),
        "cudaMemcpyAsync(host to device)");
  return info.Env().Undefined();
}

// memcpyDtoH(dstBytes, srcPtr, stream)
Napi::Value MemcpyDtoH(const Napi::CallbackInfo& info) {
  void* dst;
  size_t len;
  HostBytes(info[0], "dst", &dst, &len);
  Check(info.Env(), cudaMemcpyAsync(dst, Ptr(info[1], "src"), len, cudaMemcpyDeviceToHost, Stream(info[2])),
        "cudaMemcpyAsync(device to host)");
  return info.Env().Undefined();
}

// memcpyDtoD(dstPtr, srcPtr, bytes, stream)
Napi::Value MemcpyDtoD(const Napi::CallbackInfo& info) {
  Check(info.Env(),
        cudaMemcpyAsync(Ptr(info[0], "dst"), Ptr(info[1], "src"), U64(info[2], "bytes"), cudaMemcpyDeviceToDevice,
                        Stream(info[3])),
        "cudaMemcpyAsync(device to device)");
  return info.Env().Undefined();
}

// memset(dstPtr, byteValue, bytes, stream)
Napi::Value Memset(const Napi::CallbackInfo& info) {
  Check(info.Env(),
        cudaMemsetAsync(Ptr(info[0], "dst"), static_cast<int>(I64(info[1], "value")), U64(info[2], "bytes"),
                        Stream(info[3])),
        "cudaMemsetAsync");
  return info.Env().Undefined();
}

struct Pinned {
  void* p;
  bool freed;
};

void FinalizePinned(Napi::Env, void*, Pinned* h) {
  if (!h->freed) cudaFreeHost(h->p);
  delete h;
}

// hostAlloc(bytes) → ArrayBuffer backed by page-locked memory (freed by hostFree or by the GC).
Napi::Value HostAlloc(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t bytes = U64(info[0], "bytes");
  void* p = nullptr;
  cudaError_t err = cudaHostAlloc(&p, bytes == 0 ? 1 : bytes, cudaHostAllocDefault);
  if (err != cudaSuccess) {
    cudaGetLastError();
    Throw(env, "E_CUDA", "cudaHostAlloc(" + std::to_string(bytes) + " bytes) failed: " + cudaGetErrorName(err));
  }
  auto* h = new Pinned{p, false};
  auto ab = Napi::ArrayBuffer::New(env, p, bytes, FinalizePinned, h);
  ab.Set("__pinned", Napi::External<Pinned>::New(env, h));
  return ab;
}

// hostFree(arrayBuffer): detaches the buffer (so JS cannot touch freed memory) and frees it now.
Napi::Value HostFree(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArrayBuffer()) Throw(env, "E_ARG", "Expected a pinned ArrayBuffer for hostFree");
  auto ab = info[0].As<Napi::ArrayBuffer>();
  Napi::Value ext = ab.Get("__pinned");
  if (!ext.IsExternal()) Throw(env, "E_ARG", "Expected an ArrayBuffer from hostAlloc for hostFree");
  Pinned* h = ext.As<Napi::External<Pinned>>().Data();
  if (h->freed) return env.Undefined();
  // Wait for copies that may still read or write this memory before giving it back.
  cudaError_t err = cudaFreeHost(h->p);
  h->freed = true;
  if (!ab.IsDetached()) ab.Detach();
  Check(env, err, "cudaFreeHost");
  return env.Undefined();
}

Napi::Value StreamCreate(const Napi::CallbackInfo& info) {
  cudaStream_t s;
  Check(info.Env(), cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
  return Big(info.Env(), s);
}

Napi::Value StreamDestroy(const Napi::CallbackInfo& info) {
  Check(info.Env(), cudaStreamDestroy(Stream(info[0])), "cudaStreamDestroy");
  return info.Env().Undefined();
}

Napi::Value StreamSynchronize(const Napi::CallbackInfo& info) {
  Check(info.Env(), cudaStreamSynchronize(Stream(info[0])), "cudaStreamSynchronize");
  return info.Env().Undefined();
}

Napi::Value DeviceSynchronize(const Napi::CallbackInfo& info) {
  Check(info.Env(), cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  return info.Env().Undefined();
}

// eventCreate(timing): a timing event for elapsed-time measurements, or (timing false) one with
// cudaEventDisableTiming, which is cheaper to record and wait on and is what ordering between streams needs.
Napi::Value EventCreate(const Napi::CallbackInfo& info) {
  cudaEvent_t e;
  bool timing = info.Length() < 1 || info[0].IsUndefined() || info[0].ToBoolean();
  Check(info.Env(), cudaEventCreateWithFlags(&e, timing ? cudaEventDefault : cudaEventDisableTiming),
        "cudaEventCreate");
  return Big(info.Env(), e);
}

// eventQuery(event) → true when the work before the event has finished.
Napi::Value EventQuery(const Napi::CallbackInfo& info) {
  cudaError_t err = cudaEventQuery(reinterpret_cast<cudaEvent_t>(Ptr(info[0], "event")));
  if (err == cudaErrorNotReady) {
    cudaGetLastError();
    return Napi::Boolean::New(info.Env(), false);
  }
  Check(info.Env(), err, "cudaEventQuery");
  return Napi::Boolean::New(info.Env(), true);
}

// streamWaitEvent(stream, event): later work on `stream` waits for the event on the device (no host wait), so
// a GEMM on one stream and an all-reduce on another can be ordered, and captured into one graph.
Napi::Value StreamWaitEvent(const Napi::CallbackInfo& info) {
  Check(info.Env(),
        cudaStreamWaitEvent(Stream(info[0]), reinterpret_cast<cudaEvent_t>(Ptr(info[1], "event")), 0),
        "cudaStreamWaitEvent");
  return info.Env().Undefined();
}

Napi::Value CanAccessPeer(const Napi::CallbackInfo& info) {
  int ok = 0;
  Check(info.Env(),
        cudaDeviceCanAccessPeer(&ok, static_cast<int>(I64(info[0], "device")), static_cast<int>(I64(info[1], "peer"))),
        "cudaDeviceCanAccessPeer");
  return Napi::Boolean::New(info.Env(), ok != 0);
}

// enablePeerAccess(peer): the current device may then read and write `peer`'s memory; enabling twice is fine.
Napi::Value EnablePeerAccess(const Napi::CallbackInfo& info) {
  cudaError_t err = cudaDeviceEnablePeerAccess(static_cast<int>(I64(info[0], "peer")), 0);
  if (err == cudaErrorPeerAccessAlreadyEnabled) {
    cudaGetLastError();
    return info.Env().Undefined();
  }
  Check(info.Env(), err, "cudaDeviceEnablePeerAccess");
  return info.Env().Undefined();
}

// ipcGetHandle(ptr) → the 64-byte handle another process opens to map this allocation.
Napi::Value IpcGetHandle(const Napi::CallbackInfo& info) {
  cudaIpcMemHandle_t h;
  Check(info.Env(), cudaIpcGetMemHandle(&h, Ptr(info[0], "ptr")), "cudaIpcGetMemHandle");
  Napi::Uint8Array out = Napi::Uint8Array::New(info.Env(), sizeof h);
  std::memcpy(out.Data(), &h, sizeof h);
  return out;
}

// ipcOpenHandle(handle) → the peer allocation mapped into this process (close with ipcCloseHandle).
Napi::Value IpcOpenHandle(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  cudaIpcMemHandle_t h;
  void* bytes = nullptr;
  size_t len = 0;
  HostBytes(info[0], "handle", &bytes, &len);
  if (len != sizeof h)
    Throw(env, "E_ARG",
          "Expected a " + std::to_string(sizeof h) + "-byte CUDA IPC handle for handle but received " +
              std::to_string(len) + " bytes");
  std::memcpy(&h, bytes, sizeof h);
  void* p = nullptr;
  Check(env, cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess), "cudaIpcOpenMemHandle");
  return Big(env, p);
}

Napi::Value IpcCloseHandle(const Napi::CallbackInfo& info) {
  Check(info.Env(), cudaIpcCloseMemHandle(Ptr(info[0], "ptr")), "cudaIpcCloseMemHandle");
  return info.Env().Undefined();
}

Napi::Value EventDestroy(const Napi::CallbackInfo& info) {
  Check(info.Env(), cudaEventDestroy(reinterpret_cast<cudaEvent_t>(Ptr(info[0], "event"))), "cudaEventDestroy");
  return info.Env().Undefined();
}

Napi::Value EventRecord(const Napi::CallbackInfo& info) {
  Check(info.Env(), cudaEventRecord(reinterpret_cast<cudaEvent_t>(Ptr(info[0], "event")), Stream(info[1])),
        "cudaEventRecord");
  return info.Env().Undefined();
}

Napi::Value EventSynchronize(const Napi::CallbackInfo& info) {
  Check(info.Env(), cudaEventSynchronize(reinterpret_cast<cudaEvent_t>(Ptr(info[0], "event"))),
        "cudaEventSynchronize");
  return info.Env().Undefined();
}

Napi::Value EventElapsed(const Napi::CallbackInfo& info) {
  float ms = 0;
  Check(info.Env(),
        cudaEventElapsedTime(&ms, reinterpret_cast<cudaEvent_t>(Ptr(info[0], "start")),
                             reinterpret_cast<cudaEvent_t>(Ptr(info[1], "end"))),
        "cudaEventElapsedTime");
  return Napi::Number::New(info.Env(), ms);
}

// Graph capture of a stream's launches, so that benchmarks (and a runtime's decode step) replay many small
// kernels without per-launch CPU overhead.
Napi::Value StreamBeginCapture(const Napi::CallbackInfo& info) {
  Check(info.Env(), cudaStreamBeginCapture(Stream(info[0]), cudaStreamCaptureModeThreadLocal),
        "cudaStreamBeginCapture");
  return info.Env().Undefined();
}

// streamEndCapture(stream) → executable graph handle.
Napi::Value StreamEndCapture(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  cudaGraph_t graph = nullptr;
  Check(env, cudaStreamEndCapture(Stream(info[0]), &graph), "cudaStreamEndCapture");
  cudaGraphExec_t exec = nullptr;
  cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  Check(env, err, "cudaGraphInstantiate");
  return Big(env, exec);
}

Napi::Value GraphLaunch(const Napi::CallbackInfo& info) {
  Check(info.Env(),
        cudaGraphLaunch(reinterpret_cast<cudaGraphExec_t>(Ptr(info[0], "graph")), Stream(info[1])),
        "cudaGraphLaunch");
  return info.Env().Undefined();
}

Napi::Value GraphDestroy(const Napi::CallbackInfo& info) {
  Check(info.Env(), cudaGraphExecDestroy(reinterpret_cast<cudaGraphExec_t>(Ptr(info[0], "graph"))),
        "cudaGraphExecDestroy");
  return info.Env().Undefined();
}

Napi::Value L2Flush(const Napi::CallbackInfo& info) {
  // Overwrites a scratch buffer larger than L2 so that the next timed kernel starts with a cold cache.
  Check(info.Env(),
        cudaMemsetAsync(Ptr(info[0], "scratch"), static_cast<int>(I64(info[2], "value")), U64(info[1], "bytes"),
                        Stream(info[3])),
        "cudaMemsetAsync(l2 flush)");
  return info.Env().Undefined();
}

}  // namespace

void RegisterRuntime(Napi::Env env, Napi::Object exports) {
  exports.Set("deviceCount", Napi::Function::New(env, DeviceCount));
  exports.Set("deviceProperties", Napi::Function::New(env, DeviceProperties));
  exports.Set("setDevice", Napi::Function::New(env, SetDevice));
  exports.Set("getDevice", Napi::Function::New(env, GetDevice));
  exports.Set("memGetInfo", Napi::Function::New(env, MemGetInfo));
  exports.Set("malloc", Napi::Function::New(env, Malloc));
  exports.Set("free", Napi::Function::New(env, Free));
  exports.Set("memcpyHtoD", Napi::Function::New(env, MemcpyHtoD));
  exports.Set("memcpyDtoH", Napi::Function::New(env, MemcpyDtoH));
  exports.Set("memcpyDtoD", Napi::Function::New(env, MemcpyDtoD));
  exports.Set("memset", Napi::Function::New(env, Memset));
  exports.Set("hostAlloc", Napi::Function::New(env, HostAlloc));
  exports.Set("hostFree", Napi::Function::New(env, HostFree));
  exports.Set("streamCreate", Napi::Function::New(env, StreamCreate));
  exports.Set("streamDestroy", Napi::Function::New(env, StreamDestroy));
  exports.Set("streamSynchronize", Napi::Function::New(env, StreamSynchronize));
  exports.Set("deviceSynchronize", Napi::Function::New(env, DeviceSynchronize));
  exports.Set("eventCreate", Napi::Function::New(env, EventCreate));
  exports.Set("eventQuery", Napi::Function::New(env, EventQuery));
  exports.Set("streamWaitEvent", Napi::Function::New(env, StreamWaitEvent));
  exports.Set("canAccessPeer", Napi::Function::New(env, CanAccessPeer));
  exports.Set("enablePeerAccess", Napi::Function::New(env, EnablePeerAccess));
  exports.Set("ipcGetHandle", Napi::Function::New(env, IpcGetHandle));
  exports.Set("ipcOpenHandle", Napi::Function::New(env, IpcOpenHandle));
  exports.Set("ipcCloseHandle", Napi::Function::New(env, IpcCloseHandle));
  exports.Set("eventDestroy", Napi::Function::New(env, EventDestroy));
  exports.Set("eventRecord", Napi::Function::New(env, EventRecord));
  exports.Set("eventSynchronize", Napi::Function::New(env, EventSynchronize));
  exports.Set("eventElapsedTime", Napi::Function::New(env, EventElapsed));
  exports.Set("l2Flush", Napi::Function::New(env, L2Flush));
  exports.Set("streamBeginCapture", Napi::Function::New(env, StreamBeginCapture));
  exports.Set("streamEndCapture", Napi::Function::New(env, StreamEndCapture));
  exports.Set("graphLaunch", Napi::Function::New(env, GraphLaunch));
  exports.Set("graphDestroy", Napi::Function::New(env, GraphDestroy));
}

}  // namespace q
