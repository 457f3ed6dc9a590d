#pragma once
#include <napi.h>
namespace q {
void RegisterAllreduce(Napi::Env env, Napi::Object exports);
}
