// The weight observer's settings (compressed-tensors QuantizationArgs.observer_kwargs) for the
// imatrix_mse observer, from --observer-arg KEY=VALUE or a recipe's weights.observer_kwargs.
//
// llm-compressor 0.14.0.1's IMatrixMSEObserver (observers/imatrix.py __init__) reads
//   maxshrink (0.95), patience (5), grid (20), norm (3.0), strict (False), expand (1.0)
// with kw.get and checks grid > 0, patience >= 0, 0 <= maxshrink <= 1, norm finite and > 0.
// quench takes the same keys and checks, and refuses what it cannot reproduce or what is
// surely a mistake (a key the observer does not read, which the reference would silently
// ignore; a grid or patience that is not a whole number; expand <= 0; more than 32 search
// steps). The kwargs are kept as the user wrote them (ints stay ints, floats floats) because
// the reference writes them into config.json's quantization_config (weights.observer_kwargs).
#ifndef QUENCH_PLAN_OBSERVER_KWARGS_H_
#define QUENCH_PLAN_OBSERVER_KWARGS_H_

#include <string>
#include <vector>

#include "format/json.h"
#include "quench/status.h"

namespace quench {

// The observer's settings as the search uses them (src/calib/imatrix_mse.h ImatrixOptions
// takes them over).
struct ObserverSettings {
  int grid = 20;
  double maxshrink = 0.95;
  double norm = 3.0;
  int patience = 5;
  double expand = 1.0;
  bool strict = false;
};

// The most grid steps quench searches (int(maxshrink * grid) + 1): the search records each
// group's improvements as bits of a 32-bit mask (src/calib/imatrix_mse.h). The defaults take
// 20; llm-compressor's nvfp4_expanded_imatrix observer (112) is out of reach.
inline constexpr int kMaxObserverSteps = 32;

// --observer-arg values ("grid=40", "norm=2.4", "strict=true") into a kwargs object: an
// integer literal stays an int, any other number is a float, true/false a bool. Usage errors
// name the flag.
Result<JsonValue> ObserverKwargsFromArgs(const std::vector<std::string>& args);

// Checks `kwargs` (a JSON object) for `observer` ("imatrix_mse"; for any other observer a
// non-empty object is refused) and returns the settings. `where` prefixes messages.
Result<ObserverSettings> ParseObserverKwargs(const std::string& observer, const JsonValue& kwargs,
                                             const std::string& where);

// Canonical text of a kwargs object (Python json.dumps with sorted keys; "" for none), which
// PlannedGroup::observer_kwargs keeps; and back.
std::string ObserverKwargsText(const JsonValue& kwargs);
Result<JsonValue> ObserverKwargsFromText(const std::string& text);

}  // namespace quench

#endif  // QUENCH_PLAN_OBSERVER_KWARGS_H_
