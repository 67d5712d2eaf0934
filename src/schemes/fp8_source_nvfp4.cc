// FP8-block source -> NVFP4 in one pass by per-(block, largest code) tables (the int4 kernel,
// the shared machinery and why this is exact: fp8_source_quant.cc / .h). Groups of 16 are a
// quarter of a 64-code vector, so each vector takes four tables, one per group's 16 lanes.

#include <cmath>
#include <cstdint>
#include <cstring>

#include "schemes/float_formats.h"
#include "schemes/fp4_shared.h"
#include "schemes/fp8_source_quant.h"
#include "schemes/fp8_source_tables.h"

namespace quench::fp8 {

#ifdef QUENCH_FUSED_X86
namespace fused {
namespace {

// ---- NVFP4 ----

// The table of (column j, mc) for the global scale gs: byte m = nibble(+x(m)) |
// nibble(-x(m)) << 4; the group's E4M3 scale code to *scale. False when x(mc) is not finite.
QUENCH_VBMI bool BuildNvfp4(const uint16_t* dec, uint32_t mc, float gs, uint8_t* table,
                            uint16_t* scale) {
  if ((dec[mc] & 0x7FFFu) >= 0x7F80u) return false;
  const uint8_t code = fp4::internal::Nvfp4ScaleCode(BF16ToF32(dec[mc]), gs, DType::kBF16);
  *scale = code;
  // _quantize: eff = scale / global_scale (f32), then v = x / eff (f32, IEEE division).
  const __m512 eff = _mm512_set1_ps(E4M3ToF32(code) / gs);
  const __m512 magic = _mm512_set1_ps(4194304.0f);  // 2^22
  // Only the entries a group with this mc can look up (m <= mc) are built.
  for (size_t m = 0; m <= mc; m += 16) {
    const __m512 v = _mm512_div_ps(LoadDecoded(dec + m), eff);  // >= +0
    // Fp4Nibble's E2M1 index of min(v, 6), as fp4.cc's Fp4Codes computes it: below 1,
    // v + 2^22 rounds v to a multiple of 0.5 (ties to even: 0.25 -> 0, 0.75 -> 1); from 1
    // up, RNE to one mantissa bit, and (bits >> 22) - (252 << 22 >> 22) is the index
    // (1.25 -> 1, 1.75 -> 2, 2.5 -> 2, 3.5 -> 4, 5 -> 4 in the 1-bit mantissa sense).
    const __m512 a = _mm512_min_ps(v, _mm512_set1_ps(6.0f));
    const __m512i sub = _mm512_sub_epi32(_mm512_castps_si512(_mm512_add_ps(a, magic)),
                                         _mm512_castps_si512(magic));
    const __m512i bits = _mm512_castps_si512(a);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 22), _mm512_set1_epi32(1));
    const __m512i normal = _mm512_srli_epi32(
        _mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x1FFFFF - (252 << 22))), lsb),
        22);
    const __m512i idx = _mm512_mask_blend_epi32(
        _mm512_cmp_ps_mask(a, _mm512_set1_ps(1.0f), _CMP_LT_OQ), normal, sub);
    // -x(m) / eff is -v exactly: the sign nibble bit iff -v < 0, i.e. v > 0.
    const __mmask16 pos = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_GT_OQ);
    const __m512i neg = _mm512_mask_or_epi32(idx, pos, idx, _mm512_set1_epi32(8));
    const __m512i both = _mm512_or_si512(idx, _mm512_slli_epi32(neg, 4));
    _mm_store_si128(reinterpret_cast<__m128i*>(table + m), _mm512_cvtepi32_epi8(both));
  }
  return true;
}

// Builds the NVFP4 table of `slot` (column j, largest magnitude mc) and stamps it; kept out
// of line so that the lookup loop stays small. False when x(mc) is not finite.
[[gnu::noinline]] QUENCH_VBMI bool BuildNvfp4Slot(Band& band, size_t j, uint32_t mc, float gs,
                                                  size_t slot) {
  Workspace& ws = band.ws;
  if (!BuildNvfp4(band.Decode(j), mc, gs, ws.tables.get() + slot * kTableBytes,
                  &ws.slot_scale[slot])) {
    return false;
  }
  ws.slot_stamp[slot] = ws.epoch;
  return true;
}

QUENCH_VBMI FusedResult Nvfp4Impl(const SourceChunk& in, float gs, const ChunkOutputs& out) {
  Workspace& ws = ThreadWorkspace();
  ws.Reserve(in.scale_cols);
  constexpr size_t kGroup = 16;
  const size_t n_groups = in.cols / kGroup;
  const size_t first_band = in.first_row / in.block_rows;
  Band band{ws, in};
  size_t cur = ~size_t{0};
  // Byte 16k of a vector to byte k: the four groups' maxima after the in-lane reduction.
  const __m512i gather = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                          0x30201000);
  const __m512i low7 = _mm512_set1_epi8(0x7F), low4 = _mm512_set1_epi8(0x0F);
  const std::vector<uint32_t> col_of = BlockColumns(in, kGroup);
  std::vector<uint32_t> col_base(col_of.size());  // first slot of each group's column
  for (size_t g = 0; g < col_of.size(); ++g) col_base[g] = col_of[g] * kMags;
  // Raw views of the workspace for the inner loop (the compiler cannot keep a vector's data
  // pointer in a register across the stores).
  const uint32_t* stamp = ws.slot_stamp.data();
  const uint16_t* slot_scale = ws.slot_scale.data();
  const uint8_t* tab = ws.tables.get();
  uint32_t epoch = 0;
  for (size_t r = 0; r < in.rows; ++r) {
    const size_t b = (in.first_row + r) / in.block_rows;
    if (b != cur) {
      ws.NextEpoch();
      epoch = ws.epoch;
      band.scale_row = in.scales + (b - first_band) * in.scale_cols;
      cur = b;
    }
    const uint8_t* codes = in.codes + r * in.cols;
    uint8_t* packed = out.out[0] + r * (in.cols / 2);
    uint8_t* scales = out.out[1] + r * n_groups;
    for (size_t c0 = 0; c0 < in.cols; c0 += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(codes + c0) + 2048, _MM_HINT_T0);
      // The four groups' largest magnitudes: max within each 16-byte lane, then gathered.
      __m512i m = _mm512_and_si512(_mm512_loadu_si512(codes + c0), low7);
      m = _mm512_max_epu8(m, _mm512_bsrli_epi128(m, 8));
      m = _mm512_max_epu8(m, _mm512_bsrli_epi128(m, 4));
      m = _mm512_max_epu8(m, _mm512_bsrli_epi128(m, 2));
      m = _mm512_max_epu8(m, _mm512_bsrli_epi128(m, 1));
      const uint32_t maxima = static_cast<uint32_t>(
          _mm_cvtsi128_si32(_mm512_castsi512_si128(_mm512_permutexvar_epi8(gather, m))));
      // The groups' tables, built where missing. No vector is live across a build (a call
      // clobbers every vector register, so one would be spilled and reloaded each step).
      const uint8_t* tables[4];
      uint32_t codes4 = 0;
      for (size_t k = 0; k < 4; ++k) {
        const uint32_t mc = (maxima >> (8 * k)) & 0xFFu;
        const size_t slot = col_base[c0 / kGroup + k] + mc;
        if (stamp[slot] != epoch) {
          if (mc == 0x7F) return FusedResult::kNotFinite;  // a NaN code (never built)
          if (!BuildNvfp4Slot(band, col_of[c0 / kGroup + k], mc, gs, slot)) {
            return FusedResult::kNotFinite;
          }
        }
        tables[k] = tab + slot * kTableBytes;
        codes4 |= static_cast<uint32_t>(slot_scale[slot]) << (8 * k);
      }
      const __m512i v = _mm512_loadu_si512(codes + c0);
      // Each group's 16 lanes through its own table.
      __m512i res = _mm512_permutex2var_epi8(_mm512_load_si512(tables[0]), v,
                                             _mm512_load_si512(tables[0] + 64));
      for (size_t k = 1; k < 4; ++k) {
        const __m512i rk = _mm512_permutex2var_epi8(_mm512_load_si512(tables[k]), v,
                                                    _mm512_load_si512(tables[k] + 64));
        res = _mm512_mask_blend_epi8(0xFFFFull << (16 * k), res, rk);
      }
      // The nibble for the code's sign: the high one for negative codes.
      const __m512i nib = _mm512_mask_blend_epi8(
          _mm512_movepi8_mask(v), _mm512_and_si512(res, low4),
          _mm512_and_si512(_mm512_srli_epi16(res, 4), low4));
      StorePacked(nib, packed + c0 / 2);
      std::memcpy(scales + c0 / kGroup, &codes4, 4);
    }
  }
  return FusedResult::kOk;
}

// True when no scale of the chunk has its sign bit set (-0: the one non-negative scale whose

}  // namespace
}  // namespace fused
#endif  // QUENCH_FUSED_X86

FusedResult QuantizeSourceNvfp4(const SourceChunk& in, float global_scale,
                                const ChunkOutputs& out) {
#ifdef QUENCH_FUSED_X86
  if (!FusedSourceAvailable() || in.cols % 64 != 0 || in.block_cols % 16 != 0 ||
      in.block_rows == 0 || !(global_scale > 0.f) || !std::isfinite(global_scale) ||
      !fused::ScalesUnsigned(in)) {
    return FusedResult::kNotHandled;
  }
  if (in.rows == 0) return FusedResult::kOk;
  return fused::Nvfp4Impl(in, global_scale, out);
#else
  (void)in;
  (void)global_scale;
  (void)out;
  return FusedResult::kNotHandled;
#endif
}

}  // namespace quench::fp8
