// AWQModifier and SmoothQuantModifier in recipes (see recipe_smooth.h).
#include "plan/recipe_smooth.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <span>
#include <string_view>

namespace quench {
namespace {

Status Bad(const std::string& label, const std::string& what) {
  return Error(ErrorCode::kInvalidInput, label + ": " + what);
}

bool Given(const JsonValue* v) { return v != nullptr && !v->is_null(); }

// llmcompressor/modifiers/awq/__init__.py's quant_keys.
constexpr std::array<std::string_view, 10> kQuantKeys = {
    "config_groups", "targets", "ignore", "scheme", "kv_cache_scheme", "weight_observer",
    "input_observer", "output_observer", "observer", "bypass_divisibility_checks"};

// Modifier's own fields (modifiers/modifier.py): scheduling, meaningless in a one-shot run.
constexpr std::array<std::string_view, 5> kModifierKeys = {"index", "group", "start", "end",
                                                           "update"};

bool In(std::string_view k, std::span<const std::string_view> keys) {
  return std::find(keys.begin(), keys.end(), k) != keys.end();
}

Result<std::string> Target(const JsonValue& v, const std::string& label, const std::string& what) {
  if (!v.is_string() || v.as_string().empty()) {
    return Bad(label, what + " must be a module name or an \"re:\" regex");
  }
  return v.as_string();
}

Result<std::vector<std::string>> Targets(const JsonValue& v, const std::string& label,
                                         const std::string& what) {
  std::vector<std::string> out;
  if (!v.is_array() || v.as_array().empty()) {
    return Bad(label, what + " must be a non-empty list of module names or \"re:\" regexes");
  }
  for (const JsonValue& e : v.as_array()) {
    QUENCH_ASSIGN_OR_RETURN(std::string t, Target(e, label, what));
    out.push_back(std::move(t));
  }
  return out;
}

// AWQMapping dicts: {smooth_layer, balance_layers, activation_hook_target}.
Result<std::vector<PlanOptions::SmoothingMapping>> AwqMappings(const JsonValue& v,
                                                               const std::string& label) {
  if (!v.is_array()) return Bad(label, "AWQModifier.mappings must be a list of mappings");
  std::vector<PlanOptions::SmoothingMapping> out;
  for (size_t i = 0; i < v.as_array().size(); ++i) {
    const JsonValue& m = v.as_array()[i];
    const std::string what = "AWQModifier.mappings[" + std::to_string(i) + "]";
    if (!m.is_object()) {
      return Bad(label, what + " must be {smooth_layer: T, balance_layers: [T, ...]} (AWQMapping; "
                        "the list form is SmoothQuantModifier's, and llm-compressor refuses it "
                        "here too)");
    }
    for (const auto& [k, x] : m.as_object()) {
      if (k == "activation_hook_target") {
        if (Given(&x)) {
          return Bad(label, what + ".activation_hook_target: quench reads the statistics of the "
                            "first balance layer's input; hooking another module is not built");
        }
      } else if (k != "smooth_layer" && k != "balance_layers") {
        return Bad(label, what + ": unknown field '" + k + "'");
      }
    }
    const JsonValue* s = m.Find("smooth_layer");
    const JsonValue* b = m.Find("balance_layers");
    if (s == nullptr || b == nullptr) {
      return Bad(label, what + " needs smooth_layer and balance_layers");
    }
    PlanOptions::SmoothingMapping sm;
    QUENCH_ASSIGN_OR_RETURN(sm.smooth, Target(*s, label, what + ".smooth_layer"));
    QUENCH_ASSIGN_OR_RETURN(sm.balance, Targets(*b, label, what + ".balance_layers"));
    out.push_back(std::move(sm));
  }
  return out;
}

// SmoothQuant's [[balance, ...], smooth]: match_modules_set takes tree_leaves(mapping), the
// last leaf being the smooth layer.
Result<std::vector<PlanOptions::SmoothingMapping>> SqMappings(const JsonValue& v,
                                                              const std::string& label) {
  if (!v.is_array()) return Bad(label, "SmoothQuantModifier.mappings must be a list of mappings");
  std::vector<PlanOptions::SmoothingMapping> out;
  for (size_t i = 0; i < v.as_array().size(); ++i) {
    const JsonValue& m = v.as_array()[i];
    const std::string what = "SmoothQuantModifier.mappings[" + std::to_string(i) + "]";
    const std::string form = " must be [[balance layer, ...], smooth layer] (the reference's "
                             "order: the smooth layer last)";
    if (!m.is_array() || m.as_array().size() != 2) return Bad(label, what + form);
    const JsonValue& b = m.as_array()[0];
    const JsonValue& s = m.as_array()[1];
    if (b.is_string() && s.is_array()) {
      // The reference would take the last balance layer for the smooth layer.
      return Bad(label, what + form + "; [smooth, [balance]] reverses it");
    }
    PlanOptions::SmoothingMapping sm;
    if (b.is_string()) {
      sm.balance = {b.as_string()};
    } else {
      QUENCH_ASSIGN_OR_RETURN(sm.balance, Targets(b, label, what + "[0]"));
    }
    if (!s.is_string()) return Bad(label, what + form);
    QUENCH_ASSIGN_OR_RETURN(sm.smooth, Target(s, label, what + "[1]"));
    out.push_back(std::move(sm));
  }
  return out;
}

}  // namespace

bool HasQuantizationKeys(const JsonValue& mod) {
  if (!mod.is_object()) return false;
  for (const auto& [k, v] : mod.as_object()) {
    if (In(k, kQuantKeys) && Given(&v)) return true;
  }
  return false;
}

Result<RecipeCalibration> ReadAwqModifier(const JsonValue& mod, const std::string& label) {
  RecipeCalibration c;
  c.modifier = "AWQModifier";
  c.algorithm = "awq";
  if (mod.is_null()) return c;  // `AWQModifier: {}` written as `AWQModifier:`
  if (!mod.is_object()) return Bad(label, "AWQModifier must be a map of its fields");
  for (const auto& [k, v] : mod.as_object()) {
    if (k == "duo_scaling") {
      // bool | Literal["both"]; pydantic's lax bool also takes the strings true/false.
      if (v.is_bool()) {
        c.duo_scaling = v.as_bool() ? "true" : "false";
      } else if (v.is_string() && (v.as_string() == "both" || v.as_string() == "true" ||
                                   v.as_string() == "false")) {
        c.duo_scaling = v.as_string();
      } else {
        return Bad(label, "AWQModifier.duo_scaling must be true, false or \"both\"");
      }
    } else if (k == "n_grid") {
      const bool whole = (v.is_int() && v.as_int() >= 2 && v.as_int() <= 1000) ||
                         (v.is_double() && std::floor(v.as_double()) == v.as_double() &&
                          v.as_double() >= 2 && v.as_double() <= 1000);
      if (!whole) return Bad(label, "AWQModifier.n_grid must be a whole number from 2 to 1000");
      c.n_grid = static_cast<int>(v.as_double());
    } else if (k == "mappings") {
      if (Given(&v)) {
        QUENCH_ASSIGN_OR_RETURN(c.mappings, AwqMappings(v, label));
      }
    } else if (k == "offload_device") {
      if (Given(&v)) {
        c.notes.push_back("AWQModifier.offload_device ignored: it places the reference's cached "
                          "activations; quench holds none (it reads --stats)");
      }
    } else if (!In(k, kQuantKeys) && !In(k, kModifierKeys)) {
      return Bad(label, "AWQModifier has no field '" + k + "' (llm-compressor 0.14.0.1: "
                        "mappings, duo_scaling, n_grid, offload_device)");
    }
  }
  return c;
}

Result<RecipeCalibration> ReadSmoothQuantModifier(const JsonValue& mod, const std::string& label) {
  RecipeCalibration c;
  c.modifier = "SmoothQuantModifier";
  c.algorithm = "smoothquant";
  if (mod.is_null()) return c;
  if (!mod.is_object()) return Bad(label, "SmoothQuantModifier must be a map of its fields");
  for (const auto& [k, v] : mod.as_object()) {
    if (k == "smoothing_strength") {
      if (!(v.is_int() || v.is_double()) || !(v.as_double() >= 0 && v.as_double() <= 1)) {
        return Bad(label, "SmoothQuantModifier.smoothing_strength must be a number in [0, 1]");
      }
      c.smoothing_strength = v.as_double();
    } else if (k == "mappings") {
      if (Given(&v)) {
        QUENCH_ASSIGN_OR_RETURN(c.mappings, SqMappings(v, label));
      }
    } else if (k == "ignore") {
      if (!Given(&v)) continue;
      if (!v.is_array()) return Bad(label, "SmoothQuantModifier.ignore must be a list");
      for (const JsonValue& e : v.as_array()) {
        QUENCH_ASSIGN_OR_RETURN(std::string t, Target(e, label, "SmoothQuantModifier.ignore"));
        c.smoothing_ignore.push_back(std::move(t));
      }
    } else if (k == "num_calibration_steps" || k == "calibration_function") {
      if (Given(&v)) {
        return Bad(label, "SmoothQuantModifier." + k + " concerns the reference's forward "
                          "passes; quench reads the statistics given with --stats");
      }
    } else if (!In(k, kModifierKeys)) {
      return Bad(label, "SmoothQuantModifier has no field '" + k + "' (llm-compressor 0.14.0.1: "
                        "smoothing_strength, mappings, ignore)");
    }
  }
  return c;
}

}  // namespace quench
