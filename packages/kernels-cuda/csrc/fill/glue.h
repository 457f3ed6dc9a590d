#pragma once
#include <napi.h>

namespace q {
void RegisterFill(Napi::Env env, Napi::Object exports);
}  // namespace q
