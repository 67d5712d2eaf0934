// Scalar definitions of the narrow float formats the schemes produce or round through:
// bf16, fp16 and E4M3 (float8_e4m3fn), each with round-to-nearest-even exactly as torch's
// c10 conversions do. These are the reference the Highway kernels are tested against.
#ifndef QUENCH_SCHEMES_FLOAT_FORMATS_H_
#define QUENCH_SCHEMES_FLOAT_FORMATS_H_

#include <cstddef>
#include <cstdint>

#include "quench/dtype.h"

namespace quench {

float BitsToF32(uint32_t bits);
uint32_t F32ToBits(float f);

// bf16 <-> f32. F32ToBF16 rounds to nearest even; NaN becomes 0x7FC0 (c10::BFloat16).
float BF16ToF32(uint16_t h);
uint16_t F32ToBF16(float f);

// IEEE binary16 <-> f32, round to nearest even, overflow to Inf (c10::Half).
float F16ToF32(uint16_t h);
uint16_t F32ToF16(float f);

// float8_e4m3fn: no infinities, 0x7F/0xFF are NaN, max 448. Encoding follows torch 2.13's
// c10 conversion: RNE; finite values beyond the largest code and +-Inf saturate to +-448
// (0x7E|sign); only NaN gives 0x7F|sign.
float E4M3ToF32(uint8_t code);
uint8_t F32ToE4M3(float f);

// Element i of a run of weight dtype d (BF16, F16 or F32) at p, as an exact f32; p may be
// unaligned (a memory-mapped file), so the bits are copied out.
float ElementToF32(const uint8_t* p, DType d, size_t i);

}  // namespace quench

#endif  // QUENCH_SCHEMES_FLOAT_FORMATS_H_
