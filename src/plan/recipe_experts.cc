// Expert-pruning entries in recipes (see recipe_experts.h).
#include "plan/recipe_experts.h"

namespace quench {
namespace {

Status Bad(const std::string& label, const std::string& what) {
  return Error(ErrorCode::kInvalidInput, label + ": " + what);
}

bool Given(const JsonValue* v) { return v != nullptr && !v->is_null(); }

bool Scheduling(const std::string& k) {  // Modifier's own fields (modifiers/modifier.py)
  return k == "index" || k == "group" || k == "start" || k == "end" || k == "update";
}

}  // namespace

Status ReadExpertPruning(const std::string& name, const JsonValue& mod, const std::string& label,
                         RecipeCalibration& c) {
  const bool reap = name == "REAPPruningModifier";
  if (!mod.is_object()) return Bad(label, name + " must be a map of its fields (sparsity)");
  c.expert_modifier = name;
  c.expert_metric = reap ? "reap" : "magnitude";
  for (const auto& [k, v] : mod.as_object()) {
    if (k == "sparsity") {
      const double f = v.is_int() || v.is_double() ? v.as_double() : -1;
      // REAPPruningModifier._validate_sparsity: (0, 1); the converter takes [0, 1].
      if (reap ? !(f > 0 && f < 1) : !(f >= 0 && f <= 1)) {
        return Bad(label, name + ".sparsity must be a fraction in " +
                              (reap ? "(0, 1)" : "[0, 1]"));
      }
      c.prune_experts = f;
    } else if (reap && k == "ignore") {
      if (Given(&v) && !(v.is_array() && v.as_array().empty())) {
        return Bad(label, "REAPPruningModifier.ignore: skipping MoE layers is not built (quench "
                          "prunes every MoE layer it finds)");
      }
    } else if (reap && k == "report_path") {
      if (Given(&v)) {
        c.notes.push_back("REAPPruningModifier.report_path ignored: the kept experts are in the "
                          "report (--report)");
      }
    } else if (!reap && (k == "router_pattern" || k == "expert_pattern" ||
                         k == "num_experts_config_key" || k == "retained_experts" ||
                         k == "expert_to_router" || k == "expert_indices" || k == "is_3d")) {
      if (Given(&v)) {
        return Bad(label, "MagnitudeExpertPruner." + k + ": quench finds routers, experts and "
                          "the expert count from the checkpoint's headers and config.json");
      }
    } else if (!(reap && Scheduling(k))) {
      return Bad(label, name + " has no field '" + k + "'" +
                            (reap ? " (llm-compressor 0.14.0.1: sparsity, ignore, report_path)"
                                  : " (quench's entry: sparsity)"));
    }
  }
  if (!c.prune_experts) return Bad(label, name + " needs sparsity");
  return Status::Ok();
}

}  // namespace quench
