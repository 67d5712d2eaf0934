// Expected tensors per format (compressed-tensors' compressors: naive/float/int-quantized,
// pack-quantized, nvfp4/mxfp4-pack-quantized, mxfp8-quantized; see docs/reference-notes.md
// sections 3, 10, 11 and 12), and the SQNR thresholds per format family.
#include "verify/layouts.h"

#include <algorithm>
#include <iterator>

#include "verify/verify.h"

namespace quench::verify {
namespace {

// SQNR thresholds (dB), set about 6 dB under the lowest per-tensor SQNR this verifier measures
// on the reference's outputs for data/tiny-llama (Gaussian weights, the typical case) and 3-5 dB
// under the lowest on the hand-made edge rows in data/golden (the hard case), and 2 dB lower
// again for per-channel int scales. Real weights with heavier tails pass, while a wrong scale or
// codebook (a scale off by 2x gives about 0 dB) fails.
struct Threshold {
  std::string_view kind;
  double group_db;    // scales per group / block / MX group
  double channel_db;  // one scale per output channel (or per tensor)
};
constexpr Threshold kThresholds[] = {
    {"fp8", 24.0, 24.0},  {"int8", 30.0, 28.0},  {"int7", 29.0, 27.0}, {"int6", 23.0, 21.0},
    {"int5", 17.0, 15.0}, {"int4", 11.0, 9.0},   {"int3", 6.0, 4.0},   {"int2", 1.0, 0.5},
    {"nvfp4", 14.0, 14.0}, {"mxfp4", 11.0, 11.0},
};

const std::vector<DType> kFloatDTypes = {DType::kBF16, DType::kF16, DType::kF32};

// Scale dtype for a source weight dtype (compressed-tensors: weight dtype; others -> F16).
DType ScaleDTypeFor(DType w) { return IsQuantizableFloat(w) ? w : DType::kF16; }

// A group without the sizes its strategy needs (no group_size, a block_structure missing or
// holding 0) has been reported as a config problem (CheckStrategy); its modules are still
// checked, against scale shapes of 0 (or 1) where the size is missing, which no stored scale
// has, so they report their structure rather than divide by 0.
uint64_t ScaleCols(const Group& g, uint64_t in) {
  if (g.strategy == "group" || g.strategy == "tensor_group") {
    return g.group_size ? in / g.group_size : 1;
  }
  if (g.strategy == "block") return g.bw ? CeilDiv(in, g.bw) : 0;
  return 1;
}

std::vector<uint64_t> ScaleShape(const Group& g, uint64_t out, uint64_t in) {
  if (g.strategy == "tensor") return {1};
  if (g.strategy == "block") return {g.bh ? CeilDiv(out, g.bh) : 0, ScaleCols(g, in)};
  return {out, ScaleCols(g, in)};
}

// The scale dtypes accepted: the configured one, else the one the source weight implies, else
// any float.
std::vector<DType> ScaleDTypes(const Group& g, std::optional<DType> wdtype) {
  if (g.scale_dtype) return {*g.scale_dtype};
  if (wdtype) return {ScaleDTypeFor(*wdtype)};
  return kFloatDTypes;
}

}  // namespace

std::vector<Expected> ExpectedTensors(const Group& g, uint64_t out, uint64_t in,
                                      std::optional<DType> wdtype) {
  const std::vector<DType> sd = ScaleDTypes(g, wdtype);
  const std::vector<uint64_t> sshape = ScaleShape(g, out, in);
  std::vector<Expected> e;
  switch (g.format) {
    case Format::kFloat:
      e.push_back({"weight", {DType::kF8E4M3}, {out, in}});
      e.push_back({"weight_scale", sd, sshape});
      if (!g.symmetric) e.push_back({"weight_zero_point", {DType::kF8E4M3}, sshape});
      break;
    case Format::kInt:
      e.push_back({"weight", {DType::kI8}, {out, in}});
      e.push_back({"weight_scale", sd, sshape});
      if (!g.symmetric) e.push_back({"weight_zero_point", {DType::kI8}, sshape});
      break;
    case Format::kPack: {
      const uint64_t b = static_cast<uint64_t>(g.bits);
      e.push_back({"weight_packed", {DType::kI32}, {out, CeilDiv(in * b, 32)}});
      e.push_back({"weight_scale", sd, sshape});
      e.push_back({"weight_shape", {DType::kI64}, {2}});
      if (!g.symmetric) {
        // Group and channel zero points are packed along dim 0 (docs/reference-notes.md 10.4).
        if (g.strategy == "group" || g.strategy == "channel") {
          e.push_back({"weight_zero_point", {DType::kI32}, {CeilDiv(out * b, 32), sshape.back()}});
        } else {
          e.push_back({"weight_zero_point", {DType::kI8}, sshape});
        }
      }
      break;
    }
    case Format::kNvfp4:
      e.push_back({"weight_packed", {DType::kU8}, {out, in / 2}});
      e.push_back({"weight_scale", {DType::kF8E4M3}, {out, in / 16}});
      e.push_back({"weight_global_scale", {DType::kF32}, {1}});
      break;
    case Format::kMxfp4:
      e.push_back({"weight_packed", {DType::kU8}, {out, in / 2}});
      e.push_back({"weight_scale", {DType::kU8}, {out, in / 32}});
      break;
    case Format::kMxfp8:
      e.push_back({"weight", {DType::kF8E4M3}, {out, in}});
      e.push_back({"weight_scale", {DType::kU8}, {out, in / 32}});
      break;
    default:
      break;
  }
  return e;
}

bool IsQuantSuffix(std::string_view p) {
  return std::find(std::begin(kQuantSuffixes), std::end(kQuantSuffixes), p) !=
         std::end(kQuantSuffixes);
}

}  // namespace quench::verify

namespace quench {

double SqnrThresholdDb(std::string_view kind, bool per_channel) {
  for (const verify::Threshold& t : verify::kThresholds) {
    if (t.kind == kind) return per_channel ? t.channel_db : t.group_db;
  }
  return 0;
}

}  // namespace quench
