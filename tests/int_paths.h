// The integer kernels' code paths, for the tests that compare them with the scalar definition:
// every compiled Highway target with both hand-written int4 kernels (src/schemes/int4_bf16*.*)
// switched off; then, on a CPU with AVX2 and FMA, the AVX2 target with the AVX2 int4 kernel
// on (it hands that kernel the chunks it handles, and runs its own code for the rest); then,
// on a CPU that has AVX-512 BF16, the dispatcher with that kernel on (the best target hands it
// the chunks it handles).
#ifndef QUENCH_TESTS_INT_PATHS_H_
#define QUENCH_TESTS_INT_PATHS_H_

#include <cstdint>
#include <set>
#include <string>

#include "hwy/targets.h"
#include "kernel_test_util.h"
#include "schemes/int4_bf16.h"
#include "schemes/int4_bf16_avx2.h"

namespace quench::testing {

inline constexpr const char* kInt4Bf16Path = "AVX512_BF16 int4 kernel";
inline constexpr const char* kInt4Bf16Avx2Path = "AVX2 int4 kernel";

template <class Fn>
std::set<std::string> ForEachIntPath(Fn fn) {
  struct Restore {
    ~Restore() {
      hwy::SetSupportedTargetsForTest(0);
      intq::internal::SetInt4Bf16Enabled(true);
      intq::internal::SetInt4Bf16Avx2Enabled(true);
    }
  } restore;
  intq::internal::SetInt4Bf16Enabled(false);
  intq::internal::SetInt4Bf16Avx2Enabled(false);
  std::set<std::string> names = ForEachTarget(fn);
  intq::internal::SetInt4Bf16Avx2Enabled(true);
  bool avx2 = false;
  for (const int64_t target : hwy::SupportedAndGeneratedTargets()) avx2 |= target == HWY_AVX2;
  if (intq::Int4Bf16Avx2Available() && avx2) {
    hwy::SetSupportedTargetsForTest(HWY_AVX2);
    fn(std::string(kInt4Bf16Avx2Path));
    hwy::SetSupportedTargetsForTest(0);
    names.insert(kInt4Bf16Avx2Path);
  }
  intq::internal::SetInt4Bf16Enabled(true);
  if (intq::Int4Bf16Available()) {
    fn(std::string(kInt4Bf16Path));
    names.insert(kInt4Bf16Path);
  }
  return names;
}

}  // namespace quench::testing

#endif  // QUENCH_TESTS_INT_PATHS_H_
