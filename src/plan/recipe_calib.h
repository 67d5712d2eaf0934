// The calibrated modifiers of llm-compressor recipes, GPTQModifier and SparseGPTModifier, read
// into what the command line's --algorithm, --prune, --gptq-block-size, --dampening and
// --actorder say (the statistics still come from --stats). GPTQModifier's scheme, config
// groups, targets and ignore are read as a QuantizationModifier's (recipe.cc).
#ifndef QUENCH_PLAN_RECIPE_CALIB_H_
#define QUENCH_PLAN_RECIPE_CALIB_H_

#include <string>
#include <vector>

#include "format/json.h"
#include "plan/recipe.h"
#include "quench/plan.h"
#include "quench/status.h"

namespace quench {

// GPTQModifier: block_size, dampening_frac, actorder ("static"/"weight"/null -> none);
// offload_hessians and the like (memory placement) mean nothing here and are ignored.
Result<RecipeCalibration> ReadGptqModifier(const JsonValue& mod, const std::string& label);

// SparseGPTModifier: sparsity and mask_structure ("N:M" prunes N of every M, "0:0"
// unstructured), block_size, dampening_frac. quench prunes the weights it quantizes, so its
// targets must be Linear and its ignore entries among the quantizing modifier's
// (`quant_ignore`); OWL profiles, per-layer sparsities and preserve_sparsity_mask are refused.
Result<RecipeCalibration> ReadSparseGptModifier(const JsonValue& mod,
                                                const std::vector<std::string>& quant_ignore,
                                                const std::string& label);

// For a run with a recipe (o.recipe): the recipe's calibration (GPTQ, SparseGPT, AWQ,
// SmoothQuant: algorithm and settings; a smoothing modifier's mappings and ignore) and expert
// pruning (--prune-experts, --expert-metric) into `o`. An option still at its default takes the
// recipe's value; one set otherwise must agree with it (kUsage otherwise). Convert and DryRun
// call this first; the planner refuses a recipe whose algorithm the options lack.
Status ApplyRecipeCalibration(PlanOptions& o);

}  // namespace quench

#endif  // QUENCH_PLAN_RECIPE_CALIB_H_
