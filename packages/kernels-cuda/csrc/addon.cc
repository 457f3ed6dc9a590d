// The q CUDA addon: registers the functions of each part and nothing else. The parts live beside it:
// runtime/ (devices, memory, streams, events), cublas/ (fp16/bf16 GEMM through dlopen), actquant/ and
// gemm/ (the kernels) with their glue in kernels_glue.cc.
#include <napi.h>

#include "cublas/cublas.h"
#include "fill/glue.h"
#include "kernels_glue.h"
#include "runtime/runtime.h"

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  q::RegisterRuntime(env, exports);
  q::RegisterCublas(env, exports);
  q::RegisterKernels(env, exports);
  q::RegisterFill(env, exports);
  exports.Set("abiVersion", Napi::Number::New(env, 1));
  return exports;
}

}  // namespace

NODE_API_MODULE(q_cuda, Init)
