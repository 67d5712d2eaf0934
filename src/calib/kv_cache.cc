// FP8 KV-cache scales from activation statistics (see kv_cache.h).
#include "calib/kv_cache.h"

#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "calib/act_scales.h"
#include "calib/stats.h"
#include "schemes/float_formats.h"

namespace quench::calib {
namespace {

// The value projection a smoothing mapping rescales: its attention module's name ("" if the
// smooth layer is no projection feeding the cache), and whether the division is exact.
struct CachedSmooth {
  std::string attention;
  bool exact = false;
  std::string why;  // when not exact
};

CachedSmooth CacheEffect(const std::string& smooth) {
  auto parent = [&](const std::string& suffix) {
    return smooth.substr(0, smooth.size() - suffix.size());
  };
  for (const char* v : {".v_proj", ".value"}) {
    if (smooth.ends_with(v)) return {parent(v), true, ""};
  }
  for (const char* f : {".qkv_proj", ".query_key_value", ".c_attn", ".W_pack"}) {
    if (smooth.ends_with(f)) {
      return {parent(f), false,
              "its smooth layer " + smooth + " is a fused q/k/v projection: the smoothing "
              "scales the value slice of its rows (v_scale from that slice's ranges divided by "
              "them is not built)"};
    }
  }
  for (const char* k : {".k_proj", ".key"}) {
    if (smooth.ends_with(k)) {
      return {parent(k), false,
              "its smooth layer " + smooth + " makes the keys, which pass through rotary "
              "embedding (and k_norm) before the cache: a per-channel division of the recorded "
              "key ranges is not the smoothed keys' range"};
    }
  }
  return {};
}

// max(|min|, |max|) / 448 of `site`'s per-channel ranges, each channel divided by div[c]
// (null: undivided), as a constant of dtype `o->dtype`. Problems go to plan.errors.
Status FillScale(Plan& plan, Statistics& stats, const std::string& where, PlannedOutput* o,
                 const std::vector<double>* div) {
  // "<attention>.k_scale" reads site "<attention>.k_cache".
  const std::string site = o->name.substr(0, o->name.size() - 6) + "_cache";
  auto it = stats.sites().find(site);
  if (it == stats.sites().end()) {
    plan.errors.push_back(Error(
        ErrorCode::kInvalidInput,
        where + "no key/value ranges for '" + o->name + "' (site " + site + "); collect them "
            "with scripts/collect-stats MODEL_DIR --text FILE --kv-cache -o STATS"));
    return Status::Ok();
  }
  QUENCH_ASSIGN_OR_RETURN(std::vector<double> count, stats.ReadField(site, "count"));
  QUENCH_ASSIGN_OR_RETURN(std::vector<double> mn, stats.ReadField(site, "min"));
  QUENCH_ASSIGN_OR_RETURN(std::vector<double> mx, stats.ReadField(site, "max"));
  if (count.empty() || count[0] <= 0) {
    plan.errors.push_back(Error(ErrorCode::kInvalidInput,
                                where + "site " + site + " saw no tokens; '" + o->name +
                                    "' has no range to be computed from"));
    return Status::Ok();
  }
  if (div != nullptr && (div->size() != mn.size() || div->size() != mx.size())) {
    return Error(ErrorCode::kUnsupported,
                 where + "site " + site + " has " + std::to_string(mn.size()) + " channels, the "
                 "smoothing of its values " + std::to_string(div->size()) + " scales; v_scale "
                 "cannot be computed from the smoothed ranges (convert without --kv-cache)");
  }
  float lo = INFINITY, hi = -INFINITY;
  bool finite = true;
  for (size_t c = 0; c < mn.size() && c < mx.size(); ++c) {
    finite &= std::isfinite(mn[c]) && std::isfinite(mx[c]);
    // The recorded ranges are f32 values; the smoothed channel's are the quotients (s > 0
    // keeps min below max), rounded to f32 as a recorded range would be.
    const double d = div != nullptr ? (*div)[c] : 1.0;
    lo = std::min(lo, static_cast<float>(mn[c] / d));
    hi = std::max(hi, static_cast<float>(mx[c] / d));
  }
  if (!finite) {
    plan.errors.push_back(Error(ErrorCode::kNonFinite, where + "site " + site +
                                                           " holds a NaN or infinite min/max"));
    return Status::Ok();
  }
  // The scale is a value of the attention's dtype (the output's), stored in it.
  const float scale = Fp8InputQParams(lo, hi, o->dtype).scale;
  if (o->dtype == DType::kBF16 || o->dtype == DType::kF16) {
    const uint16_t bits = o->dtype == DType::kBF16 ? F32ToBF16(scale) : F32ToF16(scale);
    o->constant.assign(2, '\0');
    std::memcpy(o->constant.data(), &bits, 2);
  } else {
    o->constant.assign(4, '\0');
    std::memcpy(o->constant.data(), &scale, 4);
  }
  return Status::Ok();
}

}  // namespace

Status PlanKvScales(Plan& plan, const ConvertOptions& options, const ColumnScales* smoothed) {
  std::vector<PlannedOutput*> scales;
  for (PlannedShard& s : plan.shards) {
    for (PlannedOutput& o : s.outputs) {
      if (o.source == SchemeOutput::Source::kStatic &&
          (o.name.ends_with(".k_scale") || o.name.ends_with(".v_scale"))) {
        scales.push_back(&o);
      }
    }
  }
  if (scales.empty()) return Status::Ok();
  // attention -> the smoothing mapping that divides its values (see kv_cache.h).
  std::map<std::string, const PlannedSmoothing*> divided;
  for (const PlannedSmoothing& m : plan.smoothing) {
    const CachedSmooth e = CacheEffect(m.smooth);
    if (e.attention.empty()) continue;
    if (!e.exact) {
      return Error(ErrorCode::kUnsupported, "--kv-cache with --algorithm " + options.algorithm +
                                                ": the mapping [" + m.balance.front() + "] <- " +
                                                m.smooth + " rescales what the cache holds; " +
                                                e.why + "; convert without --kv-cache");
    }
    divided[e.attention] = &m;
  }
  if (smoothed != nullptr && divided.empty()) return Status::Ok();
  QUENCH_ASSIGN_OR_RETURN(Statistics stats, Statistics::Open(options.stats));
  const std::string where = options.stats.string() + ": ";
  for (PlannedOutput* o : scales) {
    if (smoothed == nullptr) {
      // Before the scales are known: every layer's from the recorded ranges (a smoothed
      // attention's v_scale is recomputed once they are).
      QUENCH_RETURN_IF_ERROR(FillScale(plan, stats, where, o, nullptr));
      continue;
    }
    const std::string attention = o->name.substr(0, o->name.size() - 8);  // ".v_scale"
    auto d = divided.find(attention);
    if (!o->name.ends_with(".v_scale") || d == divided.end()) continue;
    // The smooth layer's rows are divided by the scales its balance layers' columns are
    // multiplied by: any balance weight's column scales.
    const std::vector<double>* s = nullptr;
    for (size_t t : d->second->tensors) {
      if (t < smoothed->size() && (*smoothed)[t] && plan.tensors[t].name.ends_with(".weight") &&
          plan.tensors[t].name.rfind(d->second->balance.front(), 0) == 0) {
        s = (*smoothed)[t].get();
        break;
      }
    }
    if (s == nullptr) continue;  // the mapping was skipped by the run (no scales)
    QUENCH_RETURN_IF_ERROR(FillScale(plan, stats, where, o, s));
  }
  if (smoothed == nullptr) {
    plan.notes.push_back("FP8 KV cache: k_scale and v_scale of " +
                         std::to_string(scales.size() / 2) + " attention layers from " +
                         options.stats.string() + " (global key/value ranges" +
                         (divided.empty() ? std::string(")")
                                          : "; v_scale of " + std::to_string(divided.size()) +
                                                " smoothed value projection(s) from the ranges "
                                                "divided by the smoothing scales)"));
  }
  return Status::Ok();
}

}  // namespace quench::calib
