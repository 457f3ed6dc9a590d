#pragma once
#include <napi.h>
namespace q {
void RegisterNccl(Napi::Env env, Napi::Object exports);
}
