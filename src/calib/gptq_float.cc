// GPTQ on float weights (see gptq.h): llm-compressor 0.14.0.1's quantize_weight with the
// strategies column_scale_window expands (tensor, channel, block, tensor_group, group), the
// element's fake quantization being compressed-tensors 0.19.0's _quantize_dequantize with
// the column's effective scale, and the final codes the scheme's compressor's, through the
// scale and rounding steps of the scheme definitions (schemes/fp8_shared.h,
// schemes/fp4_shared.h). The sweep itself is the integer formats' (gptq_sweep.h).
//
// Dtypes, which decide every rounding (checked against the goldens of
// scripts/make_golden_gptq_float.py): the sweep's W is f32; the observer returns FP8 and MX
// scales in the weight dtype D and NVFP4's in f32 (E4M3 values), and eff = scale / global
// scale is f32. _quantize_dequantize computes x / eff in f32, clamps, casts to the element
// type, and multiplies by eff in eff's dtype: RNE_D(code * scale) for FP8 and MX, f32 for
// NVFP4. The returned weight is cast to D (update_batch_qparams) before the compressor
// quantizes it (RNE_D(x / scale) for FP8 and MX, f32 x / eff for NVFP4).
#include <algorithm>
#include <cmath>

#include "calib/blas.h"
#include "calib/gptq.h"
#include "calib/gptq_sweep.h"
#include "schemes/float_formats.h"
#include "schemes/fp4.h"
#include "schemes/fp4_shared.h"
#include "schemes/fp8.h"
#include "schemes/fp8_shared.h"

namespace quench::calib {
namespace {

constexpr float kE4M3Max = 448.0f;
constexpr size_t kTile = fp8::kBlock;

// The E2M1 value of a nibble (cast_to_fp4's result: sign times magnitude).
float Fp4Value(uint8_t nibble) {
  static constexpr float kMag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  const float m = kMag[nibble & 7];
  return (nibble & 8) ? -m : m;
}

bool IsFp4(GptqFloat f) { return f == GptqFloat::kNvfp4 || f == GptqFloat::kMxfp4; }

// Columns per scale along a row (0: one per row or tensor).
size_t GroupWidth(GptqFloat f) {
  switch (f) {
    case GptqFloat::kFp8Block: return kTile;
    case GptqFloat::kNvfp4: return fp4::kNvfp4Group;
    case GptqFloat::kMxfp4:
    case GptqFloat::kMxfp8: return fp4::kMxGroup;
    default: return 0;
  }
}

// |x| max as the observer takes it: max(|min(mn, 0)|, max(mx, 0)).
float Amax(const float* x, size_t n, size_t stride, size_t count) {
  float mn = 0.0f, mx = 0.0f;
  for (size_t k = 0; k < count; ++k) {
    for (size_t i = 0; i < n; ++i) {
      mn = std::min(mn, x[k * stride + i]);
      mx = std::max(mx, x[k * stride + i]);
    }
  }
  return std::max(std::fabs(mn), std::fabs(mx));
}

}  // namespace

bool GptqFloatFormat(const std::string& type, const std::string& strategy, int bits,
                     GptqFloat* format) {
  if (type != "float") return false;
  if (bits == 8 && strategy == "tensor")
    *format = GptqFloat::kFp8Tensor;
  else if (bits == 8 && strategy == "channel")
    *format = GptqFloat::kFp8Channel;
  else if (bits == 8 && strategy == "block")
    *format = GptqFloat::kFp8Block;
  else if (bits == 4 && strategy == "tensor_group")
    *format = GptqFloat::kNvfp4;
  else if (bits == 4 && strategy == "group")
    *format = GptqFloat::kMxfp4;
  else if (bits == 8 && strategy == "group")
    *format = GptqFloat::kMxfp8;
  else
    return false;
  return true;
}

namespace {

// The observer's scales (calculate_qparams) into out->scales (and out->scale_codes for the
// FP4 and MX formats), and each row's effective scale per group into eff (column_scale_window:
// eff = scale / global_scale; a block's scale for each of its rows). `orig`: the rows as f32,
// rows x n, in groups of gw (0: none) numbering ng per row.
void ObserverScales(GptqFloat format, const std::vector<float>& orig, size_t rows, size_t n,
                    size_t gw, size_t ng, DType d, float gs, GptqFloatRows* out,
                    std::vector<float>& eff) {
  out->scales.clear();
  out->scale_codes.clear();
  switch (format) {
    case GptqFloat::kFp8Tensor:
      out->scales.push_back(gs);
      std::fill(eff.begin(), eff.end(), gs);
      break;
    case GptqFloat::kFp8Channel:
      for (size_t r = 0; r < rows; ++r) {
        eff[r] = fp8::internal::ScaleFromAmax(Amax(orig.data() + r * n, n, n, 1), d);
        out->scales.push_back(eff[r]);
      }
      break;
    case GptqFloat::kFp8Block: {
      // Tiles padded with zeros, which the observer's min(mn, 0) / max(mx, 0) ignore.
      const size_t tr = (rows + kTile - 1) / kTile;
      out->scales.resize(tr * ng);
      for (size_t t = 0; t < tr; ++t) {
        const size_t r0 = t * kTile, nr = std::min(rows, r0 + kTile) - r0;
        for (size_t g = 0; g < ng; ++g) {
          const size_t c0 = g * kTile, nc = std::min(n, c0 + kTile) - c0;
          const float s =
              fp8::internal::ScaleFromAmax(Amax(orig.data() + r0 * n + c0, nc, n, nr), d);
          out->scales[t * ng + g] = s;
          for (size_t r = r0; r < r0 + nr; ++r) eff[r * ng + g] = s;
        }
      }
      break;
    }
    case GptqFloat::kNvfp4:
    case GptqFloat::kMxfp4:
    case GptqFloat::kMxfp8:
      out->scales.resize(rows * ng);
      out->scale_codes.resize(rows * ng);
      for (size_t r = 0; r < rows; ++r) {
        for (size_t g = 0; g < ng; ++g) {
          const float amax = Amax(orig.data() + r * n + g * gw, gw, n, 1);
          const size_t i = r * ng + g;
          if (format == GptqFloat::kNvfp4) {
            const uint8_t code = fp4::internal::Nvfp4ScaleCode(amax, gs, d);
            out->scale_codes[i] = code;
            out->scales[i] = E4M3ToF32(code);
            eff[i] = out->scales[i] / gs;  // f32 scale / f32 global scale
          } else {
            const auto s = fp4::internal::MxScaleFor(amax, d,
                                                     format == GptqFloat::kMxfp4
                                                         ? fp4::internal::kMxFp4Offset
                                                         : fp4::internal::kMxFp8Offset);
            out->scale_codes[i] = s.stored;
            out->scales[i] = eff[i] = s.scale;
          }
        }
      }
      break;
  }
}

// The module's weight as the compressor stores it: the sweep's result `w` (in sweep order,
// `col` its columns) cast to d, in original column order, quantized with the observer's
// scales (eff per row and group, group_of per sweep position) into out->codes.
void CompressedCodes(GptqFloat format, const std::vector<float>& w, const std::vector<size_t>& col,
                     const std::vector<size_t>& group_of, const std::vector<float>& eff,
                     size_t rows, size_t n, size_t ng, DType d, GptqFloatRows* out) {
  const bool fp4 = IsFp4(format);
  out->codes.resize(rows * n);
  for (size_t r = 0; r < rows; ++r) {
    for (size_t p = 0; p < n; ++p) {
      const size_t c = col[p];
      const float x = fp8::internal::RoundToDType(w[r * n + p], d);
      const float e = eff[r * ng + group_of[p]];
      uint8_t code;
      if (format == GptqFloat::kNvfp4) {
        code = fp4::internal::Fp4Nibble(x / e);
      } else {
        const float v = fp8::internal::RoundToDType(x / e, d);
        code = fp4 ? fp4::internal::Fp4Nibble(v)
                   : F32ToE4M3(std::min(std::max(v, -kE4M3Max), kE4M3Max));
      }
      out->codes[r * n + c] = code;
    }
  }
}

}  // namespace

bool QuantizeFloatRows(const GptqFactor& f, const WeightChunk& in, GptqFloat format,
                       const GptqOptions& options, GptqFloatRows* out) {
  auto blas = LoadBlas();
  const DType d = in.dtype;
  if (!blas.ok() || in.cols != f.n || in.cols == 0 || options.block_size <= 0 ||
      (d != DType::kBF16 && d != DType::kF16 && d != DType::kF32)) {
    return false;
  }
  const size_t rows = in.rows, n = in.cols, gw = GroupWidth(format);
  const bool grouped =
      format == GptqFloat::kNvfp4 || format == GptqFloat::kMxfp4 || format == GptqFloat::kMxfp8;
  if (grouped && n % gw != 0) return false;
  const float gs = in.params.global_scale;
  if ((format == GptqFloat::kNvfp4 || format == GptqFloat::kFp8Tensor) &&
      !(std::isfinite(gs) && gs > 0.0f)) {
    return false;
  }
  std::vector<float> orig(rows * n);
  for (size_t i = 0; i < rows * n; ++i) {
    orig[i] = ElementToF32(in.data, d, i);
    if (!std::isfinite(orig[i])) return false;
  }
  const size_t ng = gw == 0 ? 1 : (n + gw - 1) / gw;
  std::vector<float> eff(rows * ng);
  ObserverScales(format, orig, rows, n, gw, ng, d, gs, out, eff);
  // g_idx = (arange(n) // divisor)[perm]: a sweep position's scale is its original column's.
  const std::vector<size_t> col = internal::SweepColumns(f);
  std::vector<size_t> group_of(n, 0);
  if (gw != 0) {
    for (size_t p = 0; p < n; ++p) group_of[p] = col[p] / gw;
  }
  // The product's dtype: the scale's (D), except NVFP4's f32 scales.
  const DType qd = format == GptqFloat::kNvfp4 ? DType::kF32 : d;
  const bool fp4 = IsFp4(format);
  std::vector<float> w = internal::SweepWeight(f, orig, rows, col);
  out->loss = internal::Sweep(
      f, **blas, rows, static_cast<size_t>(options.block_size), w, options.preserve_zeros,
      [&](size_t r, size_t p, float x) {
        const float e = eff[r * ng + group_of[p]];
        // scaled = x / scale (f32); round_to_quantized_type_args: clamp, cast, back to f32.
        const float v = x / e;
        float c;
        if (fp4) {
          c = Fp4Value(fp4::internal::Fp4Nibble(v));
        } else {
          c = E4M3ToF32(F32ToE4M3(std::min(std::max(v, -kE4M3Max), kE4M3Max)));
        }
        return fp8::internal::RoundToDType(c * e, qd);
      });
  CompressedCodes(format, w, col, group_of, eff, rows, n, ng, d, out);
  return true;
}

bool QuantizeFloatRowsInto(const GptqFactor& f, const WeightChunk& in, GptqFloat format,
                           const GptqOptions& options, const ChunkOutputs& out, double* loss) {
  GptqFloatRows res;
  if (!QuantizeFloatRows(f, in, format, options, &res)) return false;
  const size_t count = in.rows * in.cols;
  if (IsFp4(format)) {
    // Packed two per byte, the even element in the low nibble (pack_fp4_to_uint8).
    for (size_t i = 0; i < count; i += 2) {
      out.out[0][i / 2] = static_cast<uint8_t>(res.codes[i] | (res.codes[i + 1] << 4));
    }
  } else {
    std::copy_n(res.codes.data(), count, out.out[0]);
  }
  switch (format) {
    case GptqFloat::kFp8Tensor:
      break;  // the one scale is the pre-pass's output
    case GptqFloat::kFp8Channel:
    case GptqFloat::kFp8Block: {
      const size_t ssz = DTypeBits(in.dtype) / 8;
      for (size_t i = 0; i < res.scales.size(); ++i) {
        fp8::internal::StoreScale(out.out[1] + i * ssz, res.scales[i], in.dtype);
      }
      break;
    }
    default:
      std::copy(res.scale_codes.begin(), res.scale_codes.end(), out.out[1]);
  }
  if (loss != nullptr) *loss = res.loss;
  return true;
}

}  // namespace quench::calib
