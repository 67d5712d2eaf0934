// A recipe's own smoothing mappings (AWQModifier / SmoothQuantModifier `mappings`, read into
// PlanOptions::smoothing_mappings by plan/recipe_smooth.h) resolved against a checkpoint's
// modules, and SmoothQuantModifier's `ignore`.
#ifndef QUENCH_CALIB_USER_MAPPINGS_H_
#define QUENCH_CALIB_USER_MAPPINGS_H_

#include <string>
#include <vector>

#include "calib/mappings.h"
#include "quench/plan.h"
#include "quench/status.h"

namespace quench::calib {

// The recipe's mappings as MappingSpecs, in recipe order.
std::vector<MappingSpec> UserMappingSpecs(const std::vector<PlanOptions::SmoothingMapping>& m);

// Resolves them as the registry's are (ResolveMappings: match_modules_set's grouping, its
// refusals), but a mapping the user wrote must apply: one that matches no module of the
// checkpoint is refused (kInvalidInput, naming it), where a registry mapping that does not
// apply to a model is passed over. `modules`: every module with a weight.
Result<std::vector<ResolvedMapping>> ResolveUserMappings(
    const std::vector<PlanOptions::SmoothingMapping>& mappings,
    const std::vector<std::string>& modules);

// SmoothQuantModifier._resolve_mappings' rule: a set is skipped when its smooth layer and
// every balance layer match an `ignore` entry ("re:" regex or name); otherwise it is smoothed
// whole. Returns how many sets were dropped from `resolved`.
Result<size_t> DropIgnoredMappings(const std::vector<std::string>& ignore,
                                   std::vector<ResolvedMapping>& resolved);

// A stable text of the mappings and ignore entries, for the resume fingerprint and the notes.
std::string DescribeUserMappings(const std::vector<PlanOptions::SmoothingMapping>& mappings,
                                 const std::vector<std::string>& ignore);

}  // namespace quench::calib

#endif  // QUENCH_CALIB_USER_MAPPINGS_H_
