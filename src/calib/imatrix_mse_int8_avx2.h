// The imatrix_mse certified search for symmetric 5- to 8-bit int codes of bf16 weights (W8A16's
// groups of 128, W8A8's whole rows) on AVX2 CPUs: the same masks, improved steps and best
// errors as the scalar definition (imatrix_mse_kernel.h) and the Highway kernel, read from the
// raw bf16 rows, with each vector of terms at fewer operations than the Highway AVX2 kernel's.
// imatrix_mse_int8_avx2.cc says why each operation is the definition's.
#ifndef QUENCH_CALIB_IMATRIX_MSE_INT8_AVX2_H_
#define QUENCH_CALIB_IMATRIX_MSE_INT8_AVX2_H_

#include <cstddef>
#include <cstdint>

#include "calib/imatrix_mse_kernel.h"
#include "schemes/int_shared.h"

namespace quench::calib::internal {

// True when SearchInt8Avx2 takes the block: IntAvx2Available(), both this kernel's switch and
// the int4 kernel's (SetIntAvx2Enabled: one switch turns every AVX2 int search off for the
// tests' and the bench's Highway runs) on, and the block is bf16, int, symmetric, norm 2 or 3,
// codes in [qmin, qmax] = [-2^(b-1), 2^(b-1) - 1] with 5 <= b <= 8, groups of a multiple of 32
// elements (at most 2^20) and at most 32 steps.
bool Int8Avx2Handles(const Block& b);

// The certified search of imatrix_mse_certified.cc on a block Int8Avx2Handles accepts; false
// when the block holds an Inf or NaN (checked on the pass that reads the rows), with the masks
// and bests of the groups before it possibly set.
bool SearchInt8Avx2(const Block& b);

// The kernel's terms |dq - x|^norm * imp of n elements (a multiple of 8) at one scale
// (2^-100 <= scale <= 2^100), in element order, for the test that compares every bf16 x with
// the definition's term. False when Int8Avx2Handles(b) is not.
bool Int8Avx2Terms(const Block& b, float scale, const float* x, const float* imp, size_t n,
                   float* terms);

// The chosen quantization's codes as bytes, from raw bf16 rows (the quantize stage of W8A16,
// W8A8, W4A8 with each group's chosen scale kept by the search: IntScalesKept): true when
// Int8Avx2Codes takes groups of `group` elements in rows of n (IntAvx2Available(), both
// switches on, group % 32 == 0, n % group == 0).
bool Int8Avx2CodesHandle(size_t group, size_t n);
// A raw bf16 row's symmetric codes q = QuantizeValue(x, p[g]) with bounds [qmin, qmax]
// (qmin >= -128, qmax <= 127) as bytes at dst, one per element: q's two's complement
// (unpacked int8 codes), or with flip q + 128 (pack_to_int32's 8-bit word stream: u = q + 128
// in each word's bytes in element order). The row must be finite (the search refused Inf/NaN).
void Int8Avx2Codes(const uint8_t* row, size_t n, size_t group,
                   const intq::internal::GroupParams* p, int qmin, int qmax, bool flip,
                   uint8_t* dst);

// Whether SearchBlock may use this kernel (default true); tests and the bench turn it off to
// run the Highway kernel on the same blocks. Not for concurrent use with conversions.
void SetInt8Avx2Enabled(bool enabled);
bool Int8Avx2Enabled();

}  // namespace quench::calib::internal

#endif  // QUENCH_CALIB_IMATRIX_MSE_INT8_AVX2_H_
