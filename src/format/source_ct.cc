#include "format/source_ct.h"

#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <regex>
#include <set>

#include "format/file_io.h"  // ReadFileRange
#include "format/source_quant.h"
#include "quench/tensor.h"

namespace quench {
namespace {

uint64_t CeilDiv(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

// compressed-tensors' match_name on module names: an exact name, or "re:" and a regex applied
// with Python's re.match (anchored at the start only). (plan/matcher.h is the planner's; the
// format layer sits below it.)
class Names {
 public:
  static Result<Names> Compile(const std::vector<std::string>& entries, const std::string& what) {
    Names n;
    for (const std::string& e : entries) {
      if (!e.starts_with("re:")) {
        n.exact_.insert(e);
        continue;
      }
      try {
        n.res_.emplace_back(e.substr(3), std::regex::ECMAScript | std::regex::optimize);
      } catch (const std::regex_error&) {
        return Error(ErrorCode::kInvalidInput, what + ": '" + e + "' is not a valid regex");
      }
    }
    return n;
  }
  bool Matches(const std::string& module) const {
    if (exact_.contains(module)) return true;
    for (const std::regex& re : res_) {
      // const char* iterators, as plan/matcher.cc: one instantiation of the regex executor.
      const std::string_view m(module);
      if (std::regex_search(m.begin(), m.end(), re, std::regex_constants::match_continuous)) {
        return true;
      }
    }
    return false;
  }

 private:
  std::set<std::string> exact_;
  std::vector<std::regex> res_;
};

std::pair<std::string_view, std::string_view> ModuleParam(std::string_view name) {
  const size_t dot = name.rfind('.');
  if (dot == std::string_view::npos) return {std::string_view(), name};
  return {name.substr(0, dot), name.substr(dot + 1)};
}

// One config group as the dequantizer sees it.
struct Group {
  std::string name;
  std::vector<std::string> targets;
  bool all_linear = false;  // "Linear" among the targets (or none): every module matches
  Names matcher;
  CtWeight proto;           // format and weight arguments; no tensors
};

// The per-expert pieces SplitFusedExperts cut from each stack, by the stack's name.
using PiecesOf =
    std::map<std::string, std::vector<std::pair<std::string, const ModelFolder::CtPiece*>>>;
// A tensor of the source by name; absent (present false) where it has none.
using CtFinder = std::function<CtTensor(const std::string&)>;

// compressed-tensors' infer_module_format (COMPRESSION_FORMAT_PRIORITY): the first format
// whose can_compress accepts the scheme.
CtFormat InferFormat(const CtWeight& w, bool has_inputs, bool inputs_float,
                     const std::string& scale_dtype) {
  if (w.is_float && w.num_bits == 4 && w.group_size == 32) return CtFormat::kMxfp4;
  if (w.is_float && w.num_bits == 8 && w.group_size == 32 && scale_dtype == "torch.uint8") {
    return CtFormat::kMxfp8;
  }
  if (w.is_float && w.num_bits == 4 && w.group_size == 16) return CtFormat::kNvfp4;
  if (has_inputs && !w.is_float) return CtFormat::kInt;
  if (!(has_inputs && inputs_float) && !w.is_float && w.num_bits >= 1 && w.num_bits <= 8) {
    return CtFormat::kPack;
  }
  if (has_inputs && w.is_float) return CtFormat::kFloat;
  return CtFormat::kNaive;
}

// Group `name`'s weight arguments onto `*out`: bits, type, symmetry, group size, strategy, block
// structure, refused where the decoder has no reading of them. `at` names the group.
Status ParseWeightArgs(const std::string& name, const JsonValue& w, const std::string& at,
                       CtWeight* out) {
  CtWeight& p = *out;
  p.group = name;
  auto str = [&](const char* k) {
    const JsonValue* v = w.Find(k);
    return v != nullptr && v->is_string() ? v->as_string() : std::string();
  };
  auto uint = [&](const char* k) -> uint64_t {
    const JsonValue* v = w.Find(k);
    return v != nullptr && v->is_int() && v->as_int() > 0 ? v->as_uint() : 0;
  };
  p.num_bits = static_cast<int>(uint("num_bits"));
  p.is_float = str("type") == "float";
  if (const JsonValue* s = w.Find("symmetric"); s != nullptr && s->is_bool()) {
    p.symmetric = s->as_bool();
  }
  p.group_size = uint("group_size");
  const std::string strategy = str("strategy");
  static const std::map<std::string, CtStrategy> kStrategies = {
      {"tensor", CtStrategy::kTensor},
      {"channel", CtStrategy::kChannel},
      {"group", CtStrategy::kGroup},
      {"tensor_group", CtStrategy::kTensorGroup},
      {"block", CtStrategy::kBlock}};
  auto it = kStrategies.find(strategy);
  if (it == kStrategies.end()) {
    return Error(ErrorCode::kUnsupported, at + ".weights.strategy '" + strategy +
                                              "': quench decodes tensor, channel, group, "
                                              "tensor_group and block weights");
  }
  p.strategy = it->second;
  if (p.strategy == CtStrategy::kBlock) {
    const JsonValue* b = w.Find("block_structure");
    if (b == nullptr || !b->is_array() || b->as_array().size() != 2 || !b->as_array()[0].is_int() ||
        !b->as_array()[1].is_int() || b->as_array()[0].as_int() <= 0 ||
        b->as_array()[1].as_int() <= 0) {
      return Error(ErrorCode::kInvalidInput,
                   at + ".weights.block_structure must be two positive integers");
    }
    p.block_rows = b->as_array()[0].as_uint();
    p.block_cols = b->as_array()[1].as_uint();
  }
  if ((p.strategy == CtStrategy::kGroup || p.strategy == CtStrategy::kTensorGroup) &&
      p.group_size == 0) {
    return Error(ErrorCode::kInvalidInput,
                 at + ".weights: strategy " + strategy + " needs a positive group_size");
  }
  if (p.num_bits < 1 || p.num_bits > 8 || (p.is_float && p.num_bits != 8 && p.num_bits != 4)) {
    return Error(ErrorCode::kUnsupported, at + ".weights: " + std::to_string(p.num_bits) + "-bit " +
                                              (p.is_float ? "float" : "int") +
                                              " weights cannot be decoded");
  }
  return Status::Ok();
}

// A written format that differs from the inferred one: the dequantizer decodes with the
// inferred format; a written one that can hold these weights is what the writer used
// (model_free_ptq writes W4AFP8, int4 weights with FP8 activations, as pack-quantized where
// inference says int-quantized): the tensors follow it. One that cannot hold them contradicts
// the config.
Status ApplyWrittenFormat(const JsonValue& g, const std::string& at, CtWeight* p) {
  const JsonValue* f = g.Find("format");
  if (f == nullptr || !f->is_string() || f->as_string() == CtFormatName(p->format)) {
    return Status::Ok();
  }
  const std::string& w = f->as_string();
  const bool int_w = !p->is_float, f8 = p->is_float && p->num_bits == 8;
  const bool fits = (w == "pack-quantized" && int_w) ||
                    ((w == "int-quantized" || w == "naive-quantized") && (int_w || f8)) ||
                    (w == "float-quantized" && f8);
  if (!fits) {
    return Error(ErrorCode::kInvalidInput,
                 at + ".format '" + w + "' contradicts its weights, which " +
                     "compressed-tensors stores as " + std::string(CtFormatName(p->format)));
  }
  p->format = w == "pack-quantized"    ? CtFormat::kPack
              : w == "int-quantized"   ? CtFormat::kInt
              : w == "float-quantized" ? CtFormat::kFloat
                                       : CtFormat::kNaive;
  return Status::Ok();
}

Result<Group> ParseGroup(const std::string& name, const JsonValue& g, const std::string& where) {
  Group out;
  out.name = name;
  const std::string at = where + ": quantization_config.config_groups." + name;
  const JsonValue* t = g.Find("targets");
  if (t != nullptr && t->is_array()) {
    for (const JsonValue& e : t->as_array()) {
      if (e.is_string()) out.targets.push_back(e.as_string());
    }
  }
  std::vector<std::string> names;
  for (const std::string& e : out.targets) {
    if (e == "Linear")
      out.all_linear = true;
    else
      names.push_back(e);
  }
  out.all_linear |= out.targets.empty();
  QUENCH_ASSIGN_OR_RETURN(out.matcher, Names::Compile(names, at + ".targets"));
  const JsonValue* w = g.Find("weights");
  if (w == nullptr || !w->is_object()) {
    return Error(ErrorCode::kUnsupported, at + " quantizes no weights; nothing to decode");
  }
  QUENCH_RETURN_IF_ERROR(ParseWeightArgs(name, *w, at, &out.proto));
  CtWeight& p = out.proto;
  const JsonValue* in = g.Find("input_activations");
  const bool has_inputs = in != nullptr && in->is_object();
  bool inputs_float = false;
  if (has_inputs) {
    const JsonValue* ty = in->Find("type");
    inputs_float = ty != nullptr && ty->is_string() && ty->as_string() == "float";
  }
  const JsonValue* scale_dtype = w->Find("scale_dtype");
  p.format =
      InferFormat(p, has_inputs, inputs_float,
                  scale_dtype != nullptr && scale_dtype->is_string() ? scale_dtype->as_string()
                                                                     : std::string());
  if (p.is_float && p.num_bits == 4 && p.format != CtFormat::kNvfp4 &&
      p.format != CtFormat::kMxfp4) {
    return Error(ErrorCode::kUnsupported, at + ".weights: FP4 weights in groups of " +
                                              std::to_string(p.group_size) +
                                              " are neither NVFP4 (16) nor MXFP4 (32)");
  }
  QUENCH_RETURN_IF_ERROR(ApplyWrittenFormat(g, at, &p));
  return out;
}

// Reads the few bytes of a weight_shape tensor (a shape is metadata, read at planning).
// `dims`: 2, or 3 for a stack of experts' weights.
Result<std::vector<uint64_t>> ReadShape(const ModelFolder& folder, const CtTensor& t,
                                        uint64_t dims) {
  const std::string where = folder.shards[t.shard].rel_name + ": tensor '" + t.name + "'";
  if ((t.dtype != DType::kI64 && t.dtype != DType::kI32) ||
      t.shape != std::vector<uint64_t>{dims}) {
    return Error(ErrorCode::kInvalidInput,
                 where + " must hold the weight's " + (dims == 2 ? "two" : "three") +
                     " dimensions (I64 or I32 [" + std::to_string(dims) + "]), not " +
                     std::string(DTypeName(t.dtype)) + " " + ShapeString(t.shape));
  }
  std::vector<uint8_t> raw(t.nbytes);
  if (Status s = ReadFileRange(folder.shards[t.shard].path, t.offset, raw.size(), raw.data());
      !s.ok()) {
    return Error(ErrorCode::kIo, where + ": cannot read its " + std::to_string(raw.size()) +
                                     " bytes: " + s.message());
  }
  std::vector<uint64_t> out;
  for (uint64_t i = 0; i < dims; ++i) {
    int64_t v = 0;
    if (t.dtype == DType::kI64) {
      std::memcpy(&v, raw.data() + 8 * i, 8);
    } else {
      int32_t v32;
      std::memcpy(&v32, raw.data() + 4 * i, 4);
      v = v32;
    }
    if (v <= 0) return Error(ErrorCode::kInvalidInput, where + " holds a dimension <= 0");
    out.push_back(static_cast<uint64_t>(v));
  }
  return out;
}

}  // namespace

std::string_view CtFormatName(CtFormat f) {
  switch (f) {
    case CtFormat::kNaive:
      return "naive-quantized";
    case CtFormat::kFloat:
      return "float-quantized";
    case CtFormat::kInt: return "int-quantized";
    case CtFormat::kPack: return "pack-quantized";
    case CtFormat::kNvfp4: return "nvfp4-pack-quantized";
    case CtFormat::kMxfp4: return "mxfp4-pack-quantized";
    case CtFormat::kMxfp8: return "mxfp8-quantized";
  }
  return "?";
}

Status CheckCtWeight(const ModelFolder& folder, CtWeight& w);  // source_ct_check.cc
std::string DescribeCtGroup(const CtWeight& w, size_t weights);  // source_ct_check.cc

namespace {

// Every tensor of the folder by name, as the source stores it: stacks SplitFusedExperts cut
// into per-expert pieces stand as the stacks they were (`*pieces_of` lists each one's pieces,
// decoded from the stack's slices), and stacks expert pruning sliced and left 3-D as the
// source stored them (decoded at the kept experts' slices, CtWeight::kept).
std::map<std::string, CtTensor> SourceTensors(const ModelFolder& folder, PiecesOf* pieces_of) {
  std::map<std::string, CtTensor> all;
  for (size_t si = 0; si < folder.shards.size(); ++si) {
    const Shard& sh = folder.shards[si];
    for (const TensorInfo& t : sh.header.tensors) {
      all[t.name] = CtTensor{true, t.name, si, sh.header.data_start + t.begin, t.nbytes(),
                             t.dtype, t.shape};
    }
  }
  for (const auto& [piece, cp] : folder.ct_pieces) {
    const Shard& sh = folder.shards[cp.shard];
    all[cp.stack.name] = CtTensor{true, cp.stack.name, cp.shard,
                                  sh.header.data_start + cp.stack.begin, cp.stack.nbytes(),
                                  cp.stack.dtype, cp.stack.shape};
    (*pieces_of)[cp.stack.name].emplace_back(piece, &cp);
  }
  for (const auto& [name, ck] : folder.ct_kept) {
    auto it = all.find(name);
    if (it == all.end()) continue;
    it->second.offset = folder.shards[it->second.shard].header.data_start + ck.stack.begin;
    it->second.nbytes = ck.stack.nbytes();
    it->second.shape = ck.stack.shape;
  }
  return all;
}

// The modules that hold quantized weights; the activation and KV-cache parameters (which the
// output does not keep) go to out->consumed.
std::set<std::string> QuantizedModules(const ModelFolder& folder,
                                       const std::map<std::string, CtTensor>& all,
                                       SourceQuantization* out) {
  static constexpr std::string_view kDropped[] = {
      "input_scale", "input_zero_point", "input_global_scale", "output_scale",
      "output_zero_point", "output_global_scale", "k_scale", "v_scale"};
  std::set<std::string> modules;
  for (const auto& [name, t] : all) {
    if (folder.ct_pieces.contains(name)) continue;  // its stack's module stands for it
    auto [module, param] = ModuleParam(name);
    if (param == "weight_packed" || param == "weight_scale") modules.emplace(module);
    if (param == "weight" && !IsQuantizableFloat(t.dtype) && t.shape.size() >= 2) {
      modules.emplace(module);  // I8 / F8 codes: checked for a scale below
    }
    for (std::string_view d : kDropped) {
      if (param == d) out->consumed.push_back(name);  // activation / KV-cache parameters
    }
  }
  return modules;
}

// Module `m`'s weight under group `g`: its tensors found, the pack-quantized unpacked shape
// read, and the whole checked (CheckCtWeight). `rel`: the shard named in messages. The
// weight_shape tensor, where present, goes to `*shape`.
Result<std::shared_ptr<CtWeight>> MakeCtWeight(const ModelFolder& folder, const std::string& m,
                                               const Group& g, const std::string& rel,
                                               const CtFinder& find, CtTensor* shape) {
  auto w = std::make_shared<CtWeight>(g.proto);
  const bool packed = w->format == CtFormat::kPack || w->format == CtFormat::kNvfp4 ||
                      w->format == CtFormat::kMxfp4;
  w->codes = find(m + (packed ? ".weight_packed" : ".weight"));
  w->scale = find(m + ".weight_scale");
  w->zero_point = find(m + ".weight_zero_point");
  w->g_idx = find(m + ".weight_g_idx");
  w->global_scale = find(m + ".weight_global_scale");
  *shape = find(m + ".weight_shape");
  if (!w->codes.present) {
    return Error(ErrorCode::kInvalidInput,
                 rel + ": module '" + m + "' has no '" + m +
                     (packed ? ".weight_packed" : ".weight") + "', which its group " + g.name +
                     " (" + std::string(CtFormatName(w->format)) + ") stores");
  }
  if (w->format == CtFormat::kPack) {
    if (!shape->present) {
      return Error(ErrorCode::kInvalidInput,
                   rel + ": tensor '" + w->codes.name + "' has no '" + m +
                       ".weight_shape' (pack-quantized stores the unpacked shape)");
    }
    const uint64_t dims = w->codes.shape.size() == 3 ? 3 : 2;
    QUENCH_ASSIGN_OR_RETURN(std::vector<uint64_t> s, ReadShape(folder, *shape, dims));
    if (dims == 3 && s[0] != w->codes.shape[0]) {
      return Error(ErrorCode::kInvalidInput,
                   rel + ": tensor '" + shape->name + "' says " + std::to_string(s[0]) +
                       " experts but '" + w->codes.name + "' " + ShapeString(w->codes.shape) +
                       " stacks " + std::to_string(w->codes.shape[0]));
    }
    w->rows = s[dims - 2];
    w->cols = s[dims - 1];
  }
  QUENCH_RETURN_IF_ERROR(CheckCtWeight(folder, *w));
  if (auto k = folder.ct_kept.find(w->codes.name); k != folder.ct_kept.end() && w->experts > 0) {
    w->kept = k->second.kept;
    w->experts = w->kept.size();
  }
  return w;
}

// The weight's decoding entry (its scale tensor's place, the CtWeight): under `m`.weight, or
// under each per-expert piece's name where the stack was split.
void AddScales(const std::string& m, const std::shared_ptr<CtWeight>& w,
               const PiecesOf& pieces_of, SourceQuantization* out) {
  SourceScale sc;
  sc.shard = w->scale.shard;
  sc.name = w->scale.name;
  sc.dtype = w->scale.dtype;
  sc.shape = w->scale.shape;
  sc.offset = w->scale.offset;
  sc.nbytes = w->scale.nbytes;
  sc.block_rows = w->scale_row_span;
  sc.block_cols = CeilDiv(w->cols, w->scale_cols);
  sc.ct = w;
  if (auto pc = pieces_of.find(w->codes.name); pc != pieces_of.end()) {
    // Split per expert: each piece is a weight of its own, decoded from its expert's slice.
    for (const auto& [piece, cp] : pc->second) {
      const std::string weight =
          piece.ends_with("_packed") ? piece.substr(0, piece.size() - 7) : piece;
      if (piece != weight) out->renamed.emplace(piece, weight);
      SourceScale ps = sc;
      ps.ct_expert = static_cast<int64_t>(cp->expert);
      ps.ct_row0 = cp->row0;
      out->scales.emplace(weight, std::move(ps));
    }
    return;
  }
  if (w->codes.name != m + ".weight") out->renamed.emplace(w->codes.name, m + ".weight");
  out->scales.emplace(m + ".weight", std::move(sc));
}

}  // namespace

Status DetectCompressedTensors(const ModelFolder& folder, const JsonValue& q,
                               const std::string& where, SourceQuantization* out) {
  out->format = SourceFormat::kCompressedTensors;
  const JsonValue* groups = q.Find("config_groups");
  if (groups == nullptr || !groups->is_object() || groups->as_object().empty()) {
    return Error(ErrorCode::kInvalidInput,
                 where + ": quantization_config (compressed-tensors) has no config_groups");
  }
  std::vector<Group> parsed;
  for (const auto& [name, g] : groups->as_object()) {
    QUENCH_ASSIGN_OR_RETURN(Group pg, ParseGroup(name, g, where));
    parsed.push_back(std::move(pg));
  }
  std::vector<std::string> ignore;
  if (const JsonValue* ig = q.Find("ignore"); ig != nullptr && ig->is_array()) {
    for (const JsonValue& e : ig->as_array()) {
      if (e.is_string()) ignore.push_back(e.as_string());
    }
  }
  QUENCH_ASSIGN_OR_RETURN(Names ignored,
                          Names::Compile(ignore, where + ": quantization_config.ignore"));
  PiecesOf pieces_of;
  const std::map<std::string, CtTensor> all = SourceTensors(folder, &pieces_of);
  const CtFinder find = [&all](const std::string& n) {
    auto it = all.find(n);
    return it == all.end() ? CtTensor{} : it->second;
  };
  std::map<std::string, size_t> per_group, stacks;  // weights (3-D stacks) per config group
  for (const std::string& m : QuantizedModules(folder, all, out)) {
    const std::string rel =
        folder.shards[find(m + ".weight_scale").present    ? find(m + ".weight_scale").shard
                      : find(m + ".weight_packed").present ? find(m + ".weight_packed").shard
                                                           : find(m + ".weight").shard]
            .rel_name;
    if (ignored.Matches(m)) {
      return Error(ErrorCode::kInvalidInput,
                   rel + ": module '" + m + "' holds quantized tensors but the config's ignore "
                   "list names it (the tensors contradict the config)");
    }
    const Group* g = nullptr;
    for (const Group& c : parsed) {
      if (c.all_linear || c.matcher.Matches(m)) {
        g = &c;
        break;
      }
    }
    if (g == nullptr) {
      return Error(ErrorCode::kInvalidInput,
                   rel + ": module '" + m + "' holds quantized tensors but no config group "
                   "targets it (the tensors contradict the config)");
    }
    CtTensor shape;
    QUENCH_ASSIGN_OR_RETURN(std::shared_ptr<CtWeight> w,
                            MakeCtWeight(folder, m, *g, rel, find, &shape));
    for (const CtTensor* x : {&w->scale, &w->zero_point, &w->g_idx, &w->global_scale, &shape}) {
      if (x->present) out->consumed.push_back(x->name);
    }
    ++per_group[g->name];
    if (w->experts > 0) ++stacks[g->name];
    AddScales(m, w, pieces_of, out);
  }
  // A scale tensor is consumed with its weight; count them as the FP8 path does.
  out->scale_tensors = 0;
  for (const auto& [_, n] : per_group) out->scale_tensors += n;
  std::string desc;
  for (const Group& g : parsed) {
    if (!per_group.contains(g.name)) continue;
    desc += (desc.empty() ? "" : "; ") + DescribeCtGroup(g.proto, per_group[g.name]);
    if (stacks[g.name] > 0) {
      desc +=
          " (" + std::to_string(stacks[g.name]) + " of them 3-D expert stacks, decoded per expert)";
    }
  }
  out->description = (per_group.size() > 1 ? "compressed-tensors mixed-precision: "
                                           : "compressed-tensors ") +
                     (desc.empty() ? std::string("no quantized weights") : desc);
  return Status::Ok();
}

}  // namespace quench
