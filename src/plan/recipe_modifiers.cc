// The modifiers of llm-compressor recipes and their combinations (see recipe_modifiers.h).
#include "plan/recipe_modifiers.h"

#include <algorithm>
#include <iterator>
#include <map>
#include <utility>
#include <vector>

#include "plan/recipe_calib.h"
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
  std::vector<std::string> quantizing;
  if (quant != nullptr) quantizing.push_back("QuantizationModifier");
  if (m.gptq != nullptr) quantizing.push_back("GPTQModifier");
  if (awq_quant != nullptr) quantizing.push_back("AWQModifier (with a scheme of its own)");
  // The combinations are checked once the quantizing modifier's groups are read (their
  // errors come first, as when only the first modifier was read).
  if (quantizing.size() > 1) {
    m.combination =
        Bad(label, quantizing[0] + " and " + quantizing[1] + " both quantize; give one");
  } else if (m.awq != nullptr && m.smoothquant != nullptr) {
    // As --algorithm awq,smoothquant: both rescale the same channels from the same statistics.
    m.combination = Bad(label, "AWQModifier with SmoothQuantModifier: one smoothing per run "
                               "(each rescales the same channels from the same statistics); "
                               "give one");
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

Result<RecipeCalibration> ReadCalibrations(const Modifiers& m,
                                           const std::vector<std::string>& quant_ignore,
                                           const std::string& label) {
  // In pipeline order (src/calib/composite.h): smoothing, pruning, quantization.
  std::vector<RecipeCalibration> stages;
  if (m.awq != nullptr) {
    QUENCH_ASSIGN_OR_RETURN(RecipeCalibration c, ReadAwqModifier(*m.awq, label));
    stages.push_back(std::move(c));
  } else if (m.smoothquant != nullptr) {
    QUENCH_ASSIGN_OR_RETURN(RecipeCalibration c, ReadSmoothQuantModifier(*m.smoothquant, label));
    stages.push_back(std::move(c));
  }
  const RecipeCalibration* sparse = nullptr;
  const RecipeCalibration* gptq = nullptr;
  if (m.sparsegpt != nullptr) {
    QUENCH_ASSIGN_OR_RETURN(RecipeCalibration c,
                            ReadSparseGptModifier(*m.sparsegpt, quant_ignore, label));
    stages.push_back(std::move(c));
  }
  if (m.gptq != nullptr) {
    QUENCH_ASSIGN_OR_RETURN(RecipeCalibration c, ReadGptqModifier(*m.gptq, label));
    stages.push_back(std::move(c));
  }
  RecipeCalibration out;
  for (const RecipeCalibration& c : stages) {
    if (c.algorithm == "sparsegpt") sparse = &c;
    if (c.algorithm == "gptq") gptq = &c;
    out.modifier += (out.modifier.empty() ? "" : " and ") + c.modifier;
    out.algorithm += (out.algorithm.empty() ? "" : ",") + c.algorithm;
    if (!c.prune.empty()) out.prune = c.prune;
    if (c.block_size) out.block_size = c.block_size;
    if (c.dampening) out.dampening = c.dampening;
    if (c.actorder) out.actorder = c.actorder;
    if (c.smoothing_strength) out.smoothing_strength = c.smoothing_strength;
    if (c.duo_scaling) out.duo_scaling = c.duo_scaling;
    if (c.n_grid) out.n_grid = c.n_grid;
    if (!c.mappings.empty()) out.mappings = c.mappings;
    if (!c.smoothing_ignore.empty()) out.smoothing_ignore = c.smoothing_ignore;
    out.notes.insert(out.notes.end(), c.notes.begin(), c.notes.end());
  }
  if (sparse != nullptr && gptq != nullptr) {
    // One --gptq-block-size and --dampening serve both stages; each modifier's value is its
    // own or llm-compressor 0.14.0.1's default (block_size 128, dampening_frac 0.01 for both).
    const int sb = sparse->block_size.value_or(128), gb = gptq->block_size.value_or(128);
    const double sd = sparse->dampening.value_or(0.01), gd = gptq->dampening.value_or(0.01);
    if (sb != gb || sd != gd) {
      return Bad(label, "SparseGPTModifier and GPTQModifier use different " +
                            std::string(sb != gb ? "block_size" : "dampening_frac") + " (" +
                            (sb != gb ? std::to_string(sb) + " and " + std::to_string(gb)
                                      : std::to_string(sd) + " and " + std::to_string(gd)) +
                            "): quench's --gptq-block-size and --dampening serve both stages; "
                            "give the same in both");
    }
    // (Unset in both: left to the flags, as for one modifier.)
    if (sparse->block_size || gptq->block_size) out.block_size = sb;
    if (sparse->dampening || gptq->dampening) out.dampening = sd;
  }
  return out;
}

}  // namespace quench
