#include "calib/blas.h"

#include <dlfcn.h>
#include <stdlib.h>

#include <mutex>
#include <string>

namespace quench::calib {
namespace {

// cblas.h's enums, as OpenBLAS defines them (CBLAS standard values).
constexpr int kCblasRowMajor = 101;
constexpr int kCblasNoTrans = 111;

using CblasSgemm = void (*)(int order, int ta, int tb, int m, int n, int k, float alpha,
                            const float* a, int lda, const float* b, int ldb, float beta, float* c,
                            int ldc);
CblasSgemm g_cblas_sgemm = nullptr;

void SgemmNN(int m, int n, int k, float alpha, const float* a, int lda, const float* b, int ldb,
             float beta, float* c, int ldc) {
  g_cblas_sgemm(kCblasRowMajor, kCblasNoTrans, kCblasNoTrans, m, n, k, alpha, a, lda, b, ldb,
                beta, c, ldc);
}

Result<const Blas*> Load() {
  static Blas blas;
  // One thread, asked for before the library initialises: OpenBLAS then starts no thread pool
  // at load (a pool that cannot start, e.g. under `ulimit -v`, left quench hanging).
  setenv("OPENBLAS_NUM_THREADS", "1", /*overwrite=*/0);
  // Debian's libopenblas0 (pthread, openmp or serial variant, through its alternatives).
  void* h = dlopen("libopenblas.so.0", RTLD_NOW | RTLD_LOCAL);
  if (h == nullptr) {
    return Error(ErrorCode::kUnsupported,
                 std::string("GPTQ needs OpenBLAS, which could not be loaded (") + dlerror() +
                     "); install it with apt-get install libopenblas0 (scripts/setup.sh does)");
  }
  blas.spotrf = reinterpret_cast<decltype(blas.spotrf)>(dlsym(h, "spotrf_"));
  blas.spotri = reinterpret_cast<decltype(blas.spotri)>(dlsym(h, "spotri_"));
  g_cblas_sgemm = reinterpret_cast<CblasSgemm>(dlsym(h, "cblas_sgemm"));
  auto set_threads = reinterpret_cast<void (*)(int)>(dlsym(h, "openblas_set_num_threads"));
  if (blas.spotrf == nullptr || blas.spotri == nullptr || g_cblas_sgemm == nullptr) {
    return Error(ErrorCode::kUnsupported,
                 "libopenblas.so.0 lacks spotrf_, spotri_ or cblas_sgemm; GPTQ cannot run");
  }
  if (set_threads != nullptr) set_threads(1);
  blas.sgemm_nn = &SgemmNN;
  return &blas;
}

}  // namespace

Result<const Blas*> LoadBlas() {
  static std::once_flag once;
  static Result<const Blas*> loaded = Error(ErrorCode::kInternal, "not loaded");
  std::call_once(once, [] { loaded = Load(); });
  return loaded;
}

}  // namespace quench::calib
