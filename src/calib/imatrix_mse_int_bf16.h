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

// The certified search of imatrix_mse_certified.cc on a block IntBf16Handles accepts. False
// when the rows hold an Inf or NaN (found in its own pass over them; best and masks then
// hold nothing to keep), as SearchSteps refuses them.
bool SearchIntBf16(const Block& b);

// The kernel's terms |dq - x|^norm * imp of n elements (a multiple of 32) at one scale
// (2^-100 <= scale <= 2^100), in element order, for the test that compares every bf16 x with
// the definition's term. False when IntBf16Handles(b) is not (i0, i1 as for a search).
bool IntBf16Terms(const Block& b, float scale, const float* x, const float* imp, size_t n,
                  float* terms);

// The chosen quantization's row helpers for bf16 rows, packed symmetric int4
// (imatrix_mse_int_bf16_codes.cc): true when they take groups of `group` elements in rows of
// n (this CPU has AVX-512 BF16, the switch below is on, group % 64 == 0).
bool IntBf16CodesHandle(size_t group, size_t n);
// Each group's min and max of a raw bf16 row (n_groups groups of `group` elements), as
// GroupMinMax gives them for the row in f32; false when the row holds an Inf or NaN.
bool IntBf16RowMinMax(const uint8_t* row, size_t n_groups, size_t group, float* mn, float* mx);
// A raw bf16 row's codes with each group's symmetric 4-bit parameters, packed as
// IntCodesPacked4 packs them (u = q + 8, element i in bits 4i..4i+3 of the byte stream).
void IntBf16Codes4(const uint8_t* row, size_t n, size_t group,
                   const intq::internal::GroupParams* p, uint8_t* dst);

// Whether SearchBlock and QuantizeChosen may use these kernels (default true); tests turn it
// off to run the Highway kernels on the same blocks and rows. Not for concurrent use with
// conversions.
void SetIntBf16Enabled(bool enabled);
bool IntBf16Enabled();

}  // namespace quench::calib::internal

#endif  // QUENCH_CALIB_IMATRIX_MSE_INT_BF16_H_
