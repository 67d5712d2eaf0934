// Microscaling float schemes as compressed-tensors does them:
//   NVFP4A16: FP4 E2M1 values, one E4M3 scale per 16 inputs, one FP32 global scale per tensor
//     (shared across a fused set; computed by the pre-pass and passed in
//     WeightChunk::params.global_scale).
//   MXFP4(A16): FP4 E2M1 values, one E8M0 (uint8 biased exponent) scale per 32 inputs.
//   MXFP8(A16): FP8 E4M3 values, one E8M0 scale per 32 inputs.
// Each has a scalar reference (the definition) and a Highway kernel that must match it bit for
// bit on every target. cols must be a multiple of the group size (checked when planning).
//
// Outputs for a chunk of rows (see chunk.h), little-endian, row-major:
//   NVFP4: out[0] uint8 packed [rows, cols/2] (even element in the low nibble; sign bit set
//          for negative values that round to zero); out[1] E4M3 scales [rows, cols/16].
//   MXFP4: out[0] uint8 packed [rows, cols/2]; out[1] uint8 E8M0 [rows, cols/32].
//   MXFP8: out[0] E4M3 [rows, cols]; out[1] uint8 E8M0 [rows, cols/32].
#ifndef QUENCH_SCHEMES_FP4_H_
#define QUENCH_SCHEMES_FP4_H_

#include "quench/dtype.h"
#include "schemes/chunk.h"

namespace quench::fp4 {

inline constexpr size_t kNvfp4Group = 16;
inline constexpr size_t kMxGroup = 32;

bool QuantizeNvfp4Scalar(const WeightChunk& in, const ChunkOutputs& out);
bool QuantizeMxfp4Scalar(const WeightChunk& in, const ChunkOutputs& out);
bool QuantizeMxfp8Scalar(const WeightChunk& in, const ChunkOutputs& out);
bool QuantizeNvfp4(const WeightChunk& in, const ChunkOutputs& out);
bool QuantizeMxfp4(const WeightChunk& in, const ChunkOutputs& out);
bool QuantizeMxfp8(const WeightChunk& in, const ChunkOutputs& out);

// The references above with each group's range given (rows x groups values of the weight
// dtype, >= 0) in place of the group's max |x|: the imatrix_mse observer's chosen ranges
// (src/calib/imatrix_mse.h), which calculate_qparams turns into scales as it does min-max
// ones. A range of +inf (QuantizeChosen's, where expand > 1 rounds one up past D's largest
// value) is taken as the references take it (QuantizeNvfp4Ranges gives a chunk with one to
// its reference). False on NaN or Inf in the rows; with `finite` (the caller has already
// refused NaN and Inf in these rows, as the imatrix_mse search does) the kernels do not look
// again, and read the rows once instead of twice.
// The *Scalar forms are the references; the others the Highway kernels (same bytes).
bool QuantizeNvfp4RangesScalar(const WeightChunk& in, const float* ranges,
                               const ChunkOutputs& out);
bool QuantizeMxfp4RangesScalar(const WeightChunk& in, const float* ranges,
                               const ChunkOutputs& out);
bool QuantizeNvfp4Ranges(const WeightChunk& in, const float* ranges, const ChunkOutputs& out,
                         bool finite = false);
bool QuantizeMxfp4Ranges(const WeightChunk& in, const float* ranges, const ChunkOutputs& out,
                         bool finite = false);
// The same with the ranges in the weight dtype's own encoding (rows x groups values of
// DTypeBits / 8 bytes each), as the imatrix_mse observer keeps them: the kernels take their
// bit patterns as they are (no widening to f32 and narrowing back), and refuse a NaN or Inf
// among them as among the rows.
bool QuantizeNvfp4RangeBits(const WeightChunk& in, const uint8_t* ranges, const ChunkOutputs& out,
                            bool finite = false);
bool QuantizeMxfp4RangeBits(const WeightChunk& in, const uint8_t* ranges, const ChunkOutputs& out,
                            bool finite = false);
// The scale (a value of the dtype, as f32; may be +inf) MXFP4 quantizes a group of range
// `amax` with: calculate_qparams' E8M0 exponent, then maybe_convert_from_mx_exp.
float Mxfp4GroupScale(float amax, DType dtype);
// cast_to_fp4 of v clamped to [-6, 6]: the nearest E2M1 value (ties as the reference's table).
float RoundToE2M1(float v);

// The pre-pass: max |x| over the chunk (exact: the result is one of the inputs' magnitudes),
// false if the chunk holds NaN or Inf.
bool AbsMaxScalar(const WeightChunk& in, float* amax);
bool AbsMax(const WeightChunk& in, float* amax);

// weight_global_scale of a fused set whose largest |x| is `amax`, for weights of `dtype`,
// exactly as compressed-tensors computes it (reciprocal, then multiply by 448*6, each rounded
// to the weight dtype; non-finite -> 1).
float Nvfp4GlobalScale(float amax, DType dtype);

}  // namespace quench::fp4

#endif  // QUENCH_SCHEMES_FP4_H_
