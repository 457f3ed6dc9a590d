// Registers the functions of the @q/comm addon; the work lives in runtime/, nccl/ and allreduce/.
#include <napi.h>

namespace qcomm {
void RegisterRuntime(Napi::Env env, Napi::Object exports);
void RegisterNccl(Napi::Env env, Napi::Object exports);
void RegisterAllreduce(Napi::Env env, Napi::Object exports);
}  // namespace qcomm

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  qcomm::RegisterRuntime(env, exports);
  qcomm::RegisterNccl(env, exports);
  qcomm::RegisterAllreduce(env, exports);
  exports.Set("addonVersion", Napi::String::New(env, Q_COMM_VERSION));
  return exports;
}

NODE_API_MODULE(q_comm, Init)
