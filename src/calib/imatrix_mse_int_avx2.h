// The imatrix_mse certified search for symmetric int codes of bf16 weights (W4A16) on AVX2
// CPUs (with FMA and BMI2) that lack AVX-512 BF16: the same masks, improved steps and best
// errors as the scalar definition (imatrix_mse_kernel.h), the blocks imatrix_mse_int_bf16.h
// takes on AVX-512 BF16 CPUs, with each vector of terms at fewer operations than the Highway
// AVX2 kernel's (imatrix_mse_certified.cc). imatrix_mse_int_avx2.cc says why each operation
// is the definition's.
#ifndef QUENCH_CALIB_IMATRIX_MSE_INT_AVX2_H_
#define QUENCH_CALIB_IMATRIX_MSE_INT_AVX2_H_

#include <cstddef>

#include "calib/imatrix_mse_kernel.h"

namespace quench::calib::internal {

// True when this CPU has AVX2, FMA and BMI2 (the kernel's target).
bool IntAvx2Available();

// True when SearchIntAvx2 takes the block: IntAvx2Available(), the switch below is on, no
// AVX-512 BF16 kernel takes it (IntBf16Handles is false), and the block is bf16, int,
// symmetric, norm 2 or 3, codes within [-8, 7] around 0 (4 bits or fewer), groups of a
// multiple of 32 elements (at most 2^20) and at most 32 steps.
bool IntAvx2Handles(const Block& b);

// The certified search of imatrix_mse_certified.cc on a block IntAvx2Handles accepts.
void SearchIntAvx2(const Block& b);

// The kernel's terms |dq - x|^norm * imp of n elements (a multiple of 8) at one scale
// (2^-100 <= scale <= 2^100), in element order, for the test that compares every bf16 x with
// the definition's term. False when IntAvx2Handles(b) is not (i0, i1 as for a search).
bool IntAvx2Terms(const Block& b, float scale, const float* x, const float* imp, size_t n,
                  float* terms);

// Whether SearchBlock may use this kernel (default true); tests turn it off to run the
// Highway kernels on the same blocks. Not for concurrent use with conversions.
void SetIntAvx2Enabled(bool enabled);
bool IntAvx2Enabled();

}  // namespace quench::calib::internal

#endif  // QUENCH_CALIB_IMATRIX_MSE_INT_AVX2_H_
