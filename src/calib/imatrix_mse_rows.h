// Row helpers of the imatrix_mse observer around its search (src/calib/imatrix_mse_rows.cc,
// Highway kernels with dynamic dispatch): weights as f32, each group's min and max, and the
// int codes of the chosen parameters. Each equals its scalar form (ElementToF32, min_element
// / max_element up to the sign of a zero, intq::internal::QuantizeValue) value for value.
#ifndef QUENCH_CALIB_IMATRIX_MSE_ROWS_H_
#define QUENCH_CALIB_IMATRIX_MSE_ROWS_H_

#include <cstddef>
#include <cstdint>

#include "quench/dtype.h"
#include "schemes/int_shared.h"

namespace quench::calib::internal {

// n elements of dtype d (bf16, f16, f32) at src as f32 into dst; false if any is NaN or
// Inf (dst then undefined).
bool ToF32(const uint8_t* src, DType d, size_t n, float* dst);

// Whether the n elements of dtype d at src are all finite (ToF32's check, without the copy).
bool AllFinite(const uint8_t* src, DType d, size_t n);

// Per group of `group` consecutive values of x (n_groups of them): its min and max. A zero
// may come back with either sign where the group holds both (no parameter depends on it:
// calculate_qparams clamps with 0 first, and every use of the range is a product with it,
// a difference with 0, or an absolute value).
void GroupMinMax(const float* x, size_t n_groups, size_t group, float* mn, float* mx);

// Per group of `group` consecutive values of x (n_groups of them): its largest magnitude
// max |x_j|, which is max(|min|, |max|) of GroupMinMax's pair (FP4's chosen ranges need
// only that).
void GroupAbsMax(const float* x, size_t n_groups, size_t group, float* amax);

// ToF32 of n_groups * group elements, then GroupAbsMax of the result (one pass where it
// can); false if any is NaN or Inf (dst and amax then undefined).
bool ToF32GroupAbsMax(const uint8_t* src, DType d, size_t n_groups, size_t group, float* dst,
                      float* amax);

// FP4's chosen ranges from each group's largest magnitude (calib::ChosenPos has the rule):
// per group k of n, with i the highest set bit of masks[k] at or below `stop` (0 if none),
// pos = RNE_D(p[i] * RNE_D(absmax[k] * f32(expand))), written in D's encoding
// (DTypeBits(d) / 8 bytes each) at `out`; returns the largest pos (0 for n = 0). p: the
// steps' f32 factors, stop + 1 of them (stop < 32).
float ChosenPosRow(const float* absmax, const uint32_t* masks, size_t n, int stop,
                   const float* p, double expand, DType d, uint8_t* out);

// The codes of n values x of dtype d (as ToF32 gives them) in groups of `group` with
// per-group parameters p (scales: values of d, as calculate_qparams gives them):
// codes[c] = QuantizeValue(x[c], p[c / group], l, symmetric, d).
void IntCodes(const float* x, size_t n, size_t group, const intq::internal::GroupParams* p,
              const intq::internal::Layout& l, bool symmetric, DType d, int8_t* codes);

// The same codes of 4 bits (l.bits == 4, n even) written packed as pack_to_int32 lays them
// out: u = code + 8, element c in bits 4c..4c+3 of the little-endian byte stream (n / 2
// bytes).
void IntCodesPacked4(const float* x, size_t n, size_t group, const intq::internal::GroupParams* p,
                     const intq::internal::Layout& l, bool symmetric, DType d, uint8_t* packed);

}  // namespace quench::calib::internal

#endif  // QUENCH_CALIB_IMATRIX_MSE_ROWS_H_
