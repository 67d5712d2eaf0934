// The BLAS/LAPACK routines GPTQ uses, from Debian's OpenBLAS (libopenblas.so.0: its tuned SGEMM
// and the LAPACK it carries), loaded with dlopen on first use. Linking it would map the
// library and start OpenBLAS's thread pool in every quench run, data-free ones included
// (tests/test_memory.cc's address-space sweep found both); loaded here, only runs that use
// GPTQ pay for it.
#ifndef QUENCH_CALIB_BLAS_H_
#define QUENCH_CALIB_BLAS_H_

#include "quench/status.h"

namespace quench::calib {

struct Blas {
  // LAPACK (Fortran ABI; the trailing size_t is the hidden length of the character argument).
  void (*spotrf)(const char* uplo, const int* n, float* a, const int* lda, int* info,
                 unsigned long uplo_len);
  void (*spotri)(const char* uplo, const int* n, float* a, const int* lda, int* info,
                 unsigned long uplo_len);
  // CBLAS: row-major C = alpha * A * B + beta * C (no transposes).
  void (*sgemm_nn)(int m, int n, int k, float alpha, const float* a, int lda, const float* b,
                   int ldb, float beta, float* c, int ldc);
};

// The loaded routines, or why they cannot be (the library is missing: its package is named).
// Thread-safe; loads once. OpenBLAS is set to one thread: quench's pipeline runs the row
// chunks in parallel.
Result<const Blas*> LoadBlas();

}  // namespace quench::calib

#endif  // QUENCH_CALIB_BLAS_H_
