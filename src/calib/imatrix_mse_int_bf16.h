// The imatrix_mse certified search for symmetric int codes of bf16 weights (W4A16) with
// AVX-512 BF16 (AMD Zen 4, Intel Sapphire Rapids and later): the same masks, improved steps
// and best errors as the scalar definition (imatrix_mse_kernel.h), with each vector of terms
// at about half the operations of the Highway kernel's (imatrix_mse_certified.cc, which other
// CPUs and the other formats keep). imatrix_mse_int_bf16.cc says why each operation is the
// definition's.
#ifndef QUENCH_CALIB_IMATRIX_MSE_INT_BF16_H_
#define QUENCH_CALIB_IMATRIX_MSE_INT_BF16_H_

#include "calib/imatrix_mse_kernel.h"

namespace quench::calib::internal {

// True when SearchIntBf16 takes the block: this CPU has AVX-512 BF16 (avx512bf16.h), the
// switch below is on, and the block is bf16, int, symmetric, norm 2 or 3, a code range of at
// most 16 values around 0 (4 bits or fewer), groups of a multiple of 32 elements (at most
// 2^20) and at most 32 steps.
bool IntBf16Handles(const Block& b);

// The certified search of imatrix_mse_certified.cc on a block IntBf16Handles accepts.
void SearchIntBf16(const Block& b);

// The kernel's terms |dq - x|^norm * imp of n elements (a multiple of 32) at one scale
// (2^-100 <= scale <= 2^100), in element order, for the test that compares every bf16 x with
// the definition's term. False when IntBf16Handles(b) is not (i0, i1 as for a search).
bool IntBf16Terms(const Block& b, float scale, const float* x, const float* imp, size_t n,
                  float* terms);

// Whether SearchBlock may use this kernel (default true); tests turn it off to run the
// Highway kernels on the same blocks. Not for concurrent use with conversions.
void SetIntBf16Enabled(bool enabled);

}  // namespace quench::calib::internal

#endif  // QUENCH_CALIB_IMATRIX_MSE_INT_BF16_H_
