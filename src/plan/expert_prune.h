// Whole-expert pruning by router magnitude (compressed-tensors 0.19.0's MagnitudeExpertPruner;
// docs/reference-notes.md section 17): which MoE layers a checkpoint has, which experts each
// keeps, and the checkpoint's headers and config as they are once the others are gone.
//
// Planning reads no weights, with this one exception, made on purpose: scoring experts needs
// the router weights' values. The caller (MakePlan, src/pipeline/convert.cc) reads the router
// tensors, and nothing else, before planning (FindMoeLayers says where they are), scores them
// here (RouterScores), and hands the scores to PruneExperts, which turns them into kept-expert
// lists and rewrites the folder's headers. Everything after that, the plan included, is
// computed from headers: the pipeline then reads only the surviving experts.
#ifndef QUENCH_PLAN_EXPERT_PRUNE_H_
#define QUENCH_PLAN_EXPERT_PRUNE_H_

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "format/model_folder.h"
#include "quench/plan.h"
#include "quench/status.h"

namespace quench {

// One MoE layer: the router `<prefix>.gate.weight` (or `<prefix>.router.weight`), [E, H], and
// the tensors under `<prefix>.experts.`.
struct MoeLayer {
  std::string prefix;  // e.g. "model.layers.3.mlp"
  std::string router;  // the router weight's name
  size_t shard = 0;    // where the router is
  TensorInfo router_info;
  uint64_t experts = 0;  // E: the router's rows
  // Tensors sliced along dimension 0 to the kept experts: the router, the router module's
  // other tensors of E rows (DeepSeek's e_score_correction_bias, a router bias), a
  // `<prefix>.e_score_correction_bias` (MiniMax) and expert
  // stacks (`experts.gate_up_proj` [E, 2I, H], a [E, X] bias).
  std::vector<std::string> sliced;
  // Per-expert tensors (`experts.<i>.<rest>`) and their expert index i.
  std::vector<std::pair<std::string, uint32_t>> per_expert;
  // compressed-tensors 3-D stacks (quench/ct_weight.h): the codes of a stack decoded whole
  // (also in `sliced`; recorded in ModelFolder::ct_kept when sliced), and every other tensor
  // of such a stack or of one SplitFusedExperts cut into per-expert pieces (scales, zero
  // points, g_idx, global scales, weight_shape): left whole, read at the kept experts' slices.
  std::vector<std::string> ct_codes;
  std::vector<std::string> ct_whole;
};

// Headers only. A router is a 2-D tensor `<P>.gate.weight` or `<P>.router.weight` with tensors
// under `<P>.experts.`; shared experts (`shared_expert(s).*`) are not under it and are never
// pruned. A compressed-tensors stack `<P>.experts.<m>.weight_packed` (or I8 / F8 `.weight`)
// with its `weight_scale` etc. is one expert stack: its codes sliced, the rest left whole.
// Refused (kInvalidInput), naming the tensors: tensors under an `experts.` segment with
// no router beside them, an expert index >= E, an expert stack or router-module tensor whose
// first dimension is not E, a checkpoint with no MoE layer at all.
Result<std::vector<MoeLayer>> FindMoeLayers(const ModelFolder& folder);

// The reference's score of each expert: the L1 norm of its router row, `weight.abs().sum(-1)`,
// as torch computes it in the router's dtype: the exact sum rounded once to that dtype (torch
// accumulates BF16 in F32 and rounds once, which equals this; see reference-notes section 17
// for F32 routers). `data` holds rows x cols elements of `dtype` (BF16, F16 or F32). A router
// with a NaN or infinite weight is refused.
Result<std::vector<float>> RouterScores(const uint8_t* data, DType dtype, uint64_t rows,
                                        uint64_t cols, const std::string& name);

// How many of `experts` a fraction keeps: max(1, E - round(F * E)), Python's round (half to
// even).
uint64_t ExpertsKept(uint64_t experts, double fraction);

// The experts torch.topk(scores, k) returns, ascending: its CPU kernel's (score, index) pairs
// in index order through std::partial_sort when k * 64 <= E, else std::nth_element at k - 1,
// both with "greater, NaN first"; ties therefore fall as those algorithms leave them, not by
// index.
std::vector<uint32_t> TopExperts(std::span<const float> scores, uint64_t k);

// Chooses the kept experts of every layer from `scores` (one vector per layer, as
// RouterScores returns) and rewrites `folder`: pruned experts' tensors removed, survivors
// renamed densely in order, sliced tensors gathered from the kept rows (`folder.gathered`),
// config.json's expert count set (`folder.config_changed`). Refused: a fraction outside
// [0, 1]; layers keeping different counts; no config.json or no expert count key in it;
// num_experts_per_tok (or top_k_experts) above the experts kept.
Result<PlannedExpertPrune> PruneExperts(ModelFolder& folder, const std::vector<MoeLayer>& layers,
                                        std::vector<std::vector<float>> scores, double fraction);

// The same with the kept experts already chosen (one ascending list per layer, e.g. by REAP,
// src/calib/reap.h); `scores` and `tokens` (may be empty) go to the report as they are.
Result<PlannedExpertPrune> PruneExpertsKept(ModelFolder& folder,
                                            const std::vector<MoeLayer>& layers,
                                            std::vector<std::vector<uint32_t>> kept,
                                            std::vector<std::vector<double>> scores,
                                            std::vector<std::vector<int64_t>> tokens,
                                            double fraction, const std::string& metric);

// The source name of a tensor as expert pruning renamed it: `<P>.experts.<i>.<rest>` of a
// pruned layer is source expert kept[i]'s; any other name is its own. (Statistics and other
// per-weight records name the source's experts.)
std::string SourceExpertName(const PlannedExpertPrune& prune, const std::string& name);

}  // namespace quench

#endif  // QUENCH_PLAN_EXPERT_PRUNE_H_
