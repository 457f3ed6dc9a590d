// fp16/bf16 GEMM through cuBLAS, loaded with dlopen on first use so that the addon imports on machines
// without cuBLAS (or without a GPU). Only the handful of declarations used are written here; no cuBLAS
// header is needed at build time.
//
// gemm computes out[M, N] = a[M, K] · w[N, K]^T (+ beta · out), all row-major, f32 accumulation. In cuBLAS's
// column-major terms that is out^T (N×M) = w (op T, K×N stored) · a^T (op N), so no transposes are copied.
#include "cublas.h"

#include <dlfcn.h>

#include <mutex>
#include <string>
#include <unordered_map>

#include "../common/napi_util.h"

namespace q {
namespace {

typedef void* cublasHandle_t;
typedef int cublasStatus_t;
typedef cublasStatus_t (*CreateFn)(cublasHandle_t*);
typedef cublasStatus_t (*DestroyFn)(cublasHandle_t);
typedef cublasStatus_t (*SetStreamFn)(cublasHandle_t, cudaStream_t);
typedef cublasStatus_t (*GetVersionFn)(cublasHandle_t, int*);
typedef cublasStatus_t (*SetWorkspaceFn)(cublasHandle_t, void*, size_t);
typedef cublasStatus_t (*GemmExFn)(cublasHandle_t, int, int, int, int, int, const void*, const void*, int, int,
                                   const void*, int, int, const void*, void*, int, int, int, int);
typedef const char* (*StatusNameFn)(cublasStatus_t);

constexpr int kOpN = 0, kOpT = 1;
constexpr int kR32F = 0, kR16F = 2, kR16BF = 14;
constexpr int kCompute32F = 68;
constexpr int kGemmDefault = -1;

struct Lib {
  void* handle = nullptr;
  std::string path;
  std::string tried;
  CreateFn create = nullptr;
  DestroyFn destroy = nullptr;
  SetStreamFn setStream = nullptr;
  GetVersionFn getVersion = nullptr;
  GemmExFn gemmEx = nullptr;
  StatusNameFn statusName = nullptr;
  std::unordered_map<int, cublasHandle_t> handles;  // one handle per device
};

Lib& lib() {
  static Lib l;
  return l;
}
std::mutex& mu() {
  static std::mutex m;
  return m;
}

// Tries Q_CUBLAS_PATH, the soname on the loader's path, then the usual toolkit and wheel locations.
bool Load(Napi::Env env) {
  Lib& l = lib();
  if (l.gemmEx) return true;
  const char* env_path = getenv("Q_CUBLAS_PATH");
  const char* candidates[] = {
      env_path,
      "libcublas.so.13",
      "libcublas.so.12",
      "libcublas.so",
      "/usr/local/cuda/lib64/libcublas.so.13",
      "/usr/local/cuda/targets/x86_64-linux/lib/libcublas.so.13",
      "/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib/libcublas.so.13",
      "/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cublas/lib/libcublas.so.13",
      "/usr/local/cuda/lib64/libcublas.so.12",
  };
  for (const char* c : candidates) {
    if (!c || !*c) continue;
    void* h = dlopen(c, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      const char* e = dlerror();
      l.tried += std::string("\n  ") + c + ": " + (e ? e : "not found");
      continue;
    }
    l.handle = h;
    l.path = c;
    break;
  }
  if (!l.handle)
    Throw(env, "E_CUBLAS",
          "cuBLAS could not be loaded; tried:" + l.tried +
              "\nPossible solutions: install the CUDA toolkit or the nvidia-cublas wheel, or set Q_CUBLAS_PATH to "
              "libcublas.so.13.");
  l.create = reinterpret_cast<CreateFn>(dlsym(l.handle, "cublasCreate_v2"));
  l.destroy = reinterpret_cast<DestroyFn>(dlsym(l.handle, "cublasDestroy_v2"));
  l.setStream = reinterpret_cast<SetStreamFn>(dlsym(l.handle, "cublasSetStream_v2"));
  l.getVersion = reinterpret_cast<GetVersionFn>(dlsym(l.handle, "cublasGetVersion_v2"));
  l.statusName = reinterpret_cast<StatusNameFn>(dlsym(l.handle, "cublasGetStatusName"));
  l.gemmEx = reinterpret_cast<GemmExFn>(dlsym(l.handle, "cublasGemmEx"));
  if (!l.create || !l.setStream || !l.gemmEx)
    Throw(env, "E_CUBLAS", "cuBLAS at " + l.path + " lacks cublasCreate_v2/cublasSetStream_v2/cublasGemmEx");
  return true;
}

std::string StatusName(cublasStatus_t s) {
  Lib& l = lib();
  if (l.statusName) return l.statusName(s);
  return "cublasStatus " + std::to_string(s);
}

cublasHandle_t Handle(Napi::Env env) {
  int dev = 0;
  Check(env, cudaGetDevice(&dev), "cudaGetDevice");
  Lib& l = lib();
  auto it = l.handles.find(dev);
  if (it != l.handles.end()) return it->second;
  cublasHandle_t h = nullptr;
  cublasStatus_t s = l.create(&h);
  if (s != 0) Throw(env, "E_CUBLAS", "cublasCreate failed: " + StatusName(s));
  l.handles[dev] = h;
  return h;
}

Napi::Value CublasInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::lock_guard<std::mutex> g(mu());
  Load(env);
  Napi::Object o = Napi::Object::New(env);
  o.Set("path", lib().path);
  int v = 0;
  if (lib().getVersion) lib().getVersion(Handle(env), &v);
  o.Set("version", v);
  return o;
}

// cublasGemm(block): p = [a, w, out, stream], i = [m, n, k, dtype: 0 f16 | 1 bf16, out: 0 as a | 1 f32 (the lm_head
// logits)], f = [beta].
Napi::Value CublasGemm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const ArgBlock& b = Args(info[0], "cublasGemm");
  std::lock_guard<std::mutex> g(mu());
  Load(env);
  Lib& l = lib();
  cublasHandle_t h = Handle(env);
  int m = b.i[0];
  int n = b.i[1];
  int k = b.i[2];
  int dt = b.i[3] == 1 ? kR16BF : kR16F;
  int ct = b.i[4] == 1 ? kR32F : dt;
  float alpha = 1.0f;
  float beta = b.f[0];
  cublasStatus_t s = l.setStream(h, ArgPtr<CUstream_st>(b, 3));
  if (s != 0) Throw(env, "E_CUBLAS", "cublasSetStream failed: " + StatusName(s));
  s = l.gemmEx(h, kOpT, kOpN, n, m, k, &alpha, ArgPtr<const void>(b, 1), dt, k, ArgPtr<const void>(b, 0), dt, k,
               &beta, ArgPtr<void>(b, 2), ct, n, kCompute32F, kGemmDefault);
  if (s != 0)
    Throw(env, "E_CUBLAS",
          "cublasGemmEx(m=" + std::to_string(m) + ", n=" + std::to_string(n) + ", k=" + std::to_string(k) +
              ") failed: " + StatusName(s));
  return env.Undefined();
}

}  // namespace

void RegisterCublas(Napi::Env env, Napi::Object exports) {
  exports.Set("cublasInfo", Napi::Function::New(env, CublasInfo));
  exports.Set("cublasGemm", Napi::Function::New(env, CublasGemm));
}

}  // namespace q
