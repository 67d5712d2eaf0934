// The modifiers of llm-compressor recipes and their combinations (see recipe_modifiers.h).
#include "plan/recipe_modifiers.h"

#include <algorithm>
#include <iterator>
#include <map>
#include <utility>
#include <vector>

#include "plan/recipe_smooth.h"

namespace quench {
namespace {

Status Bad(const std::string& label, const std::string& what) {
  return Error(ErrorCode::kInvalidInput, label + ": " + what);
}

// The recipe entries quench reads: the quantizing modifier, the calibrated ones
// (recipe_calib.h, recipe_smooth.h) and the expert-pruning ones (recipe_experts.h).
constexpr const char* kKnownEntries[] = {
    "QuantizationModifier", "GPTQModifier", "SparseGPTModifier", "AWQModifier",
    "SmoothQuantModifier", "REAPPruningModifier", "MagnitudeExpertPruner"};

// Collects the modifiers of an llm-compressor recipe, anywhere in it (stage -> modifiers
// group -> Modifier); other modifiers are refused by name.
Status CollectModifiers(const JsonValue& v, const std::string& label,
                        std::map<std::string, const JsonValue*>* mods) {
  if (!v.is_object()) return Status::Ok();
  for (const auto& [k, child] : v.as_object()) {
    if (std::find(std::begin(kKnownEntries), std::end(kKnownEntries), k) !=
        std::end(kKnownEntries)) {
      if (!mods->emplace(k, &child).second) return Bad(label, k + " appears twice");
      continue;
    }
    if (k.ends_with("Modifier")) {
      return Bad(label, k + " needs calibration data or is not a quantization step; quench "
                            "runs QuantizationModifier recipes (data-free schemes), GPTQModifier, "
                            "SparseGPTModifier, AWQModifier and SmoothQuantModifier with --stats, "
                            "and REAPPruningModifier / MagnitudeExpertPruner expert pruning");
    }
    QUENCH_RETURN_IF_ERROR(CollectModifiers(child, label, mods));
  }
  return Status::Ok();
}

}  // namespace

Result<Modifiers> PickModifiers(const JsonValue& doc, const std::string& label) {
  std::map<std::string, const JsonValue*> mods;
  QUENCH_RETURN_IF_ERROR(CollectModifiers(doc, label, &mods));
  auto get = [&](const char* k) { return mods.count(k) ? mods.at(k) : nullptr; };
  Modifiers m;
  const JsonValue* quant = get("QuantizationModifier");
  m.gptq = get("GPTQModifier");
  m.sparsegpt = get("SparseGPTModifier");
  m.awq = get("AWQModifier");
  m.smoothquant = get("SmoothQuantModifier");
  for (const char* e : {"REAPPruningModifier", "MagnitudeExpertPruner"}) {
    if (get(e) == nullptr) continue;
    if (m.experts_mod != nullptr) {
      return Bad(label, "REAPPruningModifier and MagnitudeExpertPruner both prune experts; "
                        "give one");
    }
    m.experts = e;
    m.experts_mod = get(e);
  }
  const JsonValue* awq_quant = m.awq != nullptr && HasQuantizationKeys(*m.awq) ? m.awq : nullptr;
  std::vector<std::string> quantizing, calibrations;
  if (quant != nullptr) quantizing.push_back("QuantizationModifier");
  if (m.gptq != nullptr) quantizing.push_back("GPTQModifier");
  if (awq_quant != nullptr) quantizing.push_back("AWQModifier (with a scheme of its own)");
  const std::pair<const JsonValue*, const char*> calibrated[] = {
      {m.sparsegpt, "SparseGPTModifier"}, {m.awq, "AWQModifier"},
      {m.smoothquant, "SmoothQuantModifier"}, {m.gptq, "GPTQModifier"}};
  for (const auto& [p, name] : calibrated) {
    if (p != nullptr) calibrations.push_back(name);
  }
  // The combinations are checked once the quantizing modifier's groups are read (their
  // errors come first, as when only the first modifier was read).
  if (quantizing.size() > 1) {
    m.combination = Bad(label, quantizing[0] + " and " + quantizing[1] + " both quantize; give one");
  } else if (m.gptq != nullptr && m.sparsegpt != nullptr) {
    m.combination = Bad(label, "SparseGPTModifier then GPTQModifier in one run is not built: "
                               "quench runs one calibration algorithm per conversion (with a "
                               "QuantizationModifier, SparseGPT's sparse weights are rounded "
                               "to nearest, as llm-compressor does)");
  } else if (calibrations.size() > 1) {
    m.combination = Bad(label, calibrations[0] + " with " + calibrations[1] + " in one run is "
                               "not built: quench runs one calibration algorithm per conversion "
                               "today (run them as separate recipes, or drop one)");
  }
  m.quantizing = quant != nullptr ? quant : m.gptq != nullptr ? m.gptq : awq_quant;
  if (m.quantizing == nullptr) {
    std::string why = "neither a QuantizationConfig (config_groups) nor an llm-compressor recipe "
                      "with a QuantizationModifier";
    if (m.sparsegpt != nullptr) {
      why = "a SparseGPTModifier without a QuantizationModifier: for pruning alone give "
            "--scheme none --prune N:M --algorithm sparsegpt --stats STATS instead of a recipe";
    } else if (m.awq != nullptr || m.smoothquant != nullptr) {
      why = std::string(m.awq != nullptr ? "an AWQModifier" : "a SmoothQuantModifier") +
            " without a QuantizationModifier (or a scheme of its own): quench smooths the "
            "layers it quantizes; add the QuantizationModifier that follows it";
    } else if (m.experts_mod != nullptr) {
      why = "a " + m.experts + " without a QuantizationModifier: for pruning experts alone give "
            "--scheme none --prune-experts F --expert-metric " +
            (m.experts == "REAPPruningModifier" ? "reap --stats STATS" : "magnitude") +
            " instead of a recipe";
    }
    return Bad(label, why);
  }
  return m;
}

}  // namespace quench
