// Which MoE layers a checkpoint has (plan/expert_prune.h FindMoeLayers): routers, per-expert
// tensors, stacks sliced along their experts, and compressed-tensors stacks.
#include <algorithm>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "format/model_folder.h"
#include "plan/expert_names.h"
#include "plan/expert_prune.h"

namespace quench {
namespace {

// Router module names, as data: `<P>.<name>.weight` with experts under `<P>.experts.`
// (Qwen2/3-MoE, DeepSeek, Mixtral: gate; gpt-oss, Llama 4: router).
constexpr std::string_view kRouterModules[] = {"gate", "router"};

// Routers stored quantized are refused rather than decoded for scoring: the reference's
// MagnitudeExpertPruner scores whatever the router tensor holds (packed int32 words, FP8 or
// int8 codes without their scales), so its choice is not defined for them, and a decoded
// score would pick experts no reference run picks. Every MoE release quench knows keeps its
// routers unquantized (vLLM loads them so; quench's default ignore list keeps them so).
std::string QuantizedRouter(const std::string& name, const std::string& how) {
  return "router '" + name + "' is stored quantized (" + how +
         "); expert pruning scores unquantized "
         "routers only (the reference's MagnitudeExpertPruner would score the stored codes, "
         "not the router); decode the checkpoint first (quench convert SRC TMP --scheme BF16)";
}

struct Located {
  size_t shard;
  const TensorInfo* info;
};

std::string FirstNames(const std::vector<std::string>& names) {
  std::string s;
  for (size_t i = 0; i < names.size() && i < 3; ++i) s += (i ? "', '" : "'") + names[i];
  s += "'";
  if (names.size() > 3) s += " (" + std::to_string(names.size()) + " in all)";
  return s;
}

// One pass over a checkpoint's tensors by name, finding its MoE layers; what it cannot
// accept is collected in `problems`, so that the first is reported with a count of the rest.
class LayerFinder {
 public:
  explicit LayerFinder(const ModelFolder& folder) : ct_(IsCompressedTensors(folder)) {
    for (size_t s = 0; s < folder.shards.size(); ++s) {
      for (const TensorInfo& t : folder.shards[s].header.tensors) {
        all_.emplace(t.name, Located{s, &t});
      }
    }
  }

  // Prefixes P with tensors under P.experts., and those tensors.
  std::map<std::string, std::vector<std::string>> ExpertPrefixes() const {
    std::map<std::string, std::vector<std::string>> under;
    for (const auto& [name, loc] : all_) {
      if (const size_t at = name.find(kExperts); at != std::string::npos) {
        under[name.substr(0, at)].push_back(name);
      }
    }
    return under;
  }

  // The layer under `prefix` whose expert tensors are `names`; nullopt (problems recorded)
  // where its router is missing, quantized or not a 2-D float matrix.
  std::optional<MoeLayer> Layer(const std::string& prefix, const std::vector<std::string>& names) {
    MoeLayer layer;
    layer.prefix = prefix;
    std::string module;  // "<P>.<router>.": the router's module, every tensor of which is sliced
    if (!FindRouter(prefix, names, layer, &module)) return std::nullopt;
    layer.sliced.push_back(layer.router);
    for (auto it = all_.lower_bound(module); it != all_.end() && it->first.starts_with(module);
         ++it) {
      if (it->first != layer.router) Stack(layer, it->first);
    }
    // MiniMax keeps its bias beside the router module rather than in it.
    if (const std::string bias = prefix + ".e_score_correction_bias"; all_.contains(bias)) {
      Stack(layer, bias);
    }
    for (const std::string& name : names) ExpertTensor(layer, name);
    return layer;
  }

  std::vector<Status>& problems() { return problems_; }

 private:
  // Sets the layer's router (name, shard, header entry, expert count) and `module`; false,
  // with the problem recorded, where there is no usable one.
  bool FindRouter(const std::string& prefix, const std::vector<std::string>& names,
                  MoeLayer& layer, std::string* module) {
    for (std::string_view r : kRouterModules) {
      const std::string cand = prefix + "." + std::string(r) + ".weight";
      if (!all_.contains(cand)) continue;
      if (!layer.router.empty()) {
        problems_.push_back(Error(ErrorCode::kInvalidInput,
                                  "MoE layer '" + prefix + "' has two routers, '" + layer.router +
                                      "' and '" + cand + "'; expert pruning cannot tell which"));
      }
      layer.router = cand;
      *module = prefix + "." + std::string(r) + ".";
    }
    if (layer.router.empty()) {
      std::string quantized;  // a router stored packed (compressed-tensors, AutoAWQ)
      for (std::string_view r : kRouterModules) {
        for (const char* param : {".weight_packed", ".qweight"}) {
          const std::string cand = prefix + "." + std::string(r) + param;
          if (all_.contains(cand)) quantized = cand;
        }
      }
      if (!quantized.empty()) {
        problems_.push_back(Error(ErrorCode::kUnsupported, QuantizedRouter(quantized, "packed")));
        return false;
      }
      problems_.push_back(Error(
          ErrorCode::kInvalidInput,
          "expert tensors " + FirstNames(names) + " have no router beside them (looked for '" +
              prefix + ".gate.weight' and '" + prefix + ".router.weight'); expert pruning "
              "cannot score their experts"));
      return false;
    }
    const Located r = all_.at(layer.router);
    layer.shard = r.shard;
    layer.router_info = *r.info;
    if (r.info->shape.size() == 2 && (r.info->dtype == DType::kF8E4M3 ||
                                      r.info->dtype == DType::kI8 || r.info->dtype == DType::kU8)) {
      problems_.push_back(
          Error(ErrorCode::kUnsupported,
                QuantizedRouter(layer.router, std::string(DTypeName(r.info->dtype)))));
      return false;
    }
    if (r.info->shape.size() != 2 || r.info->shape[0] == 0 ||
        !IsQuantizableFloat(r.info->dtype)) {
      problems_.push_back(Error(ErrorCode::kInvalidInput,
                                "router '" + layer.router + "' has shape " +
                                    ShapeString(r.info->shape) + " and dtype " +
                                    std::string(DTypeName(r.info->dtype)) +
                                    "; expert pruning scores 2-D [experts, hidden] BF16, F16 or "
                                    "F32 routers"));
      return false;
    }
    layer.experts = r.info->shape[0];
    return true;
  }

  // A tensor sliced along its first dimension, which must be the layer's expert count.
  void Stack(MoeLayer& layer, const std::string& name) {
    const TensorInfo& t = *all_.at(name).info;
    if (t.shape.empty() || t.shape[0] != layer.experts) {
      problems_.push_back(Error(ErrorCode::kInvalidInput,
                                "tensor '" + name + "' of MoE layer '" + layer.prefix +
                                    "' has shape " + ShapeString(t.shape) + ", not " +
                                    std::to_string(layer.experts) +
                                    " experts in its first dimension (the router's rows); "
                                    "expert pruning cannot tell how to slice it"));
      return;
    }
    layer.sliced.push_back(name);
  }

  // One tensor under "<P>.experts.": one expert's (`<i>.` next), or a stack of all of them
  // (sliced; a compressed-tensors stack's codes and the tensors decoding reads whole).
  void ExpertTensor(MoeLayer& layer, const std::string& name) {
    const std::string rest = name.substr(layer.prefix.size() + kExperts.size());
    const std::string first = rest.substr(0, rest.find('.'));
    if (!AllDigits(first) || first.size() == rest.size()) {
      if (ct_) {
        // A compressed-tensors stack: its codes, or a tensor decoding reads with them.
        const size_t dot = name.rfind('.');
        const std::string module = name.substr(0, dot), param = name.substr(dot + 1);
        if (all_.contains(module + ".weight_scale")) {
          const TensorInfo& t = *all_.at(name).info;
          const bool codes =
              param == "weight_packed" || (param == "weight" && !IsQuantizableFloat(t.dtype));
          if (codes) {
            layer.ct_codes.push_back(name);
            Stack(layer, name);
          } else if (param == "weight_shape") {  // [experts, rows, cols]: read, not sliced
            layer.ct_whole.push_back(name);
          } else {
            const size_t before = layer.sliced.size();
            Stack(layer, name);  // checks the leading experts dimension
            if (layer.sliced.size() > before) {
              layer.sliced.pop_back();
              layer.ct_whole.push_back(name);
            }
          }
          return;
        }
      }
      Stack(layer, name);
      return;
    }
    const uint64_t index = std::stoull(first);
    if (index >= layer.experts) {
      problems_.push_back(Error(ErrorCode::kInvalidInput,
                                "tensor '" + name + "' is expert " + first + " but its router '" +
                                    layer.router + "' has " + std::to_string(layer.experts) +
                                    " rows"));
      return;
    }
    layer.per_expert.emplace_back(name, static_cast<uint32_t>(index));
  }

  const bool ct_;
  std::map<std::string, Located> all_;
  std::vector<Status> problems_;
};

}  // namespace

Result<std::vector<MoeLayer>> FindMoeLayers(const ModelFolder& folder) {
  LayerFinder finder(folder);
  std::vector<MoeLayer> layers;
  for (const auto& [prefix, names] : finder.ExpertPrefixes()) {
    if (std::optional<MoeLayer> layer = finder.Layer(prefix, names)) {
      layers.push_back(std::move(*layer));
    }
  }
  const std::vector<Status>& problems = finder.problems();
  if (!problems.empty()) {
    Status first = problems.front();
    std::string msg = first.message();
    if (problems.size() > 1) msg += " (and " + std::to_string(problems.size() - 1) + " more)";
    return Error(first.code(), msg);
  }
  if (layers.empty()) {
    return Error(ErrorCode::kInvalidInput,
                 folder.root.string() + ": --prune-experts found no MoE layer (a router "
                 "'<P>.gate.weight' or '<P>.router.weight' with experts under '<P>.experts.')");
  }
  // In file order: the order a reader of the dry run expects (layer 2 before layer 10).
  std::sort(layers.begin(), layers.end(), [](const MoeLayer& a, const MoeLayer& b) {
    return std::tie(a.shard, a.router_info.begin) < std::tie(b.shard, b.router_info.begin);
  });
  return layers;
}

}  // namespace quench
