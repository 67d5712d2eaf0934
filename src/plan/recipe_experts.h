// Whole-expert pruning in recipes, equal to --prune-experts F --expert-metric M:
//   - llm-compressor 0.14.0.1's REAPPruningModifier (modifiers/pruning/reap/base.py):
//     `sparsity` in (0, 1), the fraction of routed experts dropped per MoE layer (int(E * F)
//     of them); `ignore` must be empty (quench prunes every MoE layer it finds);
//     `report_path` is ignored with a note (--report records the kept experts);
//   - quench's own `MagnitudeExpertPruner` entry, named after compressed-tensors 0.19.0's
//     converter (entrypoints/convert/converters/magnitude_expert_pruner.py), which is a
//     checkpoint converter, not an llm-compressor modifier, so no llm-compressor recipe has
//     it: `sparsity` in [0, 1] as the converter's; its router/expert patterns and index maps
//     are found from the headers by quench and refused when given.
// An expert-pruning entry goes with a quantizing modifier in the same recipe (for pruning
// alone, the flags with --scheme none).
#ifndef QUENCH_PLAN_RECIPE_EXPERTS_H_
#define QUENCH_PLAN_RECIPE_EXPERTS_H_

#include <string>

#include "format/json.h"
#include "plan/recipe.h"
#include "quench/status.h"

namespace quench {

// Reads `mod` (the entry named `name`: "REAPPruningModifier" or "MagnitudeExpertPruner")
// into c.expert_modifier, c.prune_experts, c.expert_metric and c.notes.
Status ReadExpertPruning(const std::string& name, const JsonValue& mod, const std::string& label,
                         RecipeCalibration& c);

}  // namespace quench

#endif  // QUENCH_PLAN_RECIPE_EXPERTS_H_
