// Recipes: several config groups (scheme + targets) and an ignore list in one file, so that
// different layers get different schemes in one run. Two shapes are read, so existing recipes
// work unchanged:
//   - compressed-tensors' QuantizationConfig as JSON (`config_groups`, `ignore`,
//     `kv_cache_scheme`), also inside a config.json's `quantization_config`;
//   - llm-compressor's YAML recipe with a QuantizationModifier (`scheme` as a preset name or a
//     {preset: [targets]} map, `targets`, `ignore`, `config_groups`).
// A group given as explicit QuantizationArgs is matched to the scheme table (which decides
// kernels and layouts); anything the table cannot produce without calibration is refused with
// the reason.
#ifndef QUENCH_PLAN_RECIPE_H_
#define QUENCH_PLAN_RECIPE_H_

#include <filesystem>
#include <string>
#include <vector>

#include "format/json.h"
#include "quench/scheme.h"
#include "quench/status.h"

namespace quench {

struct RecipeGroup {
  std::string key;                   // config_groups key (a preset's name for presets)
  const SchemeInfo* scheme = nullptr;
  SchemeParams params;
  std::vector<std::string> targets;
};

struct Recipe {
  std::vector<RecipeGroup> groups;   // in file order
  std::vector<std::string> ignore;
  std::string kv_cache;              // "fp8" for a kv_cache_scheme, else empty
};

// Reads a recipe file (.json, or YAML otherwise).
Result<Recipe> LoadRecipe(const std::filesystem::path& path);
// Interprets an already parsed document; `label` names it in messages.
Result<Recipe> InterpretRecipe(const JsonValue& doc, const std::string& label);
// YAML text to the JSON value tree (scalars typed as YAML 1.2 core schema would type them).
Result<JsonValue> ParseYaml(const std::string& label, const std::string& text);

}  // namespace quench

#endif  // QUENCH_PLAN_RECIPE_H_
