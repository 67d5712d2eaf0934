// The integer kernels' code paths, for the tests that compare them with the scalar definition:
// every compiled Highway target with the AVX-512 BF16 int4 kernel (src/schemes/int4_bf16.*)
// switched off, then, on a CPU that has AVX-512 BF16, the dispatcher with it on (the best
// target hands that kernel the chunks it handles, and runs its own code for the rest).
#ifndef QUENCH_TESTS_INT_PATHS_H_
#define QUENCH_TESTS_INT_PATHS_H_

#include <set>
#include <string>

#include "kernel_test_util.h"
#include "schemes/int4_bf16.h"

namespace quench::testing {

inline constexpr const char* kInt4Bf16Path = "AVX512_BF16 int4 kernel";

template <class Fn>
std::set<std::string> ForEachIntPath(Fn fn) {
  struct Restore {
    ~Restore() { intq::internal::SetInt4Bf16Enabled(true); }
  } restore;
  intq::internal::SetInt4Bf16Enabled(false);
  std::set<std::string> names = ForEachTarget(fn);
  intq::internal::SetInt4Bf16Enabled(true);
  if (intq::Int4Bf16Available()) {
    fn(std::string(kInt4Bf16Path));
    names.insert(kInt4Bf16Path);
  }
  return names;
}

}  // namespace quench::testing

#endif  // QUENCH_TESTS_INT_PATHS_H_
