// The run's config groups and pruning, from the options: a recipe's groups, or one group from
// --scheme / --targets with the user's overrides, and the ignore list to apply.
#ifndef QUENCH_PLAN_GROUPS_H_
#define QUENCH_PLAN_GROUPS_H_

#include <string>
#include <vector>

#include "quench/plan.h"
#include "quench/status.h"

namespace quench {

struct ResolvedGroups {
  std::vector<PlannedGroup> groups;  // in the order the recipe (or flags) gave them
  std::vector<std::string> ignore;   // the recipe's entries, then --ignore's, verbatim
  std::string kv_cache;              // "fp8" (--kv-cache or a recipe's kv_cache_scheme) or empty
  std::vector<std::string> notes;    // the recipe's, for the plan (fields it ignores)
};
Result<ResolvedGroups> ResolveGroups(const PlanOptions& options);

// --scheme BF16: a quantized source written decoded (with --prune: pruned too), no
// quantization_config.
bool IsDecodeOnly(const PlanOptions& options);

Result<PlannedPrune> ResolvePrune(const PlanOptions& options);

}  // namespace quench

#endif  // QUENCH_PLAN_GROUPS_H_
