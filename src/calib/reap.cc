#include "calib/reap.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>

#include "calib/stats.h"
#include "format/file_io.h"

namespace quench::calib {
namespace {

// get_moe_attrs's config keys (modifiers/pruning/reap/utils.py), in its order.
constexpr std::string_view kTopKKeys[] = {"num_experts_per_tok", "top_k", "moe_top_k"};
constexpr std::string_view kNGroupKeys[] = {"n_group"};
constexpr std::string_view kTopKGroupKeys[] = {"topk_group", "top_k_group"};

std::string Fraction(double f) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", f);
  return buf;
}

// The first key present and not null; kInvalidInput when it is not a positive integer.
Result<std::optional<uint64_t>> First(const JsonValue& cfg, std::span<const std::string_view> keys,
                                      const std::string& where) {
  for (std::string_view k : keys) {
    const JsonValue* v = cfg.Find(k);
    if (v == nullptr || v->is_null()) continue;
    if (!v->is_int() || v->as_int() <= 0) {
      return Error(ErrorCode::kInvalidInput,
                   where + ": " + std::string(k) + " must be a positive integer");
    }
    return std::optional<uint64_t>(v->as_uint());
  }
  return std::optional<uint64_t>();
}

}  // namespace

Result<ReapRouting> ReapRoutingFromConfig(const JsonValue* config, const std::string& where) {
  if (config == nullptr || !config->is_object()) {
    return Error(ErrorCode::kInvalidInput,
                 where + ": --expert-metric reap needs config.json (experts per token)");
  }
  // The reference reads text_config alone where the config has one.
  const JsonValue* text = config->Find("text_config");
  const JsonValue& cfg = text != nullptr && text->is_object() ? *text : *config;
  ReapRouting r;
  QUENCH_ASSIGN_OR_RETURN(auto top_k, First(cfg, kTopKKeys, where));
  if (!top_k) {
    return Error(ErrorCode::kInvalidInput,
                 where + " has none of num_experts_per_tok, top_k, moe_top_k; REAP (as "
                 "llm-compressor) needs the experts each token is routed to");
  }
  r.top_k = *top_k;
  QUENCH_ASSIGN_OR_RETURN(r.n_group, First(cfg, kNGroupKeys, where));
  QUENCH_ASSIGN_OR_RETURN(r.topk_group, First(cfg, kTopKGroupKeys, where));
  if (r.n_group.has_value() != r.topk_group.has_value()) {
    return Error(ErrorCode::kInvalidInput,
                 where + " sets " + (r.n_group ? "n_group" : "topk_group") +
                     " without " + (r.n_group ? "topk_group" : "n_group") +
                     "; a group-limited router needs both");
  }
  return r;
}

Result<ReapDrop> ReapDropCount(uint64_t experts, double fraction, const ReapRouting& routing) {
  // REAPPruningModifier._validate_sparsity
  if (!(fraction > 0 && fraction < 1)) {
    return Error(ErrorCode::kUsage, "--expert-metric reap: --prune-experts must be in (0, 1), "
                                    "got " + Fraction(fraction));
  }
  ReapDrop d;
  // int(num_experts * sparsity): the double product, truncated.
  d.total = static_cast<uint64_t>(static_cast<double>(experts) * fraction);
  if (d.total == 0) {
    return Error(ErrorCode::kUsage, "--prune-experts " + Fraction(fraction) + " drops 0 of " +
                                        std::to_string(experts) +
                                        " experts (REAP drops int(E * F)); no pruning would "
                                        "be done");
  }
  uint64_t available = experts - d.total;
  if (routing.n_group) {
    const uint64_t g = *routing.n_group;
    if (experts % g != 0) {
      return Error(ErrorCode::kInvalidInput,
                   "group-limited router: " + std::to_string(experts) +
                       " experts are not divisible by n_group = " + std::to_string(g));
    }
    const uint64_t size = experts / g;
    // round(drop / n_group): Python's round, half to even, of the true quotient.
    d.per_group = static_cast<uint64_t>(
        std::nearbyint(static_cast<double>(d.total) / static_cast<double>(g)));
    if (*d.per_group == 0) {
      return Error(ErrorCode::kUsage,
                   "--prune-experts " + Fraction(fraction) + " drops 0 experts per group (" +
                       std::to_string(d.total) + " over n_group = " + std::to_string(g) +
                       " groups of " + std::to_string(size) + ")");
    }
    if (*d.per_group > size) *d.per_group = size;  // cannot happen for F < 1; kept total
    available = *routing.topk_group * (size - *d.per_group);
  }
  if (routing.top_k > available) {
    return Error(ErrorCode::kUsage,
                 "--prune-experts " + Fraction(fraction) + " is too aggressive for REAP: the "
                 "router selects top_k = " + std::to_string(routing.top_k) +
                     " experts per token but only " + std::to_string(available) +
                     " would remain reachable (" + std::to_string(experts) + " experts, dropping " +
                     std::to_string(d.total) + ")");
  }
  // An equal drop per group: the total follows it.
  if (d.per_group) d.total = *d.per_group * *routing.n_group;
  return d;
}

std::vector<double> ReapSaliency(std::span<const double> sum, std::span<const int64_t> count) {
  std::vector<double> out(sum.size());
  for (size_t e = 0; e < sum.size(); ++e) {
    // count.clamp(min=1.0) in float64
    out[e] = sum[e] / std::max(static_cast<double>(count[e]), 1.0);
  }
  return out;
}

std::vector<uint32_t> SmallestExperts(std::span<const double> values, uint64_t k) {
  using Elem = std::pair<double, int64_t>;
  std::vector<Elem> queue(values.size());
  for (size_t j = 0; j < values.size(); ++j) queue[j] = {values[j], static_cast<int64_t>(j)};
  k = std::min<uint64_t>(k, queue.size());
  if (k == 0) return {};
  // aten/src/ATen/native/TopKImpl.h topk_impl_loop, largest=false.
  const auto less = [](const Elem& x, const Elem& y) {
    return (!std::isnan(x.first) && std::isnan(y.first)) || x.first < y.first;
  };
  const auto kth = queue.begin() + static_cast<std::ptrdiff_t>(k);
  if (k * 64 <= queue.size()) {
    std::partial_sort(queue.begin(), kth, queue.end(), less);
  } else {
    std::nth_element(queue.begin(), kth - 1, queue.end(), less);
  }
  std::vector<uint32_t> out;
  for (auto it = queue.begin(); it != kth; ++it) out.push_back(static_cast<uint32_t>(it->second));
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<uint32_t> ReapKept(std::span<const double> saliency, const ReapDrop& drop,
                               const ReapRouting& routing) {
  const uint64_t n = saliency.size();
  std::set<uint32_t> dropped;
  if (!drop.per_group) {
    for (uint32_t e : SmallestExperts(saliency, drop.total)) dropped.insert(e);
  } else {
    const uint64_t size = n / *routing.n_group;
    for (uint64_t g = 0; g < *routing.n_group; ++g) {
      for (uint32_t e : SmallestExperts(saliency.subspan(g * size, size), *drop.per_group)) {
        dropped.insert(static_cast<uint32_t>(g * size + e));
      }
    }
  }
  std::vector<uint32_t> kept;
  for (uint32_t e = 0; e < n; ++e) {
    if (!dropped.contains(e)) kept.push_back(e);
  }
  return kept;
}

Result<PlannedExpertPrune> PlanReapPrune(ModelFolder& folder, double fraction,
                                         const std::filesystem::path& stats_dir) {
  QUENCH_ASSIGN_OR_RETURN(std::vector<MoeLayer> layers, FindMoeLayers(folder));
  QUENCH_ASSIGN_OR_RETURN(ReapRouting routing,
                          ReapRoutingFromConfig(folder.config ? &*folder.config : nullptr,
                                                (folder.root / "config.json").string()));
  QUENCH_ASSIGN_OR_RETURN(Statistics stats, Statistics::Open(stats_dir));
  if (stats.reap().empty()) {
    return Error(ErrorCode::kInvalidInput,
                 stats_dir.string() + " holds no REAP saliency; collect it with "
                 "scripts/collect-stats MODEL_DIR --text FILE --reap -o STATS");
  }
  std::vector<std::vector<uint32_t>> kept;
  std::vector<std::vector<double>> scores;
  std::vector<std::vector<int64_t>> tokens;
  for (const MoeLayer& l : layers) {
    auto it = stats.reap().find(l.router);
    if (it == stats.reap().end()) {
      return Error(ErrorCode::kInvalidInput,
                   "--expert-metric reap: " + stats_dir.string() +
                       " has no REAP saliency for MoE layer '" + l.prefix + "' (router '" +
                       l.router + "'); statistics from another model, or a layer the "
                       "calibration never reached");
    }
    const StatsReap& r = it->second;
    if (r.experts != l.experts) {
      return Error(ErrorCode::kInvalidInput,
                   "--expert-metric reap: " + stats_dir.string() + " scores " +
                       std::to_string(r.experts) + " experts for MoE layer '" + l.prefix +
                       "' but its router '" + l.router + "' has " + std::to_string(l.experts));
    }
    QUENCH_ASSIGN_OR_RETURN(ReapDrop drop, ReapDropCount(l.experts, fraction, routing));
    QUENCH_ASSIGN_OR_RETURN(std::vector<double> sum, stats.ReadReapSum(r));
    QUENCH_ASSIGN_OR_RETURN(std::vector<int64_t> count, stats.ReadReapCount(r));
    std::vector<double> saliency = ReapSaliency(sum, count);
    kept.push_back(ReapKept(saliency, drop, routing));
    scores.push_back(std::move(saliency));
    tokens.push_back(std::move(count));
  }
  return PruneExpertsKept(folder, layers, std::move(kept), std::move(scores), std::move(tokens),
                          fraction, "reap");
}

}  // namespace quench::calib
