// The smoothing modifiers of llm-compressor recipes, AWQModifier and SmoothQuantModifier, read
// into what --algorithm awq / smoothquant, --awq-duo-scaling, --awq-n-grid and
// --smoothing-strength say, plus the mappings a recipe may give (which no flag gives). Field
// names, forms and defaults are llm-compressor 0.14.0.1's (modifiers/transform/awq/base.py,
// modifiers/transform/smoothquant/base.py); the statistics still come from --stats.
#ifndef QUENCH_PLAN_RECIPE_SMOOTH_H_
#define QUENCH_PLAN_RECIPE_SMOOTH_H_

#include <string>

#include "format/json.h"
#include "plan/recipe.h"
#include "quench/status.h"

namespace quench {

// The keys the deprecated llmcompressor.modifiers.awq.AWQModifier shim hands to a
// QuantizationModifier (config_groups, targets, ignore, scheme, kv_cache_scheme and the
// observers): an AWQModifier that has one of them quantizes with them, as that shim's
// [AWQModifier, QuantizationModifier] pair does. (0.14.0.1's YAML loader builds the transform
// class, which refuses them as extra fields: data/golden/oneshot-smooth/refusals.json.)
bool HasQuantizationKeys(const JsonValue& mod);

// AWQModifier: duo_scaling (true, false or "both"; default true), n_grid (default 20),
// mappings as AWQMapping dicts ({smooth_layer: T, balance_layers: [T, ...]}; the list form is
// refused, as pydantic refuses it). offload_device places cached activations in the
// reference and is ignored here with a note; activation_hook_target is refused (quench reads
// the first balance layer's input statistics). Unknown keys are refused, as the reference's
// extra="forbid" does.
Result<RecipeCalibration> ReadAwqModifier(const JsonValue& mod, const std::string& label);

// SmoothQuantModifier: smoothing_strength (alpha, default 0.5), mappings in the reference's
// list form ([[balance T, ...], smooth T]: the smooth layer is the last), ignore (a mapping
// whose smooth layer and balance layers are all ignored is skipped, the reference's rule).
// num_calibration_steps and calibration_function concern the forward passes and are refused
// when set (quench reads the statistics it is given).
Result<RecipeCalibration> ReadSmoothQuantModifier(const JsonValue& mod, const std::string& label);

}  // namespace quench

#endif  // QUENCH_PLAN_RECIPE_SMOOTH_H_
