// N-API glue of the attention kernels. Arguments are positional (info[0], info[1], ...; pointers as BigInt):
// these run once per layer per step, so no options object is built or read. Shapes and dtypes are validated in
// TypeScript (src/attention.ts); the checks here guard only what would make a kernel index out of bounds.
#include "attention/glue.h"

#include <string>

#include "attention/attention.h"
#include "common/napi_util.h"

namespace q {
namespace {

int Int(const Napi::CallbackInfo& info, size_t i, const char* name) { return static_cast<int>(I64(info[i], name)); }

// Arguments 0..6 of both entry points: q, qStride, k, v, pageTable, maxPagesPerSeq, pageSize.
void ReadQKv(const Napi::CallbackInfo& info, const void** q, int* qStride, PagedKv* kv) {
  *q = Ptr(info[0], "q");
  *qStride = Int(info, 1, "qStride");
  kv->k = Ptr(info[2], "k");
  kv->v = Ptr(info[3], "v");
  kv->pageTable = static_cast<const int32_t*>(Ptr(info[4], "pageTable"));
  kv->maxPagesPerSeq = Int(info, 5, "maxPagesPerSeq");
  kv->pageSize = Int(info, 6, "pageSize");
}

void CheckCommon(Napi::Env env, const char* op, int qStride, const PagedKv& kv, int S, int numHeads, int numKvHeads,
                 int headDim) {
  const std::string p = std::string(op) + ": ";
  if (headDim != 64 && headDim != 128)
    Throw(env, "E_UNSUPPORTED", p + "headDim=" + std::to_string(headDim) + " is not 64 or 128");
  if (numKvHeads <= 0 || numHeads <= 0 || numHeads % numKvHeads != 0)
    Throw(env, "E_ARG", p + "numHeads=" + std::to_string(numHeads) + " is not a multiple of numKvHeads=" +
                            std::to_string(numKvHeads));
  if (qStride % 8 != 0 || qStride < numHeads * headDim)
    Throw(env, "E_ARG", p + "qStride=" + std::to_string(qStride) + " is not a multiple of 8 that is >= " +
                            std::to_string(numHeads * headDim));
  if (kv.pageSize <= 0 || kv.maxPagesPerSeq <= 0 || S < 0)
    Throw(env, "E_ARG", p + "pageSize=" + std::to_string(kv.pageSize) + ", maxPagesPerSeq=" +
                            std::to_string(kv.maxPagesPerSeq) + " must be positive");
  if (!kv.k || !kv.v || !kv.pageTable) Throw(env, "E_ARG", p + "a required device pointer is null");
}

Napi::Value Prefill(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 18) Throw(env, "E_ARG", "attentionPrefill: expected 18 arguments");
  AttentionPrefillArgs a{};
  ReadQKv(info, &a.q, &a.qStride, &a.kv);
  a.qStart = static_cast<const int32_t*>(Ptr(info[7], "qStart"));
  a.contextLens = static_cast<const int32_t*>(Ptr(info[8], "contextLens"));
  a.positions = static_cast<const int32_t*>(Ptr(info[9], "positions"));
  a.S = Int(info, 10, "S");
  a.numHeads = Int(info, 11, "numHeads");
  a.numKvHeads = Int(info, 12, "numKvHeads");
  a.headDim = Int(info, 13, "headDim");
  a.scale = static_cast<float>(info[14].As<Napi::Number>().DoubleValue());
  a.out = Ptr(info[15], "out");
  a.maxQLen = Int(info, 16, "maxQLen");
  a.stream = Stream(info[17]);
  CheckCommon(env, "attentionPrefill", a.qStride, a.kv, a.S, a.numHeads, a.numKvHeads, a.headDim);
  if (a.maxQLen <= 0) Throw(env, "E_ARG", "attentionPrefill: maxQLen=" + std::to_string(a.maxQLen) + " must be positive");
  if (!a.q || !a.out || !a.qStart || !a.contextLens || !a.positions)
    Throw(env, "E_ARG", "attentionPrefill: a required device pointer is null");
  cudaError_t err = q_attention_prefill(&a);
  if (err != cudaSuccess) Throw(env, "E_CUDA", CudaMsg("attentionPrefill kernel launch", err));
  return env.Undefined();
}

Napi::Value Decode(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 19) Throw(env, "E_ARG", "attentionDecode: expected 19 arguments");
  AttentionDecodeArgs a{};
  ReadQKv(info, &a.q, &a.qStride, &a.kv);
  a.contextLens = static_cast<const int32_t*>(Ptr(info[7], "contextLens"));
  a.S = Int(info, 8, "S");
  a.numHeads = Int(info, 9, "numHeads");
  a.numKvHeads = Int(info, 10, "numKvHeads");
  a.headDim = Int(info, 11, "headDim");
  a.scale = static_cast<float>(info[12].As<Napi::Number>().DoubleValue());
  a.out = Ptr(info[13], "out");
  a.workspace = static_cast<float*>(Ptr(info[14], "workspace"));
  const int64_t wsBytes = I64(info[15], "workspaceBytes");
  a.maxContext = Int(info, 16, "maxContext");
  a.chunkSize = Int(info, 17, "chunkSize");
  a.stream = Stream(info[18]);
  CheckCommon(env, "attentionDecode", a.qStride, a.kv, a.S, a.numHeads, a.numKvHeads, a.headDim);
  if (a.maxContext <= 0 || a.chunkSize <= 0 || a.chunkSize % 64 != 0)
    Throw(env, "E_ARG", "attentionDecode: maxContext=" + std::to_string(a.maxContext) + ", chunkSize=" +
                            std::to_string(a.chunkSize) + " must be positive, chunkSize a multiple of 64");
  const int chunks = (a.maxContext + a.chunkSize - 1) / a.chunkSize;
  const int64_t need = q_attention_decode_workspace_floats(a.S, a.numHeads, a.headDim, chunks) * 4;
  if (wsBytes < need)
    Throw(env, "E_ARG", "attentionDecode: workspace of " + std::to_string(wsBytes) + " bytes is below the " +
                            std::to_string(need) + " needed");
  if (!a.q || !a.out || !a.contextLens || !a.workspace)
    Throw(env, "E_ARG", "attentionDecode: a required device pointer is null");
  cudaError_t err = q_attention_decode(&a);
  if (err != cudaSuccess) Throw(env, "E_CUDA", CudaMsg("attentionDecode kernel launch", err));
  return env.Undefined();
}

}  // namespace

void RegisterAttention(Napi::Env env, Napi::Object exports) {
  exports.Set("attentionPrefill", Napi::Function::New(env, Prefill));
  exports.Set("attentionDecode", Napi::Function::New(env, Decode));
}

}  // namespace q
