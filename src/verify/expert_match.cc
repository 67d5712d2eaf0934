// verify DST SRC on an expert-pruned conversion (convert --prune-experts): which source expert
// each output expert is, told by the routers. A router is copied unquantized and sliced to the
// kept experts in order, so every row of DST's router is, byte for byte, the row of SRC's
// router of the expert it kept, and the kept experts are ascending. The source is then
// rewritten as expert pruning rewrites it (src/plan/expert_prune.h: pruned experts gone,
// survivors renumbered, router-module tensors and expert stacks sliced), and every check
// that follows compares DST with the source of the same expert.
#include <cstring>
#include <map>
#include <memory>

#include "format/source_quant.h"
#include "plan/expert_prune.h"
#include "quench/ct_weight.h"
#include "verify/verifier.h"

namespace quench::verify {
namespace {

// Source tensors gathered from several ranges are assembled in memory: routers and their
// biases, E rows of hidden size at most. A larger one (an expert stack kept 3-D) is refused.
constexpr uint64_t kMaxGathered = 256ull << 20;

}  // namespace

// A compressed-tensors SRC: its headers are already the decoded weights' (LogicalCtSource),
// so the weights' decoders are renamed as the headers were rather than detected again. A
// piece of a split stack keeps its source expert; a stack decoded whole reads the kept
// experts' slices (CtWeight::kept), as the conversion's detection sets them up.
void Verifier::RenameCtScales(const PlannedExpertPrune& prune) {
  std::map<std::string, SourceScale> scales;
  for (const Shard& s : src_->folder.shards) {
    for (const TensorInfo& t : s.header.tensors) {
      auto it = src_quant_.scales.find(SourceExpertName(prune, t.name));
      if (it == src_quant_.scales.end()) continue;
      SourceScale sc = it->second;
      if (sc.ct && sc.ct->experts > 0 && sc.ct_expert < 0 && t.shape[0] < sc.ct->experts) {
        for (const PlannedExpertLayer& l : prune.layers) {
          if (!t.name.starts_with(l.prefix + ".experts.")) continue;
          auto w = std::make_shared<CtWeight>(*sc.ct);
          w->kept = l.kept;
          w->experts = l.kept.size();
          sc.ct = std::move(w);
        }
      }
      scales.emplace(t.name, std::move(sc));
    }
  }
  src_quant_.scales = std::move(scales);
}

Status Verifier::MatchPrunedExperts() {
  auto found = FindMoeLayers(src_->folder);
  if (!found.ok()) return Status::Ok();  // no MoE layer (or none expert pruning could prune)
  const std::vector<MoeLayer>& layers = *found;
  std::vector<std::vector<uint32_t>> kept(layers.size());
  bool pruned = false;
  for (size_t l = 0; l < layers.size(); ++l) {
    const MoeLayer& layer = layers[l];
    const TensorInfo* d = dst_.Find(layer.router);
    const TensorInfo& s = layer.router_info;
    // Every expert kept: the router as the source's (or quantized, --no-default-ignore;
    // checked as a quantized module like any other).
    if (d == nullptr || d->shape == s.shape) {
      for (uint32_t e = 0; e < layer.experts; ++e) kept[l].push_back(e);
      continue;
    }
    if (d->dtype != s.dtype && d->shape.size() == 2 && d->shape[1] == s.shape[1] &&
        d->shape[0] < s.shape[0]) {
      return Error(ErrorCode::kUnsupported,
                   "router '" + layer.router + "' keeps " + std::to_string(d->shape[0]) +
                       " of SRC's " + std::to_string(s.shape[0]) + " experts but is " +
                       std::string(DTypeName(d->dtype)) + ", not the source's " +
                       std::string(DTypeName(s.dtype)) +
                       " (quantized: --no-default-ignore), so which experts it kept cannot "
                       "be told from its rows; verify DST without SRC");
    }
    if (d->dtype != s.dtype || d->shape.size() != 2 || d->shape[1] != s.shape[1] ||
        d->shape[0] > s.shape[0]) {
      Problem(dst_.FileOf(layer.router), layer.router, "changed",
              "router is " + std::string(DTypeName(d->dtype)) + " " + ShapeString(d->shape) +
                  ", the source's " + std::string(DTypeName(s.dtype)) + " " +
                  ShapeString(s.shape) + "; not the source's rows for fewer experts");
      return Status::Ok();
    }
    pruned = true;
    const uint64_t row = s.nbytes() / s.shape[0];
    const uint8_t* sp = src_->Data(layer.router);
    const uint8_t* dp = dst_.Data(layer.router);
    uint64_t next = 0;  // survivors keep their order: match each DST row at or after the last
    for (uint64_t r = 0; r < d->shape[0]; ++r) {
      while (next < s.shape[0] && std::memcmp(sp + next * row, dp + r * row, row) != 0) ++next;
      if (next == s.shape[0]) {
        Problem(dst_.FileOf(layer.router), layer.router, "changed",
                "router row " + std::to_string(r) + " is none of the source router's rows " +
                    "(after the expert of the row before it); expert pruning copies the kept " +
                    "experts' rows in order");
        return Status::Ok();
      }
      kept[l].push_back(static_cast<uint32_t>(next++));
    }
  }
  if (!pruned) return Status::Ok();
  auto plan =
      PruneExpertsKept(src_->folder, layers, kept, std::vector<std::vector<double>>(layers.size()),
                       {}, 0.0, "inferred from the routers");
  if (!plan.ok()) {
    Problem(dst_.folder.config_rel.value_or(""), "", "config",
            "DST's routers keep fewer experts than SRC's, but SRC cannot be pruned so: " +
                plan.status().message());
    return Status::Ok();
  }
  // Gathered tensors: their rows, now, from the shards' maps (before by_name changes).
  for (const auto& [name, runs] : src_->folder.gathered) {
    size_t shard = 0;
    for (size_t i = 0; i < src_->folder.shards.size(); ++i) {
      for (const TensorInfo& t : src_->folder.shards[i].header.tensors) {
        if (t.name == name) shard = i;
      }
    }
    uint64_t total = 0;
    for (const auto& [at, len] : runs) total += len;
    if (total > kMaxGathered) {
      return Error(ErrorCode::kUnsupported,
                   "verify against SRC: '" + name + "' is sliced to the kept experts from " +
                       std::to_string(runs.size()) + " ranges totalling " + std::to_string(total) +
                       " bytes; verify assembles at most " + std::to_string(kMaxGathered));
    }
    std::vector<uint8_t> bytes;
    bytes.reserve(total);
    const uint8_t* base = src_->maps[shard].data() + src_->folder.shards[shard].header.data_start;
    for (const auto& [at, len] : runs) bytes.insert(bytes.end(), base + at, base + at + len);
    src_->owned[name] = std::move(bytes);
  }
  IndexTensors(*src_);
  // An FP8 SRC: its scales were paired with its weights by their unpruned names. Paired again
  // on the pruned headers, as the converter pairs them (MakePlan prunes, then BuildPlan
  // detects): a kept expert's weight and its weight_scale_inv are renamed alike, a pruned
  // one's are both gone.
  if (src_quant_.format == SourceFormat::kCompressedTensors) {
    RenameCtScales(*plan);
  } else if (!src_quant_.scales.empty()) {
    auto q = DetectSourceQuantization(src_->folder);
    if (!q.ok()) return Error(q.status().code(), "SRC (expert-pruned) " + q.status().message());
    src_quant_ = std::move(q).value();
    scale_of_weight_.clear();
    for (const auto& [weight, sc] : src_quant_.scales) scale_of_weight_[sc.name] = weight;
  }
  return Status::Ok();
}

}  // namespace quench::verify
