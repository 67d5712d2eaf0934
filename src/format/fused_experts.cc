// model_free_ptq's split of fused 3-D MoE expert stacks (SplitFusedExperts, declared in
// model_folder.h): per expert, gate_up_proj into gate_proj and up_proj, down_proj into its
// own, each piece a contiguous byte range of the stack so that only headers are rewritten;
// FP8 block scales split with their weights, compressed-tensors codes split while their
// scales stay whole, and stacks stored [E, in, out] kept whole, or linearized for Llama 4.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "format/model_folder.h"

namespace quench {
namespace {

// Python's str.replace: every non-overlapping occurrence, left to right.
std::string ReplaceAll(std::string s, std::string_view from, std::string_view to) {
  for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) {
    s.replace(at, from.size(), to);
  }
  return s;
}

// hidden_size from config.json (top level, or text_config for multimodal configs).
std::optional<uint64_t> HiddenSize(const ModelFolder& folder) {
  if (!folder.config) return std::nullopt;
  for (const JsonValue* c : {&*folder.config, folder.config->Find("text_config")}) {
    if (c == nullptr || !c->is_object()) continue;
    const JsonValue* h = c->Find("hidden_size");
    if (h != nullptr && h->is_int() && h->as_int() > 0) return static_cast<uint64_t>(h->as_int());
  }
  return std::nullopt;
}

// The last value of an I64 / I32 [3] weight_shape (a stack's decoded columns), or 0.
uint64_t StackColumns(const Shard& shard, const TensorInfo& t) {
  if ((t.dtype != DType::kI64 && t.dtype != DType::kI32) || t.shape != std::vector<uint64_t>{3}) {
    return 0;
  }
  const uint64_t es = DTypeBits(t.dtype) / 8;
  uint8_t raw[8] = {};
  const int fd = ::open(shard.path.c_str(), O_RDONLY | O_CLOEXEC);
  const ssize_t got = fd < 0 ? -1
                             : ::pread(fd, raw, es, static_cast<off_t>(shard.header.data_start +
                                                                       t.begin + 2 * es));
  if (fd >= 0) ::close(fd);
  if (got != static_cast<ssize_t>(es)) return 0;
  int64_t v = 0;
  if (es == 8) {
    std::memcpy(&v, raw, 8);
  } else {
    int32_t v32;
    std::memcpy(&v32, raw, 4);
    v = v32;
  }
  return v > 0 ? static_cast<uint64_t>(v) : 0;
}

// What splitting needs to know of the folder's stacks before any is split.
struct StackFacts {
  std::optional<uint64_t> hidden;  // config.json's hidden_size
  // FP8 stacks' scales split with their weights need the weights' rows and the block rows.
  std::map<std::string, uint64_t> stack_rows;
  uint64_t block_rows = 0;
  // compressed-tensors stacks: modules with a weight_scale, and their weight_shape tensors.
  bool ct = false;
  std::set<std::string> ct_modules;
  std::map<std::string, uint64_t> ct_cols;  // a stack's decoded columns, from weight_shape
  // gpt-oss MXFP4 (quant_method "mxfp4"): P_blocks / P_scales decode to P [E, in, out]
  // (format/source_mxfp4.cc), a stack kept whole.
  bool mxfp4 = false;
  // Experts modules (the name before gate_up_proj / down_proj) one of whose stacks shows
  // [E, in, out] by its shape: the other is stored so too, even where its own shape cannot
  // tell (gpt-oss's down_proj [E, 2880, 2880]: intermediate size = hidden size).
  std::set<std::string> transposed;
  // Of those, the modules with a stack not stored BF16: with `linearize`, kept whole, both
  // stacks (a module's experts are loaded one way).
  std::set<std::string> not_bf16;
};

constexpr std::string_view kGateUp = "gate_up_proj", kDown = "down_proj";
constexpr std::string_view kBlocks = "_blocks", kScales = "_scales";  // MXFP4's tensors

// Whether a stack [E, a, b] decoding to `cols` columns is stored [E, in, out]: the hidden
// size sits where the output dimension should be (gate_up's rows, down's columns) and not on
// the other side too, which would leave the order undecided.
bool ShowsInOut(bool gate_up, uint64_t a, uint64_t cols, const std::optional<uint64_t>& hidden) {
  return hidden && (gate_up ? (a == *hidden && cols != *hidden)
                            : (cols == *hidden && a != *hidden));
}

// The experts module a stack belongs to: its name up to gate_up_proj / down_proj.
std::string ExpertsModule(const std::string& name, bool gate_up) {
  return name.substr(0, name.find(gate_up ? kGateUp : kDown));
}

StackFacts GatherStacks(const ModelFolder& folder) {
  StackFacts f;
  f.hidden = HiddenSize(folder);
  for (const Shard& shard : folder.shards) {
    for (const TensorInfo& t : shard.header.tensors) {
      if (t.shape.size() == 3) f.stack_rows[t.name] = t.shape[1];
    }
  }
  if (const JsonValue* q = SourceQuantizationConfig(folder)) {
    const JsonValue* b = q->is_object() ? q->Find("weight_block_size") : nullptr;
    if (b != nullptr && b->is_array() && !b->as_array().empty() && b->as_array()[0].is_int() &&
        b->as_array()[0].as_int() > 0) {
      f.block_rows = b->as_array()[0].as_uint();
    }
  }
  f.ct = IsCompressedTensors(folder);
  f.mxfp4 = ConfigQuantMethod(folder) == "mxfp4";
  if (f.ct) {
    for (const Shard& shard : folder.shards) {
      for (const TensorInfo& t : shard.header.tensors) {
        const size_t dot = t.name.rfind('.');
        if (dot == std::string::npos) continue;
        const std::string_view param = std::string_view(t.name).substr(dot + 1);
        if (param == "weight_scale") f.ct_modules.insert(t.name.substr(0, dot));
        if (param == "weight_shape") f.ct_cols[t.name.substr(0, dot)] = StackColumns(shard, t);
      }
    }
  }
  // Plain stacks (not a compressed-tensors module's codes) that show [E, in, out], and the
  // modules with a stack not stored BF16 (kept to those that are transposed below).
  std::set<std::string> not_bf16;
  for (const Shard& shard : folder.shards) {
    for (const TensorInfo& t : shard.header.tensors) {
      if (t.shape.size() != 3) continue;
      const bool gate_up = t.name.find(kGateUp) != std::string::npos;
      const bool down = t.name.find(kDown) != std::string::npos;
      if (gate_up == down || DTypeBits(t.dtype) % 8 != 0 ||
          t.name.ends_with("_scale_inv") ||
          f.ct_modules.contains(t.name.substr(0, t.name.rfind('.')))) {
        continue;
      }
      if (ShowsInOut(gate_up, t.shape[1], t.shape[2], f.hidden)) {
        f.transposed.insert(ExpertsModule(t.name, gate_up));
      }
      if (t.dtype != DType::kBF16) not_bf16.insert(ExpertsModule(t.name, gate_up));
    }
  }
  for (const std::string& m : not_bf16) {
    if (f.transposed.contains(m)) f.not_bf16.insert(m);
  }
  return f;
}

// The columns a stack decodes to: its last dimension, twice that for packed FP4 codes, or
// weight_shape's for int32-packed compressed-tensors codes (0 when unknown).
uint64_t DecodedColumns(const TensorInfo& t, const std::string& ct_module,
                        const std::string& ct_param,
                        const std::map<std::string, uint64_t>& ct_cols) {
  const uint64_t b = t.shape[2];
  uint64_t cols = b;
  if (!ct_module.empty()) {
    if (ct_param == "weight_packed" && t.dtype == DType::kU8) cols = 2 * b;  // two FP4 a byte
    if (t.dtype == DType::kI32) {
      auto sh = ct_cols.find(ct_module);
      cols = sh == ct_cols.end() ? 0 : sh->second;
    }
  }
  return cols;
}

// The name of piece `p` of expert `e` of stack `t`: model_free's replace of gate_up_proj by
// "<e>.gate_proj" / "<e>.up_proj" (down_proj by "<e>.down_proj"), ".weight" appended when
// missing, then an FP8 scale's "_scale_inv" or packed codes' "_packed".
std::string PieceName(const TensorInfo& t, uint64_t e, uint64_t p, bool gate_up,
                      const std::string& ct_module, const std::string& ct_param) {
  constexpr std::string_view kScaleInv = "_scale_inv";
  const bool scale_inv = t.name.ends_with(kScaleInv);
  const std::string part = std::to_string(e) + "." +
                           (gate_up ? (p == 0 ? "gate_proj" : "up_proj") : "down_proj");
  const std::string base =
      scale_inv ? t.name.substr(0, t.name.size() - kScaleInv.size())
      : !ct_module.empty() ? ct_module + ".weight"
                           : t.name;
  std::string name = ReplaceAll(base, gate_up ? kGateUp : kDown, part);
  if (!name.ends_with(".weight")) name += ".weight";
  if (scale_inv) name += kScaleInv;
  if (ct_param == "weight_packed") name += "_packed";
  return name;
}

// A BF16 stack stored [E, in, out] cut as llm-compressor's Llama 4 calibration module cuts it
// (model_folder.h, SplitFusedExperts): per expert e, gate_up_proj [E, H, 2I] gives
// "<e>.gate_proj" = [:, :I].T and "<e>.up_proj" = [:, I:].T, each [I, H]; down_proj
// [E, I, H] gives "<e>.down_proj" = .T, [H, I]. Each piece's TensorInfo holds its share of
// expert e's block (gate the first half, up the second): the bytes it is read from lie across
// the whole block, which `linear_pieces` records.
Status Linearize(ModelFolder& folder, size_t si, TensorInfo& t, bool gate_up,
                 std::vector<TensorInfo>& out, ExpertSplit& result) {
  const uint64_t experts = t.shape[0], in = t.shape[1], cols = t.shape[2];
  const uint64_t parts = gate_up ? 2 : 1, rows = cols / parts;
  const uint64_t block_bytes = in * cols * 2, piece_bytes = block_bytes / parts;
  for (uint64_t e = 0; e < experts; ++e) {
    const uint64_t block = t.begin + e * block_bytes;
    for (uint64_t p = 0; p < parts; ++p) {
      TensorInfo piece;
      piece.name = PieceName(t, e, p, gate_up, "", "");
      piece.dtype = t.dtype;
      piece.shape = {rows, in};
      piece.begin = block + p * piece_bytes;
      piece.end = piece.begin + piece_bytes;
      folder.linear_pieces[piece.name] =
          ModelFolder::LinearPiece{si, t.name, block, in, cols, e, p * rows};
      out.push_back(std::move(piece));
      ++result.pieces;
      ++result.linear_pieces;
    }
  }
  ++result.tensors_split;
  ++result.linearized;
  return Status::Ok();
}

// Whether SplitTensor may do anything but append `t` as it is: a 3-D tensor (a stack, or a
// compressed-tensors module's codes) or a name holding both stack names (refused).
bool SplitMayTouch(const TensorInfo& t) {
  return t.shape.size() == 3 || t.name.ends_with(kBlocks) ||
         (t.name.find(kGateUp) != std::string::npos && t.name.find(kDown) != std::string::npos);
}

// Cuts the [E, rows, in] stack `t` (gate_up: each expert's gate rows, then its up rows)
// into per-expert pieces appended to `out` (a compressed-tensors module's codes named as its
// pieces: `ct_module`, `ct_param`), with an FP8 stack's block scales cut along.
Status CutStack(ModelFolder& folder, size_t si, TensorInfo& t, const StackFacts& f, bool gate_up,
                const std::string& ct_module, const std::string& ct_param,
                std::vector<TensorInfo>& out, ExpertSplit& result) {
  const Shard& shard = folder.shards[si];
  const std::map<std::string, uint64_t>& stack_rows = f.stack_rows;
  const uint64_t block_rows = f.block_rows;
  const uint64_t elem_bits = DTypeBits(t.dtype);
  const uint64_t experts = t.shape[0], a = t.shape[1], b = t.shape[2];
  const uint64_t parts = gate_up ? 2 : 1;
  // An FP8 stack's block scales ("..._scale_inv", [E, rows/br, cols/bc]) split with it:
  // each piece is that expert's (gate or up) tile rows, named as its weight's scale.
  constexpr std::string_view kScaleInv = "_scale_inv";
  const bool scale_inv = t.name.ends_with(kScaleInv);
  const auto weight_rows = scale_inv
                               ? stack_rows.find(t.name.substr(0, t.name.size() - kScaleInv.size()))
                               : stack_rows.end();
  if (scale_inv && parts == 2 &&
      (a % 2 != 0 || weight_rows == stack_rows.end() || block_rows == 0 ||
       (weight_rows->second / 2) % block_rows != 0)) {
    return Error(ErrorCode::kUnsupported,
                 shard.rel_name + ": tensor '" + t.name + "' has shape " + ShapeString(t.shape) +
                     "; the gate and up halves of a fused FP8 "
                     "stack must each be whole blocks of weight_block_size rows to be split");
  }
  if (a % parts != 0) {
    return Error(ErrorCode::kInvalidInput, shard.rel_name + ": tensor '" + t.name + "' has shape " +
                                               ShapeString(t.shape) +
                                               "; a fused gate_up_proj needs an even second "
                                               "dimension (gate rows, then up rows)");
  }
  const uint64_t rows = a / parts;
  const uint64_t piece_bytes = rows * b * (elem_bits / 8);
  uint64_t begin = t.begin;
  for (uint64_t e = 0; e < experts; ++e) {
    for (uint64_t p = 0; p < parts; ++p) {
      TensorInfo piece;
      piece.name = PieceName(t, e, p, gate_up, ct_module, ct_param);
      if (!ct_module.empty()) {
        folder.ct_pieces[piece.name] = ModelFolder::CtPiece{si, t, e, p * rows};
      }
      piece.dtype = t.dtype;
      piece.shape = {rows, b};
      piece.begin = begin;
      piece.end = begin + piece_bytes;
      begin = piece.end;
      out.push_back(std::move(piece));
      ++result.pieces;
    }
  }
  ++result.tensors_split;
  return Status::Ok();
}

// Splits tensor `t` of shard `si` into per-expert pieces appended to `out` (or appends it as
// it is where it is no fused stack, or one kept whole), counted in `result`.
Status SplitTensor(ModelFolder& folder, size_t si, TensorInfo& t, const StackFacts& f,
                   bool linearize, std::vector<TensorInfo>& out, ExpertSplit& result) {
  const Shard& shard = folder.shards[si];
  const std::optional<uint64_t>& hidden = f.hidden;
  const bool ct = f.ct;
  const std::set<std::string>& ct_modules = f.ct_modules;
  const std::map<std::string, uint64_t>& ct_cols = f.ct_cols;
  const bool gate_up = t.name.find(kGateUp) != std::string::npos;
  const bool down = t.name.find(kDown) != std::string::npos;
  if (f.mxfp4 && (t.name.ends_with(kBlocks) || t.name.ends_with(kScales))) {
    // An MXFP4 stack's codes and scales: decoded whole, to [E, in, out], and written so.
    if (t.name.ends_with(kBlocks) && gate_up != down) {
      const std::string decoded = t.name.substr(0, t.name.size() - kBlocks.size());
      result.kept_whole.push_back(shard.rel_name + ": " + decoded);
      folder.kept_whole.push_back(decoded);
    }
    out.push_back(std::move(t));
    return Status::Ok();
  }
  // A compressed-tensors module's tensors: its codes are split as a stack's pieces below;
  // the rest (scales, zero points, g_idx, global scale, weight_shape) stay whole.
  std::string ct_module, ct_param;
  if (ct && t.shape.size() == 3) {
    const size_t dot = t.name.rfind('.');
    if (dot != std::string::npos && ct_modules.contains(t.name.substr(0, dot))) {
      ct_module = t.name.substr(0, dot);
      ct_param = t.name.substr(dot + 1);
      const bool codes =
          ct_param == "weight_packed" || (ct_param == "weight" && !IsQuantizableFloat(t.dtype));
      if (!codes) {
        out.push_back(std::move(t));
        return Status::Ok();
      }
    }
  }
  if (gate_up && down) {
    return Error(ErrorCode::kInvalidInput,
                 shard.rel_name + ": tensor '" + t.name +
                     "' names both gate_up_proj and "
                     "down_proj; model_free_ptq refuses such a checkpoint (rename the tensor)");
  }
  const uint64_t elem_bits = DTypeBits(t.dtype);
  if ((!gate_up && !down) || t.shape.size() != 3 || elem_bits % 8 != 0) {
    out.push_back(std::move(t));
    return Status::Ok();
  }
  const uint64_t a = t.shape[1], b = t.shape[2];
  const uint64_t cols = DecodedColumns(t, ct_module, ct_param, ct_cols);
  // [E, in, out]: by its own shape, or its sibling's in the same experts module.
  const bool transposed =
      ShowsInOut(gate_up, a, cols, hidden) ||
      (ct_module.empty() && f.transposed.contains(ExpertsModule(t.name, gate_up)));
  if (transposed && linearize && ct_module.empty() && (!gate_up || b % 2 == 0) &&
      !f.not_bf16.contains(ExpertsModule(t.name, gate_up))) {
    return Linearize(folder, si, t, gate_up, out, result);
  }
  if (transposed) {
    // Told of in one list or the other (convert's notes): kept whole for its dtype where
    // linearizing was asked for, for its layout otherwise.
    std::vector<std::string>& told =
        linearize && f.not_bf16.contains(ExpertsModule(t.name, gate_up)) ? result.not_bf16
                                                                         : result.kept_whole;
    told.push_back(shard.rel_name + ": " + t.name);
    folder.kept_whole.push_back(t.name);
    out.push_back(std::move(t));
    return Status::Ok();
  }
  return CutStack(folder, si, t, f, gate_up, ct_module, ct_param, out, result);
}

}  // namespace

bool LinearizesExpertStacks(const ModelFolder& folder) {
  if (!folder.config || !folder.config->is_object()) return false;
  for (const JsonValue* c : {&*folder.config, folder.config->Find("text_config")}) {
    if (c == nullptr || !c->is_object()) continue;
    const JsonValue* type = c->Find("model_type");
    if (type != nullptr && type->is_string() &&
        (type->as_string() == "llama4" || type->as_string() == "llama4_text")) {
      return true;
    }
  }
  return false;
}

Result<ExpertSplit> SplitFusedExperts(ModelFolder& folder, ExpertSplitOptions options) {
  const StackFacts facts = GatherStacks(folder);
  ExpertSplit result;
  for (size_t si = 0; si < folder.shards.size(); ++si) {
    Shard& shard = folder.shards[si];
    // A shard SplitTensor would leave as it is is not moved into a new vector.
    if (std::none_of(shard.header.tensors.begin(), shard.header.tensors.end(), SplitMayTouch)) {
      continue;
    }
    std::vector<TensorInfo> out;
    out.reserve(shard.header.tensors.size());
    for (TensorInfo& t : shard.header.tensors) {
      QUENCH_RETURN_IF_ERROR(SplitTensor(folder, si, t, facts, options.linearize, out, result));
    }
    shard.header.tensors = std::move(out);
  }
  return result;
}

}  // namespace quench
