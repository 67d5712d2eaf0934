// The tensors of one compressed-tensors weight checked against its group's format, the
// layouts compressed-tensors 0.19.0's compressors write (docs/reference-notes.md, "quantized
// sources: compressed-tensors"), and its description for notes, --dry-run and inspect.
#include <string>

#include "format/source_ct.h"
#include "quench/tensor.h"

namespace quench {
namespace {

uint64_t CeilDiv(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

Status Bad(const ModelFolder& folder, const CtTensor& t, const std::string& what) {
  return Error(ErrorCode::kInvalidInput,
               folder.shards[t.shard].rel_name + ": tensor '" + t.name + "' " + what);
}

std::string Is(const CtTensor& t) {
  return "is " + std::string(DTypeName(t.dtype)) + " " + ShapeString(t.shape);
}

bool IsFloatScale(DType d) { return d == DType::kBF16 || d == DType::kF16 || d == DType::kF32; }

Status CheckCtWeight2d(const ModelFolder& folder, CtWeight& w);

// A 3-D weight: compressed-tensors 0.19.0 compresses a stack [E, rows, cols] (fused MoE
// experts) as E 2-D weights, each tensor stacked along a new first dimension (pack_to_int32
// per slice; docs/reference-notes.md 19). Every tensor must have that leading E, and each
// expert's slices must be a valid 2-D weight of the group (checked on expert 0's: the others
// have the same shapes and dtypes).
Status CheckCtStack(const ModelFolder& folder, CtWeight& w) {
  const CtTensor& c = w.codes;
  const uint64_t experts = c.shape[0];
  if (experts == 0) return Bad(folder, c, Is(c) + "; a stack of no experts holds nothing");
  for (const CtTensor* x : {&w.scale, &w.zero_point, &w.g_idx, &w.global_scale}) {
    if (!x->present) continue;
    const uint64_t es = DTypeBits(x->dtype) / 8;
    if (x->shape.empty() || x->shape[0] != experts || es == 0 ||
        x->nbytes % (experts * es) != 0) {
      return Bad(folder, *x, Is(*x) + "; its weight '" + c.name + "' " + ShapeString(c.shape) +
                                 " is a stack of " + std::to_string(experts) +
                                 " experts, so it needs a leading dimension of " +
                                 std::to_string(experts) + " (one slice per expert)");
    }
  }
  w.experts = experts;
  CtWeight slice = CtExpertSlice(w, 0);
  Status st = CheckCtWeight2d(folder, slice);
  if (!st.ok()) {
    return Error(st.code(), st.message() + " (in each expert's slice of the " +
                                std::to_string(experts) + "-expert stack " + c.name + " " +
                                ShapeString(c.shape) + ")");
  }
  // The derived sizes are one expert's; the tensors keep the stack's.
  w.rows = slice.rows;
  w.cols = slice.cols;
  w.code_row_bytes = slice.code_row_bytes;
  w.scale_cols = slice.scale_cols;
  w.scale_row_span = slice.scale_row_span;
  return Status::Ok();
}

}  // namespace

Status CheckCtWeight(const ModelFolder& folder, CtWeight& w) { return CheckCtWeight2d(folder, w); }

namespace {

// The stored codes: dtype by format, and from their shape the decoded weight's rows and
// columns (checked against weight_shape for packed ints); an empty weight refused.
Status CheckCtCodes(const ModelFolder& folder, CtWeight& w) {
  const std::string fmt(CtFormatName(w.format));
  const CtTensor& c = w.codes;
  switch (w.format) {
    case CtFormat::kPack: {
      const uint64_t words = CeilDiv(w.cols * static_cast<uint64_t>(w.num_bits), 32);
      if (c.dtype != DType::kI32 || c.shape[0] != w.rows || c.shape[1] != words) {
        return Bad(folder, c, Is(c) + "; its group (" + fmt + ", " +
                                  std::to_string(w.num_bits) + "-bit) and weight_shape " +
                                  ShapeString({w.rows, w.cols}) + " need I32 " +
                                  ShapeString({w.rows, words}));
      }
      break;
    }
    case CtFormat::kNvfp4:
    case CtFormat::kMxfp4:
      if (c.dtype != DType::kU8) {
        return Bad(folder, c, Is(c) + "; its group (" + fmt + ") stores U8, two FP4 codes a byte");
      }
      w.rows = c.shape[0];
      w.cols = c.shape[1] * 2;
      break;
    default: {
      const DType want = w.is_float ? DType::kF8E4M3 : DType::kI8;
      if (c.dtype != want) {
        return Bad(folder, c, Is(c) + "; its group (" + fmt + ", " +
                                  (w.is_float ? "float" : "int") + std::to_string(w.num_bits) +
                                  ") stores " + std::string(DTypeName(want)));
      }
      if (w.is_float && w.num_bits != 8) {
        return Bad(folder, c, "is F8_E4M3 but its group declares " +
                                  std::to_string(w.num_bits) + "-bit float weights");
      }
      w.rows = c.shape[0];
      w.cols = c.shape[1];
    }
  }
  // An empty weight would make every scale's span 0 (and the decoders divide by it).
  if (w.rows == 0 || w.cols == 0) {
    return Bad(folder, c, Is(c) + "; its weight " + ShapeString({w.rows, w.cols}) +
                              " holds no element to decode");
  }
  w.code_row_bytes = c.shape[1] * (DTypeBits(c.dtype) / 8);
  return Status::Ok();
}

// The scale: dtype by format, shape by strategy (and the spans the decoders step by).
Status CheckCtScale(const ModelFolder& folder, CtWeight& w) {
  const std::string fmt(CtFormatName(w.format));
  const CtTensor& c = w.codes;
  const CtTensor& s = w.scale;
  if (!s.present) {
    return Bad(folder, c, "has no scale '" + c.name.substr(0, c.name.rfind('.')) +
                              ".weight_scale'; without it its values are meaningless");
  }
  const bool mx = w.format == CtFormat::kMxfp4 || w.format == CtFormat::kMxfp8;
  if (mx ? s.dtype != DType::kU8
         : w.format == CtFormat::kNvfp4 ? s.dtype != DType::kF8E4M3 : !IsFloatScale(s.dtype)) {
    return Bad(folder, s, Is(s) + "; " + fmt + " scales are " +
                              (mx ? "U8 (E8M0 exponents)"
                                  : w.format == CtFormat::kNvfp4 ? "F8_E4M3" : "BF16, F16 or F32"));
  }
  std::vector<uint64_t> want;
  switch (w.strategy) {
    case CtStrategy::kTensor:
      w.scale_cols = 1;
      w.scale_row_span = w.rows;
      if (s.shape.size() > 2 || (s.shape.size() > 0 && s.shape[0] != 1) ||
          (s.shape.size() == 2 && s.shape[1] != 1)) {
        want = {1};
      }
      break;
    case CtStrategy::kChannel:
      w.scale_cols = 1;
      want = {w.rows, 1};
      break;
    case CtStrategy::kGroup:
    case CtStrategy::kTensorGroup:
      if (w.cols % w.group_size != 0) {
        return Error(ErrorCode::kUnsupported,
                     folder.shards[c.shard].rel_name + ": tensor '" + c.name + "' has " +
                         std::to_string(w.cols) + " columns, not a multiple of its group size " +
                         std::to_string(w.group_size) + " (compressed-tensors cannot decode it)");
      }
      w.scale_cols = w.cols / w.group_size;
      want = {w.rows, w.scale_cols};
      break;
    case CtStrategy::kBlock:
      w.scale_cols = CeilDiv(w.cols, w.block_cols);
      w.scale_row_span = w.block_rows;
      want = {CeilDiv(w.rows, w.block_rows), w.scale_cols};
      break;
  }
  if (!want.empty() && s.shape != want) {
    return Bad(folder, s,
               "has shape " + ShapeString(s.shape) + "; its weight " +
                   ShapeString({w.rows, w.cols}) + " (" + fmt + ") needs " + ShapeString(want));
  }
  return Status::Ok();
}

// Zero points: present exactly when asymmetric, one per scale (packed for pack-quantized
// group and channel weights).
Status CheckCtZeroPoint(const ModelFolder& folder, const CtWeight& w) {
  const CtTensor& c = w.codes;
  const CtTensor& s = w.scale;
  const CtTensor& z = w.zero_point;
  if (w.symmetric && z.present) {
    return Bad(folder, z, "is present but its group's weights are symmetric");
  }
  if (!w.symmetric) {
    if (w.format == CtFormat::kNvfp4 || w.format == CtFormat::kMxfp4 || w.is_float) {
      return Error(ErrorCode::kUnsupported, folder.shards[c.shard].rel_name + ": tensor '" +
                                                c.name + "': asymmetric float weights cannot "
                                                "be decoded");
    }
    if (!z.present) {
      return Bad(folder, c, "has no zero point '" + c.name.substr(0, c.name.rfind('.')) +
                                ".weight_zero_point' though its group is asymmetric");
    }
    const bool packed_zp = w.format == CtFormat::kPack && (w.strategy == CtStrategy::kGroup ||
                                                           w.strategy == CtStrategy::kChannel);
    if (packed_zp) {
      // pack_to_int32(zp, num_bits, packed_dim=0): rows packed into int32 words per column.
      const std::vector<uint64_t> zw = {CeilDiv(w.rows * static_cast<uint64_t>(w.num_bits), 32),
                                        w.scale_cols};
      if (z.dtype != DType::kI32 || z.shape != zw) {
        return Bad(folder, z, Is(z) + "; packed zero points of " + ShapeString({w.rows, w.cols}) +
                                  " are I32 " + ShapeString(zw));
      }
    } else if ((z.dtype != DType::kI8 && z.dtype != DType::kI32 && !IsFloatScale(z.dtype)) ||
               z.nbytes / (DTypeBits(z.dtype) / 8) != s.nbytes / (DTypeBits(s.dtype) / 8)) {
      return Bad(folder, z,
                 Is(z) + "; a zero point per scale " + ShapeString(s.shape) + " is needed");
    }
  }
  return Status::Ok();
}

// Activation order's group indices (one per column) and NVFP4's global scale (one F32).
Status CheckCtGIdxAndGlobalScale(const ModelFolder& folder, const CtWeight& w) {
  const std::string fmt(CtFormatName(w.format));
  const CtTensor& c = w.codes;
  // Activation order: one group index per column.
  const CtTensor& gi = w.g_idx;
  if (gi.present) {
    if (w.strategy != CtStrategy::kGroup) {
      return Bad(folder, gi, "is present but its group's strategy is not group");
    }
    if (gi.dtype != DType::kI32 || gi.shape != std::vector<uint64_t>{w.cols}) {
      return Bad(folder, gi, Is(gi) + "; a g_idx is I32 [" + std::to_string(w.cols) + "]");
    }
  }
  // NVFP4's global scale: one F32.
  const CtTensor& gs = w.global_scale;
  if (w.format == CtFormat::kNvfp4) {
    if (!gs.present) {
      return Bad(folder, c, "has no '" + c.name.substr(0, c.name.rfind('.')) +
                                ".weight_global_scale' (NVFP4 stores one)");
    }
    if (gs.dtype != DType::kF32 || gs.shape != std::vector<uint64_t>{1}) {
      return Bad(folder, gs, Is(gs) + "; a global scale is F32 [1]");
    }
  } else if (gs.present) {
    return Bad(folder, gs, "is present but its group is " + fmt + ", which has none");
  }
  return Status::Ok();
}

Status CheckCtWeight2d(const ModelFolder& folder, CtWeight& w) {
  const CtTensor& c = w.codes;
  if (c.shape.size() == 3 && w.experts == 0) return CheckCtStack(folder, w);
  if (c.shape.size() != 2) {
    return Error(ErrorCode::kUnsupported,
                 folder.shards[c.shard].rel_name + ": tensor '" + c.name + "' " +
                     ShapeString(c.shape) + ": a " + std::to_string(c.shape.size()) +
                     "-D compressed-tensors weight; quench decodes 2-D weights and 3-D stacks "
                     "of them (fused experts)");
  }
  QUENCH_RETURN_IF_ERROR(CheckCtCodes(folder, w));
  QUENCH_RETURN_IF_ERROR(CheckCtScale(folder, w));
  QUENCH_RETURN_IF_ERROR(CheckCtZeroPoint(folder, w));
  return CheckCtGIdxAndGlobalScale(folder, w);
}

}  // namespace

std::string DescribeCtGroup(const CtWeight& w, size_t weights) {
  std::string d = std::string(CtFormatName(w.format)) + " (" + (w.is_float ? "float" : "int") +
                  std::to_string(w.num_bits) + ", ";
  switch (w.strategy) {
    case CtStrategy::kTensor: d += "per tensor"; break;
    case CtStrategy::kChannel: d += "per channel"; break;
    case CtStrategy::kGroup: d += "group " + std::to_string(w.group_size); break;
    case CtStrategy::kTensorGroup:
      d += "group " + std::to_string(w.group_size) + " + global";
      break;
    case CtStrategy::kBlock:
      d += std::to_string(w.block_rows) + "x" + std::to_string(w.block_cols) + " block";
      break;
  }
  d += w.symmetric ? ", symmetric" : ", zero points";
  return d + ", config group " + w.group + "): " + std::to_string(weights) + " weights";
}

}  // namespace quench
