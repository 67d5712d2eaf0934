// Names shared by expert pruning's files (plan/expert_prune.h): the experts' segment and the
// expert index in `<P>.experts.<i>.<rest>`.
#ifndef QUENCH_PLAN_EXPERT_NAMES_H_
#define QUENCH_PLAN_EXPERT_NAMES_H_

#include <algorithm>
#include <string_view>

namespace quench {

inline constexpr std::string_view kExperts = ".experts.";

// An expert index: decimal digits (at most 9, so it fits a uint32).
inline bool AllDigits(std::string_view s) {
  return !s.empty() && s.size() <= 9 &&
         std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

}  // namespace quench

#endif  // QUENCH_PLAN_EXPERT_NAMES_H_
