// Helpers shared by the kernel tests (FP8, int, FP4/MX): writing weight elements of each
// dtype, the guard bytes that catch output overruns, and running on every Highway target.
#ifndef QUENCH_TESTS_KERNEL_TEST_UTIL_H_
#define QUENCH_TESTS_KERNEL_TEST_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <set>
#include <string>

#include "hwy/targets.h"

#include "quench/dtype.h"
#include "schemes/float_formats.h"

namespace quench::testing {

constexpr uint8_t kGuard = 0xA5;  // fill past each output's end, to catch overruns
constexpr size_t kGuardBytes = 64;

inline size_t ElemBytes(DType d) { return d == DType::kF32 ? 4 : 2; }

inline const char* DTypeLabel(DType d) {
  return d == DType::kBF16 ? "BF16" : d == DType::kF16 ? "F16" : "F32";
}

// f32 value -> raw element bits of dtype d (RNE), written little-endian at p.
inline void PutElem(uint8_t* p, DType d, float v) {
  if (d == DType::kF32) {
    const uint32_t b = F32ToBits(v);
    std::memcpy(p, &b, 4);
  } else {
    const uint16_t b = d == DType::kBF16 ? F32ToBF16(v) : F32ToF16(v);
    std::memcpy(p, &b, 2);
  }
}

inline void PutBits(uint8_t* p, DType d, uint32_t bits) {
  if (d == DType::kF32) {
    std::memcpy(p, &bits, 4);
  } else {
    const uint16_t b = static_cast<uint16_t>(bits);
    std::memcpy(p, &b, 2);
  }
}

// Largest finite value of d.
inline float DTypeMax(DType d) {
  return d == DType::kBF16 ? BF16ToF32(0x7F7F) : d == DType::kF16 ? 65504.0f : 3.4028235e38f;
}

// Runs `fn(target_name)` once per compiled Highway target this CPU supports; returns the
// targets' names. The target mock is reset even when a REQUIRE inside `fn` throws.
template <class Fn>
std::set<std::string> ForEachTarget(Fn fn) {
  struct ResetMock {
    ~ResetMock() { hwy::SetSupportedTargetsForTest(0); }
  } reset;
  std::set<std::string> names;
  for (const int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    names.insert(hwy::TargetName(target));
    fn(std::string(hwy::TargetName(target)));
  }
  return names;
}

}  // namespace quench::testing

#endif  // QUENCH_TESTS_KERNEL_TEST_UTIL_H_
