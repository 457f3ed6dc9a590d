// NCCL through dlopen: q ships no NCCL headers, only the few declarations below (stable across NCCL 2.x), so
// the addon loads on machines without NCCL and fails only when a collective is asked for.
#include "nccl.h"

#include <dlfcn.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "../common/napi_util.h"

namespace q {
namespace {

typedef struct { char internal[128]; } ncclUniqueId;
typedef struct ncclComm* ncclComm_t;
typedef int ncclResult_t;  // 0 success, 7 in progress
typedef int ncclDataType_t;
typedef int ncclRedOp_t;

struct Nccl {
  void* lib = nullptr;
  ncclResult_t (*GetVersion)(int*);
  ncclResult_t (*GetUniqueId)(ncclUniqueId*);
  ncclResult_t (*CommInitRank)(ncclComm_t*, int, ncclUniqueId, int);
  ncclResult_t (*CommDestroy)(ncclComm_t);
  ncclResult_t (*CommAbort)(ncclComm_t);
  ncclResult_t (*CommGetAsyncError)(ncclComm_t, ncclResult_t*);
  const char* (*GetErrorString)(ncclResult_t);
  ncclResult_t (*AllReduce)(const void*, void*, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t, cudaStream_t);
  ncclResult_t (*AllGather)(const void*, void*, size_t, ncclDataType_t, ncclComm_t, cudaStream_t);
  ncclResult_t (*ReduceScatter)(const void*, void*, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t, cudaStream_t);
  ncclResult_t (*Broadcast)(const void*, void*, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t);
  ncclResult_t (*Send)(const void*, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t);
  ncclResult_t (*Recv)(void*, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t);
  ncclResult_t (*GroupStart)();
  ncclResult_t (*GroupEnd)();
} g;

void Need(Napi::Env env) {
  if (!g.lib) Throw(env, "E_NCCL", "Expected NCCL to be loaded (ncclLoad) before a collective but received none");
}

void NcclCheck(Napi::Env env, ncclResult_t r, const char* what) {
  if (r != 0 && r != 7) Throw(env, "E_NCCL", std::string(what) + " failed: " + g.GetErrorString(r) + " (ncclResult " + std::to_string(r) + ")");
}

template <typename F>
bool Sym(void* lib, const char* name, F& out) {
  out = reinterpret_cast<F>(dlsym(lib, name));
  return out != nullptr;
}

Napi::Value Load(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (g.lib) {
    int v = 0;
    g.GetVersion(&v);
    return Napi::Number::New(env, v);
  }
  std::string path = info[0].As<Napi::String>();
  void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!lib) Throw(env, "E_NCCL", std::string("dlopen(") + path + ") failed: " + dlerror());
  Nccl n;
  n.lib = lib;
  bool ok = Sym(lib, "ncclGetVersion", n.GetVersion) && Sym(lib, "ncclGetUniqueId", n.GetUniqueId) &&
            Sym(lib, "ncclCommInitRank", n.CommInitRank) && Sym(lib, "ncclCommDestroy", n.CommDestroy) &&
            Sym(lib, "ncclCommAbort", n.CommAbort) && Sym(lib, "ncclCommGetAsyncError", n.CommGetAsyncError) &&
            Sym(lib, "ncclGetErrorString", n.GetErrorString) && Sym(lib, "ncclAllReduce", n.AllReduce) &&
            Sym(lib, "ncclAllGather", n.AllGather) && Sym(lib, "ncclReduceScatter", n.ReduceScatter) &&
            Sym(lib, "ncclBroadcast", n.Broadcast) && Sym(lib, "ncclSend", n.Send) && Sym(lib, "ncclRecv", n.Recv) &&
            Sym(lib, "ncclGroupStart", n.GroupStart) && Sym(lib, "ncclGroupEnd", n.GroupEnd);
  if (!ok) {
    dlclose(lib);
    Throw(env, "E_NCCL", path + " lacks an NCCL 2.x symbol (ncclSend/ncclRecv need NCCL >= 2.7)");
  }
  g = n;
  int v = 0;
  g.GetVersion(&v);
  return Napi::Number::New(env, v);
}

Napi::Value GetUniqueId(const Napi::CallbackInfo& info) {
  Need(info.Env());
  ncclUniqueId id;
  NcclCheck(info.Env(), g.GetUniqueId(&id), "ncclGetUniqueId");
  Napi::Uint8Array out = Napi::Uint8Array::New(info.Env(), sizeof id);
  std::memcpy(out.Data(), &id, sizeof id);
  return out;
}

Napi::Value CommInitRank(const Napi::CallbackInfo& info) {
  Need(info.Env());
  int world = static_cast<int>(U64(info[0], "world"));
  Napi::Uint8Array a = info[1].As<Napi::Uint8Array>();
  int rank = static_cast<int>(U64(info[2], "rank"));
  ncclUniqueId id;
  if (a.ByteLength() != sizeof id) Throw(info.Env(), "E_ARG", "Expected a 128-byte NCCL unique id but received " + std::to_string(a.ByteLength()) + " bytes");
  std::memcpy(&id, a.Data(), sizeof id);
  ncclComm_t c = nullptr;
  NcclCheck(info.Env(), g.CommInitRank(&c, world, id, rank), "ncclCommInitRank");
  return Big(info.Env(), c);
}

ncclComm_t C(const Napi::Value& v) { return reinterpret_cast<ncclComm_t>(Ptr(v, "comm")); }
cudaStream_t S(const Napi::Value& v) { return static_cast<cudaStream_t>(Ptr(v, "stream")); }
int I(const Napi::Value& v, const char* n) { return static_cast<int>(U64(v, n)); }

Napi::Value CommDestroy(const Napi::CallbackInfo& info) {
  Need(info.Env());
  NcclCheck(info.Env(), g.CommDestroy(C(info[0])), "ncclCommDestroy");
  return info.Env().Undefined();
}

Napi::Value CommAbort(const Napi::CallbackInfo& info) {
  Need(info.Env());
  NcclCheck(info.Env(), g.CommAbort(C(info[0])), "ncclCommAbort");
  return info.Env().Undefined();
}

// (send, recv, count, dtype, op, comm, stream)
Napi::Value AllReduce(const Napi::CallbackInfo& info) {
  Need(info.Env());
  NcclCheck(info.Env(), g.AllReduce(Ptr(info[0], "send"), Ptr(info[1], "recv"), U64(info[2], "count"), I(info[3], "dtype"), I(info[4], "op"), C(info[5]), S(info[6])), "ncclAllReduce");
  return info.Env().Undefined();
}

// (send, recv, sendCount, dtype, comm, stream)
Napi::Value AllGather(const Napi::CallbackInfo& info) {
  Need(info.Env());
  NcclCheck(info.Env(), g.AllGather(Ptr(info[0], "send"), Ptr(info[1], "recv"), U64(info[2], "count"), I(info[3], "dtype"), C(info[4]), S(info[5])), "ncclAllGather");
  return info.Env().Undefined();
}

// (send, recv, recvCount, dtype, op, comm, stream)
Napi::Value ReduceScatter(const Napi::CallbackInfo& info) {
  Need(info.Env());
  NcclCheck(info.Env(), g.ReduceScatter(Ptr(info[0], "send"), Ptr(info[1], "recv"), U64(info[2], "count"), I(info[3], "dtype"), I(info[4], "op"), C(info[5]), S(info[6])), "ncclReduceScatter");
  return info.Env().Undefined();
}

// (send, recv, count, dtype, root, comm, stream)
Napi::Value Broadcast(const Napi::CallbackInfo& info) {
  Need(info.Env());
  NcclCheck(info.Env(), g.Broadcast(Ptr(info[0], "send"), Ptr(info[1], "recv"), U64(info[2], "count"), I(info[3], "dtype"), I(info[4], "root"), C(info[5]), S(info[6])), "ncclBroadcast");
  return info.Env().Undefined();
}

// (send, recv, bytesPerPeer, world, comm, stream): send block p of `send` to rank p, receive rank p's into block p.
Napi::Value AllToAll(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Need(env);
  auto* send = static_cast<const char*>(Ptr(info[0], "send"));
  auto* recv = static_cast<char*>(Ptr(info[1], "recv"));
  size_t bytes = U64(info[2], "bytesPerPeer");
  int world = I(info[3], "world");
  ncclComm_t comm = C(info[4]);
  cudaStream_t s = S(info[5]);
  NcclCheck(env, g.GroupStart(), "ncclGroupStart");
  ncclResult_t r = 0;
  for (int p = 0; p < world && (r == 0 || r == 7); p++) {
    r = g.Send(send + p * bytes, bytes, 1 /* ncclUint8 */, p, comm, s);
    if (r == 0 || r == 7) r = g.Recv(recv + p * bytes, bytes, 1, p, comm, s);
  }
  ncclResult_t e = g.GroupEnd();
  NcclCheck(env, r, "ncclSend/ncclRecv");
  NcclCheck(env, e, "ncclGroupEnd");
  return env.Undefined();
}

// (stream, comm|0, timeoutMs): waits for the stream while watching NCCL's asynchronous error; on an error or at
// the deadline the communicator is aborted, so a dead peer fails this rank instead of hanging it.
Napi::Value SyncWatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  cudaStream_t s = S(info[0]);
  ncclComm_t comm = C(info[1]);
  double timeoutMs = info[2].As<Napi::Number>().DoubleValue();
  auto t0 = std::chrono::steady_clock::now();
  int spins = 0;
  for (;;) {
    cudaError_t q = cudaStreamQuery(s);
    if (q == cudaSuccess) return env.Undefined();
    if (q != cudaErrorNotReady) Check(env, q, "cudaStreamQuery");
    if (comm && g.lib) {
      ncclResult_t ar = 0;
      g.CommGetAsyncError(comm, &ar);
      if (ar != 0 && ar != 7) {
        g.CommAbort(comm);
        Throw(env, "E_NCCL", std::string("NCCL reported an asynchronous error: ") + g.GetErrorString(ar) + " (a peer failed; the communicator was aborted)");
      }
    }
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (ms > timeoutMs) {
      if (comm && g.lib) g.CommAbort(comm);
      Throw(env, "E_TIMEOUT", "Expected the collective to finish within " + std::to_string(static_cast<long>(timeoutMs)) + " ms but it was still running (a peer hung or died; the communicator was aborted)");
    }
    if (++spins > 1000) std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

}  // namespace

void RegisterNccl(Napi::Env env, Napi::Object exports) {
  exports.Set("ncclLoad", Napi::Function::New(env, Load));
  exports.Set("ncclGetUniqueId", Napi::Function::New(env, GetUniqueId));
  exports.Set("ncclCommInitRank", Napi::Function::New(env, CommInitRank));
  exports.Set("ncclCommDestroy", Napi::Function::New(env, CommDestroy));
  exports.Set("ncclCommAbort", Napi::Function::New(env, CommAbort));
  exports.Set("ncclAllReduce", Napi::Function::New(env, AllReduce));
  exports.Set("ncclAllGather", Napi::Function::New(env, AllGather));
  exports.Set("ncclReduceScatter", Napi::Function::New(env, ReduceScatter));
  exports.Set("ncclBroadcast", Napi::Function::New(env, Broadcast));
  exports.Set("ncclAllToAll", Napi::Function::New(env, AllToAll));
  exports.Set("syncWatch", Napi::Function::New(env, SyncWatch));
}

}  // namespace q
