// The imatrix_mse certified search for symmetric int codes of bf16 weights (W4A16) on AVX2
// CPUs (with FMA and BMI2) that lack AVX-512 BF16: the same masks, improved steps and best
// errors as the scalar definition (imatrix_mse_kernel.h), the blocks imatrix_mse_int_bf16.h
// takes on AVX-512 BF16 CPUs, with each vector of terms at fewer operations than the Highway
// AVX2 kernel's (imatrix_mse_certified.cc). imatrix_mse_int_avx2.cc says why each operation
// is the definition's.
#ifndef QUENCH_CALIB_IMATRIX_MSE_INT_AVX2_H_
#define QUENCH_CALIB_IMATRIX_MSE_INT_AVX2_H_

#include <cstddef>
#include <cstdint>

#include "calib/imatrix_mse_kernel.h"
#include "schemes/int_shared.h"

namespace quench::calib::internal {

// True when this CPU has AVX2, FMA and BMI2 (the kernel's target).
bool IntAvx2Available();

// True when SearchIntAvx2 takes the block: IntAvx2Available(), the switch below is on, no
// AVX-512 BF16 kernel takes it (IntBf16Handles is false), and the block is bf16, int,
// symmetric, norm 2 or 3, codes within [-8, 7] around 0 (4 bits or fewer), groups of a
// multiple of 32 elements (at most 2^20) and at most 32 steps.
bool IntAvx2Handles(const Block& b);

// The certified search of imatrix_mse_certified.cc on a block IntAvx2Handles accepts; false
// when the block holds an Inf or NaN (checked on the pass that reads the rows: its callers
// need no AllFinite first), with the masks and bests of the groups before it possibly set.
bool SearchIntAvx2(const Block& b);

// The kernel's terms |dq - x|^norm * imp of n elements (a multiple of 8) at one scale
// (2^-100 <= scale <= 2^100), in element order, for the test that compares every bf16 x with
// the definition's term. False when IntAvx2Handles(b) is not (i0, i1 as for a search).
bool IntAvx2Terms(const Block& b, float scale, const float* x, const float* imp, size_t n,
                  float* terms);

// The chosen quantization's row helpers for bf16 rows, packed symmetric int4, on the same
// CPUs: true when they take groups of `group` elements in rows of n (IntAvx2Available(), the
// switch below on, IntBf16CodesHandle false, group % 64 == 0, n % group == 0).
bool IntAvx2CodesHandle(size_t group, size_t n);
// Each group's largest magnitude max |x| of a raw bf16 row (0 for a group of zeros), which is
// all symmetric parameters need of its min m0 and max M0 (max(-m0, M0, 0)); false when the
// row holds an Inf or NaN. What QuantizeIntChosen reads on these CPUs.
bool IntAvx2RowAbsMax(const uint8_t* row, size_t n_groups, size_t group, float* amax);
// A raw bf16 row's codes with each group's symmetric 4-bit parameters, packed as
// IntCodesPacked4 packs them (u = q + 8, element i in bits 4i..4i+3 of the byte stream).
void IntAvx2Codes4(const uint8_t* row, size_t n, size_t group,
                   const intq::internal::GroupParams* p, uint8_t* dst);

// The chosen scales of n groups of a bf16 row with symmetric codes of layout l, as
// StepRange at the group's step, then ComputeParams' scale (0 -> eps), give them: group k with
// largest magnitude amax[k] (IntAvx2RowAbsMax) and step steps[k] (at most 31) gets p[k] =
// {scale, 0} and the scale's bf16 pattern at dst + 2 k. The scale depends on the group's min
// m0 and max M0 only through max(-m0, M0, 0): RNE_bf16, Expanded and the products with
// p >= 0 are odd and monotone, so max(-min(mn, 0), max(mx, 0)) is that of (-amax, amax) up to
// the sign of a zero, and a zero becomes eps either way. Eight groups a vector on the same
// CPUs as IntAvx2Codes4, and so on every CPU with IntBf16Codes4 (its caller checks
// IntAvx2CodesHandle or IntBf16CodesHandle).
void IntAvx2ChosenScales(const float* amax, const uint8_t* steps, size_t n, int grid,
                         double expand, const intq::internal::Layout& l,
                         intq::internal::GroupParams* p, uint8_t* dst);

// Whether SearchBlock and QuantizeChosen may use these kernels (default true); tests turn it
// off to run the Highway kernels on the same blocks and rows. Not for concurrent use with
// conversions.
void SetIntAvx2Enabled(bool enabled);
bool IntAvx2Enabled();

}  // namespace quench::calib::internal

#endif  // QUENCH_CALIB_IMATRIX_MSE_INT_AVX2_H_
