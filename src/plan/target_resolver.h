// Which config group a module belongs to, resolved the way vLLM resolves it.
#ifndef QUENCH_PLAN_TARGET_RESOLVER_H_
#define QUENCH_PLAN_TARGET_RESOLVER_H_

#include <string>
#include <string_view>
#include <vector>

#include "plan/matcher.h"
#include "quench/plan.h"
#include "quench/status.h"

namespace quench {

// vLLM's rule (compressed_tensors/utils.py::find_matched_target): vLLM reads config_groups in the
// order config.json lists them, which is sorted by key because the writer sorts keys, and keeps
// one entry per target string (a later group redefining a target takes it over). A module
// takes the first target that equals its name or whose regex matches it; failing that, the
// first class-name target ("Linear", matched case-insensitively by containment in the layer
// class name, which for every linear layer contains "Linear").
class TargetResolver {
 public:
  static Result<TargetResolver> Build(const std::vector<PlannedGroup>& groups);

  // Group index for `module`, or -1; counts which entry selected it.
  int Resolve(std::string_view module) { return Resolve(module, hits_); }
  // The same, counting in `hits` (one per entry) instead: for threads resolving at once.
  int Resolve(std::string_view module, std::vector<size_t>& hits) const;
  // Adds counts made with the overload above.
  void AddHits(const std::vector<size_t>& hits) {
    for (size_t i = 0; i < hits_.size(); ++i) hits_[i] += hits[i];
  }

  const std::vector<std::string>& entries() const { return entries_; }
  const std::vector<size_t>& hits() const { return hits_; }

 private:
  std::vector<std::string> entries_;
  std::vector<int> group_;
  std::vector<bool> is_class_;
  std::vector<size_t> hits_;
  NameMatcher names_;
};

}  // namespace quench

#endif  // QUENCH_PLAN_TARGET_RESOLVER_H_
