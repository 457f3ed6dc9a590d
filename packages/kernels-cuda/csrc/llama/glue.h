#pragma once
#include <napi.h>
namespace q {
void RegisterLlama(Napi::Env env, Napi::Object exports);
}
