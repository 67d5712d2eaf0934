// AutoAWQ GEMM checkpoints (quant_method "awq", version "gemm"): per quantized Linear X,
// X.qweight I32 [in, out/8] (eight 4-bit codes a word, outputs in AutoAWQ's interleaved order),
// X.qzeros I32 [in/g, out/8] (zero_point true) and X.scales F16 [in/g, out]; the converter
// compressed_tensors/entrypoints/convert/converters/autoawq.py reads the same.
#include <cstring>
#include <map>
#include <set>

#include "format/source_packed.h"
#include "format/source_quant.h"
#include "quench/tensor.h"

namespace quench {
namespace {

int64_t IntOr(const JsonValue& q, const char* key, int64_t dflt) {
  const JsonValue* v = q.Find(key);
  return v != nullptr && v->is_int() ? v->as_int() : dflt;
}

}  // namespace

std::map<std::string, LocatedTensor> TensorsByName(const ModelFolder& folder) {
  std::map<std::string, LocatedTensor> found;
  for (size_t si = 0; si < folder.shards.size(); ++si) {
    for (const TensorInfo& t : folder.shards[si].header.tensors) {
      found.emplace(t.name, LocatedTensor{si, &t});
    }
  }
  return found;
}

SourceTensorRef RefOf(const ModelFolder& folder, const LocatedTensor& l) {
  const TensorInfo& t = *l.info;
  return SourceTensorRef{l.shard, t.name, t.dtype, t.shape,
                         folder.shards[l.shard].header.data_start + t.begin, t.nbytes()};
}

std::string PythonReEscape(const std::string& s) {
  // Python 3.7+: re.escape escapes exactly these characters.
  static const std::string kSpecial = "()[]{}?*+-|^$\\.&~# \t\n\r\v\f";
  std::string out;
  for (char c : s) {
    if (kSpecial.find(c) != std::string::npos) out += '\\';
    out += c;
  }
  return out;
}

namespace {

// The config's settings: 4-bit GEMM with a group size that is a positive multiple of 8;
// zero points or not (`*zero_point`); the converter's ignore list
// (AutoAWQConverter.from_autoawq_config).
Status ReadAwqSettings(const JsonValue& q, const std::string& where, SourceQuantization* out,
                       bool* zero_point) {
  const int64_t bits = IntOr(q, "bits", IntOr(q, "w_bit", 4));
  const int64_t group = IntOr(q, "group_size", IntOr(q, "q_group_size", 128));
  const JsonValue* zp = q.Find("zero_point");
  *zero_point = zp == nullptr || !zp->is_bool() || zp->as_bool();
  const JsonValue* ver = q.Find("version");
  std::string version = ver != nullptr && ver->is_string() ? ver->as_string() : "gemm";
  for (char& c : version) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (bits != 4) {
    return Error(ErrorCode::kUnsupported, where + ": AutoAWQ quantization_config.bits " +
                                              std::to_string(bits) + ": only 4-bit AWQ is read");
  }
  if (version != "gemm") {
    return Error(ErrorCode::kUnsupported,
                 where + ": AutoAWQ version '" + version +
                     "': only the GEMM layout is read (GEMV, Marlin and ExLlama pack "
                     "differently)");
  }
  if (group <= 0 || group % 8 != 0) {
    return Error(ErrorCode::kUnsupported,
                 where + ": AutoAWQ group_size " + std::to_string(group) +
                     ": only positive multiples of 8 are read (per-channel -1 is not)");
  }
  out->group_size = static_cast<uint64_t>(group);
  out->own_scheme = *zero_point ? "W4A16_ASYM" : "W4A16";
  out->repack_ignore = {"lm_head"};
  if (const JsonValue* m = q.Find("modules_to_not_convert"); m != nullptr && m->is_array()) {
    for (const JsonValue& e : m->as_array()) {
      if (e.is_string()) {
        out->repack_ignore.push_back("re:.*" + PythonReEscape(e.as_string()) + ".*");
      }
    }
  }
  return Status::Ok();
}

// One qweight's module's tensors, as AutoAWQ's GEMM layout stores them.
struct AwqModule {
  const ModelFolder& folder;
  const std::map<std::string, LocatedTensor>& found;
  const std::string& module;
  const std::string& at;  // the qweight, named in messages
  const TensorInfo& qw;
  uint64_t group;
  std::set<std::string>* used;

  // `module`.`suffix` (`what` it holds, for messages) of dtype `want` and `shape`; added to
  // `*used`.
  Result<SourceTensorRef> Need(const std::string& suffix, DType want,
                               const std::vector<uint64_t>& shape, std::string_view what) const {
    auto it = found.find(module + "." + suffix);
    if (it == found.end()) {
      return Error(ErrorCode::kInvalidInput, at + " has no '" + module + "." + suffix +
                                                 "' in any shard (its " + std::string(what) +
                                                 "); it cannot be decoded");
    }
    const TensorInfo& t = *it->second.info;
    const std::string tat = folder.shards[it->second.shard].rel_name + ": tensor '" + t.name + "'";
    if (t.dtype != want) {
      return Error(ErrorCode::kInvalidInput, tat + " has dtype " + std::string(DTypeName(t.dtype)) +
                                                 "; AutoAWQ's " + suffix + " is " +
                                                 std::string(DTypeName(want)));
    }
    if (t.shape != shape) {
      return Error(ErrorCode::kInvalidInput, tat + " has shape " + ShapeString(t.shape) +
                                                 "; expected " + ShapeString(shape) + " (qweight " +
                                                 ShapeString(qw.shape) + ", group_size " +
                                                 std::to_string(group) + " in the config)");
    }
    used->insert(t.name);
    return RefOf(folder, it->second);
  }
};

// The packed weight whose qweight is `name` (at `loc`): its codes, F16 scales and (with zero
// points) qzeros, checked against the GEMM layout; the tensors it takes are added to `*used`.
Result<PackedSourceWeight> PackedAwqWeight(const ModelFolder& folder,
                                           const std::map<std::string, LocatedTensor>& found,
                                           const std::string& name, const LocatedTensor& loc,
                                           uint64_t g, bool zero_point,
                                           std::set<std::string>* used) {
  const std::string module = name.substr(0, name.size() - 8);
  const std::string at = folder.shards[loc.shard].rel_name + ": tensor '" + name + "'";
  const TensorInfo& qw = *loc.info;
  if (qw.dtype != DType::kI32 || qw.shape.size() != 2 || qw.shape[0] == 0 || qw.shape[1] == 0) {
    return Error(ErrorCode::kInvalidInput,
                 at + " is " + std::string(DTypeName(qw.dtype)) + " " + ShapeString(qw.shape) +
                     "; an AutoAWQ GEMM qweight is I32 [in_features, out_features / 8]");
  }
  const uint64_t in = qw.shape[0], outf = qw.shape[1] * 8;
  if (in % g != 0) {
    return Error(ErrorCode::kInvalidInput,
                 at + " " + ShapeString(qw.shape) + " has " + std::to_string(in) +
                     " inputs, not a multiple of the config's group_size " + std::to_string(g));
  }
  PackedSourceWeight w;
  w.source_name = name;
  w.rows = outf;
  w.cols = in;
  w.group = g;
  w.codes = RefOf(folder, loc);
  const AwqModule m{folder, found, module, at, qw, g, used};
  QUENCH_ASSIGN_OR_RETURN(w.scales, m.Need("scales", DType::kF16, {in / g, outf}, "scales"));
  if (zero_point) {
    QUENCH_ASSIGN_OR_RETURN(SourceTensorRef z,
                            m.Need("qzeros", DType::kI32, {in / g, qw.shape[1]}, "zero points"));
    w.zeros = std::move(z);
  } else if (found.contains(module + ".qzeros")) {
    return Error(ErrorCode::kInvalidInput,
                 at + ": '" + module +
                     ".qzeros' is present but the config says "
                     "zero_point false (the tensors contradict the config)");
  }
  return w;
}

}  // namespace

Status DetectAwq(const ModelFolder& folder, const JsonValue& q, const std::string& where,
                 SourceQuantization* out) {
  out->format = SourceFormat::kAwq;
  bool zero_point = true;
  QUENCH_RETURN_IF_ERROR(ReadAwqSettings(q, where, out, &zero_point));
  const std::map<std::string, LocatedTensor> found = TensorsByName(folder);
  std::set<std::string> used;
  for (const auto& [name, loc] : found) {
    if (!name.ends_with(".qweight")) continue;
    QUENCH_ASSIGN_OR_RETURN(
        PackedSourceWeight w,
        PackedAwqWeight(folder, found, name, loc, out->group_size, zero_point, &used));
    out->packed_aux.push_back(w.scales.name);
    if (w.zeros) out->packed_aux.push_back(w.zeros->name);
    out->packed.emplace(name.substr(0, name.size() - 8) + ".weight", std::move(w));
  }
  for (const auto& [name, loc] : found) {
    if ((name.ends_with(".qzeros") || name.ends_with(".scales")) && !used.contains(name)) {
      return Error(ErrorCode::kInvalidInput,
                   folder.shards[loc.shard].rel_name + ": tensor '" + name +
                       "' has no qweight beside it (the tensors contradict the config's "
                       "quant_method awq)");
    }
  }
  if (out->packed.empty()) {
    return Error(ErrorCode::kInvalidInput,
                 where + ": quant_method 'awq' but no tensor is an AutoAWQ qweight");
  }
  out->description = "AutoAWQ GEMM int4, group " + std::to_string(out->group_size) +
                     (zero_point ? ", zero points" : ", symmetric") + ", F16 scales, " +
                     std::to_string(out->packed.size()) + " weights (lossless repack: --scheme " +
                     out->own_scheme + ")";
  return Status::Ok();
}

}  // namespace quench
