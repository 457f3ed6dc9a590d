#pragma once
#include <napi.h>
namespace q {
void RegisterRuntime(Napi::Env env, Napi::Object exports);
}
