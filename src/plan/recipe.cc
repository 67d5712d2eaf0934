#include "plan/recipe.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <map>
#include <optional>
#include <string_view>

#include "format/file_io.h"
#include "format/quant_config.h"
#include "plan/observer_kwargs.h"
#include "plan/recipe_calib.h"
#include "plan/recipe_experts.h"
#include "plan/recipe_modifiers.h"
#include "plan/recipe_smooth.h"

namespace quench {
namespace {

Status Bad(const std::string& label, const std::string& what) {
  return Error(ErrorCode::kInvalidInput, label + ": " + what);
}

// The core schema's number patterns, scanned by hand: std::regex recurses once per character
// and overflows the stack on a long scalar.
size_t Digits(std::string_view s, size_t i) {
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
  return i;
}

// [-+]?[0-9]+
bool IsCoreInt(std::string_view s) {
  const size_t start = !s.empty() && (s[0] == '-' || s[0] == '+') ? 1 : 0;
  return s.size() > start && Digits(s, start) == s.size();
}

// [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?
bool IsCoreFloat(std::string_view s) {
  size_t i = !s.empty() && (s[0] == '-' || s[0] == '+') ? 1 : 0;
  if (i < s.size() && s[i] == '.') {
    const size_t end = Digits(s, i + 1);
    if (end == i + 1) return false;
    i = end;
  } else {
    const size_t end = Digits(s, i);
    if (end == i) return false;
    i = end;
    if (i < s.size() && s[i] == '.') i = Digits(s, i + 1);
  }
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < s.size() && (s[i] == '-' || s[i] == '+')) ++i;
    const size_t end = Digits(s, i);
    if (end == i) return false;
    i = end;
  }
  return i == s.size();
}

// YAML 1.2 core schema typing for plain scalars; quoted scalars stay strings.
JsonValue TypedScalar(const YAML::Node& n) {
  const std::string& s = n.Scalar();
  if (n.Tag() == "!") return JsonValue(s);  // quoted
  if (s.empty() || s == "~" || s == "null" || s == "Null" || s == "NULL") return JsonValue();
  if (s == "true" || s == "True" || s == "TRUE") return JsonValue(true);
  if (s == "false" || s == "False" || s == "FALSE") return JsonValue(false);
  if (IsCoreInt(s)) {
    int64_t v = 0;
    auto [p, ec] = std::from_chars(s.data() + (s[0] == '+'), s.data() + s.size(), v);
    if (ec == std::errc() && p == s.data() + s.size()) return JsonValue(v);
  }
  // strtod, not std::stod: a value out of double's range becomes +-inf or 0 (as Python's
  // float() makes it) instead of throwing std::out_of_range.
  if (IsCoreFloat(s)) return JsonValue(std::strtod(s.c_str(), nullptr));
  return JsonValue(s);
}

// Bounds on the YAML tree: an alias that refers to its own node (`&a [*a]`) is a cycle, and
// aliases of aliases can name exponentially many nodes; either would exhaust the stack or the
// memory while being converted. Real recipes are a few levels deep and a few hundred nodes.
constexpr int kMaxYamlDepth = 64;
constexpr size_t kMaxYamlNodes = 1'000'000;

struct YamlWalk {
  size_t nodes = 0;
  bool too_big = false;
};

JsonValue FromYaml(const YAML::Node& n, int depth, YamlWalk& walk) {
  if (depth > kMaxYamlDepth || ++walk.nodes > kMaxYamlNodes) {
    walk.too_big = true;
    return JsonValue();
  }
  switch (n.Type()) {
    case YAML::NodeType::Map: {
      JsonValue o = JsonValue::MakeObject();
      for (const auto& kv : n) {
        if (walk.too_big) break;
        o.Set(kv.first.as<std::string>(), FromYaml(kv.second, depth + 1, walk));
      }
      return o;
    }
    case YAML::NodeType::Sequence: {
      JsonValue a = JsonValue::MakeArray();
      for (const auto& e : n) {
        if (walk.too_big) break;
        a.Push(FromYaml(e, depth + 1, walk));
      }
      return a;
    }
    case YAML::NodeType::Scalar:
      return TypedScalar(n);
    default:
      return JsonValue();
  }
}

Result<std::vector<std::string>> StringList(const JsonValue* v, const std::string& label,
                                            const std::string& field) {
  std::vector<std::string> out;
  if (v == nullptr || v->is_null()) return out;
  if (v->is_string()) return std::vector<std::string>{v->as_string()};
  if (!v->is_array()) return Bad(label, "'" + field + "' must be a list of strings");
  for (const JsonValue& e : v->as_array()) {
    if (!e.is_string()) return Bad(label, "'" + field + "' must be a list of strings");
    out.push_back(e.as_string());
  }
  return out;
}

std::string Str(const JsonValue* v) { return v != nullptr && v->is_string() ? v->as_string() : ""; }

// A whole-number field: absent or null gives `fallback`; anything else must be a whole number
// (an integer, or a float with no fraction, as pydantic's lax mode accepts) in [lo, hi], or
// the recipe is refused naming the field.
Result<std::optional<int>> WholeNumber(const JsonValue* v, const std::string& label,
                                       const std::string& what, int lo, int hi,
                                       std::optional<int> fallback = std::nullopt) {
  if (v == nullptr || v->is_null()) return fallback;
  bool whole = false;
  int64_t n = 0;
  if (v->is_int()) {
    whole = true;
    n = v->as_int();  // saturates: out of range below
  } else if (v->is_double()) {
    const double d = v->as_double();
    whole = std::isfinite(d) && std::floor(d) == d && std::fabs(d) < 9.0e15;
    if (whole) n = static_cast<int64_t>(d);
  }
  if (!whole || n < lo || n > hi) {
    return Bad(label, what + " must be a whole number from " + std::to_string(lo) + " to " +
                          std::to_string(hi));
  }
  return std::optional<int>(static_cast<int>(n));
}

// A boolean field: absent or null gives `fallback`.
Result<bool> Boolean(const JsonValue* v, const std::string& label, const std::string& what,
                     bool fallback) {
  if (v == nullptr || v->is_null()) return fallback;
  if (!v->is_bool()) return Bad(label, what + " must be true or false");
  return v->as_bool();
}

// A group's input_activations, as MatchArgs compares them with each scheme's.
struct ActArgs {
  const JsonValue* args = nullptr;  // null: none (absent or null)
  // Static activations (dynamic false, or "local" for NVFP4's tensor_group) take their scales
  // from activation statistics; whether the run has them is checked with the options.
  bool is_static = false;
  bool symmetric = true;
};

Result<ActArgs> ParseActivations(const std::string& label, const std::string& key,
                                 const JsonValue& group) {
  ActArgs acts;
  const JsonValue* a = group.Find("input_activations");
  if (a != nullptr && a->is_null()) a = nullptr;
  acts.args = a;
  if (const JsonValue* o = group.Find("output_activations"); o != nullptr && !o->is_null()) {
    return Bad(label, "group '" + key + "': output_activations need calibration data");
  }
  if (a == nullptr) return acts;
  const JsonValue* dyn = a->Find("dynamic");
  if (dyn == nullptr || dyn->is_null() || (dyn->is_bool() && !dyn->as_bool()) ||
      (dyn->is_string() && dyn->as_string() == "local")) {
    acts.is_static = true;
  } else if (!dyn->is_bool()) {
    return Bad(label, "group '" + key +
                          "': input_activations.dynamic must be true, false "
                          "or \"local\"");
  }
  QUENCH_ASSIGN_OR_RETURN(acts.symmetric,
                          Boolean(a->Find("symmetric"), label,
                                  "group '" + key + "': input_activations.symmetric", true));
  const std::string aobs = Str(a->Find("observer"));
  if (!aobs.empty() && aobs != "minmax" && aobs != "static_minmax" && aobs != "memoryless_minmax") {
    return Bad(label, "group '" + key + "': input_activations observer '" + aobs +
                          "' is not supported; quench computes min-max scales");
  }
  return acts;
}

// A group's weights, as MatchArgs compares them with each scheme's.
struct WeightArgs {
  std::string type;  // "int" unless given
  int bits = 8;
  bool symmetric = true;
  std::optional<int> group_size;
  std::string strategy;  // as given, else implied by group_size
  std::optional<std::pair<int, int>> block;
  std::string observer;
};

Result<WeightArgs> ParseWeights(const std::string& label, const std::string& key,
                                const JsonValue& w) {
  if (const JsonValue* d = w.Find("dynamic"); d != nullptr && !(d->is_bool() && !d->as_bool())) {
    return Bad(label, "group '" + key + "': weights must be static (dynamic: false)");
  }
  WeightArgs args;
  args.observer = Str(w.Find("observer"));
  const std::string& obs = args.observer;
  if (!obs.empty() && obs != "minmax" && obs != "memoryless_minmax" && obs != "static_minmax" &&
      obs != "imatrix_mse") {
    return Bad(label, "group '" + key + "': observer '" + obs +
                          "' is not supported; quench computes min-max scales, or imatrix_mse "
                          "ones from --stats");
  }
  if (const JsonValue* ao = w.Find("actorder");
      ao != nullptr && !ao->is_null() && !(ao->is_bool() && !ao->as_bool())) {
    return Bad(label, "group '" + key + "': actorder needs GPTQ (calibration)");
  }
  args.type = Str(w.Find("type")).empty() ? "int" : Str(w.Find("type"));
  const std::string field = "group '" + key + "': weights.";
  QUENCH_ASSIGN_OR_RETURN(std::optional<int> num_bits,
                          WholeNumber(w.Find("num_bits"), label, field + "num_bits", 1, 64, 8));
  args.bits = *num_bits;
  QUENCH_ASSIGN_OR_RETURN(args.symmetric,
                          Boolean(w.Find("symmetric"), label, field + "symmetric", true));
  QUENCH_ASSIGN_OR_RETURN(
      args.group_size, WholeNumber(w.Find("group_size"), label, field + "group_size", -1, 1 << 30));
  args.strategy = Str(w.Find("strategy"));
  if (args.strategy.empty()) {
    args.strategy = !args.group_size ? "tensor" : *args.group_size > 0 ? "group" : "channel";
  }
  if (const JsonValue* b = w.Find("block_structure");
      b != nullptr && b->is_array() && b->as_array().size() == 2) {
    QUENCH_ASSIGN_OR_RETURN(
        std::optional<int> rows,
        WholeNumber(&b->as_array()[0], label, field + "block_structure", 1, 1 << 30));
    QUENCH_ASSIGN_OR_RETURN(
        std::optional<int> cols,
        WholeNumber(&b->as_array()[1], label, field + "block_structure", 1, 1 << 30));
    if (!rows || !cols) return Bad(label, field + "block_structure must be two whole numbers");
    args.block = std::make_pair(*rows, *cols);
  }
  return args;
}

// Whether scheme `s`'s activations are the group's: none versus present, and then the same
// type, bits and strategy.
Result<bool> ActivationsMatch(const SchemeInfo& s, const ActArgs& acts, const std::string& label,
                              const std::string& key) {
  const JsonValue* a = acts.args;
  if ((a == nullptr) != !s.input_activations.has_value()) return false;
  if (a == nullptr) return true;
  const QuantArgsDesc& sa = *s.input_activations;
  const std::string at = Str(a->Find("type")).empty() ? "int" : Str(a->Find("type"));
  QUENCH_ASSIGN_OR_RETURN(std::optional<int> ab_or,
                          WholeNumber(a->Find("num_bits"), label,
                                      "group '" + key + "': input_activations.num_bits", 1, 64, 8));
  const int ab = *ab_or;
  if (at != sa.type || ab != sa.num_bits) return false;
  const std::string as = Str(a->Find("strategy"));
  const bool preset_static = !sa.dynamic;
  if (acts.is_static) {
    // The preset's own static activations (FP8, NVFP4), or a per-token preset made static
    // per tensor.
    if (preset_static ? as != sa.strategy : !(as == "tensor" && CanMakeActivationsStatic(s))) {
      return false;
    }
    return acts.symmetric || (at == "int" && !preset_static);
  }
  return !preset_static && as == sa.strategy;
}

// Matches explicit QuantizationArgs (and activations, and an optional format) to a scheme of
// the table plus parameters. Weight args that only the integer family varies (bits, group size,
// symmetry) become SchemeParams; everything else must equal the table entry's.
Result<RecipeGroup> MatchArgs(const std::string& label, const std::string& key,
                              const JsonValue& group) {
  const JsonValue* w = group.Find("weights");
  if (w == nullptr || !w->is_object()) {
    return Bad(label, "group '" + key + "' has no 'weights' (quench quantizes weights)");
  }
  QUENCH_ASSIGN_OR_RETURN(const ActArgs acts, ParseActivations(label, key, group));
  QUENCH_ASSIGN_OR_RETURN(const WeightArgs wa, ParseWeights(label, key, *w));
  const JsonValue* a = acts.args;
  const std::string format = Str(group.Find("format"));
  for (const SchemeInfo& s : SchemeTable()) {
    if (s.outputs == nullptr) continue;
    const QuantArgsDesc& sw = s.weights;
    if (sw.type != wa.type) continue;
    if (!format.empty() && format != s.format) continue;
    QUENCH_ASSIGN_OR_RETURN(const bool acts_match, ActivationsMatch(s, acts, label, key));
    if (!acts_match) continue;
    SchemeParams p = s.DefaultParams();
    if (a != nullptr) {
      p.static_input = acts.is_static;
      p.input_symmetric = acts.symmetric;
    }
    if (wa.type == "int") {
      // The integer family: one kernel per storage (packed or not) covers every width,
      // group size and symmetry; the activations decide the preset.
      if (wa.bits < 2 || wa.bits > 8) continue;
      if (wa.strategy != "group" && wa.strategy != "channel") continue;
      if (s.format == "int-quantized" && a == nullptr) continue;
      p.bits = wa.bits;
      p.symmetric = wa.symmetric;
      p.group_size = wa.strategy == "channel" ? std::optional<int>(-1) : wa.group_size;
      if (wa.strategy == "group" &&
          (!wa.group_size || *wa.group_size <= 0 || *wa.group_size % 8 != 0)) {
        return Bad(label, "group '" + key + "': group_size must be a positive multiple of 8");
      }
      // Among packed presets prefer the one of the same width (its name reads right).
      if (s.format == "pack-quantized" && a == nullptr && sw.num_bits != wa.bits) continue;
    } else if (sw.num_bits != wa.bits || sw.strategy != wa.strategy ||
               sw.group_size != wa.group_size || sw.block_structure != wa.block || !wa.symmetric) {
      continue;
    }
    RecipeGroup rg;
    rg.key = key;
    rg.scheme = &s;
    rg.params = p;
    if (wa.observer == "imatrix_mse") rg.observer = wa.observer;  // src/calib/imatrix_run.h
    if (const JsonValue* kw = w->Find("observer_kwargs"); kw != nullptr) {
      const Result<ObserverSettings> checked =
          ParseObserverKwargs(rg.observer, *kw, "group '" + key + "': weights.");
      if (!checked.ok()) return Bad(label, checked.status().message());
      rg.observer_kwargs = ObserverKwargsText(*kw);
    }
    return rg;
  }
  return Bad(label, "group '" + key + "': no data-free scheme matches these weights/" +
                        "activations (see `quench schemes`)");
}

Result<RecipeGroup> ResolveGroup(const std::string& label, const std::string& key,
                                 const JsonValue& group) {
  RecipeGroup rg;
  if (group.is_string()) {  // a preset name
    const SchemeInfo* s = FindScheme(group.as_string());
    if (s == nullptr)
      return Bad(label, "group '" + key + "': unknown scheme '" + group.as_string() + "'");
    rg = {key, s, s->DefaultParams(), {"Linear"}};
  } else if (group.is_object()) {
    if (const JsonValue* preset = group.Find("scheme"); preset != nullptr && preset->is_string()) {
      const SchemeInfo* s = FindScheme(preset->as_string());
      if (s == nullptr)
        return Bad(label, "group '" + key + "': unknown scheme '" + preset->as_string() + "'");
      rg = {key, s, s->DefaultParams(), {}};
    } else {
      QUENCH_ASSIGN_OR_RETURN(rg, MatchArgs(label, key, group));
    }
    QUENCH_ASSIGN_OR_RETURN(rg.targets, StringList(group.Find("targets"), label, key + ".targets"));
  } else {
    return Bad(label, "group '" + key + "' must be a preset name or an object");
  }
  if (rg.targets.empty()) rg.targets = {"Linear"};
  return rg;
}

}  // namespace

Result<JsonValue> ParseYaml(const std::string& label, const std::string& text) {
  try {
    YamlWalk walk;
    JsonValue doc = FromYaml(YAML::Load(text), 0, walk);
    if (walk.too_big) {
      return Bad(label, "YAML nested deeper than " + std::to_string(kMaxYamlDepth) +
                            " levels or with more than " + std::to_string(kMaxYamlNodes) +
                            " nodes (an alias that contains itself, or aliases of aliases)");
    }
    return doc;
  } catch (const YAML::Exception& e) {
    return Bad(label, std::string("not valid YAML: ") + e.what());
  }
}

Result<Recipe> InterpretRecipe(const JsonValue& doc_in, const std::string& label) {
  const JsonValue* doc = &doc_in;
  if (const JsonValue* q = doc->Find("quantization_config")) doc = q;  // a config.json
  Recipe r;
  Modifiers m;
  if (doc->Find("config_groups") == nullptr) {
    QUENCH_ASSIGN_OR_RETURN(m, PickModifiers(*doc, label));
    doc = m.quantizing;
  }
  if (const JsonValue* kv = doc->Find("kv_cache_scheme"); kv != nullptr && !kv->is_null()) {
    // FP8 per tensor, static: the one KV-cache scheme vLLM reads k_scale / v_scale for (the
    // scales come from activation statistics; the run checks it has them).
    const std::string what = "kv_cache_scheme needs k/v scales computed from activation "
                             "statistics; quench writes FP8 (num_bits 8, type float, strategy "
                             "tensor, symmetric, static)";
    if (!kv->is_object()) return Bad(label, what);
    const std::string type = Str(kv->Find("type")).empty() ? "int" : Str(kv->Find("type"));
    const std::string strategy = Str(kv->Find("strategy"));
    const JsonValue* bits = kv->Find("num_bits");
    const JsonValue* dyn = kv->Find("dynamic");
    const JsonValue* sym = kv->Find("symmetric");
    if (type != "float" || bits == nullptr || !bits->is_int() || bits->as_int() != 8 ||
        !(strategy.empty() || strategy == "tensor") ||
        !(dyn == nullptr || dyn->is_null() || (dyn->is_bool() && !dyn->as_bool())) ||
        !(sym == nullptr || sym->is_null() || (sym->is_bool() && sym->as_bool()))) {
      return Bad(label, what);
    }
    r.kv_cache = "fp8";
  }
  QUENCH_ASSIGN_OR_RETURN(r.ignore, StringList(doc->Find("ignore"), label, "ignore"));
  if (const JsonValue* cg = doc->Find("config_groups"); cg != nullptr && !cg->is_null()) {
    if (!cg->is_object()) return Bad(label, "'config_groups' must be an object");
    for (const auto& [key, group] : cg->as_object()) {
      QUENCH_ASSIGN_OR_RETURN(RecipeGroup g, ResolveGroup(label, key, group));
      r.groups.push_back(std::move(g));
    }
  }
  if (const JsonValue* scheme = doc->Find("scheme"); scheme != nullptr && !scheme->is_null()) {
    QUENCH_ASSIGN_OR_RETURN(std::vector<std::string> targets,
                            StringList(doc->Find("targets"), label, "targets"));
    if (targets.empty()) targets = {"Linear"};
    if (scheme->is_string()) {
      QUENCH_ASSIGN_OR_RETURN(RecipeGroup g, ResolveGroup(label, scheme->as_string(), *scheme));
      g.targets = targets;
      r.groups.push_back(std::move(g));
    } else if (scheme->is_object()) {
      // {PRESET: [targets], ...}: llm-compressor's mixed-precision shorthand.
      for (const auto& [preset, tg] : scheme->as_object()) {
        QUENCH_ASSIGN_OR_RETURN(RecipeGroup g, ResolveGroup(label, preset, JsonValue(preset)));
        QUENCH_ASSIGN_OR_RETURN(g.targets, StringList(&tg, label, "scheme." + preset));
        r.groups.push_back(std::move(g));
      }
    } else {
      return Bad(label, "'scheme' must be a preset name or a {preset: [targets]} map");
    }
  }
  if (r.groups.empty()) return Bad(label, "no config group or scheme");
  QUENCH_RETURN_IF_ERROR(m.combination);
  // Every calibrated modifier, composed as --algorithm's comma list (recipe_modifiers.h).
  QUENCH_ASSIGN_OR_RETURN(r.calibration, ReadCalibrations(m, r.ignore, label));
  if (m.experts_mod != nullptr) {
    QUENCH_RETURN_IF_ERROR(ReadExpertPruning(m.experts, *m.experts_mod, label, r.calibration));
  }
  for (size_t i = 0; i < r.groups.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (r.groups[i].key == r.groups[j].key)
        return Bad(label, "group '" + r.groups[i].key + "' appears twice");
    }
  }
  return r;
}

Result<Recipe> LoadRecipe(const std::filesystem::path& path) {
  QUENCH_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  const std::string label = path.string();
  if (path.extension() == ".json") {
    QUENCH_ASSIGN_OR_RETURN(JsonValue doc, ParseJson(label, text));
    return InterpretRecipe(doc, label);
  }
  QUENCH_ASSIGN_OR_RETURN(JsonValue doc, ParseYaml(label, text));
  return InterpretRecipe(doc, label);
}

}  // namespace quench
