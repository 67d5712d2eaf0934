// BF16 weights -> FP8 E4M3 per channel (FP8_DYNAMIC) on AVX2 CPUs without AVX-512 BF16: the
// same bytes as the scalar definition in fp8.cc and the Highway kernel, with the e4m3
// encoding done on 16 bf16 lanes at a time instead of 8 f32 lanes (bench/README.md, "FP8
// channel kernel on AVX2").
//
// Why it is exact (fp8.cc has the definition q = e4m3(clamp(RNE_bf16(x / scale), +-448))):
//  - scale is fp8_shared.h's ScaleFromAmax of the row's amax, computed per row in scalar;
//  - x / scale is x * RN(1 / scale) where fp8_shared.h's ReciprocalIsExact proves that gives
//    the same RNE_bf16 (else the true f32 division);
//  - RNE_bf16 of the f32 quotient is c10's integer rounding (bits + 0x7FFF + lsb), exact for
//    every finite pattern, subnormals included; of a product by the reciprocal, rounding half
//    up (bits + 0x8000), since ReciprocalIsExact's proof puts no such product on a midpoint
//    (and one below 2^-126, where that proof does not reach, gives code 0 either way);
//  - e4m3 from the bf16 value v in 16-bit lanes: for |v| >= 2^-6 the exponent is rebiased
//    (127 -> 7) and the 4 dropped mantissa bits rounded to nearest even, codes past 0x7E
//    saturating to 0x7E (as the clamp to 448 does); below 2^-6 the code is RNE(|v| * 2^9),
//    taken as the low bits of the f32 sum 1.5 * 2^23 + v * 2^9 (one FMA on the bf16 value as
//    f32: the product is exact, the sum has an ulp of 1 there and rounds to nearest even; a
//    negative v leaves -code, whose absolute value is taken), computed only for vectors with
//    a lane in (2^-10, 2^-6): below, the code is 0, which the normal step's saturating
//    subtraction gives; the sign goes to bit 7 after the codes of 32 lanes are packed to bytes
//    (a signed pack of the bf16 values sets bit 7 exactly for the negative ones).
// tests/test_fp8_bf16.cc runs every finite bf16 x under scales of every significand and
// many binades through this kernel and the scalar definition, plus row shapes, zero rows and
// NaN/Inf refusal.
#ifndef QUENCH_SCHEMES_FP8_BF16_AVX2_H_
#define QUENCH_SCHEMES_FP8_BF16_AVX2_H_

#include "schemes/chunk.h"

namespace quench::fp8 {

// True when this CPU runs the kernel (AVX2, FMA, BMI2).
bool Fp8Bf16Avx2Available();

// True when the kernel handles the chunk: bf16, Fp8Bf16Avx2Available() and the switch on.
bool Fp8Bf16Avx2Handles(const WeightChunk& in);

// FP8_DYNAMIC per channel of a chunk Fp8Bf16Avx2Handles accepts: out[0] the e4m3 codes,
// out[1] the bf16 scales [rows]. False when the chunk holds NaN or Inf (as QuantizeChannel).
bool QuantizeChannelBf16Avx2(const WeightChunk& in, const ChunkOutputs& out);

namespace internal {
// Whether QuantizeChannel may use this kernel (default true); tests turn it off to run the
// Highway kernels on the same chunks. Not for concurrent use with conversions.
void SetFp8Bf16Avx2Enabled(bool enabled);
}  // namespace internal

}  // namespace quench::fp8

#endif  // QUENCH_SCHEMES_FP8_BF16_AVX2_H_
