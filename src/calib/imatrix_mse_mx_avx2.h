// The imatrix_mse certified search for MXFP4 codes of bf16 weights (MXFP4A16, MXFP4) on AVX2
// CPUs: the same masks, improved steps and best errors as the scalar definition
// (imatrix_mse_kernel.h), with each vector of terms at fewer operations than the Highway
// kernel's (imatrix_mse_certified.cc TermMxPow2), the bf16 rows read without an f32 copy,
// and each group's largest magnitude kept for the chosen ranges (ChosenPos).
// imatrix_mse_mx_avx2.cc says why each operation is the definition's.
#ifndef QUENCH_CALIB_IMATRIX_MSE_MX_AVX2_H_
#define QUENCH_CALIB_IMATRIX_MSE_MX_AVX2_H_

#include <cstddef>

#include "calib/imatrix_mse_kernel.h"

namespace quench::calib::internal {

// True when SearchMxAvx2 takes the block: the CPU has AVX2, FMA and BMI2
// (IntAvx2Available), the switch below is on, and the block is MXFP4 of bf16 weights, norm 2
// or 3, groups of a multiple of 32 elements (at most 2^20), at most 32 steps.
bool MxAvx2Handles(const Block& b);

// The certified search of imatrix_mse_certified.cc on a block MxAvx2Handles accepts, from
// b.raw (bf16 rows) or b.x; b.absmax, when set, receives each group's largest magnitude
// max |x|. False when the block holds an Inf or NaN (checked on the pass that reads the
// rows: its callers need no AllFinite first), with the masks and bests of the groups before
// it possibly set.
bool SearchMxAvx2(const Block& b);

// The kernel's terms |dq - x|^norm * imp of n bf16 values x (n a multiple of 8) at a
// power-of-two scale s in [2^-100, 2^100], norm 2 or 3, for the test that compares every
// bf16 x with the definition's term. False where the kernel is unavailable.
bool MxAvx2Terms(int norm, float s, const float* x, const float* imp, size_t n, float* terms);

// Whether SearchBlock and RunSteps may use this kernel (default true); tests turn it off to
// run the Highway kernels on the same blocks. Not for concurrent use with conversions.
void SetMxAvx2Enabled(bool enabled);
bool MxAvx2Enabled();

}  // namespace quench::calib::internal

#endif  // QUENCH_CALIB_IMATRIX_MSE_MX_AVX2_H_
