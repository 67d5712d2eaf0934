// FP8 KV-cache scales from activation statistics (see kv_cache.h).
#include "calib/kv_cache.h"

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "calib/act_scales.h"
#include "calib/stats.h"
#include "schemes/float_formats.h"

namespace quench::calib {

Status PlanKvScales(Plan& plan, const ConvertOptions& options) {
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
  // Smoothing a norm into q/k/v leaves the keys and values unchanged (W diag(s) x / s = W x),
  // so their ranges stand. A mapping whose smooth layer is the value (or fused qkv)
  // projection (AWQ's v_proj -> o_proj) divides the values' channels by its scales, known
  // only after the search: v_scale from the per-channel ranges divided by them is not built.
  for (const PlannedSmoothing& m : plan.smoothing) {
    for (const char* v : {".v_proj", ".qkv_proj", ".value", ".query_key_value", ".c_attn"}) {
      if (m.smooth.ends_with(v)) {
        return Error(ErrorCode::kUnsupported,
                     "--kv-cache with --algorithm " + options.algorithm + ": the mapping "
                     "smoothing " + m.smooth + " rescales the cached values per channel (v_scale "
                     "from the smoothed ranges is not built yet); convert without --kv-cache");
      }
    }
  }
  QUENCH_ASSIGN_OR_RETURN(Statistics stats, Statistics::Open(options.stats));
  const std::string where = options.stats.string() + ": ";
  for (PlannedOutput* o : scales) {
    // "<attention>.k_scale" reads site "<attention>.k_cache".
    const std::string site = o->name.substr(0, o->name.size() - 6) + "_cache";
    auto it = stats.sites().find(site);
    if (it == stats.sites().end()) {
      plan.errors.push_back(Error(
          ErrorCode::kInvalidInput,
          where + "no key/value ranges for '" + o->name + "' (site " + site + "); collect them "
              "with scripts/collect-stats MODEL_DIR --text FILE --kv-cache -o STATS"));
      continue;
    }
    QUENCH_ASSIGN_OR_RETURN(std::vector<double> count, stats.ReadField(site, "count"));
    QUENCH_ASSIGN_OR_RETURN(std::vector<double> mn, stats.ReadField(site, "min"));
    QUENCH_ASSIGN_OR_RETURN(std::vector<double> mx, stats.ReadField(site, "max"));
    if (count.empty() || count[0] <= 0) {
      plan.errors.push_back(Error(ErrorCode::kInvalidInput,
                                  where + "site " + site + " saw no tokens; '" + o->name +
                                      "' has no range to be computed from"));
      continue;
    }
    float lo = INFINITY, hi = -INFINITY;
    bool finite = true;
    for (size_t c = 0; c < mn.size() && c < mx.size(); ++c) {
      finite &= std::isfinite(mn[c]) && std::isfinite(mx[c]);
      lo = std::min(lo, static_cast<float>(mn[c]));
      hi = std::max(hi, static_cast<float>(mx[c]));
    }
    if (!finite) {
      plan.errors.push_back(Error(ErrorCode::kNonFinite, where + "site " + site +
                                                             " holds a NaN or infinite min/max"));
      continue;
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
  }
  plan.notes.push_back("FP8 KV cache: k_scale and v_scale of " + std::to_string(scales.size() / 2) +
                       " attention layers from " + options.stats.string() +
                       " (global key/value ranges)");
  return Status::Ok();
}

}  // namespace quench::calib
