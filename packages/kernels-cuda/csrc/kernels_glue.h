#pragma once
#include <napi.h>
namespace q {
void RegisterKernels(Napi::Env env, Napi::Object exports);
}
