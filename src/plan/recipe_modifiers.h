// Which modifiers an llm-compressor recipe has, found anywhere in it (stage -> modifiers
// group -> Modifier), and whether quench runs their combination.
#ifndef QUENCH_PLAN_RECIPE_MODIFIERS_H_
#define QUENCH_PLAN_RECIPE_MODIFIERS_H_

#include <string>

#include "format/json.h"
#include "plan/recipe.h"
#include "quench/status.h"

namespace quench {

// Which modifiers a recipe combines, and whether quench runs the combination: one quantizing
// modifier (QuantizationModifier, GPTQModifier, or an AWQModifier given quantization keys, as
// the deprecated shim splits them), and the calibrated modifiers composed as `--algorithm`'s
// comma list composes them (src/calib/composite.h): at most one smoothing (AWQModifier or
// SmoothQuantModifier), then SparseGPTModifier, then GPTQModifier.
struct Modifiers {
  const JsonValue* quantizing = nullptr;
  const JsonValue* gptq = nullptr;
  const JsonValue* sparsegpt = nullptr;
  const JsonValue* awq = nullptr;
  const JsonValue* smoothquant = nullptr;
  std::string experts;  // the expert-pruning entry's name
  const JsonValue* experts_mod = nullptr;
  Status combination = Status::Ok();
};

// Collects the recipe's modifiers; refuses an unknown modifier, one given twice, two
// expert-pruning entries, and a recipe with no quantizing modifier (saying what to give
// instead). A combination quench does not run is returned in `combination`, for the caller to
// report after the quantizing modifier's own errors.
Result<Modifiers> PickModifiers(const JsonValue& doc, const std::string& label);

// The calibrated modifiers of `m` read into one RecipeCalibration: `algorithm` is their comma
// list in pipeline order ("awq,gptq", "smoothquant,sparsegpt,gptq"), `modifier` their names
// joined with " and ", each modifier's settings in the option it sets. SparseGPT and GPTQ share
// --gptq-block-size and --dampening, so a recipe whose two modifiers use different values
// (their own or llm-compressor's defaults, 128 and 0.01 for both) is refused. `quant_ignore`
// is the quantizing modifier's ignore list (SparseGPTModifier's must be among it).
Result<RecipeCalibration> ReadCalibrations(const Modifiers& m,
                                           const std::vector<std::string>& quant_ignore,
                                           const std::string& label);

}  // namespace quench

#endif  // QUENCH_PLAN_RECIPE_MODIFIERS_H_
