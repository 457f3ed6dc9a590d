// The q CUDA addon, the only native code of q: registers the functions of each part and nothing else. The
// parts live beside it: runtime/ (devices, memory, IPC, streams, events, graphs), cublas/ (fp16/bf16 GEMM
// through dlopen), nccl/ (collectives through dlopen), allreduce/ (the quantized all-reduce kernels), actquant/
// and gemm/ (the kernels) with their glue in kernels_glue.cc. Q_ADDON_VERSION is package.json's version, set
// by the build (scripts/build-addon.mjs).
#include <napi.h>

#include "allreduce/glue.h"
#include "attention/glue.h"
#include "cublas/cublas.h"
#include "fill/glue.h"
#include "kernels_glue.h"
#include "nccl/nccl.h"
#include "llama/glue.h"
#include "runtime/runtime.h"

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  q::RegisterRuntime(env, exports);
  q::RegisterCublas(env, exports);
  q::RegisterKernels(env, exports);
  q::RegisterNccl(env, exports);
  q::RegisterAllreduce(env, exports);
  q::RegisterLlama(env, exports);
  q::RegisterAttention(env, exports);
  q::RegisterFill(env, exports);
  exports.Set("abiVersion", Napi::Number::New(env, 2));
  exports.Set("version", Napi::String::New(env, Q_ADDON_VERSION));
  return exports;
}

}  // namespace

NODE_API_MODULE(q_cuda, Init)
