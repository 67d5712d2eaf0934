// BF16 weights -> FP8 E4M3 per channel (FP8_DYNAMIC) on CPUs with AVX-512 BF16 (AMD Zen 4,
// Intel Sapphire Rapids and later): the same bytes as the scalar definition in fp8.cc, at a
// fraction of the Highway kernel's CPU (bench/README.md, "FP8 channel kernel with AVX-512 BF16").
//
// Why it is exact (fp8.cc has the definition q = e4m3(clamp(RNE_bf16(x / scale), +-448))):
//  - scale = RNE_bf16(amax / 448) (eps when 0) is computed for 16 rows at once with the same
//    f32 division and the same integer RNE as fp8_shared.h's ScaleFromAmax;
//  - x / scale is x * RN(1 / scale) where fp8_shared.h's ReciprocalIsExact proves that gives
//    the same RNE_bf16 (else the true f32 division);
//  - RNE_bf16 is VCVTNE2PS2BF16: IEEE round to nearest even to bf16, except that it takes
//    subnormal inputs as (signed) zero. Such a quotient is below 2^-126 and its code is 0
//    with the quotient's sign either way;
//  - e4m3 from the bf16 value v (7 mantissa bits) in 16-bit lanes: for |v| >= 2^-6 the
//    exponent is rebiased (127 -> 7) and the 4 dropped mantissa bits rounded to nearest even,
//    codes past 0x7E saturating to 0x7E (c10's conversion in torch 2.13 saturates, so the
//    clamp changes nothing); below 2^-6 the code is RNE(|v| * 2^9), taken by VDPBF16PS as
//    1.5 * 2^23 + |v| * 2^9 + 0 (the product of bf16 values is exact, the f32 sum has an ulp
//    of 1 there and rounds to nearest even); the sign goes to bit 7.
// tests/test_fp8_bf16.cc runs every finite bf16 x under scales of every significand and many
// binades (the division fallback, eps and subnormal scales included) through this kernel and
// the scalar definition, plus row shapes, zero rows and NaN/Inf refusal.
#ifndef QUENCH_SCHEMES_FP8_BF16_H_
#define QUENCH_SCHEMES_FP8_BF16_H_

#include "schemes/chunk.h"

namespace quench::fp8 {

// True when this CPU runs the kernel (avx512bf16.h's Available: AVX-512 F/BW/VL/DQ, VBMI, BF16).
bool Fp8Bf16Available();

// True when the kernel handles the chunk: bf16, Fp8Bf16Available() and the switch below on.
bool Fp8Bf16Handles(const WeightChunk& in);

// FP8_DYNAMIC per channel of a chunk Fp8Bf16Handles accepts: out[0] the e4m3 codes, out[1]
// the bf16 scales [rows]. False when the chunk holds NaN or Inf (as QuantizeChannel).
bool QuantizeChannelBf16(const WeightChunk& in, const ChunkOutputs& out);

namespace internal {
// Whether QuantizeChannel may use this kernel (default true); tests turn it off to run the
// Highway kernels on the same chunks. Not for concurrent use with conversions.
void SetFp8Bf16Enabled(bool enabled);
}  // namespace internal

}  // namespace quench::fp8

#endif  // QUENCH_SCHEMES_FP8_BF16_H_
