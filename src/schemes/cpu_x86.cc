// KernelPathsLine (cpu_x86.h): the SIMD paths this CPU takes, for `quench --version`.
#include "schemes/cpu_x86.h"

#include <cstdint>
#include <string>

#include "hwy/highway.h"
#include "hwy/targets.h"

namespace quench::cpu {

std::string KernelPathsLine() {
  // The best of the CPU's targets that this build compiled: what HWY_DYNAMIC_DISPATCH runs.
  const int64_t targets = hwy::SupportedTargets() & (HWY_TARGETS | HWY_STATIC_TARGET);
  auto yes = [](bool b) { return b ? "yes" : "no"; };
  return std::string("Highway ") + hwy::TargetName(targets & -targets) +
         "; hand-written AVX-512 BF16 " + yes(HasAvx512Bf16()) + ", AVX-512 VBMI " +
         yes(HasAvx512Vbmi()) + ", AVX2 " + yes(HasAvx2());
}

}  // namespace quench::cpu
