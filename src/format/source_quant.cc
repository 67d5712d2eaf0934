#include "format/source_quant.h"

#include <cmath>
#include <cstring>

#include "format/source_ct.h"
#include "quench/tensor.h"

namespace quench {
namespace {

constexpr std::string_view kScaleSuffix = "_scale_inv";  // appended to "X.weight"

struct Located {
  size_t shard;
  const TensorInfo* info;
};

uint64_t CeilDiv(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

// The config's weight_block_size: absent or null means one scale per tensor.
Status ReadBlockSize(const JsonValue& q, const std::string& where, SourceQuantization* out) {
  const JsonValue* b = q.Find("weight_block_size");
  if (b == nullptr || b->is_null()) return Status::Ok();
  if (!b->is_array() || b->as_array().size() != 2 || !b->as_array()[0].is_int() ||
      !b->as_array()[1].is_int() || b->as_array()[0].as_int() <= 0 ||
      b->as_array()[1].as_int() <= 0) {
    return Error(ErrorCode::kInvalidInput,
                 where + ": quantization_config.weight_block_size must be two positive "
                         "integers [rows, cols]");
  }
  out->block_rows = static_cast<uint64_t>(b->as_array()[0].as_int());
  out->block_cols = static_cast<uint64_t>(b->as_array()[1].as_int());
  return Status::Ok();
}

// Checks one FP8 weight's scale and records it.
Status PairScale(const ModelFolder& folder, const Located& w, const Located& s,
                 SourceQuantization* out) {
  const TensorInfo& wt = *w.info;
  const TensorInfo& st = *s.info;
  const std::string where = folder.shards[s.shard].rel_name + ": tensor '" + st.name + "'";
  if (st.dtype != DType::kF32 && st.dtype != DType::kBF16 && st.dtype != DType::kF8E8M0) {
    return Error(ErrorCode::kInvalidInput,
                 where + " has dtype " + std::string(DTypeName(st.dtype)) +
                     "; an FP8 weight's scale must be F32, BF16 or F8_E8M0");
  }
  if (wt.shape.size() != 2) {
    return Error(ErrorCode::kUnsupported,
                 folder.shards[w.shard].rel_name + ": tensor '" + wt.name + "' " +
                     ShapeString(wt.shape) + ": only 2-D FP8 weights can be decoded so far");
  }
  SourceScale sc;
  sc.shard = s.shard;
  sc.name = st.name;
  sc.dtype = st.dtype;
  sc.shape = st.shape;
  sc.offset = folder.shards[s.shard].header.data_start + st.begin;
  sc.nbytes = st.nbytes();
  const uint64_t rows = wt.shape[0], cols = wt.shape[1];
  if (st.numel() == 1 && st.shape.size() <= 2) {
    // One scale for the whole tensor (shape [], [1] or [1, 1]).
    sc.block_rows = rows;
    sc.block_cols = cols;
  } else if (out->block_rows != 0 &&
             st.shape == std::vector<uint64_t>{CeilDiv(rows, out->block_rows),
                                               CeilDiv(cols, out->block_cols)}) {
    sc.block_rows = out->block_rows;
    sc.block_cols = out->block_cols;
  } else {
    std::string want = "one element";
    if (out->block_rows != 0) {
      want = ShapeString({CeilDiv(rows, out->block_rows), CeilDiv(cols, out->block_cols)}) +
             " (weight " + ShapeString(wt.shape) + " in " + std::to_string(out->block_rows) + "x" +
             std::to_string(out->block_cols) + " blocks) or one element";
    }
    return Error(ErrorCode::kInvalidInput,
                 where + " has shape " + ShapeString(st.shape) + "; expected " + want);
  }
  out->scales.emplace(wt.name, std::move(sc));
  return Status::Ok();
}

Result<SourceQuantization> DetectFp8(const ModelFolder& folder, const JsonValue& q,
                                     const std::string& where) {
  SourceQuantization out;
  out.format = SourceFormat::kFp8;
  if (const JsonValue* f = q.Find("fmt"); f != nullptr && f->is_string() &&
                                           f->as_string() != "e4m3") {
    return Error(ErrorCode::kUnsupported,
                 where + ": quantization_config.fmt '" + f->as_string() +
                     "': only E4M3 FP8 sources can be decoded");
  }
  QUENCH_RETURN_IF_ERROR(ReadBlockSize(q, where, &out));
  std::map<std::string_view, Located> fp8_weights, scales;
  for (size_t si = 0; si < folder.shards.size(); ++si) {
    for (const TensorInfo& t : folder.shards[si].header.tensors) {
      if (t.name.ends_with(kScaleSuffix) &&
          std::string_view(t.name).substr(0, t.name.size() - kScaleSuffix.size())
              .ends_with(".weight")) {
        scales.emplace(t.name, Located{si, &t});
      } else if (t.dtype == DType::kF8E4M3) {
        fp8_weights.emplace(t.name, Located{si, &t});
      }
    }
  }
  for (const auto& [name, w] : fp8_weights) {
    auto it = scales.find(std::string(name) + std::string(kScaleSuffix));
    if (it == scales.end()) {
      return Error(ErrorCode::kInvalidInput,
                   folder.shards[w.shard].rel_name + ": FP8 tensor '" + std::string(name) +
                       "' has no '" + std::string(name) + std::string(kScaleSuffix) +
                       "' in any shard; without its scale its values are meaningless");
    }
    QUENCH_RETURN_IF_ERROR(PairScale(folder, w, it->second, &out));
  }
  for (const auto& [name, s] : scales) {
    const std::string weight(name.substr(0, name.size() - kScaleSuffix.size()));
    if (!out.scales.contains(weight)) {
      return Error(ErrorCode::kInvalidInput,
                   folder.shards[s.shard].rel_name + ": scale '" + std::string(name) +
                       "' has no FP8 weight '" + weight + "' (the tensors contradict the "
                       "config's quant_method fp8)");
    }
  }
  out.scale_tensors = scales.size();
  std::string scale_dtypes;
  for (DType d : {DType::kF32, DType::kBF16, DType::kF8E8M0}) {
    for (const auto& [name, sc] : out.scales) {
      if (sc.dtype != d) continue;
      scale_dtypes += (scale_dtypes.empty() ? "" : "/") + std::string(DTypeName(d));
      break;
    }
  }
  out.description = "FP8 E4M3, " +
                    (out.block_rows ? std::to_string(out.block_rows) + "x" +
                                          std::to_string(out.block_cols) + " block"
                                    : std::string("per-tensor")) +
                    " scales (" + (scale_dtypes.empty() ? "none" : scale_dtypes) + "), " +
                    std::to_string(out.scales.size()) + " weights";
  return out;
}

}  // namespace

Result<SourceQuantization> DetectSourceQuantization(const ModelFolder& folder) {
  // ModelOpt describes itself in hf_quant_config.json, config.json or both.
  bool modelopt = false, file_only = false;
  QUENCH_ASSIGN_OR_RETURN(std::optional<JsonValue> mo,
                          FindModelOptConfig(folder, &modelopt, &file_only));
  if (modelopt) {
    SourceQuantization out;
    QUENCH_RETURN_IF_ERROR(
        DetectModelOpt(folder, *mo, "ModelOpt quantization config", file_only, &out));
    return out;
  }
  const JsonValue* top = folder.config ? folder.config->Find("quantization_config") : nullptr;
  const JsonValue* q = SourceQuantizationConfig(folder);
  if (q == nullptr && top != nullptr && !top->is_null()) q = top;  // not an object: refused below
  if (q == nullptr) return SourceQuantization{};
  const std::string where = folder.config_rel.value_or("config.json") +
                            (QuantizationConfigInTextConfig(folder) ? " (text_config)" : "");
  const JsonValue* method = q->Find("quant_method");
  const std::string m = method != nullptr && method->is_string() ? method->as_string() : "";
  if (m == "fp8") return DetectFp8(folder, *q, where);
  if (m == "awq") {
    SourceQuantization out;
    QUENCH_RETURN_IF_ERROR(DetectAwq(folder, *q, where, &out));
    return out;
  }
  if (m == "mxfp4") {
    SourceQuantization out;
    QUENCH_RETURN_IF_ERROR(DetectGptOssMxfp4(folder, where, &out));
    return out;
  }
  if (m == "compressed-tensors") {
    SourceQuantization out;
    QUENCH_RETURN_IF_ERROR(DetectCompressedTensors(folder, *q, where, &out));
    return out;
  }
  return Error(ErrorCode::kUnsupported,
               where + ": the source is quantized (quantization_config.quant_method '" +
                   (m.empty() ? std::string("(none)") : m) +
                   "'); quench reads BF16, F16 and F32 checkpoints, FP8 ones "
                   "(quant_method 'fp8'), AutoAWQ ('awq'), ModelOpt NVFP4 ('modelopt'), "
                   "gpt-oss MXFP4 ('mxfp4') and compressed-tensors ('compressed-tensors'), "
                   "and cannot decode this one yet");
}

float SourceScaleToF32(DType dtype, const uint8_t* p) {
  uint32_t bits = 0;
  switch (dtype) {
    case DType::kF32: std::memcpy(&bits, p, 4); break;
    case DType::kBF16: {
      uint16_t h = 0;
      std::memcpy(&h, p, 2);
      bits = uint32_t{h} << 16;
      break;
    }
    case DType::kF8E8M0:
      // OCP MX E8M0: 2^(e - 127); 0xFF is NaN. e = 0 is 2^-127, an f32 subnormal.
      if (p[0] == 0xFF) return __builtin_nanf("");
      if (p[0] == 0) {
        bits = 1u << 22;
      } else {
        bits = uint32_t{p[0]} << 23;
      }
      break;
    default: return __builtin_nanf("");
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

size_t SourceScalesToF32(DType dtype, const uint8_t* p, size_t n, float* out) {
  const size_t esize = DTypeBits(dtype) / 8;
  for (size_t i = 0; i < n; ++i) {
    const float v = SourceScaleToF32(dtype, p + i * esize);
    if (!(v >= 0.f) || std::isinf(v)) return i;
    out[i] = v;
  }
  return n;
}

}  // namespace quench
