// BF16 weights -> int4 groups, packed (W4A16 / W4A16_ASYM's pack-quantized), on CPUs with
// AVX-512 BF16 (AMD Zen 4, Intel Sapphire Rapids and later): the same bytes as the scalar
// definition in int.cc, at about half the CPU of the Highway kernel (bench/README.md,
// "int4 from bf16 with AVX-512 BF16").
//
// Why it is exact (int.cc has the definition): per element the definition computes
// v = RNE_bf16(x / scale), clamps v to [-8, 7], rounds half to even and adds 8. Here
//  - x / scale is x * RN(1 / scale) where fp8_shared.h's ReciprocalIsExact proves that gives
//    the same RNE_bf16 (else a true division);
//  - RNE_bf16 is VCVTNE2PS2BF16, IEEE round to nearest even to bf16, except that it takes
//    subnormal inputs as zero and flushes subnormal results: such a v is below 2^-126, and
//    rounds to 0 either way;
//  - the integer rounding is VDPBF16PS: acc + v * 1 + v' * 0 with acc = 1.5 * 2^23 + 8 (each
//    product of bf16 values is exact, the one by 0 adds nothing, a subnormal v counts as 0),
//    rounded to f32 by RNE: on [2^23, 2^24) the f32 ulp is 1, so the sum is acc + round(v),
//    ties to even, and its low byte is round(v) + 8;
//  - the clamp: amax / scale <= 7.5 / (1 - 2^-9) < 7.515 (scale = RNE_bf16(amax / 7.5) has
//    a relative error of at most 2^-9; a zero-guarded scale eps only gets x with |x / eps|
//    far below 1), so v >= -7.53125 and round(v) >= -8 without a lower clamp; above,
//    round(v) <= 8, so u = min(round(v) + 8, 15) clamps exactly (7 is an integer: clamping v
//    to 7 before rounding and the rounded value after are the same).
// Asymmetric groups add RNE_bf16(v + zp) (a VDPBF16PS with acc = zp, then a second
// VCVTNE2PS2BF16) before the integer rounding, and clamp to [-8, 7] on the codes;
// int4_bf16.cc's QuantizeGroupAsym says why those steps are the definition's.
// tests/test_int_fast_paths.cc runs every finite bf16 x under every scale of several binades
// through this kernel and the definition; tests/test_int_kernels.cc runs its patterns too.
#ifndef QUENCH_SCHEMES_INT4_BF16_H_
#define QUENCH_SCHEMES_INT4_BF16_H_

#include "schemes/chunk.h"

namespace quench::intq {

// True when this CPU runs the kernel (avx512bf16.h's Available: AVX-512 F/BW/VL/DQ, VBMI, BF16).
bool Int4Bf16Available();

// True when the kernel handles the chunk: bf16, 4 bits, symmetric or not, a group size (or a
// whole row: channel strategy) that is a multiple of 64, and Int4Bf16Available() and the
// switch below on.
bool Int4Bf16Handles(const WeightChunk& in);

// Quantizes and packs a chunk Int4Bf16Handles accepts: out[0] the rows' int32 words (cols / 2
// bytes a row), out[1] bf16 scales [rows, n_groups], out[2] (asymmetric) the zero points
// packed down dim 0 (int.h). False when the chunk holds NaN or Inf.
bool QuantizeInt4Bf16(const WeightChunk& in, const ChunkOutputs& out);

namespace internal {
// Whether QuantizePacked may use this kernel (default true); tests turn it off to run the
// Highway kernels on the same chunks. Not for concurrent use with conversions.
void SetInt4Bf16Enabled(bool enabled);
}  // namespace internal

}  // namespace quench::intq

#endif  // QUENCH_SCHEMES_INT4_BF16_H_
