// BF16 weights -> int4 groups, packed (W4A16 / W4A16_ASYM's pack-quantized), on AVX2 CPUs
// without AVX-512 BF16: the same bytes as the scalar definition in int.cc and the Highway
// kernel, with the rounded quotients re-paired into 16-bit lanes in element order before they
// are packed (bench/README.md, "int4 groups on AVX2").
//
// Why it is exact (int.cc has the definition: v = RNE_bf16(x / scale), clamped to [-8, 7],
// rounded half to even, plus 8):
//  - scale = RNE_bf16(amax / 7.5), 0 -> eps(bf16) = 2^-7, from the group's largest abs bit
//    pattern (for finite values it orders like |x|, so it is max(|mn|, |mx|)), by the f32
//    division and c10's integer rounding, as internal::ComputeParams computes it;
//  - x / scale is x * RN(1 / scale) where fp8_shared.h's ReciprocalIsExact proves that gives
//    the same RNE_bf16 (else the true f32 division);
//  - RNE_bf16 of the f32 quotient is c10's integer rounding (bits + 0x7FFF + lsb, the low
//    half cleared), exact for every finite pattern, subnormals included;
//  - the integer rounding adds 1.5 * 2^23 + 8 in f32: on [2^23, 2^24) the f32 ulp is 1, so
//    the FPU's RNE addition rounds v to an integer, ties to even (the constant is even), and
//    the sum's low 16 bits are round(v) + 8 (no borrow: round(v) >= -8, below);
//  - the clamp: int4_bf16.h shows |v| <= 7.53125 for a group's own scale (RNE_bf16(amax / 7.5)
//    has a relative error of at most 2^-9; an eps scale only gets x far below it), so
//    round(v) >= -8 needs no lower clamp and u = min(round(v) + 8, 15) is the clamped code
//    (7 is an integer: clamping v to 7 before rounding and the rounded value after agree).
// Asymmetric groups take the min and max (as ordered keys, folded with 0), the parameters as
// int4_bf16.cc's RowParamsAsym computes them, and one more step: v = RNE_bf16(RNE_bf16(x /
// scale) + zp) (the f32 sum, rounded by the same integer rounding); |v| < 24 (int4_bf16.cc's
// QuantizeGroupAsym), so the magic sum stays in [2^23, 2^24) and its low 16 bits are
// round(v) + 8 as int16, clamped to [0, 15] on the codes.
// tests/test_int4_bf16_avx2.cc runs every finite bf16 x under scales of every significand at
// many binades through this kernel and the definition, plus group shapes, zero and subnormal
// groups and NaN/Inf refusal.
#ifndef QUENCH_SCHEMES_INT4_BF16_AVX2_H_
#define QUENCH_SCHEMES_INT4_BF16_AVX2_H_

#include "schemes/chunk.h"

namespace quench::intq {

// True when this CPU runs the kernel (AVX2, FMA, BMI2).
bool Int4Bf16Avx2Available();

// True when the kernel handles the chunk: bf16, 4 bits, symmetric or not, no column factors,
// a group size (or a whole row: channel strategy) that is a multiple of 32,
// Int4Bf16Avx2Available() and the switch below on.
bool Int4Bf16Avx2Handles(const WeightChunk& in);

// Quantizes and packs a chunk Int4Bf16Avx2Handles accepts: out[0] the rows' int32 words
// (cols / 2 bytes a row), out[1] the bf16 scales [rows, n_groups], out[2] (asymmetric) the
// zero points packed down dim 0 (int.h). False when the chunk holds NaN or Inf (as
// QuantizePacked).
bool QuantizeInt4Bf16Avx2(const WeightChunk& in, const ChunkOutputs& out);

namespace internal {
// Whether QuantizePacked may use this kernel (default true); tests and benches turn it off to
// run the Highway kernels on the same chunks. Not for concurrent use with conversions.
void SetInt4Bf16Avx2Enabled(bool enabled);
}  // namespace internal

}  // namespace quench::intq

#endif  // QUENCH_SCHEMES_INT4_BF16_AVX2_H_
