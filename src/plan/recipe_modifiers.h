// Which modifiers an llm-compressor recipe has, found anywhere in it (stage -> modifiers
// group -> Modifier), and whether quench runs their combination.
#ifndef QUENCH_PLAN_RECIPE_MODIFIERS_H_
#define QUENCH_PLAN_RECIPE_MODIFIERS_H_

#include <string>

#include "format/json.h"
#include "quench/status.h"

namespace quench {

// Which modifiers a recipe combines, and whether quench runs the combination: one quantizing
// modifier (QuantizationModifier, GPTQModifier, or an AWQModifier given quantization keys, as
// the deprecated shim splits them) and at most one calibration algorithm per conversion.
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

}  // namespace quench

#endif  // QUENCH_PLAN_RECIPE_MODIFIERS_H_
