// FP8-block source -> int4 (here) / NVFP4 (fp8_source_nvfp4.cc) in one pass by per-(block,
// largest code) tables; see the header for why this is exact. Every table entry is computed
// by the same operations as the definitions (fp8.cc's decode, int.cc's and fp4.cc's
// quantization), in f32 lanes, so a code maps to the byte the decode-then-quantize path
// writes for it:
//   x(c)   = RNE_bf16(f32(e4m3(c)) * s_block)                  (decode, fp8.cc)
//   amax_g = x(mc), mc = max over the group of (code & 0x7F)   (RNE and the product are
//            monotonic in |code| for s_block >= +0; the NaN code 0x7F is the largest)
//   int4:  scale = calculate_qparams(amax_g) (int_shared.h ComputeParams),
//          u = round_half_even(clamp(RNE_bf16(x / scale), -8, 7)) + 8, packed two a byte;
//   NVFP4: s = Nvfp4ScaleCode(amax_g, gs), eff = f32(e4m3(s) / gs),
//          nibble = E2M1(x / eff) (fp4_shared.h Fp4Nibble), the entries taken by comparing
//          x with the division's decision bounds (fp4_bounds.h proves the two equal).
// A negative code decodes to -x(c & 0x7F) exactly (the product's and RNE's symmetry, with the
// scale's sign bit clear), so each table holds the results of the 128 magnitudes with either
// sign. tests/test_fp8_source_quant.cc compares every code, group, block width and awkward
// scale against DequantizeSourceScalar followed by the scalar scheme references.

#include "schemes/fp8_source_quant.h"

#include <cstdint>
#include <cstring>

#include "schemes/cpu_x86.h"
#include "schemes/float_formats.h"
#include "schemes/fp8_shared.h"
#include "schemes/fp8_source_tables.h"
#include "schemes/int_shared.h"

namespace quench::fp8 {

bool FusedSourceAvailable() {
#ifdef QUENCH_FUSED_X86
  return cpu::HasAvx512Vbmi() || internal::Avx2FusedAvailable();
#else
  return false;
#endif
}

uint64_t FusedWorkspaceBytes(uint64_t scale_cols) {
#ifdef QUENCH_FUSED_X86
  // Workspace::Reserve: tables, decode (2 bytes), col_scale (1), slot_stamp (4) and
  // slot_scale (2) per slot; col_stamp (4) per column.
  return scale_cols * (fused::kMags * (fused::kTableBytes + 2 + 1 + 4 + 2) + 4);
#else
  (void)scale_cols;
  return 0;
#endif
}

#ifdef QUENCH_FUSED_X86
namespace fused {
namespace {

// ---- int4, symmetric ----

// The table of (column j, mc): u = q + 8 of +-x(m); the group's scale (bf16 bits) to *scale.
// False when x(mc) is not finite in bf16.
QUENCH_VBMI bool BuildInt4(const uint16_t* dec, uint32_t mc, uint8_t* table, uint16_t* scale) {
  if ((dec[mc] & 0x7FFFu) >= 0x7F80u) return false;
  intq::internal::Layout l{};
  l.bits = 4;
  l.qmin = -8;
  l.qmax = 7;
  const float amax = BF16ToF32(dec[mc]);
  const float s = intq::internal::ComputeParams(0.0f, amax, l, /*symmetric=*/true,
                                                DType::kBF16).scale;
  *scale = static_cast<uint16_t>(F32ToBits(s) >> 16);  // a bf16 value
  // RNE_bf16(x / s): by the reciprocal where fp8_shared.h's proof allows (x and s in bf16).
  const bool recip = internal::ReciprocalIsExact(s, DType::kBF16);
  const __m512 by = _mm512_set1_ps(recip ? 1.0f / s : s);
  const __m512 magic = _mm512_set1_ps(12582912.0f);      // 1.5 * 2^23: RNE to integers
  const __m512 magic8 = _mm512_set1_ps(12582920.0f);     // ... plus the offset 8
  const __m512 seven = _mm512_set1_ps(7.0f), eight = _mm512_set1_ps(8.0f);
  for (size_t m = 0; m <= mc; m += 16) {  // only the entries this group can look up
    const __m512 x = LoadDecoded(dec + m);
    const __m512 v = RoundBf16(recip ? _mm512_mul_ps(x, by) : _mm512_div_ps(x, by));
    // +x: clamp to 7, round half to even, + 8 (the low byte of the magic sum).
    const __m512i pos = _mm512_castps_si512(_mm512_add_ps(_mm512_min_ps(v, seven), magic8));
    // -x: v is -RNE(x / s) exactly; clamp to -8: q = -round(min(v, 8)), u = 8 - that. The
    // magic sum's bits are 0x4B400000 + round(min(v, 8)), so 0x4B400008 minus them is u.
    const __m512i rq = _mm512_castps_si512(_mm512_add_ps(_mm512_min_ps(v, eight), magic));
    const __m512i neg = _mm512_sub_epi32(_mm512_set1_epi32(0x4B400008), rq);
    _mm_store_si128(reinterpret_cast<__m128i*>(table + m), _mm512_cvtepi32_epi8(pos));
    _mm_store_si128(reinterpret_cast<__m128i*>(table + 128 + m), _mm512_cvtepi32_epi8(neg));
  }
  return true;
}

QUENCH_VBMI FusedResult Int4Impl(const SourceChunk& in, size_t group, const ChunkOutputs& out) {
  Workspace& ws = ThreadWorkspace();
  ws.Reserve(in.scale_cols);
  const size_t n_groups = in.cols / group;
  const size_t first_band = in.first_row / in.block_rows;
  const std::vector<uint32_t> col_of = BlockColumns(in, group);
  Band band{ws, in};
  StreamOut stream(out.out[0]);
  size_t cur = ~size_t{0};
  for (size_t r = 0; r < in.rows; ++r) {
    const size_t b = (in.first_row + r) / in.block_rows;
    if (b != cur) {
      ws.NextEpoch();
      band.scale_row = in.scales + (b - first_band) * in.scale_cols;
      cur = b;
    }
    const uint8_t* codes = in.codes + r * in.cols;
    uint8_t* packed = out.out[0] + r * (in.cols / 2);
    uint8_t* scales = out.out[1] + r * n_groups * 2;
    for (size_t g = 0; g < n_groups; ++g) {
      const uint8_t* gc = codes + g * group;
      _mm_prefetch(reinterpret_cast<const char*>(gc) + 2048, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(gc) + 2048 + 64, _MM_HINT_T0);
      const uint32_t mc = MaxMagnitude(gc, group);
      if (mc == 0x7F) {  // a NaN code
        stream.Finish();
        return FusedResult::kNotFinite;
      }
      const size_t j = col_of[g];
      const size_t slot = j * kMags + mc;
      uint8_t* table = ws.tables.get() + slot * kTableBytes;
      if (ws.slot_stamp[slot] != ws.epoch) {
        if (!BuildInt4(band.Decode(j), mc, table, &ws.slot_scale[slot])) {
          stream.Finish();
          return FusedResult::kNotFinite;
        }
        ws.slot_stamp[slot] = ws.epoch;
      }
      for (size_t i = 0; i < group; i += 64) {
        stream.Put(packed + (g * group + i) / 2,
                   Packed(Lookup64(table, _mm512_loadu_si512(gc + i))));
      }
      std::memcpy(scales + 2 * g, &ws.slot_scale[slot], 2);
    }
  }
  stream.Finish();
  return FusedResult::kOk;
}

}  // namespace
}  // namespace fused
#endif  // QUENCH_FUSED_X86

FusedResult QuantizeSourceInt4(const SourceChunk& in, size_t group, const ChunkOutputs& out) {
#ifdef QUENCH_FUSED_X86
  if (!cpu::HasAvx512Vbmi()) return internal::QuantizeSourceInt4Avx2(in, group, out);
  if (!fused::Int4Accepts(in, group)) return FusedResult::kNotHandled;
  if (in.rows == 0) return FusedResult::kOk;
  return fused::Int4Impl(in, group, out);
#else
  (void)in;
  (void)group;
  (void)out;
  return FusedResult::kNotHandled;
#endif
}

}  // namespace quench::fp8
