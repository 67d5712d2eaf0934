// Reading one quantization_config group: the weights arguments, the format they select (and
// whether the arguments fit it), and the targets.
#include "verify/config_groups.h"

#include <utility>
#include <vector>

namespace quench::verify {
namespace {

// weights.scale_dtype: a torch dtype name, limited to the scale dtypes the formats verified
// here store (float scales, E4M3 scales, E8M0 exponents as uint8, int8).
std::optional<DType> ScaleDTypeFromTorch(std::string_view torch_name) {
  const std::optional<DType> d = ParseTorchDType(torch_name);
  if (!d) return std::nullopt;
  switch (*d) {
    case DType::kBF16:
    case DType::kF16:
    case DType::kF32:
    case DType::kF8E4M3:
    case DType::kU8:
    case DType::kI8: return d;
    default: return std::nullopt;
  }
}

// The "weights" object: bits, type, symmetry, strategy and its sizes, scale dtype, actorder.
void ReadWeightArgs(const JsonValue& w, Group& g,
                    const std::function<void(const std::string&)>& bad) {
  // (A count no format has, 0, for one outside [0, 64]: as an int it could wrap to any.)
  if (const JsonValue* v = w.Find("num_bits"); v && v->is_int()) {
    g.bits = v->as_int() >= 0 && v->as_int() <= 64 ? static_cast<int>(v->as_int()) : 0;
  }
  if (const JsonValue* v = w.Find("type"); v && v->is_string()) g.type = v->as_string();
  if (const JsonValue* v = w.Find("symmetric"); v && v->is_bool()) g.symmetric = v->as_bool();
  if (const JsonValue* v = w.Find("strategy"); v && v->is_string()) g.strategy = v->as_string();
  if (const JsonValue* v = w.Find("group_size"); v && v->is_int() && v->as_int() > 0) {
    g.group_size = static_cast<uint64_t>(v->as_int());
  }
  if (const JsonValue* v = w.Find("block_structure");
      v && v->is_array() && v->as_array().size() == 2) {
    g.bh = v->as_array()[0].is_int() ? static_cast<uint64_t>(v->as_array()[0].as_int()) : 0;
    g.bw = v->as_array()[1].is_int() ? static_cast<uint64_t>(v->as_array()[1].as_int()) : 0;
  }
  if (const JsonValue* v = w.Find("scale_dtype"); v && v->is_string()) {
    g.scale_dtype = ScaleDTypeFromTorch(v->as_string());
    if (!g.scale_dtype) bad("unknown scale_dtype " + v->as_string());
  }
  if (const JsonValue* v = w.Find("actorder"); v && v->is_string())
    g.g_idx = v->as_string() == "group";
}

// The strategy compressed-tensors infers when none is given, and the sizes a strategy needs
// (`bad` also marks the group undecodable: ParseConfigGroup).
void CheckStrategy(Group& g, const std::function<void(const std::string&)>& bad) {
  if (g.strategy.empty()) g.strategy = g.group_size ? "group" : "tensor";
  if (g.strategy == "block" && (g.bh == 0 || g.bw == 0))
    bad("strategy block without block_structure");
  if ((g.strategy == "group" || g.strategy == "tensor_group") && g.group_size == 0) {
    bad("strategy " + g.strategy + " without a positive group_size");
  }
}

// The format name (the group's, else the top-level one) to a Format, and whether the weights
// arguments are ones that format can store.
void ResolveFormat(Group& g, const std::function<void(const std::string&)>& bad) {
  const std::string& fn = g.format_name;
  const bool is_float = g.type == "float", is_int = g.type == "int";
  if (fn == "float-quantized" || (fn == "naive-quantized" && is_float)) {
    g.format = Format::kFloat;
    if (!is_float || g.bits != 8) bad(fn + " needs float 8-bit weights");
  } else if (fn == "int-quantized" || (fn == "naive-quantized" && is_int)) {
    g.format = Format::kInt;
    if (!is_int || g.bits < 1 || g.bits > 8) bad(fn + " needs int weights of 1-8 bits");
  } else if (fn == "pack-quantized") {
    g.format = Format::kPack;
    if (!is_int || g.bits < 1 || g.bits > 8) bad(fn + " needs int weights of 1-8 bits");
  } else if (fn == "nvfp4-pack-quantized") {
    g.format = Format::kNvfp4;
    if (!is_float || g.bits != 4 || g.group_size != 16 || g.strategy != "tensor_group") {
      bad(fn + " needs float 4-bit weights, strategy tensor_group, group 16");
    }
  } else if (fn == "mxfp4-pack-quantized") {
    g.format = Format::kMxfp4;
    if (!is_float || g.bits != 4 || g.group_size != 32 || g.strategy != "group") {
      bad(fn + " needs float 4-bit weights, strategy group, group 32");
    }
  } else if (fn == "mxfp8-quantized") {
    g.format = Format::kMxfp8;
    if (!is_float || g.bits != 8 || g.group_size != 32 || g.strategy != "group") {
      bad(fn + " needs float 8-bit weights, strategy group, group 32");
    }
  } else if (fn == "dense") {
    g.format = Format::kDense;
  } else {
    bad("format '" + fn + "' is not one quench verifies");
  }
}

}  // namespace

std::string Group::kind() const {
  switch (format) {
    case Format::kFloat:
    case Format::kMxfp8: return "fp8";
    case Format::kInt:
    case Format::kPack: return "int" + std::to_string(bits);
    case Format::kNvfp4: return "nvfp4";
    case Format::kMxfp4: return "mxfp4";
    default: return "";
  }
}

std::optional<Group> ParseConfigGroup(const std::string& key, const JsonValue& gj,
                                      const std::string& global_format,
                                      const std::function<void(const std::string&)>& bad) {
  Group g;
  g.key = key;
  if (!gj.is_object()) {
    bad("not an object");
    return std::nullopt;
  }
  const JsonValue* w = gj.Find("weights");
  if (w == nullptr || !w->is_object()) {
    bad("no weights arguments");
    return std::nullopt;
  }
  ReadWeightArgs(*w, g, bad);
  if (const JsonValue* a = gj.Find("input_activations"); a && a->is_object()) {
    const JsonValue* d = a->Find("dynamic");
    g.static_inputs = !(d && d->is_bool() && d->as_bool());
  }
  const auto undecodable = [&](const std::string& why) {
    g.decodable = false;
    bad(why);
  };
  CheckStrategy(g, undecodable);
  g.format_name = global_format;
  if (const JsonValue* v = gj.Find("format"); v && v->is_string()) g.format_name = v->as_string();
  ResolveFormat(g, undecodable);
  // Targets: "Linear" (or none) selects every module; anything else is matched by name.
  std::vector<std::string> targets;
  if (const JsonValue* t = gj.Find("targets"); t && t->is_array()) {
    for (const JsonValue& e : t->as_array()) {
      if (!e.is_string()) continue;
      if (e.as_string() == "Linear") g.all = true;
      targets.push_back(e.as_string());
    }
  }
  if (targets.empty()) g.all = true;
  auto tm = NameMatcher::Compile(targets, "config group '" + key + "' targets");
  if (!tm.ok()) {
    bad(tm.status().message());
    return std::nullopt;
  }
  g.targets = std::move(tm).value();
  return g;
}

}  // namespace quench::verify
