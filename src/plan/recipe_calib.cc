// GPTQModifier and SparseGPTModifier in recipes (see recipe_calib.h). Argument names and
// defaults are llm-compressor 0.14.0.1's (modifiers/gptq/base.py, modifiers/pruning/sparsegpt/
// base.py and sgpt_base.py).
#include "plan/recipe_calib.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <optional>

namespace quench {
namespace {

Status Bad(const std::string& label, const std::string& what) {
  return Error(ErrorCode::kInvalidInput, label + ": " + what);
}

bool Given(const JsonValue* v) { return v != nullptr && !v->is_null(); }

// A comma list's names, sorted ("gptq,awq" -> {"awq", "gptq"}).
std::vector<std::string> SortedList(const std::string& list) {
  std::vector<std::string> names;
  for (size_t b = 0; b <= list.size();) {
    const size_t e = std::min(list.find(',', b), list.size());
    names.push_back(list.substr(b, e - b));
    b = e + 1;
  }
  std::sort(names.begin(), names.end());
  return names;
}

Result<std::optional<int>> BlockSize(const JsonValue& mod, const std::string& label) {
  const JsonValue* v = mod.Find("block_size");
  if (!Given(v)) return std::optional<int>();
  if (!v->is_int() || v->as_int() < 1 || v->as_int() > (1 << 20)) {
    return Bad(label, "block_size must be a positive whole number");
  }
  return std::optional<int>(static_cast<int>(v->as_int()));
}

Result<std::optional<double>> Fraction(const JsonValue& mod, const char* key,
                                       const std::string& label) {
  const JsonValue* v = mod.Find(key);
  if (!Given(v)) return std::optional<double>();
  if (!(v->is_int() || v->is_double()) || !std::isfinite(v->as_double()) || v->as_double() < 0) {
    return Bad(label, std::string(key) + " must be a number >= 0");
  }
  return std::optional<double>(v->as_double());
}

}  // namespace

Result<RecipeCalibration> ReadGptqModifier(const JsonValue& mod, const std::string& label) {
  RecipeCalibration c;
  c.modifier = "GPTQModifier";
  c.algorithm = "gptq";
  QUENCH_ASSIGN_OR_RETURN(c.block_size, BlockSize(mod, label));
  QUENCH_ASSIGN_OR_RETURN(c.dampening, Fraction(mod, "dampening_frac", label));
  if (const JsonValue* a = mod.Find("actorder"); a != nullptr) {
    // GPTQModifier.actorder: an ActivationOrdering, or None (no reordering); its default is
    // static. group and dynamic are compressed-tensors 0.19.0's removed orderings.
    if (a->is_null() || (a->is_bool() && !a->as_bool())) {
      c.actorder = "none";
    } else if (a->is_string()) {
      c.actorder = a->as_string();
    } else {
      return Bad(label, "GPTQModifier.actorder must be static, weight or null");
    }
  }
  return c;
}

Result<RecipeCalibration> ReadSparseGptModifier(const JsonValue& mod,
                                                const std::vector<std::string>& quant_ignore,
                                                const std::string& label) {
  RecipeCalibration c;
  c.modifier = "SparseGPTModifier";
  c.algorithm = "sparsegpt";
  QUENCH_ASSIGN_OR_RETURN(c.block_size, BlockSize(mod, label));
  QUENCH_ASSIGN_OR_RETURN(c.dampening, Fraction(mod, "dampening_frac", label));
  for (const char* k : {"sparsity_profile", "owl_m", "owl_lmbda"}) {
    if (Given(mod.Find(k))) {
      return Bad(label, std::string("SparseGPTModifier.") + k + ": OWL layer-wise sparsities "
                        "need activations per layer and are not built");
    }
  }
  if (const JsonValue* p = mod.Find("preserve_sparsity_mask");
      Given(p) && !(p->is_bool() && !p->as_bool())) {
    return Bad(label, "SparseGPTModifier.preserve_sparsity_mask is not built");
  }
  if (const JsonValue* t = mod.Find("targets"); Given(t)) {
    const bool linear = (t->is_string() && t->as_string() == "Linear") ||
                        (t->is_array() && t->as_array().size() == 1 &&
                         t->as_array()[0].is_string() && t->as_array()[0].as_string() == "Linear");
    if (!linear) {
      return Bad(label, "SparseGPTModifier.targets: quench prunes the weights it quantizes, "
                        "so only 'Linear' (every one) is accepted");
    }
  }
  if (const JsonValue* ig = mod.Find("ignore"); Given(ig)) {
    if (!ig->is_array()) return Bad(label, "SparseGPTModifier.ignore must be a list");
    for (const JsonValue& e : ig->as_array()) {
      if (!e.is_string() || std::find(quant_ignore.begin(), quant_ignore.end(),
                                       e.as_string()) == quant_ignore.end()) {
        return Bad(label, "SparseGPTModifier.ignore: quench prunes the weights it quantizes, "
                          "so each entry must also be in the quantizing modifier's ignore");
      }
    }
  }
  const JsonValue* ms = mod.Find("mask_structure");
  const std::string structure = Given(ms) && ms->is_string() ? ms->as_string() : "0:0";
  if (Given(ms) && !ms->is_string()) return Bad(label, "mask_structure must be a string 'N:M'");
  const size_t colon = structure.find(':');
  int n = -1, m = -1;
  if (colon != std::string::npos) {
    n = std::atoi(structure.substr(0, colon).c_str());
    m = std::atoi(structure.substr(colon + 1).c_str());
  }
  if (n < 0 || m < 0 || (m == 0) != (n == 0) || n >= std::max(m, 1)) {
    return Bad(label, "mask_structure '" + structure + "' must be 'N:M' with 0 < N < M, or "
                      "'0:0' (unstructured)");
  }
  if (m > 0) {
    // The reference's N:M prunes N of every M (sparsity is then unused); --prune keeps N.
    c.prune = std::to_string(m - n) + ":" + std::to_string(m);
    return c;
  }
  const JsonValue* sp = mod.Find("sparsity");
  if (!Given(sp) || !(sp->is_int() || sp->is_double()) ||
      !(sp->as_double() >= 0 && sp->as_double() < 1)) {
    return Bad(label, "SparseGPTModifier.sparsity must be one fraction in [0, 1) (per-layer "
                      "lists are not built)");
  }
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof buf, sp->as_double());  // shortest exact
  c.prune = "unstructured:" + std::string(buf, res.ptr);
  return c;
}

Status ApplyRecipeCalibration(PlanOptions& o) {
  if (o.recipe.empty()) return Status::Ok();
  QUENCH_ASSIGN_OR_RETURN(Recipe r, LoadRecipe(o.recipe));
  const RecipeCalibration& c = r.calibration;
  const PlanOptions defaults;
  auto conflict = [&](const std::string& modifier, const std::string& flag) {
    return Error(ErrorCode::kUsage, o.recipe.string() + ": its " + modifier + " sets what " +
                                        flag + " says differently; give one or the other");
  };
  // An option still at its default takes the recipe's value; one set otherwise must agree.
  auto take = [&](const auto& value, auto& option, const auto& fallback,
                  const std::string& modifier, const std::string& flag) -> Status {
    if (!value) return Status::Ok();
    if (option != fallback && option != *value) return conflict(modifier, flag);
    option = *value;
    return Status::Ok();
  };
  if (!c.expert_modifier.empty()) {
    const std::string& m = c.expert_modifier;
    QUENCH_RETURN_IF_ERROR(take(c.prune_experts, o.prune_experts, defaults.prune_experts, m,
                                "--prune-experts"));
    QUENCH_RETURN_IF_ERROR(take(std::optional<std::string>(c.expert_metric), o.expert_metric,
                                defaults.expert_metric, m, "--expert-metric"));
  }
  if (c.algorithm.empty()) return Status::Ok();
  const std::string& m = c.modifier;
  // --algorithm may list the recipe's stages in any order (they run in pipeline order).
  if (o.algorithm != defaults.algorithm && SortedList(o.algorithm) != SortedList(c.algorithm)) {
    return conflict(m, "--algorithm " + o.algorithm);
  }
  o.algorithm = c.algorithm;
  if (!c.prune.empty()) {
    QUENCH_RETURN_IF_ERROR(take(std::optional<std::string>(c.prune), o.prune, defaults.prune, m,
                                "--prune " + o.prune));
  }
  QUENCH_RETURN_IF_ERROR(take(c.block_size, o.gptq_block_size, defaults.gptq_block_size, m,
                              "--gptq-block-size"));
  QUENCH_RETURN_IF_ERROR(take(c.dampening, o.dampening, defaults.dampening, m, "--dampening"));
  QUENCH_RETURN_IF_ERROR(take(c.actorder, o.actorder, defaults.actorder, m, "--actorder"));
  QUENCH_RETURN_IF_ERROR(take(c.smoothing_strength, o.smoothing_strength,
                              defaults.smoothing_strength, m, "--smoothing-strength"));
  QUENCH_RETURN_IF_ERROR(take(c.duo_scaling, o.awq_duo_scaling, defaults.awq_duo_scaling, m,
                              "--awq-duo-scaling"));
  QUENCH_RETURN_IF_ERROR(take(c.n_grid, o.awq_n_grid, defaults.awq_n_grid, m, "--awq-n-grid"));
  // No flag gives mappings or SmoothQuant's ignore: the recipe's, every time it is applied.
  o.smoothing_mappings = c.mappings;
  o.smoothing_ignore = c.smoothing_ignore;
  return Status::Ok();
}

}  // namespace quench
