// Whole-expert pruning by REAP saliency (llm-compressor 0.14.0.1's REAPPruningModifier,
// modifiers/pruning/reap/{base,utils}.py; arXiv 2510.13999), from activation statistics that
// hold it (docs/statistics-format.md, "REAP saliency"; collect-stats --reap).
//
// The reference's choice, given the same sums and counts: saliency = sum / max(count, 1) in
// double; drop int(E * F) experts (refused when that is 0 or F is outside (0, 1)), the
// lowest-saliency ones as torch.topk(saliency, drop, largest=False) picks them (ties as its CPU
// kernel leaves them); with a group-limited router (config.json n_group and topk_group, as
// DeepSeek-V3) round(drop / n_group) per group of E / n_group consecutive experts. Refused, as
// the reference refuses, when the router's top_k would exceed the experts left reachable.
#ifndef QUENCH_CALIB_REAP_H_
#define QUENCH_CALIB_REAP_H_

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "format/json.h"
#include "format/model_folder.h"
#include "plan/expert_prune.h"
#include "quench/plan.h"
#include "quench/status.h"

namespace quench::calib {

// What the reference reads from the model's config (get_moe_attrs): experts per token
// (num_experts_per_tok, top_k or moe_top_k, first present) and the group-limited router's
// n_group and topk_group (or top_k_group). Top level, or text_config where there is one. A
// key set to null counts as absent.
struct ReapRouting {
  uint64_t top_k = 0;
  std::optional<uint64_t> n_group;
  std::optional<uint64_t> topk_group;
};
Result<ReapRouting> ReapRoutingFromConfig(const JsonValue* config, const std::string& where);

// How many experts each layer drops (on_initialize): total, and per group for a
// group-limited router.
struct ReapDrop {
  uint64_t total = 0;
  std::optional<uint64_t> per_group;
};
Result<ReapDrop> ReapDropCount(uint64_t experts, double fraction, const ReapRouting& routing);

// mean_saliency: sum / max(count, 1), in double.
std::vector<double> ReapSaliency(std::span<const double> sum, std::span<const int64_t> count);

// The indices torch.topk(values, k, largest=False) returns, ascending (TopKImpl.h: pairs in
// index order through std::partial_sort when k * 64 <= n, else std::nth_element at k - 1,
// comparing "less, NaN last").
std::vector<uint32_t> SmallestExperts(std::span<const double> values, uint64_t k);

// compute_retained_experts: the experts kept, ascending.
std::vector<uint32_t> ReapKept(std::span<const double> saliency, const ReapDrop& drop,
                               const ReapRouting& routing);

// --prune-experts F --expert-metric reap --stats STATS: finds the MoE layers, takes each
// router's saliency from the statistics (refused, naming the layer, where there is none or
// its expert count differs), chooses the kept experts and rewrites the folder's headers as
// PruneExperts does.
Result<PlannedExpertPrune> PlanReapPrune(ModelFolder& folder, double fraction,
                                         const std::filesystem::path& stats);

}  // namespace quench::calib

#endif  // QUENCH_CALIB_REAP_H_
