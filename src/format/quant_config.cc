#include "format/quant_config.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "format/parallel.h"
#include "format/sorted_runs.h"
#include "quench/dtype.h"

namespace quench {
namespace {

JsonValue NullOr(std::string_view s) { return s.empty() ? JsonValue() : JsonValue(s); }

}  // namespace

// Field set of compressed-tensors' QuantizationArgs.model_dump(); key order is irrelevant
// because the writer sorts keys. zp_dtype is null whenever symmetric (serialize_dtype).
JsonValue QuantArgsJson(const QuantArgsDesc& a) {
  JsonValue o = JsonValue::MakeObject();
  o.Set("num_bits", JsonValue(a.num_bits));
  o.Set("type", JsonValue(a.type));
  o.Set("symmetric", JsonValue(a.symmetric));
  o.Set("group_size", a.group_size ? JsonValue(*a.group_size) : JsonValue());
  o.Set("strategy", JsonValue(a.strategy));
  if (a.block_structure) {
    o.Set("block_structure", JsonValue(JsonValue::Array{JsonValue(a.block_structure->first),
                                                        JsonValue(a.block_structure->second)}));
  } else {
    o.Set("block_structure", JsonValue());
  }
  o.Set("dynamic", a.dynamic_local ? JsonValue("local") : JsonValue(a.dynamic));
  o.Set("actorder", JsonValue());
  o.Set("scale_dtype", NullOr(a.scale_dtype));
  o.Set("zp_dtype", a.symmetric ? JsonValue() : NullOr(a.zp_dtype));
  o.Set("observer", NullOr(a.observer));
  o.Set("observer_kwargs", JsonValue::MakeObject());
  return o;
}

QuantArgsDesc EffectiveWeights(const SchemeInfo& scheme, const SchemeParams& p) {
  QuantArgsDesc w = scheme.weights;
  if (w.type == "int") {
    w.num_bits = p.bits;
    w.symmetric = p.symmetric;
    w.zp_dtype = p.symmetric ? std::string_view() : TorchDTypeName(DType::kI8);
    if (p.group_size && *p.group_size > 0) {
      w.group_size = p.group_size;
      w.strategy = "group";
    } else {
      // compressed-tensors: group_size -1 selects the channel strategy, which it then writes
      // with group_size null.
      w.group_size = std::nullopt;
      w.strategy = "channel";
    }
  }
  return w;
}

std::optional<QuantArgsDesc> EffectiveInputActivations(const SchemeInfo& scheme,
                                                       const SchemeParams& p) {
  if (!scheme.input_activations) return std::nullopt;
  QuantArgsDesc a = *scheme.input_activations;
  if (!p.static_input || !a.dynamic) return a;
  // A dynamic per-token preset made static: per tensor, static, with the observer whose
  // values quench writes (llm-compressor's static_minmax: global min/max over the run).
  a.strategy = "tensor";
  a.dynamic = false;
  a.observer = "static_minmax";
  a.symmetric = p.input_symmetric;
  a.zp_dtype = p.input_symmetric ? std::string_view() : TorchDTypeName(DType::kI8);
  return a;
}

JsonValue BuildQuantizationConfig(const std::vector<ConfigGroup>& groups,
                                  const std::vector<std::string>& ignore,
                                  const QuantArgsDesc* kv_cache) {
  JsonValue config_groups = JsonValue::MakeObject();
  std::string common_format;
  bool mixed = false;
  for (const ConfigGroup& g : groups) {
    JsonValue grp = JsonValue::MakeObject();
    JsonValue targets = JsonValue::MakeArray();
    for (const std::string& t : g.targets) targets.Push(JsonValue(t));
    grp.Set("targets", std::move(targets));
    JsonValue weights = QuantArgsJson(EffectiveWeights(*g.scheme, g.params));
    if (!g.actorder.empty()) weights.Set("actorder", JsonValue(g.actorder));
    if (!g.weights_observer.empty()) weights.Set("observer", JsonValue(g.weights_observer));
    if (g.weights_observer_kwargs.is_object()) {
      weights.Set("observer_kwargs", g.weights_observer_kwargs);
    }
    grp.Set("weights", std::move(weights));
    const std::optional<QuantArgsDesc> act = EffectiveInputActivations(*g.scheme, g.params);
    grp.Set("input_activations", act ? QuantArgsJson(*act) : JsonValue());
    grp.Set("output_activations", JsonValue());
    grp.Set("format", JsonValue(g.scheme->format));
    config_groups.Set(g.key, std::move(grp));
    if (common_format.empty()) {
      common_format = std::string(g.scheme->format);
    } else if (common_format != g.scheme->format) {
      mixed = true;
    }
  }
  JsonValue q = JsonValue::MakeObject();
  q.Set("config_groups", std::move(config_groups));
  // One format for all groups, "mixed-precision" when they differ, "dense" with none
  // (model_free save_utils.create_or_update_quant_config).
  q.Set("format", JsonValue(mixed ? std::string("mixed-precision")
                                  : common_format.empty() ? std::string("dense")
                                                          : common_format));
  q.Set("global_compression_ratio", JsonValue());
  JsonValue ig = JsonValue::MakeArray();
  for (const std::string& i : ignore) ig.Push(JsonValue(i));
  q.Set("ignore", std::move(ig));
  q.Set("kv_cache_scheme", kv_cache != nullptr ? QuantArgsJson(*kv_cache) : JsonValue());
  q.Set("quant_method", JsonValue("compressed-tensors"));
  q.Set("quantization_status", JsonValue("compressed"));
  q.Set("transform_config", JsonValue::MakeObject());
  q.Set("version", JsonValue(kCompressedTensorsVersion));
  return q;
}

namespace {

// Whether Python's ensure_ascii encoder writes `s` as it is (AppendJsonStringPython's rule:
// printable ASCII, ' '..'~', other than '"' and '\\').
// Every byte is tested, without an early exit, so that the loop runs on vectors.
bool PlainAscii(std::string_view s) {
  unsigned bad = 0;
  for (char ch : s) {
    const unsigned char c = static_cast<unsigned char>(ch);
    bad |= static_cast<unsigned>(c < 0x20) | static_cast<unsigned>(c > 0x7E) |
           static_cast<unsigned>(c == '"') | static_cast<unsigned>(c == '\\');
  }
  return bad == 0;
}

// Copies `s` to `p`, returning the end.
char* Put(char* p, std::string_view s) {
  std::memcpy(p, s.data(), s.size());
  return p + s.size();
}

}  // namespace

std::string BuildIndexJson(std::vector<std::pair<std::string_view, std::string_view>> weight_map,
                           uint64_t total_size) {
  // DumpPythonJson's layout for this one shape, written directly: a JsonValue tree would copy
  // every name and shard again and sort tree nodes, a large part of planning a checkpoint
  // with tens of thousands of tensors. Keys sorted as DumpPythonJson sorts them (unsigned
  // bytes, i.e. code points), stably; the planner's entries come as a few sorted runs.
  std::vector<const std::pair<std::string_view, std::string_view>*> items;
  items.reserve(weight_map.size());
  for (const auto& kv : weight_map) items.push_back(&kv);
  SortByRuns(items.begin(), items.end(),
             [](const auto* a, const auto* b) { return a->first < b->first; });
  size_t bytes = 96;  // every entry's text without escapes, as room to write into
  for (const auto& [name, shard] : weight_map) bytes += name.size() + shard.size() + 12;
  std::string out;
  out.reserve(bytes);
  AdviseHugePages(out.data(), bytes);
  out += "{\n  \"metadata\": {\n    \"total_size\": " + std::to_string(total_size) +
         "\n  },\n  \"weight_map\": ";
  if (items.empty()) {
    out += "{}";
  } else {
    out += "{\n";
    // Where every name needs no escape (in practice, always), the entries are copied into
    // text sized once: `    "name": "shard"`, joined by ",\n" (not a handful of appends for
    // each of 10^5 entries; bench/README.md, branch kimi-plan). At the first name that needs
    // one, the text is cut back and written by the general loop below instead.
    size_t exact = 0;
    for (const auto& [name, shard] : weight_map) exact += name.size() + shard.size() + 12;
    const size_t at = out.size();
    out.resize(at + exact);
    char* p = out.data() + at;
    bool plain = true;
    std::string_view checked_shard;  // consecutive entries share their shard's view
    for (size_t i = 0; i < items.size(); ++i) {
      const auto& [name, shard] = *items[i];
      if (i == 0 || shard.data() != checked_shard.data() ||
          shard.size() != checked_shard.size()) {
        plain = PlainAscii(shard);
        checked_shard = shard;
      }
      plain = plain && PlainAscii(name);
      if (!plain) break;
      p = Put(p, i > 0 ? ",\n    \"" : "    \"");
      p = Put(p, name);
      p = Put(p, "\": \"");
      p = Put(p, shard);
      *p++ = '"';
    }
    out.resize(plain ? static_cast<size_t>(p - out.data()) : at);
    // Consecutive entries mostly name the same shard, through the same view: its escaped
    // text is kept and reused while the view is the same.
    std::string_view last_shard;
    std::string shard_json;
    for (size_t i = 0; i < items.size() && !plain; ++i) {
      if (i > 0) out += ",\n";
      out += "    ";
      AppendJsonStringPython(out, items[i]->first);
      out += ": ";
      const std::string_view shard = items[i]->second;
      if (shard.data() != last_shard.data() || shard.size() != last_shard.size() ||
          shard_json.empty()) {
        shard_json.clear();
        AppendJsonStringPython(shard_json, shard);
        last_shard = shard;
      }
      out += shard_json;
    }
    out += "\n  }";
  }
  out += "\n}";
  return out;
}

uint64_t JsonStringPythonSize(std::string_view s) {
  if (PlainAscii(s)) return s.size() + 2;
  std::string escaped;
  AppendJsonStringPython(escaped, s);
  return escaped.size();
}

uint64_t IndexJsonSize(uint64_t entries, uint64_t entry_bytes, uint64_t total_size) {
  // BuildIndexJson's text: the metadata, then "{}" or "{\n", the entries joined by ",\n",
  // "\n  }"; then "\n}".
  const uint64_t head = std::string_view("{\n  \"metadata\": {\n    \"total_size\": ").size() +
                        std::to_string(total_size).size() +
                        std::string_view("\n  },\n  \"weight_map\": ").size();
  const uint64_t map = entries == 0 ? 2 : 2 + entry_bytes + 2 * (entries - 1) + 4;
  return head + map + 2;
}

}  // namespace quench
