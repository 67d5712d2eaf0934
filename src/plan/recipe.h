// Recipes: several config groups (scheme + targets) and an ignore list in one file, so that
// different layers get different schemes in one run. Two shapes are read, so existing recipes
// work unchanged:
//   - compressed-tensors' QuantizationConfig as JSON (`config_groups`, `ignore`,
//     `kv_cache_scheme`), also inside a config.json's `quantization_config`;
//   - llm-compressor's YAML recipe with a QuantizationModifier (`scheme` as a preset name or a
//     {preset: [targets]} map, `targets`, `ignore`, `config_groups`), and the calibrated and
//     expert-pruning modifiers beside it (plan/recipe_modifiers.h).
// A group given as explicit QuantizationArgs is matched to the scheme table (which decides
// kernels and layouts); anything the table cannot produce without calibration is refused with
// the reason.
#ifndef QUENCH_PLAN_RECIPE_H_
#define QUENCH_PLAN_RECIPE_H_

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "format/json.h"
#include "quench/plan.h"
#include "quench/scheme.h"
#include "quench/status.h"

namespace quench {

struct RecipeGroup {
  std::string key;                   // config_groups key (a preset's name for presets)
  const SchemeInfo* scheme = nullptr;
  SchemeParams params;
  std::vector<std::string> targets;
  std::string observer;              // weights.observer: empty (min-max) or "imatrix_mse"
  std::string observer_kwargs;       // weights.observer_kwargs (plan/observer_kwargs.h text)
};

// What a recipe's calibrated modifiers (GPTQModifier, SparseGPTModifier: plan/recipe_calib.h;
// AWQModifier, SmoothQuantModifier: plan/recipe_smooth.h) and expert-pruning entry
// (plan/recipe_experts.h) ask for, as the options they set: empty or unset where the recipe
// says nothing.
struct RecipeCalibration {
  std::string modifier;               // "GPTQModifier", "AWQModifier", ... ("": none)
  std::string algorithm;              // "gptq", "sparsegpt", "awq", "smoothquant"
  std::string prune;                  // SparseGPT, in --prune's syntax: "2:4", "unstructured:0.5"
  std::optional<int> block_size;
  std::optional<double> dampening;
  std::optional<std::string> actorder;  // GPTQ: "static" or "none"
  // AWQModifier / SmoothQuantModifier (plan/recipe_smooth.h).
  std::optional<double> smoothing_strength;
  std::optional<std::string> duo_scaling;  // "true", "false" or "both"
  std::optional<int> n_grid;
  std::vector<PlanOptions::SmoothingMapping> mappings;  // empty: the registry's
  std::vector<std::string> smoothing_ignore;
  // REAPPruningModifier / quench's MagnitudeExpertPruner entry (plan/recipe_experts.h).
  std::string expert_modifier;         // "" : none
  std::optional<double> prune_experts;
  std::string expert_metric;           // "reap" or "magnitude"
  // What the run says about fields it reads but that mean nothing here (plan notes).
  std::vector<std::string> notes;
};

struct Recipe {
  std::vector<RecipeGroup> groups;   // in file order
  std::vector<std::string> ignore;
  std::string kv_cache;              // "fp8" for a kv_cache_scheme, else empty
  RecipeCalibration calibration;
};

// Reads a recipe file (.json, or YAML otherwise).
Result<Recipe> LoadRecipe(const std::filesystem::path& path);
// Interprets an already parsed document; `label` names it in messages.
Result<Recipe> InterpretRecipe(const JsonValue& doc, const std::string& label);
// YAML text to the JSON value tree (scalars typed as YAML 1.2 core schema would type them).
Result<JsonValue> ParseYaml(const std::string& label, const std::string& text);

}  // namespace quench

#endif  // QUENCH_PLAN_RECIPE_H_
