// FP8 KV-cache scales from activation statistics: each attention layer's `k_scale` and
// `v_scale` (planned beside its k_proj weight, SchemeOutput::kStatic), from the ranges of the
// output sites `<attention>.k_cache` / `<attention>.v_cache` that `collect-stats --kv-cache`
// records where compressed-tensors' QuantizedKVCache observes them (collector/kv_cache.py):
// calculate_qparams for FP8 E4M3 per tensor, symmetric, i.e. max(|min|, |max|) / 448 in the
// attention's dtype, as llm-compressor 0.14.0.1 computes them (calibrate_key_hook /
// calibrate_value_hook, then update_qparams), with the range taken over the whole run.
#ifndef QUENCH_CALIB_KV_CACHE_H_
#define QUENCH_CALIB_KV_CACHE_H_

#include "calib/act_scales.h"  // ColumnScales
#include "quench/convert.h"
#include "quench/plan.h"
#include "quench/status.h"

namespace quench::calib {

// Fills every planned k_scale / v_scale. Reads the statistics' manifest and the k/v sites'
// count/min/max arrays only. Statistics without the layer's site, a site that saw no tokens or
// holds NaN go to plan.errors. A no-op when the plan has no KV-cache scale.
//
// Smoothing (src/calib/composite.h): a norm smoothed into q/k/v leaves keys and values as they
// were (W diag(s) x / s = W x). A mapping whose smooth layer is a separate value projection
// (`v_proj` / BERT's `value` -> the output projection) divides the value projection's output
// rows, hence the cached values' channels, by s: v_c' = v_c / s_c exactly (s > 0), so the
// smoothed values' range is the global range of [min_c / s_c, max_c / s_c] (channel c of the
// `v_cache` site is v_proj's output row c: collector/kv_cache.py). Planning (`smoothed` null)
// checks such mappings and refuses the others that rescale what is cached (a fused
// qkv projection's value slice; keys, which pass through rotary embedding and k_norm);
// once the smoothing scales are known (`smoothed`: per plan tensor, the balance layers'
// column scales), the smoothed attentions' v_scale is recomputed from the divided ranges.
Status PlanKvScales(Plan& plan, const ConvertOptions& options,
                    const ColumnScales* smoothed = nullptr);

}  // namespace quench::calib

#endif  // QUENCH_CALIB_KV_CACHE_H_
