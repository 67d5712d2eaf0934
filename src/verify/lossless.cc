// A DST that claims to be the lossless repack of an AutoAWQ or ModelOpt NVFP4 SRC
// (VerifyOptions::packed_source): which modules are held to it, and each element dequantized as
// compressed-tensors' dequantizer computes it, to be equal bit for bit to the source decoded
// the same way (src/pipeline/source_decode_packed.h). The error bound alone would let a code
// one grid step off pass; a repack changes no value, so any difference is a problem.
#include <cmath>
#include <cstring>

#include "schemes/float_formats.h"
#include "verify/verifier.h"

namespace quench::verify {

// A "Linear" target selects every module, unless SRC was a packed source: then only the
// modules it quantized, its other 2-D float weights being embeddings (AutoAWQ and ModelOpt
// quantize Linear layers; the ones they skip are in the converters' ignore lists).
bool Verifier::LinearTargetSelects(std::string_view module) const {
  return !opt_.packed_source || opt_.packed_source->modules.contains(std::string(module));
}

bool Verifier::IsLosslessRepack(const std::string& module, const Group& g) const {
  if (!opt_.packed_source || !src_) return false;
  const VerifyOptions::PackedSource& p = *opt_.packed_source;
  if (!p.modules.contains(module) || g.format_name != p.format) return false;
  // Only what the repack wrote: ModelOpt's global scale or AutoAWQ's F16 scales kept (a
  // conversion that decoded and requantized computes its own).
  if (g.format == Format::kNvfp4) {  // 16-input E4M3 groups, as ModelOpt's
    auto want = p.global_scales.find(module);
    const TensorInfo* gt = dst_.Find(module + ".weight_global_scale");
    if (want == p.global_scales.end() || gt == nullptr || gt->dtype != DType::kF32 ||
        gt->nbytes() != 4) {
      return false;
    }
    float got;
    std::memcpy(&got, dst_.Data(module + ".weight_global_scale"), 4);
    return std::memcmp(&got, &want->second, 4) == 0;
  }
  const TensorInfo* st = dst_.Find(module + ".weight_scale");
  return g.format == Format::kPack && g.bits == p.bits && g.strategy == "group" &&
         g.group_size == p.group_size && g.symmetric == p.symmetric && st != nullptr &&
         st->dtype == p.weight_dtype;
}

// compressed-tensors' _dequantize, to BF16: int codes (q - z) * s computed in the scale's
// dtype (one rounding: the product of a <= 8-bit integer and an F16/BF16 scale is exact in
// f32); NVFP4 e2m1 * bf16(e4m3 / global) in BF16 (the 0-dim global scale does not promote).
uint16_t CtDequantizedBF16(const ModuleView& v, const RowBuffers& b, uint64_t c) {
  if (v.g->format == Format::kNvfp4) {
    const float scale = BF16ToF32(F32ToBF16(static_cast<float>(b.s[c])));
    return F32ToBF16(static_cast<float>(b.q[c]) * scale);
  }
  const float p = static_cast<float>((b.q[c] - b.zp[c]) * b.s[c]);
  switch (v.sdt) {
    case DType::kF16: return F32ToBF16(F16ToF32(F32ToF16(p)));
    default: return F32ToBF16(p);
  }
}

}  // namespace quench::verify
