#pragma once
#include <napi.h>
namespace q {
// attentionPrefill, attentionDecode (positional arguments, see glue.cc).
void RegisterAttention(Napi::Env env, Napi::Object exports);
}
