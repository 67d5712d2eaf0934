// The recipe parser: a compressed-tensors QuantizationConfig in JSON (input starting with
// '{') or an llm-compressor recipe in YAML (anything else), interpreted into config groups.
// Property: never crashes; a refusal always says why.
#include <cstddef>
#include <cstdint>
#include <string>

#include "format/json.h"
#include "fuzz_util.h"
#include "plan/recipe.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using quench::fuzz::Require;
  const std::string text(reinterpret_cast<const char*>(data), size);
  const bool json = !text.empty() && text.front() == '{';
  auto doc = json ? quench::ParseJson("recipe.json", text) : quench::ParseYaml("recipe.yaml", text);
  if (!doc.ok()) {
    Require(!doc.status().message().empty(), "an error without a message");
    return 0;
  }
  auto recipe = quench::InterpretRecipe(*doc, json ? "recipe.json" : "recipe.yaml");
  if (!recipe.ok()) {
    Require(!recipe.status().message().empty(), "an error without a message");
    return 0;
  }
  for (const quench::RecipeGroup& g : recipe->groups) {
    Require(g.scheme != nullptr, "a group without a scheme was accepted");
  }
  return 0;
}
