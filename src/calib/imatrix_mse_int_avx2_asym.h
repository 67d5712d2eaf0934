// The imatrix_mse certified search for asymmetric int codes of bf16 weights (W4A16_ASYM) on
// AVX2 CPUs (with BMI2): the same masks, improved steps and best errors as the scalar
// definition (imatrix_mse_kernel.h), in the shape of the symmetric AVX2 kernel
// (imatrix_mse_int_avx2.h), with each vector of terms at fewer operations than the Highway
// AVX2 kernel's (imatrix_mse_certified.cc). imatrix_mse_int_avx2_asym.cc says why each
// operation is the definition's.
#ifndef QUENCH_CALIB_IMATRIX_MSE_INT_AVX2_ASYM_H_
#define QUENCH_CALIB_IMATRIX_MSE_INT_AVX2_ASYM_H_

#include <cstddef>

#include "calib/imatrix_mse_kernel.h"

namespace quench::calib::internal {

// True when SearchIntAvx2Asym takes the block: IntAvx2Available(), IntAvx2Enabled() (the
// symmetric kernel's switch turns both off), and the block is bf16, int, asymmetric, norm 2
// or 3, codes within [-8, 7] (4 bits or fewer), groups of a multiple of 32 elements (at most
// 2^20) and at most 32 steps.
bool IntAvx2AsymHandles(const Block& b);

// The certified search of imatrix_mse_certified.cc on a block IntAvx2AsymHandles accepts, from
// its f32 rows or its raw bf16 rows; false when the block holds an Inf or NaN (checked on the
// pass that reads the rows: its callers need no AllFinite first), with the masks and bests of
// the groups before it possibly set.
bool SearchIntAvx2Asym(const Block& b);

// The kernel's terms |dq - x|^norm * imp of n elements (a multiple of 8) at one scale
// (2^-100 <= scale <= 2^100) and zero point (an integer in [qmin, qmax]), in element order,
// for the test that compares every bf16 x with the definition's term. False when
// IntAvx2AsymHandles(b) is not (i0, i1 as for a search) or the parameters are outside those.
bool IntAvx2AsymTerms(const Block& b, float scale, float zp, const float* x, const float* imp,
                      size_t n, float* terms);

}  // namespace quench::calib::internal

#endif  // QUENCH_CALIB_IMATRIX_MSE_INT_AVX2_ASYM_H_
