#include "pipeline/source_decode_packed.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "schemes/awq_repack.h"
#include "schemes/awq_table.h"
#include "schemes/float_formats.h"
#include "schemes/mxfp4_stack.h"
#include "schemes/nibble_lookup.h"
#include "schemes/stack_transpose.h"

namespace quench {
namespace {

// E2M1's magnitudes by a code's low three bits (ModelOpt NVFP4 codes; bit 3 is the sign).
constexpr float kE2M1[8] = {0.f, 0.5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f};

Status BadScale(const Plan& plan, const PlannedTensor& t, float v, uint64_t row, uint64_t col) {
  const PlannedSourceScale& s = *t.source_scale;
  return Error(ErrorCode::kInvalidInput,
               plan.shards[s.shard].rel_name + ": tensor '" + s.name + "' holds " +
                   (std::isnan(v) ? "a NaN" : std::isinf(v) ? "an infinite" : "a negative") +
                   " scale at [" + std::to_string(row) + ", " + std::to_string(col) + "]; '" +
                   t.name + "' cannot be decoded (a scale must be finite and not negative)");
}

bool GoodScale(float v) { return v >= 0.f && !std::isinf(v); }  // NaN fails v >= 0

// AWQ: the words, scales and zero points rows [r0, r1) need, read and checked.
struct AwqRows {
  uint64_t c0 = 0, words = 0, groups = 0;
  std::vector<uint32_t> codes;   // [in, words]
  std::vector<uint16_t> scales;  // [groups, r1 - r0] F16 bits
  std::vector<uint32_t> zeros;   // [groups, words] (empty: symmetric)
};

Status ReadAwq(const Plan& plan, const PlannedTensor& t, SourceMaps& maps, uint64_t r0,
               uint64_t r1, AwqRows* a) {
  const PlannedSourceScale& s = *t.source_scale;
  const uint64_t rows = t.shape[0], cols = t.shape[1], wpr = rows / 8;  // words per qweight row
  a->c0 = r0 / 8;
  a->words = (r1 + 7) / 8 - a->c0;
  a->groups = cols / s.group;
  QUENCH_ASSIGN_OR_RETURN(const MappedFile* map, maps.Get(t.shard));
  a->codes.resize(cols * a->words);
  for (uint64_t i = 0; i < cols; ++i) {
    std::memcpy(&a->codes[i * a->words], map->data() + t.src_offset + (i * wpr + a->c0) * 4,
                a->words * 4);
  }
  const uint64_t n = r1 - r0;
  a->scales.resize(a->groups * n);
  for (uint64_t g = 0; g < a->groups; ++g) {
    QUENCH_RETURN_IF_ERROR(maps.Read(s.shard, s.offset + (g * rows + r0) * 2, n * 2,
                                     reinterpret_cast<uint8_t*>(&a->scales[g * n])));
    for (uint64_t k = 0; k < n; ++k) {
      const float v = F16ToF32(a->scales[g * n + k]);
      if (!GoodScale(v)) return BadScale(plan, t, v, g, r0 + k);
    }
  }
  if (s.zeros) {
    a->zeros.resize(a->groups * a->words);
    for (uint64_t g = 0; g < a->groups; ++g) {
      QUENCH_RETURN_IF_ERROR(maps.Read(s.zeros->first, s.zeros->second + (g * wpr + a->c0) * 4,
                                       a->words * 4,
                                       reinterpret_cast<uint8_t*>(&a->zeros[g * a->words])));
    }
  }
  return Status::Ok();
}

// AutoAWQ packs outputs 8c + m of a word at nibble kAwqNibble[m] (schemes/awq_repack.h).
uint32_t AwqCode(const std::vector<uint32_t>& words, uint64_t row_words, uint64_t i,
                 uint64_t c, uint64_t m) {
  return (words[i * row_words + c] >> (4 * kAwqNibble[m])) & 0xF;
}

Status DecodeAwq(const Plan& plan, const PlannedTensor& t, SourceMaps& maps, uint64_t r0,
                 uint64_t r1, uint16_t* out, bool* finite) {
  AwqRows a;
  QUENCH_RETURN_IF_ERROR(ReadAwq(plan, t, maps, r0, r1, &a));
  const uint64_t cols = t.shape[1], g = t.source_scale->group, n = r1 - r0;
  // The rows' codes as pack_to_int32 words, output-major (the repack's 8x8 nibble
  // transposes), then each row through its groups' 16-entry tables (nibble_lookup.h).
  thread_local std::vector<uint8_t> packed;
  thread_local std::vector<uint8_t> tables;
  packed.resize(n * cols / 2);
  tables.resize(32 * a.groups);
  RepackAwqWords(a.codes.data(), cols, a.words, r0 - 8 * a.c0, r1 - 8 * a.c0, packed.data());
  for (uint64_t o = r0; o < r1; ++o) {
    const uint64_t c = o / 8 - a.c0, m = o % 8;
    for (uint64_t gi = 0; gi < a.groups; ++gi) {
      const int z = a.zeros.empty() ? 8 : static_cast<int>(AwqCode(a.zeros, a.words, gi, c, m));
      // compressed-tensors' _dequantize in the scale's dtype (F16), one value per code, so
      // the group's 16 are computed once (awq_table.h).
      if (!AwqGroupTable(a.scales[gi * n + (o - r0)], z, &tables[32 * gi])) *finite = false;
    }
    LookupNibbles(packed.data() + (o - r0) * (cols / 2), cols, g, tables.data(),
                  reinterpret_cast<uint8_t*>(out + (o - r0) * cols));
  }
  return Status::Ok();
}

Status DecodeModelOpt(const Plan& plan, const PlannedTensor& t, SourceMaps& maps, uint64_t r0,
                      uint64_t r1, uint16_t* out, bool* finite) {
  const PlannedSourceScale& s = *t.source_scale;
  const uint64_t cols = t.shape[1], g = cols / 16, n = r1 - r0;
  QUENCH_ASSIGN_OR_RETURN(const MappedFile* map, maps.Get(t.shard));
  const uint8_t* codes = map->data() + t.src_offset + r0 * (cols / 2);
  std::vector<uint8_t> sc(n * g);
  QUENCH_RETURN_IF_ERROR(maps.Read(s.shard, s.offset + r0 * g, sc.size(), sc.data()));
  // The converter's weight_global_scale is 1 / weight_scale_2 (F32, 0-dim); the dequantizer
  // divides the E4M3 scale (as bf16) by it, in bf16 since a 0-dim tensor does not promote.
  const float gs = 1.0f / s.weight_scale_2;
  for (uint64_t k = 0; k < n * g; ++k) {
    const uint8_t b = sc[k];
    if ((b & 0x7F) == 0x7F || (b & 0x80 && b != 0x80)) {
      return BadScale(plan, t, (b & 0x7F) == 0x7F ? NAN : -1.f, r0 + k / g, k % g);
    }
  }
  // A group's 16 inputs take one of 16 values (code x its scale): computed once per group
  // as bf16(e2m1 * bf16(e4m3 / gs)), then each byte's two codes are two lookups. The values
  // are the definition's, element for element (tests/test_quant_sources.cc: the reference's
  // bytes, E4M3 subnormal and largest scales included, in whole and 1-row chunks).
  uint16_t lut[16];
  for (uint64_t r = 0; r < n; ++r) {
    const uint8_t* row_codes = codes + r * (cols / 2);
    uint16_t* row = out + r * cols;
    for (uint64_t gi = 0; gi < g; ++gi) {
      const float scale = BF16ToF32(F32ToBF16(E4M3ToF32(sc[r * g + gi]) / gs));
      bool all_finite = true;
      for (int c = 0; c < 16; ++c) {
        const float v = ((c & 8) ? -kE2M1[c & 7] : kE2M1[c & 7]) * scale;
        all_finite &= std::isfinite(v);
        lut[c] = F32ToBF16(v);
      }
      const uint8_t* bytes = row_codes + gi * 8;
      uint16_t* o = row + gi * 16;
      for (int k = 0; k < 8; ++k) {  // low nibble first
        o[2 * k] = lut[bytes[k] & 0xF];
        o[2 * k + 1] = lut[bytes[k] >> 4];
      }
      if (!all_finite) {  // only the values used count (BF16 exponent all ones: Inf or NaN)
        for (int k = 0; k < 16; ++k) {
          if ((o[k] & 0x7F80) == 0x7F80) *finite = false;
        }
      }
    }
  }
  return Status::Ok();
}

// gpt-oss MXFP4: rows [r0, r1) of the stack written [experts * in, out], each expert's part
// decoded from that expert's codes and scales alone (schemes/mxfp4_stack.h).
Status DecodeMxfp4(const Plan& plan, const PlannedTensor& t, SourceMaps& maps, uint64_t r0,
                   uint64_t r1, uint16_t* out, bool* finite) {
  const PlannedSourceScale& s = *t.source_scale;
  const uint64_t out_features = t.shape[1], in = s.scale_cols * s.group;
  const uint64_t expert_codes = out_features * in / 2, expert_scales = out_features * s.scale_cols;
  QUENCH_ASSIGN_OR_RETURN(const MappedFile* map, maps.Get(t.shard));
  std::vector<uint8_t> scales;
  for (uint64_t r = r0; r < r1;) {
    const uint64_t e = r / in, c0 = r % in, c1 = std::min(in, c0 + (r1 - r));
    scales.resize(expert_scales);
    // A stack sliced by expert pruning reads each kept expert where it lies.
    const uint64_t scales_at = s.scales_at.empty() ? s.offset + e * expert_scales : s.scales_at[e];
    const uint64_t codes_at = s.codes_at.empty() ? t.src_offset + e * expert_codes : s.codes_at[e];
    QUENCH_RETURN_IF_ERROR(maps.Read(s.shard, scales_at, expert_scales, scales.data()));
    const Mxfp4Expert x{map->data() + codes_at, scales.data(), out_features, in};
    if (const int64_t bad = DecodeMxfp4Transposed(x, c0, c1, out + (r - r0) * out_features,
                                                  finite);
        bad >= 0) {
      const uint64_t b = static_cast<uint64_t>(bad);
      const uint64_t source_e = s.kept.empty() ? e : s.kept[e];  // (expert pruning renumbers)
      return Error(ErrorCode::kInvalidInput,
                   plan.shards[s.shard].rel_name + ": tensor '" + s.name +
                       "' holds the E8M0 NaN 0xFF at [" + std::to_string(source_e) + ", " +
                       std::to_string(b / s.scale_cols) + ", " + std::to_string(b % s.scale_cols) +
                       "]; '" + t.name + "' cannot be decoded (a scale must be finite)");
    }
    r += c1 - c0;
  }
  return Status::Ok();
}

// A linearized BF16 stack's piece (Llama 4): rows [r0, r1) are columns of its expert's
// block, copied (schemes/stack_transpose.h). A NaN or Inf is refused as a plain weight's is,
// naming the stack's element.
Status DecodeLinear(const Plan& plan, const PlannedTensor& t, SourceMaps& maps, uint64_t r0,
                    uint64_t r1, uint16_t* out) {
  const PlannedSourceScale& s = *t.source_scale;
  const uint64_t in = t.shape[1];
  QUENCH_ASSIGN_OR_RETURN(const MappedFile* map, maps.Get(s.shard));
  const auto* block = reinterpret_cast<const uint16_t*>(map->data() + s.offset);
  const int64_t bad = TransposeBf16Columns(block, in, s.stack_cols, s.col0, r0, r1, out);
  if (bad < 0) return Status::Ok();
  const uint64_t o = r0 + static_cast<uint64_t>(bad) / in, i = static_cast<uint64_t>(bad) % in;
  return Error(ErrorCode::kNonFinite,
               plan.shards[t.shard].rel_name + ": tensor '" + t.name + "' contains NaN or Inf "
               "(row " + std::to_string(o) + ", column " + std::to_string(i) + "; element [" +
               std::to_string(s.expert) + ", " + std::to_string(i) + ", " +
               std::to_string(s.col0 + o) + "] of '" + s.name + "'); refusing to quantize it "
               "(fix the checkpoint or add it to --ignore)");
}

}  // namespace

Status DecodePackedRows(const Plan& plan, const PlannedTensor& t, SourceMaps& maps, uint64_t r0,
                        uint64_t r1, uint8_t* out, bool* finite) {
  *finite = true;
  if (r1 <= r0) return Status::Ok();
  uint16_t* o = reinterpret_cast<uint16_t*>(out);
  switch (t.source_scale->packed_kind) {
    case PackedKind::kAwq: return DecodeAwq(plan, t, maps, r0, r1, o, finite);
    case PackedKind::kMxfp4: return DecodeMxfp4(plan, t, maps, r0, r1, o, finite);
    case PackedKind::kLinear: return DecodeLinear(plan, t, maps, r0, r1, o);
    default: return DecodeModelOpt(plan, t, maps, r0, r1, o, finite);
  }
}

bool ReadsAcrossWeight(const PlannedTensor& t) {
  return t.source_scale && t.src_bytes != 0 &&
         (t.source_scale->packed_kind == PackedKind::kAwq ||
          t.source_scale->packed_kind == PackedKind::kLinear);
}

std::pair<uint64_t, uint64_t> AcrossRange(const PlannedTensor& t) {
  if (t.source_scale && t.source_scale->packed_kind == PackedKind::kLinear) {
    return {t.source_scale->offset, t.source_scale->nbytes};
  }
  return {t.src_offset, t.src_bytes};
}

uint64_t StackExpertBytes(const PlannedTensor& t) {
  if (!t.source_scale) return 0;
  if (t.source_scale->packed_kind == PackedKind::kLinear) return t.source_scale->nbytes;
  if (t.source_scale->packed_kind != PackedKind::kMxfp4) return 0;
  return t.shape[1] * t.source_scale->scale_cols * t.source_scale->group / 2;
}

Status RepackAwqRows(const Plan& plan, const PlannedTensor& t, SourceMaps& maps, uint64_t r0,
                     uint64_t r1, const ChunkOutputs& outs) {
  if (r1 <= r0) return Status::Ok();
  AwqRows a;
  QUENCH_RETURN_IF_ERROR(ReadAwq(plan, t, maps, r0, r1, &a));
  const uint64_t cols = t.shape[1], n = r1 - r0;
  const PlannedShard& ps = plan.shards[t.shard];
  for (size_t j = 0; j < t.kernel_outputs; ++j) {
    const std::string& name = ps.outputs[t.outputs[j]].name;
    uint8_t* dst = outs.out[j];
    if (name.ends_with(".weight_packed")) {
      // Input 8j + k of output o at nibble k of word (o, j) (pack_to_int32, offset-binary):
      // 8x8 nibble transposes (schemes/awq_repack.h).
      RepackAwqWords(a.codes.data(), cols, a.words, r0 - 8 * a.c0, r1 - 8 * a.c0, dst);
    } else if (name.ends_with(".weight_scale")) {
      for (uint64_t o = 0; o < n; ++o) {
        for (uint64_t gi = 0; gi < a.groups; ++gi) {
          std::memcpy(dst + (o * a.groups + gi) * 2, &a.scales[gi * n + o], 2);
        }
      }
    } else if (name.ends_with(".weight_zero_point")) {
      // Packed along the outputs: word (R, g) holds outputs 8R..8R+7 of group g.
      for (uint64_t R = r0 / 8; R < (r1 + 7) / 8; ++R) {
        for (uint64_t gi = 0; gi < a.groups; ++gi) {
          uint32_t word = 0;
          for (uint64_t k = 0; k < 8 && 8 * R + k < r1; ++k) {
            word |= AwqCode(a.zeros, a.words, gi, R - a.c0, k) << (4 * k);
          }
          std::memcpy(dst + ((R - r0 / 8) * a.groups + gi) * 4, &word, 4);
        }
      }
    }
  }
  return Status::Ok();
}

}  // namespace quench
