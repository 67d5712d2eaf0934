#include "plan/expert_prune.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <unordered_map>

#include "plan/expert_names.h"
#include "schemes/float_formats.h"

namespace quench {
namespace {

// config.json's expert count, in the order compressed-tensors looks for it
// (utils/moe.py NUM_EXPERTS_CONFIG_KEYS); each at the top level, then in text_config.
constexpr std::string_view kCountKeys[] = {"num_experts", "num_local_experts", "moe_num_experts",
                                           "n_routed_experts"};
// The routing floor (utils/moe.py get_num_experts_per_tok).
constexpr std::string_view kTopKKeys[] = {"top_k_experts", "num_experts_per_tok"};

// PruneExpertsKept's role of a tensor read whole with a compressed stack (MoeLayer::ct_whole).
constexpr int64_t kWhole = -2;

std::string Fraction(double f) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", f);
  return buf;
}

// Python truthiness of a config value that should be an int (`a.get(k) or b.get(k)`).
std::optional<int64_t> TruthyInt(const JsonValue* v) {
  if (v == nullptr || !v->is_int() || v->as_int() == 0) return std::nullopt;
  return v->as_int();
}

// A double to float rounded to odd (truncated, last bit set when inexact): a float so rounded
// and then rounded to nearest at two or more bits fewer (BF16: 8, F16: 11) gives the double
// rounded once (Boldo and
// Melquiond, "When double rounding is odd", 2005).
float RoundToOdd(double d) {
  float f = static_cast<float>(d);
  if (static_cast<double>(f) == d || !std::isfinite(f)) return f;
  if (std::fabs(static_cast<double>(f)) > std::fabs(d)) f = std::nextafter(f, 0.0f);
  return BitsToF32(F32ToBits(f) | 1u);
}

// The L1 norm of a row of `cols` BF16 values in eight double accumulators, or nullopt where
// that might differ from the sequential double sum RouterScores defines (or a value is not
// finite, which the sequential loop reports). Every |w| is a multiple of 2^L, L the
// exponent of the last significand bit of the row's nonzero value with the smallest exponent
// field (BF16: max(e, 1) - 134). Any sum of some of them, in any order, is then a multiple of
// 2^L no larger than the row's sum S; when S < 2^(L + 53) each is an integer below 2^53
// times 2^L, exact in a double, so every addition is exact and the order cannot matter.
// Otherwise the row goes the sequential way. Eight independent chains instead of one chain
// of dependent additions, because every router is read before the first chunk is converted
// (bench/README.md "Router scores in eight exact chains").
std::optional<double> Bf16RowL1(const uint8_t* row, uint64_t cols) {
  constexpr int kLanes = 8;
  double acc[kLanes] = {};
  uint32_t min_exp = 0xFF, max_abs = 0;
  uint64_t c = 0;
  for (; c + kLanes <= cols; c += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      uint16_t h;
      std::memcpy(&h, row + 2 * (c + static_cast<uint64_t>(k)), 2);
      const uint32_t a = h & 0x7FFFu;
      max_abs = std::max(max_abs, a);
      min_exp = std::min(min_exp, a == 0 ? 0xFFu : a >> 7);
      acc[k] += static_cast<double>(BitsToF32(a << 16));
    }
  }
  for (; c < cols; ++c) {
    uint16_t h;
    std::memcpy(&h, row + 2 * c, 2);
    const uint32_t a = h & 0x7FFFu;
    max_abs = std::max(max_abs, a);
    min_exp = std::min(min_exp, a == 0 ? 0xFFu : a >> 7);
    acc[0] += static_cast<double>(BitsToF32(a << 16));
  }
  if (max_abs >= 0x7F80u) return std::nullopt;  // Inf or NaN: the sequential loop names it
  if (max_abs == 0) return 0.0;
  const double sum =
      ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  const int lsb = static_cast<int>(std::max(min_exp, 1u)) - 134;
  if (sum >= std::ldexp(1.0, lsb + 53)) return std::nullopt;
  return sum;
}

}  // namespace

Result<std::vector<float>> RouterScores(const uint8_t* data, DType dtype, uint64_t rows,
                                        uint64_t cols, const std::string& name) {
  std::vector<float> scores(rows);
  for (uint64_t r = 0; r < rows; ++r) {
    if (dtype == DType::kBF16) {
      if (const std::optional<double> sum = Bf16RowL1(data + 2 * r * cols, cols)) {
        scores[r] = BF16ToF32(F32ToBF16(RoundToOdd(*sum)));
        continue;
      }
    }
    // The exact L1 norm (in double: exact unless a row's magnitudes span over ~2^22), rounded
    // once below. torch sums in F32 in a SIMD-width-dependent order and rounds that; the two
    // agreed on all 10,240 random BF16 rows tried (F16: all but one) and can differ only
    // where the F32 error carries the sum across a rounding boundary (reference-notes 17).
    double sum = 0;
    for (uint64_t c = 0; c < cols; ++c) {
      const float w = ElementToF32(data, dtype, r * cols + c);
      if (!std::isfinite(w)) {
        return Error(ErrorCode::kInvalidInput,
                     "router '" + name + "' has a non-finite weight at row " + std::to_string(r) +
                         "; expert pruning cannot score it");
      }
      sum += std::fabs(static_cast<double>(w));
    }
    // torch rounds the result to the router's dtype once (nearest even); RoundToOdd keeps
    // the double's rounding information in the float's last bit, so that rounding the float
    // to BF16/F16 rounds the exact sum once.
    const float f = RoundToOdd(sum);
    switch (dtype) {
      case DType::kBF16: scores[r] = BF16ToF32(F32ToBF16(f)); break;
      case DType::kF16: scores[r] = F16ToF32(F32ToF16(f)); break;
      default: scores[r] = static_cast<float>(sum); break;
    }
  }
  return scores;
}

uint64_t ExpertsKept(uint64_t experts, double fraction) {
  // Python's round(): half to even, which nearbyint does in the default rounding mode.
  const double pruned = std::nearbyint(fraction * static_cast<double>(experts));
  const double kept = static_cast<double>(experts) - pruned;
  return kept < 1 ? 1 : static_cast<uint64_t>(kept);
}

std::vector<uint32_t> TopExperts(std::span<const float> scores, uint64_t k) {
  using Elem = std::pair<float, int64_t>;
  std::vector<Elem> queue(scores.size());
  for (size_t j = 0; j < scores.size(); ++j) queue[j] = {scores[j], static_cast<int64_t>(j)};
  k = std::min<uint64_t>(k, queue.size());
  if (k == 0) return {};
  // aten/src/ATen/native/TopKImpl.h topk_impl_loop, largest=true.
  const auto greater = [](const Elem& x, const Elem& y) {
    return (std::isnan(x.first) && !std::isnan(y.first)) || x.first > y.first;
  };
  const auto kth = queue.begin() + static_cast<std::ptrdiff_t>(k);
  if (k * 64 <= queue.size()) {
    std::partial_sort(queue.begin(), kth, queue.end(), greater);
  } else {
    std::nth_element(queue.begin(), kth - 1, queue.end(), greater);
  }
  std::vector<uint32_t> kept;
  for (auto it = queue.begin(); it != kth; ++it) kept.push_back(static_cast<uint32_t>(it->second));
  std::sort(kept.begin(), kept.end());
  return kept;
}

namespace {

// Sets config.json's expert count where compressed-tensors' _set_nested_key sets it; returns
// the key used.
Result<std::string> SetExpertCount(ModelFolder& folder, uint64_t kept) {
  if (!folder.config || !folder.config->is_object()) {
    return Error(ErrorCode::kInvalidInput,
                 folder.root.string() + ": expert pruning needs config.json to record the "
                 "experts kept, and the folder has none");
  }
  JsonValue& cfg = *folder.config;
  const JsonValue* text = cfg.Find("text_config");
  for (std::string_view key : kCountKeys) {
    if (cfg.Find(key) != nullptr) {
      cfg.Set(std::string(key), JsonValue(kept));
      return std::string(key);
    }
    if (text != nullptr && text->Find(key) != nullptr) {
      JsonValue t = *text;
      t.Set(std::string(key), JsonValue(kept));
      cfg.Set("text_config", std::move(t));
      return std::string(key);
    }
  }
  return Error(ErrorCode::kInvalidInput,
               *folder.config_rel + " has none of num_experts, num_local_experts, "
               "moe_num_experts, n_routed_experts (top level or text_config); expert pruning "
               "cannot record the experts kept");
}

// num_experts_per_tok (or top_k_experts), as get_num_experts_per_tok reads it.
std::optional<int64_t> ExpertsPerToken(const JsonValue& cfg) {
  const JsonValue* text = cfg.Find("text_config");
  for (std::string_view key : kTopKKeys) {
    if (auto v = TruthyInt(cfg.Find(key))) return v;
    if (text != nullptr) {
      if (auto v = TruthyInt(text->Find(key))) return v;
    }
  }
  return std::nullopt;
}

}  // namespace

Result<PlannedExpertPrune> PruneExperts(ModelFolder& folder, const std::vector<MoeLayer>& layers,
                                        std::vector<std::vector<float>> scores, double fraction) {
  if (!(fraction >= 0 && fraction <= 1)) {
    return Error(ErrorCode::kUsage,
                 "--prune-experts must be a fraction in [0, 1], got " + Fraction(fraction));
  }
  std::vector<std::vector<uint32_t>> kept;
  std::vector<std::vector<double>> wide;
  for (size_t l = 0; l < layers.size(); ++l) {
    kept.push_back(TopExperts(scores[l], ExpertsKept(layers[l].experts, fraction)));
    wide.emplace_back(scores[l].begin(), scores[l].end());
  }
  return PruneExpertsKept(folder, layers, std::move(kept), std::move(wide), {}, fraction,
                          "magnitude");
}

namespace {

// Each expert tensor's layer and role: its expert's index, -1 for a stack sliced along
// dimension 0, kWhole for a compressed stack read at the kept experts' slices.
using ExpertRoles = std::unordered_map<std::string_view, std::pair<size_t, int64_t>>;

// The planned layers (kept experts, scores, tokens), refused where they keep different
// numbers of experts; `*roles` and `*new_index` (each layer's old expert index -> new, -1
// where pruned) for the rewrite.
Status PlanLayers(const std::vector<MoeLayer>& layers,
                  std::vector<std::vector<uint32_t>>& kept_lists,
                  std::vector<std::vector<double>>& scores,
                  std::vector<std::vector<int64_t>>& tokens, PlannedExpertPrune* out,
                  ExpertRoles* roles, std::vector<std::vector<int64_t>>* new_index) {
  new_index->resize(layers.size());
  for (size_t l = 0; l < layers.size(); ++l) {
    const MoeLayer& layer = layers[l];
    PlannedExpertLayer pl;
    pl.prefix = layer.prefix;
    pl.router = layer.router;
    pl.experts = layer.experts;
    pl.kept = std::move(kept_lists[l]);
    pl.scores = std::move(scores[l]);
    if (l < tokens.size()) pl.tokens = std::move(tokens[l]);
    if (!out->layers.empty() && pl.kept.size() != out->layers.front().kept.size()) {
      const PlannedExpertLayer& f = out->layers.front();
      return Error(ErrorCode::kInvalidInput,
                   "MoE layers would keep different numbers of experts ('" + f.router + "' " +
                       std::to_string(f.kept.size()) + " of " + std::to_string(f.experts) + ", '" +
                       pl.router + "' " + std::to_string(pl.kept.size()) + " of " +
                       std::to_string(pl.experts) + "); config.json holds one expert count");
    }
    std::vector<int64_t>& to = (*new_index)[l];
    to.assign(layer.experts, -1);
    for (size_t i = 0; i < pl.kept.size(); ++i) to[pl.kept[i]] = static_cast<int64_t>(i);
    for (const std::string& n : layer.sliced) (*roles)[n] = {l, -1};
    for (const std::string& n : layer.ct_whole) (*roles)[n] = {l, kWhole};
    for (const auto& [n, i] : layer.per_expert) (*roles)[n] = {l, i};
    out->layers.push_back(std::move(pl));
  }
  return Status::Ok();
}

// The rewrite of a folder's tensors for the kept experts, collecting the split and
// linearized pieces under their new names.
struct ExpertRewrite {
  ModelFolder& folder;
  PlannedExpertPrune& out;
  uint64_t kept;                                           // experts per layer
  std::map<std::string, ModelFolder::CtPiece> pieces;      // ct_pieces under the kept names
  std::map<std::string, ModelFolder::LinearPiece> linear;  // linear_pieces likewise

  // One expert's tensor (`to`: its layer's new indices): false where its expert is pruned
  // (the tensor is gone), else renamed with the expert's new index.
  bool Renumber(const MoeLayer& layer, const std::vector<int64_t>& to, int64_t index,
                TensorInfo& t) {
    if (to[static_cast<size_t>(index)] < 0) {
      ++out.tensors_removed;
      out.bytes_removed += t.nbytes();
      return false;
    }
    const size_t at = layer.prefix.size() + kExperts.size();
    const size_t end = t.name.find('.', at);
    const std::string name =
        t.name.substr(0, at) + std::to_string(to[static_cast<size_t>(index)]) + t.name.substr(end);
    // A piece of a split compressed stack still decodes from its source expert's slice.
    if (auto piece = folder.ct_pieces.find(t.name); piece != folder.ct_pieces.end()) {
      pieces.emplace(name, piece->second);
    }
    // A linearized stack's piece is still read from its source expert's block.
    if (auto lp = folder.linear_pieces.find(t.name); lp != folder.linear_pieces.end()) {
      linear.emplace(name, lp->second);
    }
    if (name != t.name) folder.experts_renumbered = true;
    t.name = name;
    return true;
  }

  // A stack sliced along dimension 0: the kept experts' rows, as (begin, length) runs.
  void Slice(const MoeLayer& layer, const std::vector<uint32_t>& kept_experts, bool ct_codes,
             TensorInfo& t) {
    if (ct_codes) folder.ct_kept[t.name] = {t, kept_experts};
    const uint64_t row = t.nbytes() / layer.experts;
    std::vector<std::pair<uint64_t, uint64_t>> runs;
    for (uint32_t e : kept_experts) {
      const uint64_t b = t.begin + e * row;
      if (!runs.empty() && runs.back().first + runs.back().second == b) {
        runs.back().second += row;
      } else {
        runs.emplace_back(b, row);
      }
    }
    out.bytes_removed += (layer.experts - kept) * row;
    t.shape[0] = kept;
    t.begin = runs.front().first;
    t.end = t.begin + kept * row;
    folder.sliced.insert(t.name);
    folder.kept_experts[t.name] = kept_experts;
    if (runs.size() > 1) folder.gathered[t.name] = std::move(runs);
  }
};

}  // namespace

Result<PlannedExpertPrune> PruneExpertsKept(ModelFolder& folder,
                                            const std::vector<MoeLayer>& layers,
                                            std::vector<std::vector<uint32_t>> kept_lists,
                                            std::vector<std::vector<double>> scores,
                                            std::vector<std::vector<int64_t>> tokens,
                                            double fraction, const std::string& metric) {
  PlannedExpertPrune out;
  out.fraction = fraction;
  out.metric = metric;
  ExpertRoles role;
  std::vector<std::vector<int64_t>> new_index;
  QUENCH_RETURN_IF_ERROR(
      PlanLayers(layers, kept_lists, scores, tokens, &out, &role, &new_index));
  const uint64_t kept = out.layers.front().kept.size();
  QUENCH_ASSIGN_OR_RETURN(out.config_key, SetExpertCount(folder, kept));
  if (auto per_token = ExpertsPerToken(*folder.config); per_token && *per_token > 0 &&
                                                         static_cast<uint64_t>(*per_token) > kept) {
    return Error(ErrorCode::kUsage,
                 "--prune-experts " + Fraction(fraction) + " keeps " + std::to_string(kept) +
                     " expert(s) per layer but num_experts_per_tok is " +
                     std::to_string(*per_token) + "; each token needs that many experts");
  }
  folder.config_changed = true;
  ExpertRewrite rewrite{folder, out, kept, {}, {}};
  std::set<std::string_view> ct_codes;
  for (const MoeLayer& layer : layers) {
    ct_codes.insert(layer.ct_codes.begin(), layer.ct_codes.end());
  }
  for (Shard& shard : folder.shards) {
    std::vector<TensorInfo> tensors;
    tensors.reserve(shard.header.tensors.size());
    for (TensorInfo& t : shard.header.tensors) {
      auto it = role.find(t.name);
      if (it == role.end()) {
        tensors.push_back(std::move(t));
        continue;
      }
      const auto [l, index] = it->second;
      const MoeLayer& layer = layers[l];
      if (index == kWhole) {  // read with a compressed stack at the kept experts' slices
        if (t.shape.size() > 1) {
          out.bytes_removed += (layer.experts - kept) * (t.nbytes() / layer.experts);
        }
      } else if (index >= 0) {  // one expert's tensor: gone, or renumbered densely
        if (!rewrite.Renumber(layer, new_index[l], index, t)) continue;
      } else {
        rewrite.Slice(layer, out.layers[l].kept, ct_codes.contains(t.name), t);
      }
      tensors.push_back(std::move(t));
    }
    shard.header.tensors = std::move(tensors);
  }
  // Pieces of other (unpruned) stacks keep their names; pruned experts' pieces are gone.
  for (auto& [name, cp] : folder.ct_pieces) {
    if (!role.contains(name)) rewrite.pieces.emplace(name, std::move(cp));
  }
  folder.ct_pieces = std::move(rewrite.pieces);
  for (auto& [name, lp] : folder.linear_pieces) {
    if (!role.contains(name)) rewrite.linear.emplace(name, std::move(lp));
  }
  folder.linear_pieces = std::move(rewrite.linear);
  return out;
}

std::string SourceExpertName(const PlannedExpertPrune& prune, const std::string& name) {
  for (const PlannedExpertLayer& l : prune.layers) {
    const std::string head = l.prefix + std::string(kExperts);
    if (!name.starts_with(head)) continue;
    const size_t end = name.find('.', head.size());
    const std::string index =
        name.substr(head.size(), end == std::string::npos ? std::string::npos : end - head.size());
    if (end == std::string::npos || !AllDigits(index)) return name;
    const uint64_t i = std::stoull(index);
    if (i >= l.kept.size()) return name;
    return head + std::to_string(l.kept[i]) + name.substr(end);
  }
  return name;
}

}  // namespace quench
