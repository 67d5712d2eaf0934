// A recipe's own smoothing mappings (see user_mappings.h).
#include "calib/user_mappings.h"

#include <algorithm>

#include "plan/matcher.h"

namespace quench::calib {

std::vector<MappingSpec> UserMappingSpecs(const std::vector<PlanOptions::SmoothingMapping>& m) {
  std::vector<MappingSpec> out;
  for (const auto& x : m) out.push_back({x.smooth, x.balance});
  return out;
}

Result<std::vector<ResolvedMapping>> ResolveUserMappings(
    const std::vector<PlanOptions::SmoothingMapping>& mappings,
    const std::vector<std::string>& modules) {
  std::vector<ResolvedMapping> out;
  for (const MappingSpec& spec : UserMappingSpecs(mappings)) {
    // One at a time, so that a mapping that applies nowhere is told apart.
    auto sets = ResolveMappings({spec}, modules);
    if (!sets.ok()) {
      return Error(sets.status().code(), "the recipe's " + sets.status().message());
    }
    if (sets->empty()) {
      return Error(ErrorCode::kInvalidInput,
                   "the recipe's mapping " + DescribeMapping(spec) +
                       " matches no module of the checkpoint (its smooth layer and balance "
                       "layers are missing)");
    }
    out.insert(out.end(), sets->begin(), sets->end());
  }
  return out;
}

Result<size_t> DropIgnoredMappings(const std::vector<std::string>& ignore,
                                   std::vector<ResolvedMapping>& resolved) {
  if (ignore.empty()) return size_t{0};
  QUENCH_ASSIGN_OR_RETURN(NameMatcher m,
                          NameMatcher::Compile(ignore, "SmoothQuantModifier.ignore"));
  const size_t before = resolved.size();
  std::erase_if(resolved, [&](const ResolvedMapping& r) {
    return m.Matches(r.smooth) &&
           std::all_of(r.balance.begin(), r.balance.end(),
                       [&](const std::string& b) { return m.Matches(b); });
  });
  return before - resolved.size();
}

std::string DescribeUserMappings(const std::vector<PlanOptions::SmoothingMapping>& mappings,
                                 const std::vector<std::string>& ignore) {
  std::string s;
  for (const MappingSpec& spec : UserMappingSpecs(mappings)) {
    s += (s.empty() ? "" : "; ") + DescribeMapping(spec);
  }
  if (!ignore.empty()) {
    std::string ig;
    for (const std::string& i : ignore) ig += (ig.empty() ? "" : ", ") + i;
    s += (s.empty() ? "" : "; ") + std::string("ignore ") + ig;
  }
  return s;
}

}  // namespace quench::calib
