// 8-bit codes times a scale per run of columns, rounded to BF16: the inner step of decoding a
// compressed-tensors source whose codes are bytes (int-quantized int8, pack-quantized 8-bit,
// float-quantized and MXFP8 E4M3) with a scale the product is rounded once to BF16 under
// (schemes/ct_decode.cc's "plain" products: symmetric, BF16 or F32 scales, the E8M0 powers).
// ScaleBytesScalar is the definition, the arithmetic ct_decode.cc's per-element loop does;
// the Highway kernel must equal it bit for bit on every target (tests/test_byte_decode.cc).
#ifndef QUENCH_SCHEMES_BYTE_DECODE_H_
#define QUENCH_SCHEMES_BYTE_DECODE_H_

#include <cstddef>
#include <cstdint>

namespace quench {

// How a byte reads as the value x_q.to(dtype) holds (exact in f32).
enum class ByteCode : uint8_t {
  kInt8,       // two's complement int8 (int-quantized)
  kOffset128,  // unsigned byte minus 128 (pack_to_int32's 8-bit offset)
  kE4M3,       // FP8 E4M3 (float-quantized, MXFP8); the NaN codes give NaN
};

// Element c of the row: q = value of codes[c] (as `kind`), s = scales[c / run]; its 16-bit
// output (little-endian at out + 2c) is RNE_bf16(f32(q * s)), a NaN product as 0x7FC0.
// Returns true when no output is Inf or NaN. run >= 1; cols need not be a multiple of run.
bool ScaleBytes(const uint8_t* codes, size_t cols, size_t run, const float* scales,
                ByteCode kind, uint8_t* out);
bool ScaleBytesScalar(const uint8_t* codes, size_t cols, size_t run, const float* scales,
                      ByteCode kind, uint8_t* out);

}  // namespace quench

#endif  // QUENCH_SCHEMES_BYTE_DECODE_H_
