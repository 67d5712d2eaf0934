// The check both NVFP4 bf16 pass-3 tests (test_nvfp4_bf16.cc for AVX-512, test_nvfp4_bf16_avx2.cc
// for AVX2) make of a packed row: every nibble against the definition's Fp4Nibble(x / eff).
#ifndef QUENCH_TESTS_NVFP4_NIBBLES_H_
#define QUENCH_TESTS_NVFP4_NIBBLES_H_

#include <doctest/doctest.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "schemes/float_formats.h"
#include "schemes/fp4_shared.h"

namespace quench::testing {

// The mismatches of `packed`, the nibbles of `groups` groups of xs (from its start) under the
// one scale code `code` and global scale gs, against the definition (eff = f32(e4m3(code) /
// gs), the reference's f32 division); the first one is reported.
inline size_t Nvfp4NibbleMismatches(const std::vector<uint16_t>& xs, size_t groups,
                                    uint8_t code, float gs, const uint8_t* packed) {
  const float eff = E4M3ToF32(code) / gs;
  size_t bad = 0;
  for (size_t i = 0; i < groups * 16; i += 2) {
    const uint8_t lo = fp4::internal::Fp4Nibble(BF16ToF32(xs[i]) / eff);
    const uint8_t hi = fp4::internal::Fp4Nibble(BF16ToF32(xs[i + 1]) / eff);
    if (packed[i / 2] != static_cast<uint8_t>(lo | hi << 4)) {
      if (bad == 0) {
        CAPTURE(gs);
        CAPTURE(static_cast<int>(code));
        CAPTURE(xs[i]);
        CAPTURE(xs[i + 1]);
        CHECK(static_cast<int>(packed[i / 2]) == static_cast<int>(lo | hi << 4));
      }
      ++bad;
    }
  }
  return bad;
}

}  // namespace quench::testing

#endif  // QUENCH_TESTS_NVFP4_NIBBLES_H_
