#include "schemes/stack_transpose.h"

#include <algorithm>

namespace quench {
namespace {

bool NonFinite(uint16_t v) { return (v & 0x7F80) == 0x7F80; }

}  // namespace

int64_t TransposeBf16Columns(const uint16_t* block, uint64_t in, uint64_t cols, uint64_t col0,
                             uint64_t r0, uint64_t r1, uint16_t* out) {
  // Tiles of 16 output rows by 256 inputs: each input row gives 16 adjacent values (32 bytes,
  // one read), and the 16 output rows written advance together, so that both sides stay in
  // a few cache lines per step instead of striding through the block a value at a time.
  constexpr uint64_t kRows = 16, kIns = 256;
  uint16_t bad = 0;
  for (uint64_t o0 = r0; o0 < r1; o0 += kRows) {
    const uint64_t n = std::min(kRows, r1 - o0);
    for (uint64_t i0 = 0; i0 < in; i0 += kIns) {
      const uint64_t i1 = std::min(in, i0 + kIns);
      for (uint64_t i = i0; i < i1; ++i) {
        const uint16_t* src = block + i * cols + col0 + o0;
        uint16_t* dst = out + (o0 - r0) * in + i;
        if (n == kRows) {
          for (uint64_t k = 0; k < kRows; ++k) {
            dst[k * in] = src[k];
            bad |= static_cast<uint16_t>(NonFinite(src[k]));
          }
        } else {
          for (uint64_t k = 0; k < n; ++k) {
            dst[k * in] = src[k];
            bad |= static_cast<uint16_t>(NonFinite(src[k]));
          }
        }
      }
    }
  }
  if (bad == 0) return -1;
  // Rare (the caller refuses the weight): the first in the output's order.
  for (uint64_t k = 0; k < (r1 - r0) * in; ++k) {
    if (NonFinite(out[k])) return static_cast<int64_t>(k);
  }
  return -1;
}

int64_t TransposeBf16ColumnsScalar(const uint16_t* block, uint64_t in, uint64_t cols,
                                   uint64_t col0, uint64_t r0, uint64_t r1, uint16_t* out) {
  int64_t first = -1;
  for (uint64_t o = r0; o < r1; ++o) {
    for (uint64_t i = 0; i < in; ++i) {
      const uint16_t v = block[i * cols + col0 + o];
      out[(o - r0) * in + i] = v;
      if (first < 0 && NonFinite(v)) first = static_cast<int64_t>((o - r0) * in + i);
    }
  }
  return first;
}

}  // namespace quench
