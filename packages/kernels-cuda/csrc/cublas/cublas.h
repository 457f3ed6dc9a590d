#pragma once
#include <napi.h>
namespace q {
void RegisterCublas(Napi::Env env, Napi::Object exports);
}
