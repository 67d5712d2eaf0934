// The AutoAWQ repack kernel (src/schemes/awq_repack.cc: 8x8 nibble transposes on vectors of
// output blocks) against its scalar definition (one nibble at a time), on every Highway
// target compiled in, byte for byte: random words, input widths of one and many blocks,
// output ranges that start and end inside an 8-output block, as many blocks as a vector holds
// and more or fewer (the tail). Plus one hand-made block read against the format's rule.
#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernel_test_util.h"
#include "schemes/awq_repack.h"

namespace quench::testing {
namespace {

TEST_CASE("RepackAwqWords equals its scalar definition on every target") {
  std::mt19937 rng(23);
  const size_t ins[] = {8, 16, 64, 136};
  const size_t words_list[] = {1, 2, 3, 7, 8, 16, 17, 33};
  const auto targets = ForEachTarget([&](const std::string& target) {
    for (size_t in : ins) {
      for (size_t words : words_list) {
        std::vector<uint32_t> codes(in * words);
        for (uint32_t& x : codes) x = rng();
        const size_t ranges[][2] = {{0, 8 * words}, {3, 8 * words}, {0, 8 * words - 5},
                                    {5, 6}, {8 * words - 1, 8 * words}};
        for (const auto& rg : ranges) {
          if (rg[0] >= rg[1]) continue;
          CAPTURE(target);
          CAPTURE(in);
          CAPTURE(words);
          CAPTURE(rg[0]);
          CAPTURE(rg[1]);
          const size_t n = 4 * (rg[1] - rg[0]) * (in / 8);
          std::vector<uint8_t> want(n + kGuardBytes, kGuard), got(want);
          RepackAwqWordsScalar(codes.data(), in, words, rg[0], rg[1], want.data());
          RepackAwqWords(codes.data(), in, words, rg[0], rg[1], got.data());
          CHECK(want == got);
        }
      }
    }
  });
  CHECK(!targets.empty());
}

TEST_CASE("one block by the format's rule: input k of output m is nibble kAwqNibble[m] of word k") {
  // Input k's word holds output m's code (k + 3m) % 16 at nibble kAwqNibble[m].
  std::vector<uint32_t> codes(8);
  for (uint32_t k = 0; k < 8; ++k) {
    for (uint32_t m = 0; m < 8; ++m) codes[k] |= ((k + 3 * m) % 16) << (4 * kAwqNibble[m]);
  }
  ForEachTarget([&](const std::string& target) {
    CAPTURE(target);
    uint8_t out[32];
    RepackAwqWords(codes.data(), 8, 1, 0, 8, out);
    for (uint32_t m = 0; m < 8; ++m) {
      uint32_t word;
      std::memcpy(&word, out + 4 * m, 4);
      for (uint32_t k = 0; k < 8; ++k) CHECK(((word >> (4 * k)) & 0xF) == (k + 3 * m) % 16);
    }
  });
}

}  // namespace
}  // namespace quench::testing
