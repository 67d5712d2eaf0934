// Reading compressed-tensors' pack_to_int32 bit streams (pack-quantized weights and their
// zero points), the inverse of int_shared.h's PackRowScalar / PackZeroPoints: field i of a
// stream sits at bits [i*b, i*b + b) of consecutive little-endian int32 words, a part past
// bit 31 continuing in the low bits of the next word. One reading for every decoder that
// takes such codes back (ct_decode's source weights, --report's error sums, verify's).
#ifndef QUENCH_SCHEMES_PACKED_FIELDS_H_
#define QUENCH_SCHEMES_PACKED_FIELDS_H_

#include <cstdint>
#include <cstring>

namespace quench {

// The unsigned `bits`-bit field (1 <= bits <= 32) at bit `pos` of a stream of `nwords`
// words; the next word is read only where the field crosses into it and it exists.
inline uint32_t PackedField(const uint8_t* words, uint64_t nwords, uint64_t pos, int bits) {
  const uint64_t w = pos / 32, off = pos % 32;
  uint32_t lo = 0, hi = 0;
  std::memcpy(&lo, words + 4 * w, 4);
  if (off + static_cast<uint64_t>(bits) > 32 && w + 1 < nwords) {
    std::memcpy(&hi, words + 4 * (w + 1), 4);
  }
  const uint64_t both = uint64_t{lo} | (uint64_t{hi} << 32);
  return static_cast<uint32_t>((both >> off) & ((uint64_t{1} << bits) - 1));
}

// The field at bit `pos` of column c of a matrix packed down its rows (pack_to_int32 with
// packed_dim=0, as zero points are: column c's rows are one stream through the word rows, row
// r's field at bit r * bits), `cols` words to a row, `word_rows` rows in all.
inline uint32_t PackedColumnField(const uint8_t* words, uint64_t cols, uint64_t word_rows,
                                  uint64_t pos, uint64_t c, int bits) {
  const uint64_t w = pos / 32, off = pos % 32;
  uint32_t lo = 0, hi = 0;
  std::memcpy(&lo, words + 4 * (w * cols + c), 4);
  if (off + static_cast<uint64_t>(bits) > 32 && w + 1 < word_rows) {
    std::memcpy(&hi, words + 4 * ((w + 1) * cols + c), 4);
  }
  const uint64_t both = uint64_t{lo} | (uint64_t{hi} << 32);
  return static_cast<uint32_t>((both >> off) & ((uint64_t{1} << bits) - 1));
}

}  // namespace quench

#endif  // QUENCH_SCHEMES_PACKED_FIELDS_H_
