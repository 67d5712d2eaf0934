// Composed calibration (see composite.h).
#include "calib/composite.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "calib/act_scales.h"
#include "calib/kv_cache.h"

namespace quench::calib {

std::string Algorithms::Text() const {
  std::string s = smoothing;
  if (sparsegpt) s += std::string(s.empty() ? "" : ",") + "sparsegpt";
  if (gptq) s += std::string(s.empty() ? "" : ",") + "gptq";
  return s.empty() ? "rtn" : s;
}

Result<Algorithms> ParseAlgorithms(const std::string& text) {
  Algorithms a;
  bool rtn = false;
  size_t count = 0;
  std::stringstream in(text);
  std::string name;
  const std::string known = "rtn, gptq, sparsegpt, smoothquant, awq, or a comma list of one "
                            "smoothing (smoothquant|awq), sparsegpt and gptq";
  while (std::getline(in, name, ',')) {
    ++count;
    if (name == "rtn") {
      rtn = true;
    } else if (name == "gptq" || name == "sparsegpt") {
      bool& flag = name == "gptq" ? a.gptq : a.sparsegpt;
      if (flag)
        return Error(ErrorCode::kUsage, "--algorithm " + text + " names " + name + " twice");
      flag = true;
    } else if (name == "smoothquant" || name == "awq") {
      if (!a.smoothing.empty()) {
        return Error(ErrorCode::kUsage,
                     "--algorithm " + text + ": one smoothing per run (" + a.smoothing + " or " +
                         name + "); each rescales the same channels from the same statistics");
      }
      a.smoothing = name;
    } else {
      return Error(ErrorCode::kUsage, "unknown --algorithm '" + name + "' (" + known + ")");
    }
  }
  if (count == 0 || (!text.empty() && text.back() == ',')) {
    return Error(ErrorCode::kUsage, "--algorithm '" + text + "': " + known);
  }
  if (rtn && count > 1) {
    return Error(ErrorCode::kUsage,
                 "--algorithm " + text + ": rtn means no calibration; leave it out of a list");
  }
  return a;
}

bool HasAlgorithm(const std::string& text, const std::string& name) {
  auto a = ParseAlgorithms(text);
  if (!a.ok()) return text == name;
  if (name == "gptq") return a->gptq;
  if (name == "sparsegpt") return a->sparsegpt;
  if (name == "rtn") return !a->Any();
  return a->smoothing == name;
}

ConvertOptions StageOptions(const ConvertOptions& options, const std::string& algorithm) {
  ConvertOptions o = options;
  o.algorithm = algorithm;
  return o;
}

void AppendFingerprint(const std::string& stage, const std::string& fingerprint,
                       std::string* combined) {
  if (fingerprint.empty()) return;
  *combined += (combined->empty() ? "" : " ") + stage + "{" + fingerprint + "}";
}

Status ApplySmoothingToPlan(Plan& plan, const ConvertOptions& options, const ColumnScales& s) {
  bool static_smoothed = false, wanda_smoothed = false;
  for (size_t i = 0; i < plan.tensors.size() && i < s.size(); ++i) {
    const PlannedTensor& t = plan.tensors[i];
    if (!s[i] || t.action != TensorAction::kQuantize) continue;
    static_smoothed |= t.params.static_input;
    wanda_smoothed |= t.prune_scale >= 0;
  }
  if (static_smoothed) QUENCH_RETURN_IF_ERROR(PlanActScales(plan, options, &s));
  // FP8 KV cache: the v_scale of attentions whose value projection was smoothed, from the
  // ranges divided by its scales (kv_cache.h); a no-op otherwise.
  QUENCH_RETURN_IF_ERROR(PlanKvScales(plan, options, &s));
  if (wanda_smoothed) {
    // Wanda's column scales are per site; a smoothed weight gets its own copy divided by s
    // (sqrt(E[(x/s)^2]) = sqrt(E[x^2]) / s), rounded to f32 as the planned scales are.
    for (size_t i = 0; i < plan.tensors.size() && i < s.size(); ++i) {
      PlannedTensor& t = plan.tensors[i];
      if (!s[i] || t.prune_scale < 0) continue;
      std::vector<float> scaled = plan.prune_scales[static_cast<size_t>(t.prune_scale)];
      const std::vector<double>& f = *s[i];
      if (f.size() != scaled.size()) {
        return Error(ErrorCode::kInternal, "smoothing scales do not match Wanda's of " + t.name);
      }
      for (size_t c = 0; c < scaled.size(); ++c) {
        scaled[c] = static_cast<float>(double(scaled[c]) / f[c]);
      }
      t.prune_scale = static_cast<int>(plan.prune_scales.size());
      plan.prune_scales.push_back(std::move(scaled));
    }
  }
  return Status::Ok();
}

bool CompositeCalibration::Takes(size_t t) const {
  return (prune_ != nullptr && prune_->Takes(t)) || (quantize_ != nullptr && quantize_->Takes(t));
}

Status CompositeCalibration::Prepare(size_t t) {
  if (prune_ != nullptr && prune_->Takes(t)) QUENCH_RETURN_IF_ERROR(prune_->Prepare(t));
  if (quantize_ != nullptr && quantize_->Takes(t)) QUENCH_RETURN_IF_ERROR(quantize_->Prepare(t));
  return Status::Ok();
}

bool CompositeCalibration::Quantize(size_t t, const WeightChunk& in, const ChunkOutputs& out) {
  if (quantize_ != nullptr && quantize_->Takes(t)) return quantize_->Quantize(t, in, out);
  return plan_.tensors[t].scheme->kernel(in, out);  // a tensor only SparseGPT takes
}

bool CompositeCalibration::Prune(size_t t, const uint8_t* src, uint8_t* dst, size_t begin,
                                 size_t rows, uint64_t* zeroed) {
  return prune_->Prune(t, src, dst, begin, rows, zeroed);
}

void CompositeCalibration::Done(size_t t) {
  if (prune_ != nullptr && prune_->Takes(t)) prune_->Done(t);
  if (quantize_ != nullptr && quantize_->Takes(t)) quantize_->Done(t);
}

}  // namespace quench::calib
