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

// The first of the candidate paths that dlopen accepts (null entries skipped); each failure is appended to
// *tried for the error message.
void* OpenFirst(const char* const* candidates, size_t count, std::string* path, std::string* tried) {
  for (size_t i = 0; i < count; ++i) {
    const char* c = candidates[i];
    if (!c || !*c) continue;
    void* h = dlopen(c, RTLD_NOW | RTLD_LOCAL);
    if (h) {
      *path = c;
      return h;
    }
    const char* e = dlerror();
    *tried += std::string("\n  ") + c + ": " + (e ? e : "not found");
  }
  return nullptr;
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
  l.handle = OpenFirst(candidates, sizeof candidates / sizeof *candidates, &l.path, &l.tried);
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


// ---- cuBLASLt fp8 (the benchmark's second baseline) ----
// out[M, N] (bf16) = aScale · wScale · a[M, K] · w[N, K]^T with e4m3 a and w and per-tensor f32 scales (device
// pointers). In cuBLASLt's column-major terms: D (N×M, ld N) = op_T(A = w, K×N, ld K) · op_N(B = a, K×M, ld K),
// the "TN" form fp8 requires on sm_90. Only per-tensor scaling: row-wise (outer-vector) scale modes are not
// declared here. Plans (descriptors, layouts, the heuristic's first algorithm) are cached per (device, M, N, K)
// so that a call, and a call under graph capture, is one cublasLtMatmul.
typedef void* LtHandle;
typedef void* LtDesc;
typedef void* LtLayout;
typedef void* LtPref;
struct LtAlgo {
  uint64_t data[8];
};
struct LtHeuristic {
  LtAlgo algo;
  size_t workspaceSize;
  int state;
  float wavesCount;
  int reserved[4];
};
typedef cublasStatus_t (*LtCreateFn)(LtHandle*);
typedef cublasStatus_t (*LtDescCreateFn)(LtDesc*, int, int);
typedef cublasStatus_t (*LtDescSetFn)(LtDesc, int, const void*, size_t);
typedef cublasStatus_t (*LtLayoutCreateFn)(LtLayout*, int, uint64_t, uint64_t, int64_t);
typedef cublasStatus_t (*LtPrefCreateFn)(LtPref*);
typedef cublasStatus_t (*LtPrefSetFn)(LtPref, int, const void*, size_t);
typedef cublasStatus_t (*LtPrefDestroyFn)(LtPref);
typedef cublasStatus_t (*LtHeuristicFn)(LtHandle, LtDesc, LtLayout, LtLayout, LtLayout, LtLayout, LtPref, int,
                                        LtHeuristic*, int*);
typedef cublasStatus_t (*LtMatmulFn)(LtHandle, LtDesc, const void*, const void*, LtLayout, const void*, LtLayout,
                                     const void*, const void*, LtLayout, void*, LtLayout, const LtAlgo*, void*, size_t,
                                     cudaStream_t);

constexpr int kR8E4M3 = 28;
constexpr int kLtTransA = 3, kLtTransB = 4, kLtAScale = 17, kLtBScale = 18;
constexpr int kLtPrefMaxWorkspace = 1;
constexpr size_t kLtWorkspace = size_t(32) << 20;

struct LtPlan {
  LtDesc desc = nullptr;
  LtLayout la = nullptr, lb = nullptr, ld = nullptr;
  LtAlgo algo{};
};

struct LtLib {
  void* handle = nullptr;
  std::string path;
  std::string tried;
  LtCreateFn create = nullptr;
  LtDescCreateFn descCreate = nullptr;
  LtDescSetFn descSet = nullptr;
  LtLayoutCreateFn layoutCreate = nullptr;
  LtPrefCreateFn prefCreate = nullptr;
  LtPrefSetFn prefSet = nullptr;
  LtPrefDestroyFn prefDestroy = nullptr;
  LtHeuristicFn heuristic = nullptr;
  LtMatmulFn matmul = nullptr;
  std::unordered_map<int, LtHandle> handles;   // per device
  std::unordered_map<int, void*> workspaces;   // per device, kLtWorkspace bytes, kept until exit
  std::unordered_map<std::string, LtPlan> plans;
};

LtLib& lt() {
  static LtLib l;
  return l;
}

void LoadLt(Napi::Env env) {
  LtLib& l = lt();
  if (l.matmul) return;
  const char* env_path = getenv("Q_CUBLASLT_PATH");
  const char* candidates[] = {
      env_path,
      "libcublasLt.so.13",
      "libcublasLt.so.12",
      "libcublasLt.so",
      "/usr/local/cuda/lib64/libcublasLt.so.13",
      "/usr/local/cuda/targets/x86_64-linux/lib/libcublasLt.so.13",
      "/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib/libcublasLt.so.13",
      "/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cublas/lib/libcublasLt.so.13",
  };
  if (!l.handle) l.handle = OpenFirst(candidates, sizeof candidates / sizeof *candidates, &l.path, &l.tried);
  if (!l.handle)
    Throw(env, "E_CUBLAS",
          "cuBLASLt could not be loaded; tried:" + l.tried +
              "\nPossible solutions: install the CUDA toolkit or the nvidia-cublas wheel, or set Q_CUBLASLT_PATH to "
              "libcublasLt.so.13.");
  l.create = reinterpret_cast<LtCreateFn>(dlsym(l.handle, "cublasLtCreate"));
  l.descCreate = reinterpret_cast<LtDescCreateFn>(dlsym(l.handle, "cublasLtMatmulDescCreate"));
  l.descSet = reinterpret_cast<LtDescSetFn>(dlsym(l.handle, "cublasLtMatmulDescSetAttribute"));
  l.layoutCreate = reinterpret_cast<LtLayoutCreateFn>(dlsym(l.handle, "cublasLtMatrixLayoutCreate"));
  l.prefCreate = reinterpret_cast<LtPrefCreateFn>(dlsym(l.handle, "cublasLtMatmulPreferenceCreate"));
  l.prefSet = reinterpret_cast<LtPrefSetFn>(dlsym(l.handle, "cublasLtMatmulPreferenceSetAttribute"));
  l.prefDestroy = reinterpret_cast<LtPrefDestroyFn>(dlsym(l.handle, "cublasLtMatmulPreferenceDestroy"));
  l.heuristic = reinterpret_cast<LtHeuristicFn>(dlsym(l.handle, "cublasLtMatmulAlgoGetHeuristic"));
  LtMatmulFn mm = reinterpret_cast<LtMatmulFn>(dlsym(l.handle, "cublasLtMatmul"));
  if (!l.create || !l.descCreate || !l.descSet || !l.layoutCreate || !l.prefCreate || !l.prefSet || !l.heuristic ||
      !mm)
    Throw(env, "E_CUBLAS", "cuBLASLt at " + l.path + " lacks one of the cublasLt functions used");
  l.matmul = mm;
}

void LtCheck(Napi::Env env, cublasStatus_t s, const char* what) {
  if (s != 0) Throw(env, "E_CUBLAS", std::string(what) + " failed: cublasStatus " + std::to_string(s));
}

// cublasLtFp8(block): p = [a, w, aScale, wScale, out, stream], i = [m, n, k].
Napi::Value CublasLtFp8(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const ArgBlock& b = Args(info[0], "cublasLtFp8");
  std::lock_guard<std::mutex> g(mu());
  LoadLt(env);
  LtLib& l = lt();
  const int m = b.i[0], n = b.i[1], k = b.i[2];
  if (m <= 0 || n <= 0 || k <= 0 || k % 16 != 0 || n % 16 != 0)
    Throw(env, "E_SHAPE",
          "cublasLtFp8: Expected m > 0 and n, k multiples of 16 but received m=" + std::to_string(m) +
              ", n=" + std::to_string(n) + ", k=" + std::to_string(k));
  int dev = 0;
  Check(env, cudaGetDevice(&dev), "cudaGetDevice");
  const cudaStream_t stream = ArgPtr<CUstream_st>(b, 5);
  auto hit = l.handles.find(dev);
  LtHandle h = nullptr;
  if (hit == l.handles.end()) {
    LtCheck(env, l.create(&h), "cublasLtCreate");
    l.handles[dev] = h;
  } else {
    h = hit->second;
  }
  void* ws = nullptr;
  auto wit = l.workspaces.find(dev);
  if (wit == l.workspaces.end()) {
    // Allocated at the first call; in relaxed mode so that another thread's capture neither forbids nor breaks it.
    cudaStreamCaptureMode capMode = cudaStreamCaptureModeRelaxed;
    cudaThreadExchangeStreamCaptureMode(&capMode);
    const cudaError_t e = cudaMalloc(&ws, kLtWorkspace);
    cudaThreadExchangeStreamCaptureMode(&capMode);
    if (e != cudaSuccess) {
      cudaGetLastError();
      ws = nullptr;
    }
    l.workspaces[dev] = ws;
  } else {
    ws = wit->second;
  }
  const size_t wsBytes = ws ? kLtWorkspace : 0;
  const std::string key = std::to_string(dev) + ":" + std::to_string(m) + "x" + std::to_string(n) + "x" +
                          std::to_string(k);
  auto pit = l.plans.find(key);
  if (pit == l.plans.end()) {
    LtPlan p;
    LtCheck(env, l.descCreate(&p.desc, kCompute32F, kR32F), "cublasLtMatmulDescCreate");
    const int32_t opT = kOpT, opN = kOpN;
    LtCheck(env, l.descSet(p.desc, kLtTransA, &opT, sizeof opT), "cublasLtMatmulDescSetAttribute(TRANSA)");
    LtCheck(env, l.descSet(p.desc, kLtTransB, &opN, sizeof opN), "cublasLtMatmulDescSetAttribute(TRANSB)");
    LtCheck(env, l.layoutCreate(&p.la, kR8E4M3, k, n, k), "cublasLtMatrixLayoutCreate(A)");
    LtCheck(env, l.layoutCreate(&p.lb, kR8E4M3, k, m, k), "cublasLtMatrixLayoutCreate(B)");
    LtCheck(env, l.layoutCreate(&p.ld, kR16BF, n, m, n), "cublasLtMatrixLayoutCreate(D)");
    LtPref pref = nullptr;
    LtCheck(env, l.prefCreate(&pref), "cublasLtMatmulPreferenceCreate");
    const uint64_t maxWs = wsBytes;
    l.prefSet(pref, kLtPrefMaxWorkspace, &maxWs, sizeof maxWs);
    LtHeuristic res[1] = {};
    int found = 0;
    const cublasStatus_t s = l.heuristic(h, p.desc, p.la, p.lb, p.ld, p.ld, pref, 1, res, &found);
    if (l.prefDestroy) l.prefDestroy(pref);
    if (s != 0 || found < 1)
      Throw(env, "E_CUBLAS",
            "cublasLtMatmulAlgoGetHeuristic found no fp8 algorithm for m=" + std::to_string(m) + ", n=" +
                std::to_string(n) + ", k=" + std::to_string(k) + " (cublasStatus " + std::to_string(s) + ")");
    p.algo = res[0].algo;
    pit = l.plans.emplace(key, p).first;
  }
  LtPlan& p = pit->second;
  // The scale pointers are per call (the caller's tensors); setting an attribute is a host-side store.
  const void* as = ArgPtr<const void>(b, 2);
  const void* wsc = ArgPtr<const void>(b, 3);
  LtCheck(env, l.descSet(p.desc, kLtAScale, &wsc, sizeof wsc), "cublasLtMatmulDescSetAttribute(A_SCALE)");
  LtCheck(env, l.descSet(p.desc, kLtBScale, &as, sizeof as), "cublasLtMatmulDescSetAttribute(B_SCALE)");
  const float alpha = 1.0f, beta = 0.0f;
  void* out = ArgPtr<void>(b, 4);
  const cublasStatus_t s = l.matmul(h, p.desc, &alpha, ArgPtr<const void>(b, 1), p.la, ArgPtr<const void>(b, 0), p.lb,
                                    &beta, out, p.ld, out, p.ld, &p.algo, ws, wsBytes, stream);
  if (s != 0)
    Throw(env, "E_CUBLAS",
          "cublasLtMatmul fp8 (m=" + std::to_string(m) + ", n=" + std::to_string(n) + ", k=" + std::to_string(k) +
              ") failed: cublasStatus " + std::to_string(s));
  return env.Undefined();
}

}  // namespace

void RegisterCublas(Napi::Env env, Napi::Object exports) {
  exports.Set("cublasLtFp8", Napi::Function::New(env, CublasLtFp8));
  exports.Set("cublasInfo", Napi::Function::New(env, CublasInfo));
  exports.Set("cublasGemm", Napi::Function::New(env, CublasGemm));
}

}  // namespace q
