// The AutoAWQ repack (awq_repack.h), compiled once per target through Highway's
// foreach_target skeleton. Lanes are output blocks c (contiguous in each input's row of
// words): for one input block w the 8 words x_k = codes[8w + k][c..] are transposed as an
// 8x8 nibble matrix M[k][p] = nibble p of x_k by three stages of masked swaps (4x4 blocks:
// 16-bit halves of words k, k + 4; 2x2: bytes of k, k + 2; 1x1: nibbles of k, k + 1), after
// which word p holds column p: T_p = sum_k M[k][p] << 4k, the packed word of output
// 8c + m for p = kAwqNibble[m].
#include "schemes/awq_repack.h"

#include <algorithm>
#include <cstring>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/schemes/awq_repack.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace quench {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// One output's word w, a nibble at a time (the definition).
inline uint32_t RepackOne(const uint32_t* codes, size_t words, size_t o, size_t w) {
  const size_t c = o / 8;
  const int shift = 4 * kAwqNibble[o % 8];
  uint32_t word = 0;
  for (size_t k = 0; k < 8; ++k)
    word |= ((codes[(8 * w + k) * words + c] >> shift) & 0xF) << (4 * k);
  return word;
}

template <int kShift, class D, class V>
HWY_INLINE void SwapStage(D d, V& a, V& b, uint32_t mask) {
  const V t = hn::And(hn::Xor(hn::ShiftRight<kShift>(a), b), hn::Set(d, mask));
  a = hn::Xor(a, hn::ShiftLeft<kShift>(t));
  b = hn::Xor(b, t);
}

void RepackAwqWordsKernel(const uint32_t* codes, size_t in, size_t words, size_t o_begin,
                          size_t o_end, uint8_t* out) {
  const hn::ScalableTag<uint32_t> d;
  const size_t N = hn::Lanes(d);
  const size_t row_words = in / 8;
  HWY_ALIGN uint32_t tmp[8 * HWY_LANES(uint32_t)];
  // Output blocks wholly or partly in [o_begin, o_end).
  const size_t cb = o_begin / 8, ce = (o_end + 7) / 8;
  const size_t c_vec = cb + (ce - cb) / N * N;  // blocks [cb, c_vec) go by vectors
  // Input blocks outer: the 8 rows of words read are contiguous runs, and the outputs'
  // current words (one cache line per output row) stay in cache until the next w.
  for (size_t w = 0; w < row_words; ++w) {
    for (size_t c = cb; c < c_vec; c += N) {
      const uint32_t* x = codes + 8 * w * words + c;
      auto x0 = hn::LoadU(d, x), x1 = hn::LoadU(d, x + words), x2 = hn::LoadU(d, x + 2 * words),
           x3 = hn::LoadU(d, x + 3 * words), x4 = hn::LoadU(d, x + 4 * words),
           x5 = hn::LoadU(d, x + 5 * words), x6 = hn::LoadU(d, x + 6 * words),
           x7 = hn::LoadU(d, x + 7 * words);
      SwapStage<16>(d, x0, x4, 0x0000FFFFu);
      SwapStage<16>(d, x1, x5, 0x0000FFFFu);
      SwapStage<16>(d, x2, x6, 0x0000FFFFu);
      SwapStage<16>(d, x3, x7, 0x0000FFFFu);
      SwapStage<8>(d, x0, x2, 0x00FF00FFu);
      SwapStage<8>(d, x1, x3, 0x00FF00FFu);
      SwapStage<8>(d, x4, x6, 0x00FF00FFu);
      SwapStage<8>(d, x5, x7, 0x00FF00FFu);
      SwapStage<4>(d, x0, x1, 0x0F0F0F0Fu);
      SwapStage<4>(d, x2, x3, 0x0F0F0F0Fu);
      SwapStage<4>(d, x4, x5, 0x0F0F0F0Fu);
      SwapStage<4>(d, x6, x7, 0x0F0F0F0Fu);
      hn::Store(x0, d, tmp);
      hn::Store(x1, d, tmp + N);
      hn::Store(x2, d, tmp + 2 * N);
      hn::Store(x3, d, tmp + 3 * N);
      hn::Store(x4, d, tmp + 4 * N);
      hn::Store(x5, d, tmp + 5 * N);
      hn::Store(x6, d, tmp + 6 * N);
      hn::Store(x7, d, tmp + 7 * N);
      if (8 * c >= o_begin && 8 * (c + N) <= o_end) {  // every output of the lanes wanted
        uint8_t* dst = out + 4 * ((8 * c - o_begin) * row_words + w);
        for (size_t l = 0; l < N; ++l, dst += 32 * row_words) {
          for (size_t m = 0; m < 8; ++m) {
            std::memcpy(dst + 4 * m * row_words, &tmp[kAwqNibble[m] * N + l], 4);
          }
        }
        continue;
      }
      for (size_t l = 0; l < N; ++l) {
        for (size_t m = 0; m < 8; ++m) {
          const size_t o = 8 * (c + l) + m;
          if (o < o_begin || o >= o_end) continue;
          std::memcpy(out + 4 * ((o - o_begin) * row_words + w), &tmp[kAwqNibble[m] * N + l], 4);
        }
      }
    }
  }
  for (size_t o = std::max(o_begin, 8 * c_vec); o < o_end; ++o) {
    for (size_t w = 0; w < row_words; ++w) {
      const uint32_t word = RepackOne(codes, words, o, w);
      std::memcpy(out + 4 * ((o - o_begin) * row_words + w), &word, 4);
    }
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace quench
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace quench {

HWY_EXPORT(RepackAwqWordsKernel);

void RepackAwqWords(const uint32_t* codes, size_t in, size_t words, size_t o_begin,
                    size_t o_end, uint8_t* out) {
  HWY_DYNAMIC_DISPATCH(RepackAwqWordsKernel)(codes, in, words, o_begin, o_end, out);
}

void RepackAwqWordsScalar(const uint32_t* codes, size_t in, size_t words, size_t o_begin,
                          size_t o_end, uint8_t* out) {
  const size_t row_words = in / 8;
  for (size_t o = o_begin; o < o_end; ++o) {
    const size_t c = o / 8;
    const int shift = 4 * kAwqNibble[o % 8];
    for (size_t w = 0; w < row_words; ++w) {
      uint32_t word = 0;
      for (size_t k = 0; k < 8; ++k) {
        word |= ((codes[(8 * w + k) * words + c] >> shift) & 0xF) << (4 * k);
      }
      std::memcpy(out + 4 * ((o - o_begin) * row_words + w), &word, 4);
    }
  }
}

}  // namespace quench
#endif  // HWY_ONCE
