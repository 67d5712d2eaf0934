// AutoAWQ GEMM codes to compressed-tensors pack-quantized words (the lossless repack,
// AWQ -> W4A16_ASYM): AutoAWQ's qweight holds, for input i, word c = outputs 8c..8c+7 with
// output 8c + m at nibble kAwqNibble[m]; pack_to_int32 wants, for output o, word w = inputs
// 8w..8w+7 with input 8w + k at nibble k. Each 8 inputs x 8 outputs block is an 8x8 nibble
// transpose (then the AWQ order read off as a row permutation). RepackAwqWordsScalar is the
// definition (one nibble at a time); RepackAwqWords the Highway kernel (three masked swap
// stages on vectors of output blocks), equal bit for bit on every target
// (tests/test_awq_repack_kernel.cc).
#ifndef QUENCH_SCHEMES_AWQ_REPACK_H_
#define QUENCH_SCHEMES_AWQ_REPACK_H_

#include <cstddef>
#include <cstdint>

namespace quench {

// AutoAWQ's nibble of output 8c + m within word c (AutoAWQConverter's AWQ_REVERSE_ORDER).
inline constexpr int kAwqNibble[8] = {0, 4, 1, 5, 2, 6, 3, 7};

// codes: [in][words] AWQ words (word c of input i at codes[i * words + c]; c counts output
// blocks from the chunk's first, 8c + m its output m). Writes, for each output o in
// [o_begin, o_end) (counted like 8c + m), in / 8 words (little-endian) at out + 4 * (o - o_begin) *
// (in / 8). in is a multiple of 8; o_end <= 8 * words.
void RepackAwqWords(const uint32_t* codes, size_t in, size_t words, size_t o_begin,
                    size_t o_end, uint8_t* out);
void RepackAwqWordsScalar(const uint32_t* codes, size_t in, size_t words, size_t o_begin,
                          size_t o_end, uint8_t* out);

}  // namespace quench

#endif  // QUENCH_SCHEMES_AWQ_REPACK_H_
