// The imatrix_mse certified search for asymmetric int codes of bf16 weights (W4A16_ASYM) on
// AVX2 CPUs (with BMI2): the same masks, improved steps and best errors as the scalar
// definition (imatrix_mse_kernel.h), in the shape of the symmetric AVX2 kernel
// (imatrix_mse_int_avx2.h), with each vector of terms at fewer operations than the Highway
// AVX2 kernel's (imatrix_mse_certified.cc). imatrix_mse_int_avx2_asym.cc says why each
// operation is the definition's.
#ifndef QUENCH_CALIB_IMATRIX_MSE_INT_AVX2_ASYM_H_
#define QUENCH_CALIB_IMATRIX_MSE_INT_AVX2_ASYM_H_

#include <cstddef>

#include <cstdint>

#include "calib/imatrix_mse_kernel.h"
#include "schemes/int_shared.h"

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
// for the test that compares every bf16 x with the definition's term; zero_form: the form the
// search's sums take for steps of zero point 0 (zp must then be 0). False when
// IntAvx2AsymHandles(b) is not (i0, i1 as for a search) or the parameters are outside those.
bool IntAvx2AsymTerms(const Block& b, float scale, float zp, bool zero_form, const float* x,
                      const float* imp, size_t n, float* terms);

// The chosen quantization's row helpers for bf16 rows, packed asymmetric int4, on the same
// CPUs (imatrix_mse_int_avx2_asym_codes.cc): true when they take groups of `group` elements
// in rows of n (IntAvx2Available(), IntAvx2Enabled(), group % 64 == 0, n % group == 0).
bool IntAvx2AsymCodesHandle(size_t group, size_t n);
// Each group's min and max of a raw bf16 row (the f32 values' min and max, up to the sign of
// a zero); false when the row holds an Inf or NaN.
bool IntAvx2RowMinMax(const uint8_t* row, size_t n_groups, size_t group, float* mn,
                      float* mx);
// The chosen parameters of n groups of a bf16 row with asymmetric codes of layout l, as
// StepRange at the group's step, then ComputeParams (asymmetric, scale 0 -> eps), give them:
// group k with min m0[k], max M0[k] and step steps[k] (at most 31) gets p[k] = {scale, zp}
// and the scale's bf16 pattern at dst + 2 k. Eight groups a vector.
void IntAvx2AsymChosenParams(const float* m0, const float* M0, const uint8_t* steps, size_t n,
                             int grid, double expand, const intq::internal::Layout& l,
                             intq::internal::GroupParams* p, uint8_t* dst);
// A raw bf16 row's codes with each group's asymmetric 4-bit parameters, packed as
// IntCodesPacked4 packs them (u = q + 8, element i in bits 4i..4i+3 of the byte stream).
void IntAvx2AsymCodes4(const uint8_t* row, size_t n, size_t group,
                       const intq::internal::GroupParams* p, uint8_t* dst);

}  // namespace quench::calib::internal

#endif  // QUENCH_CALIB_IMATRIX_MSE_INT_AVX2_ASYM_H_
