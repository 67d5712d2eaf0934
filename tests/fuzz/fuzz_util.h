// Shared by the libFuzzer targets: a failed invariant is a crash the fuzzer records.
#ifndef QUENCH_TESTS_FUZZ_FUZZ_UTIL_H_
#define QUENCH_TESTS_FUZZ_FUZZ_UTIL_H_

#include <cstdio>
#include <cstdlib>
#include <string_view>

namespace quench::fuzz {

// Aborts (a finding for libFuzzer) when `ok` is false, saying which property broke.
inline void Require(bool ok, std::string_view what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz invariant broken: %.*s\n", static_cast<int>(what.size()),
                 what.data());
    std::abort();
  }
}

}  // namespace quench::fuzz

#endif  // QUENCH_TESTS_FUZZ_FUZZ_UTIL_H_
