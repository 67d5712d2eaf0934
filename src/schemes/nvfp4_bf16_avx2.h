// BF16 weights -> NVFP4 (NVFP4A16) on AVX2 CPUs without AVX-512 BF16: the same bytes as
// fp4.cc's definition and its Highway kernel, with no f32 division per element (bench/README.md,
// "NVFP4A16 from bf16 on AVX2").
//
// Why it is exact (fp4.cc has the definition):
//  - pass 1, each group's amax: the largest abs bf16 bit pattern of its 16 elements (for
//    finite values the patterns order as the magnitudes), a 16-bit unsigned max;
//  - pass 2, the scale code Nvfp4ScaleCode(amax, gs, bf16) (fp4_shared.h) in f32 lanes: t =
//    RNE_bf16(amax / 6) by c10's integer RNE of the f32 product amax * c, c = RN(1/6) =
//    (1 + 2^-25) / 6, in place of the f32 quotient q = amax / 6. Both round to the same bf16
//    value: amax = m * 2^e with m < 256, so if 3 divides m, q is an f32 value and amax * c =
//    q + q * 2^-25 (under half of q's ulp) rounds back to q; otherwise q is at least 2^e / 48
//    from every bf16 rounding boundary (a multiple of 2^e / 16 in q's binade, q < 2^(e+6)),
//    while both f32 results lie within 2^(e-16) of q. The test runs every finite amax. Then
//    u = gs * t (one f32 product), clamp to 448 (gs > 0 here, so u >= +0 and the lower clamp
//    is idle), then
//    F32ToE4M3 (float_formats.cc) of u: below 2^-6 the FPU's RNE of u + 2^14 leaves the
//    subnormal code in the low bits; from 2^-6 up the exponent is rebiased and the 20 dropped
//    mantissa bits rounded to nearest even (u <= 448 never reaches the NaN code); a code of 0
//    becomes 0.125's (the zero guard);
//  - pass 3, the nibbles: fp4_bounds.h proves that for a bf16 x the nibble Fp4Nibble(x / eff)
//    (eff = f32(e4m3(code) / gs), finite or +inf, > 0) is a function of bits(|x|) against
//    eight non-decreasing bounds of eff (the E2M1 index is the number of bounds 1..7 met, the
//    sign bit is set iff x is negative and bound 0 is met). The bounds of every code are made
//    once per global scale; each element's index is found by a binary search of three
//    compares (bound 4, then 2 or 6, then the odd one between), as nvfp4_bf16.h does with
//    AVX-512, here with 16 elements (one group) a vector.
// tests/test_nvfp4_bf16_avx2.cc runs every finite bf16 x under every scale code of several
// global scales through pass 3, every finite amax through passes 1-2, and whole chunks (tails,
// zero groups, NaN/Inf refusal) against the scalar definition; tests/test_imatrix_kernel.cc
// runs the form with given ranges (QuantizeNvfp4Bf16Avx2Ranges) against its reference.
#ifndef QUENCH_SCHEMES_NVFP4_BF16_AVX2_H_
#define QUENCH_SCHEMES_NVFP4_BF16_AVX2_H_

#include <cstddef>
#include <cstdint>

#include "schemes/chunk.h"

namespace quench::fp4 {

// True when this CPU runs the kernel (AVX2 and BMI2).
bool Nvfp4Bf16Avx2Available();

// True when the kernel handles the chunk: bf16, a finite global scale > 0 (the only kind
// Nvfp4GlobalScale makes), Nvfp4Bf16Avx2Available() and the switch on.
bool Nvfp4Bf16Avx2Handles(const WeightChunk& in);

// NVFP4 of a chunk Nvfp4Bf16Avx2Handles accepts: out[0] the packed nibbles (rows x cols / 2),
// out[1] the e4m3 group scale codes (rows x cols / 16). False when the chunk holds NaN or
// Inf (as QuantizeNvfp4; the outputs are then unspecified).
bool QuantizeNvfp4Bf16Avx2(const WeightChunk& in, const ChunkOutputs& out);

// The same with each group's range given in place of its amax (QuantizeNvfp4RangeBits, fp4.h:
// rows x groups bf16 patterns at `ranges`, >= 0): pass 2 from the ranges, then pass 3; the rows
// are read once. False when a range is NaN or Inf, or (not `finite`) the rows hold one.
bool QuantizeNvfp4Bf16Avx2Ranges(const WeightChunk& in, const uint8_t* ranges,
                                 const ChunkOutputs& out, bool finite);

namespace internal {

// Whether QuantizeNvfp4 may use this kernel (default true); tests and the bench turn it off
// to run the Highway kernels on the same chunks. Not for concurrent use with conversions.
void SetNvfp4Bf16Avx2Enabled(bool enabled);

// Pass 3 alone (the Highway kernel's given-range path on AVX2, fp4.cc, and tests): the
// nibbles of n_groups groups of 16 bf16 elements at `row` under the given scale codes (each
// 1..126) and global scale gs (finite, > 0), n_groups * 8 bytes to dst. Call only where
// Nvfp4Bf16Avx2Available().
void Nvfp4Bf16Avx2PackGroups(const uint8_t* row, size_t n_groups, const uint8_t* codes,
                             float gs, uint8_t* dst);

}  // namespace internal

}  // namespace quench::fp4

#endif  // QUENCH_SCHEMES_NVFP4_BF16_AVX2_H_
