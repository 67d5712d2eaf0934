// Static activation scales from activation statistics (see act_scales.h).
#include "calib/act_scales.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "calib/stats.h"
#include "calib/weight_stats.h"
#include "schemes/float_formats.h"
#include "schemes/fp4.h"
#include "schemes/fp8.h"

namespace quench::calib {
namespace {

// RNE to dtype d: torch's arithmetic on a 16-bit tensor is f32 arithmetic rounded to it.
float Round(float f, DType d) {
  switch (d) {
    case DType::kBF16: return BF16ToF32(F32ToBF16(f));
    case DType::kF16: return F16ToF32(F32ToF16(f));
    default: return f;
  }
}

// torch.finfo(d).eps: calculate_qparams' replacement of a zero scale.
float Eps(DType d) {
  switch (d) {
    case DType::kBF16: return 0.0078125f;     // 2^-7
    case DType::kF16: return 0.0009765625f;   // 2^-10
    default: return 1.1920928955078125e-07f;  // 2^-23
  }
}

// calculate_qparams step 0: the range widened to hold 0 ("0 must be representable").
void Widen(float* mn, float* mx, DType d) {
  *mn = std::min(Round(*mn, d), 0.f);
  *mx = std::max(Round(*mx, d), 0.f);
}

}  // namespace

ActQParams Fp8InputQParams(float min, float max, DType d) {
  Widen(&min, &max, d);
  // max(|min|, |max|) / (896 / 2), eps for 0: fp8::TensorScale is that rule for weights.
  return {fp8::TensorScale(std::max(-min, max), d), 0};
}

ActQParams Int8InputQParams(float min, float max, DType d, bool symmetric) {
  Widen(&min, &max, d);
  ActQParams q;
  if (symmetric) {
    // bit_range 255 (q_min -128, q_max 127); bit_range.to(d) / 2 = 127.5, exact in every d.
    q.scale = Round(std::max(-min, max) / 127.5f, d);
    if (q.scale == 0.f) q.scale = Eps(d);
    return q;
  }
  // scales = (max - min) / 255, each op rounded to d; zero_points = -128 - min / scales,
  // clamped to [-128, 127], all before the zero-scale replacement: a zero range gives 0 / 0,
  // a NaN zero point, which torch's round and cast to int8 turn into 0 (the reference's
  // output for min = max = 0, data/golden/act_scales).
  const float scale = Round(Round(max - min, d) / 255.f, d);
  const float zp = Round(-128.f - Round(min / scale, d), d);
  if (std::isnan(zp)) {
    q.zero_point = 0;
  } else {
    // round_to_quantized_type_dtype: clamp to int8, torch.round (half to even), cast.
    q.zero_point = static_cast<int8_t>(std::nearbyint(std::clamp(zp, -128.f, 127.f)));
  }
  q.scale = scale == 0.f ? Eps(d) : scale;
  return q;
}

float Nvfp4InputGlobalScale(float min, float max, DType d) {
  // Observer.get_global_scale: absmax = max(max_vals.max(), -min_vals.min()) in d, then
  // generate_gparam (which fp4::Nvfp4GlobalScale implements for the weights' global scale).
  const float amax = std::max(Round(max, d), -Round(min, d));
  return fp4::Nvfp4GlobalScale(std::max(amax, 0.f), d);
}

namespace {

struct Range {
  float min = 0, max = 0;
};

// Encodes `v` (a value of d) little-endian as the checkpoint stores it.
std::string Encode(float v, DType d) {
  std::string out;
  if (d == DType::kBF16 || d == DType::kF16) {
    const uint16_t bits = d == DType::kBF16 ? F32ToBF16(v) : F32ToF16(v);
    out.assign(2, '\0');
    std::memcpy(out.data(), &bits, 2);
  } else {
    out.assign(4, '\0');
    std::memcpy(out.data(), &v, 4);
  }
  return out;
}

bool EndsWith(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// A weight's input range from its site's count, min and max, each site's fields read once.
class RangeReader {
 public:
  RangeReader(Plan& plan, const Statistics& stats, const std::string& where)
      : plan_(plan), stats_(stats), where_(where) {}

  // The input range of `t` (the min and max over its site's channels, each divided by the
  // smoothing scale `div` where that is set) and its site's name; nullopt, with the problem
  // recorded in the plan, where the statistics cannot give one.
  Result<std::optional<Range>> Of(const PlannedTensor& t, const std::vector<double>* div,
                                  std::string* site_name) {
    const WeightStats ws = FindWeightStats(stats_, plan_, t);
    if (ws.consumer == nullptr) {
      return Refuse(Error(
          ErrorCode::kInvalidInput,
          where_ + "no statistics for '" + t.name + "', whose static input scale needs its "
              "input's min/max (the collector did not reach its module, or the statistics are "
              "another model's); add it to --ignore or collect statistics that cover it"));
    }
    if (!ws.shape_matches) {
      return Refuse(Error(ErrorCode::kInvalidInput,
                          where_ + "statistics for '" + t.name + "' do not match its "
                          "shape in the checkpoint (another model's statistics?)"));
    }
    const StatsSite& site = stats_.sites().at(ws.consumer->site);
    const bool has_range =
        std::any_of(site.fields.begin(), site.fields.end(),
                    [](const StatsField& f) { return f.name == "min"; }) &&
        std::any_of(site.fields.begin(), site.fields.end(),
                    [](const StatsField& f) { return f.name == "max"; });
    if (!has_range) {
      return Refuse(Error(ErrorCode::kInvalidInput,
                          where_ + "site " + site.name + " has no min/max, which the "
                          "static input scale of '" + t.name + "' needs"));
    }
    QUENCH_ASSIGN_OR_RETURN(const std::vector<double>* count, Field(counts_, site.name, "count"));
    QUENCH_ASSIGN_OR_RETURN(const std::vector<double>* mn, Field(mins_, site.name, "min"));
    QUENCH_ASSIGN_OR_RETURN(const std::vector<double>* mx, Field(maxs_, site.name, "max"));
    const size_t e = ws.consumer->expert.value_or(0);
    const size_t n = site.in_features;
    if (e >= count->size() || (*count)[e] <= 0) {
      return Refuse(Error(ErrorCode::kInvalidInput,
                          where_ + "site " + site.name +
                              (ws.consumer->expert ? " expert " + std::to_string(e) : "") +
                              " saw no tokens, so '" + t.name +
                              "' has no input range for its static scale; "
                              "collect with more text (or --moe all), or add it to --ignore"));
    }
    Range r{INFINITY, -INFINITY};
    bool finite = true;
    if (div != nullptr && div->size() != n) {
      return Error(ErrorCode::kInternal, "smoothing scales do not match site " + site.name);
    }
    for (size_t c = 0; c < n; ++c) {
      double lo = (*mn)[e * n + c], hi = (*mx)[e * n + c];
      // Smoothed input x / s (s > 0): channel range [min / s, max / s].
      if (div != nullptr) lo /= (*div)[c], hi /= (*div)[c];
      finite &= std::isfinite(lo) && std::isfinite(hi);
      r.min = std::min(r.min, static_cast<float>(lo));
      r.max = std::max(r.max, static_cast<float>(hi));
    }
    if (!finite) {
      return Refuse(Error(ErrorCode::kNonFinite,
                          where_ + "site " + site.name + " holds a NaN or infinite "
                          "min/max; its statistics cannot give '" + t.name +
                          "' a static input scale"));
    }
    *site_name = site.name;
    return std::optional<Range>(r);
  }

 private:
  using Cache = std::map<std::string, std::vector<double>>;

  std::optional<Range> Refuse(Status problem) {
    plan_.errors.push_back(std::move(problem));
    return std::nullopt;
  }

  Result<const std::vector<double>*> Field(Cache& cache, const std::string& site,
                                           const char* name) {
    auto it = cache.find(site);
    if (it == cache.end()) {
      QUENCH_ASSIGN_OR_RETURN(std::vector<double> v, stats_.ReadField(site, name));
      it = cache.emplace(site, std::move(v)).first;
    }
    return &it->second;
  }

  Plan& plan_;
  const Statistics& stats_;
  const std::string& where_;
  Cache mins_, maxs_, counts_;  // per site (and expert), every channel's
};

// The static outputs' bytes (input_scale, input_zero_point, input_global_scale) of every
// weight with a range. NVFP4: one input_global_scale per fused set (vLLM runs q/k/v,
// gate/up, ... as one matrix with one activation scale), from the union of the members'
// ranges; members of a set read one site in every architecture quench fuses, so this only
// guards against statistics that split it.
void WriteStaticScales(Plan& plan, const std::vector<std::optional<Range>>& range) {
  std::vector<std::optional<Range>> set_range(plan.fused_sets.size());
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    const PlannedTensor& t = plan.tensors[i];
    if (!range[i] || t.fused_set < 0 || !t.scheme->fuse_global_scale) continue;
    std::optional<Range>& sr = set_range[static_cast<size_t>(t.fused_set)];
    if (!sr) sr = *range[i];
    sr->min = std::min(sr->min, range[i]->min);
    sr->max = std::max(sr->max, range[i]->max);
  }
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    PlannedTensor& t = plan.tensors[i];
    if (!range[i]) continue;
    Range r = *range[i];
    if (t.fused_set >= 0 && t.scheme->fuse_global_scale) {
      r = *set_range[static_cast<size_t>(t.fused_set)];
    }
    const DType d = t.compute_dtype;  // the activations' dtype: the model's
    const QuantArgsDesc& a = *t.scheme->input_activations;
    for (size_t oi : t.outputs) {
      PlannedOutput& o = plan.shards[t.shard].outputs[oi];
      if (o.source != SchemeOutput::Source::kStatic) continue;
      if (EndsWith(o.name, ".input_global_scale")) {
        o.constant = Encode(Nvfp4InputGlobalScale(r.min, r.max, d), DType::kF32);
      } else if (a.type == "int") {
        const ActQParams q = Int8InputQParams(r.min, r.max, d, t.params.input_symmetric);
        o.constant = EndsWith(o.name, ".input_zero_point")
                         ? std::string(1, static_cast<char>(q.zero_point))
                         : Encode(q.scale, o.dtype);
      } else {
        o.constant = Encode(Fp8InputQParams(r.min, r.max, d).scale, o.dtype);
      }
    }
  }
}

}  // namespace

Status PlanActScales(Plan& plan, const ConvertOptions& options, const ColumnScales* smoothed) {
  // Only the smoothed tensors when recomputing after smoothing's pre-pass.
  auto wanted = [&](size_t i) {
    const PlannedTensor& t = plan.tensors[i];
    return t.action == TensorAction::kQuantize && t.params.static_input &&
           (smoothed == nullptr || (i < smoothed->size() && (*smoothed)[i]));
  };
  bool any = false;
  for (size_t i = 0; i < plan.tensors.size(); ++i) any |= wanted(i);
  if (!any) return Status::Ok();
  QUENCH_ASSIGN_OR_RETURN(Statistics stats, Statistics::Open(options.stats));
  const std::string where = options.stats.string() + ": ";
  RangeReader reader(plan, stats, where);
  std::vector<std::optional<Range>> range(plan.tensors.size());
  std::set<std::string> sites_used;
  size_t planned = 0;
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    if (!wanted(i)) continue;
    const std::vector<double>* div = smoothed != nullptr ? (*smoothed)[i].get() : nullptr;
    std::string site;
    QUENCH_ASSIGN_OR_RETURN(range[i], reader.Of(plan.tensors[i], div, &site));
    if (!range[i]) continue;
    sites_used.insert(site);
    ++planned;
  }
  WriteStaticScales(plan, range);
  if (smoothed != nullptr) return Status::Ok();  // the planning note stands
  plan.notes.push_back("static activation scales from " + options.stats.string() + ": " +
                       std::to_string(planned) + " weights, " +
                       std::to_string(sites_used.size()) +
                       " input sites (global min/max over the collected tokens)");
  return Status::Ok();
}

}  // namespace quench::calib
