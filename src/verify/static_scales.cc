// verify --stats: the static activation and KV-cache scales of DST re-derived from the
// statistics (see verify.h, VerifyOptions::stats).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>

#include "format/json.h"
#include "format/model_folder.h"
#include "quench/convert.h"
#include "quench/scheme.h"
#include "schemes/float_formats.h"
#include "verify/verify.h"

namespace quench {
namespace {

namespace fs = std::filesystem;

bool IsStaticScale(const std::string& name) {
  for (const char* s : {".input_scale", ".input_zero_point", ".input_global_scale", ".k_scale",
                        ".v_scale"}) {
    if (name.ends_with(s)) return true;
  }
  return false;
}

// A [1] scale's value for messages.
std::string ValueText(const std::string& bytes, DType d) {
  double v = 0;
  if (d == DType::kF32 && bytes.size() == 4) {
    float f;
    std::memcpy(&f, bytes.data(), 4);
    v = f;
  } else if ((d == DType::kBF16 || d == DType::kF16) && bytes.size() == 2) {
    v = ElementToF32(reinterpret_cast<const uint8_t*>(bytes.data()), d, 0);
  } else if (d == DType::kI8 && bytes.size() == 1) {
    v = static_cast<int8_t>(bytes[0]);
  } else {
    return std::to_string(bytes.size()) + " bytes";
  }
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

}  // namespace

Status CheckStaticScales(const VerifyOptions& options, VerifyReport& report) {
  if (!options.src) {
    return Error(ErrorCode::kUsage, "verify --stats needs SRC, the checkpoint DST was made from "
                                    "(the scales are planned again from it and the statistics)");
  }
  QUENCH_ASSIGN_OR_RETURN(JsonValue cfg, ReadJsonFile((options.dst / "config.json").string()));
  const JsonValue* q = cfg.Find("quantization_config");
  const JsonValue* groups = q != nullptr ? q->Find("config_groups") : nullptr;
  if (groups == nullptr || !groups->is_object() || groups->as_object().size() != 1) {
    return Error(ErrorCode::kUnsupported,
                 "verify --stats re-derives the scales of a one-scheme checkpoint (one config "
                 "group named by its preset, as quench convert --scheme writes)");
  }
  const auto& [scheme_name, group] = groups->as_object().front();
  const SchemeInfo* scheme = FindScheme(scheme_name);
  if (scheme == nullptr) {
    return Error(ErrorCode::kUnsupported, "verify --stats: config group '" + scheme_name +
                                              "' is not a preset name");
  }
  // The conversion's options as the config records them: static activations where the preset
  // has dynamic ones, a zero point if asymmetric, an FP8 KV cache.
  ConvertOptions o;
  o.src = *options.src;
  o.dst = fs::temp_directory_path() / "quench-verify-stats-plan-never-written";
  o.scheme = scheme_name;
  o.stats = *options.stats;
  if (const JsonValue* in = group.Find("input_activations"); in != nullptr && in->is_object()) {
    const JsonValue* dyn = in->Find("dynamic");
    const bool is_static = dyn != nullptr && dyn->is_bool() && !dyn->as_bool();
    const bool preset_static =
        scheme->input_activations.has_value() && !scheme->input_activations->dynamic;
    o.static_activations = is_static && !preset_static;
    const JsonValue* sym = in->Find("symmetric");
    o.asymmetric_activations = sym != nullptr && sym->is_bool() && !sym->as_bool();
  }
  if (const JsonValue* kv = q->Find("kv_cache_scheme"); kv != nullptr && kv->is_object()) {
    o.kv_cache = "fp8";
  }
  auto plan = MakePlan(o);
  if (!plan.ok()) {
    return Error(plan.status().code(),
                 "verify --stats: planning the scales again failed: " + plan.status().message());
  }
  std::map<std::string, const PlannedOutput*> want;
  for (const PlannedShard& s : plan->shards) {
    for (const PlannedOutput& po : s.outputs) {
      if (po.source == SchemeOutput::Source::kStatic && IsStaticScale(po.name)) {
        want[po.name] = &po;
      }
    }
  }
  QUENCH_ASSIGN_OR_RETURN(ModelFolder dst, LoadModelFolder(options.dst));
  std::map<std::string, bool> in_dst;
  for (const Shard& sh : dst.shards) {
    for (const TensorInfo& t : sh.header.tensors) in_dst[t.name] = true;
  }
  for (const Shard& sh : dst.shards) {
    for (const TensorInfo& t : sh.header.tensors) {
      if (!IsStaticScale(t.name)) continue;
      auto it = want.find(t.name);
      if (it == want.end()) {
        report.problems.push_back({sh.rel_name, t.name, "static-scale",
                                   "not derived from the statistics for this scheme (no such "
                                   "static scale is planned)"});
        continue;
      }
      const uint64_t n = t.end - t.begin;
      std::string got(n, '\0');
      {
        std::FILE* f = std::fopen((options.dst / sh.rel_name).c_str(), "rb");
        if (f == nullptr) return Error(ErrorCode::kIo, "cannot open " + sh.rel_name);
        const bool ok = std::fseek(f, static_cast<long>(sh.header.data_start + t.begin),
                                   SEEK_SET) == 0 &&
                        std::fread(got.data(), 1, n, f) == n;
        std::fclose(f);
        if (!ok) return Error(ErrorCode::kIo, "cannot read " + sh.rel_name + ": " + t.name);
      }
      const PlannedOutput& po = *it->second;
      if (t.dtype != po.dtype || got != po.constant) {
        report.problems.push_back(
            {sh.rel_name, t.name, "static-scale",
             "expected " + ValueText(po.constant, po.dtype) + " (" +
                 std::string(DTypeName(po.dtype)) + ") from the statistics, found " +
                 ValueText(got, t.dtype) + " (" + std::string(DTypeName(t.dtype)) + ")"});
      }
      ++report.static_scales_checked;
      want.erase(it);
    }
  }
  for (const auto& [name, po] : want) {
    // A weight DST leaves unquantized (an --ignore the config records) has none.
    const std::string m = name.substr(0, name.rfind('.'));
    if (!name.ends_with("_scale") || name.ends_with(".k_scale") || name.ends_with(".v_scale") ||
        in_dst.count(m + ".weight_scale") != 0) {
      report.problems.push_back({"", name, "static-scale",
                               "the statistics give this static scale but DST lacks it"});
    }
  }
  return Status::Ok();
}

}  // namespace quench
