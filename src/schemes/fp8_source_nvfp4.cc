// FP8-block source -> NVFP4 in one pass by per-(block, largest code) tables (the int4 kernel,
// the shared machinery and why this is exact: fp8_source_quant.cc / .h). Groups of 16 are a
// quarter of a 64-code vector, so each vector takes four tables, one per group's 16 lanes.
// A table's entries are not divided out: each compares x(m)'s bf16 bits with the eight
// bounds at which Fp4Nibble(+-x / eff) changes (fp4_bounds.h proves them equal to the
// division), and only the top 64 entries need that when the rest are provably index 0. A row
// goes in three steps: the groups' slots (and, per block column, their scale codes by one
// byte permute), the builds of slots new in the band, then the lookups with no call in the
// loop (bench/README.md, "FP8 source -> NVFP4: tables by bounds").

#include <cmath>
#include <cstdint>
#include <cstring>

#include "schemes/cpu_x86.h"
#include "schemes/float_formats.h"
#include "schemes/fp4_bounds.h"
#include "schemes/fp4_shared.h"
#include "schemes/fp8_source_quant.h"
#include "schemes/fp8_source_tables.h"

namespace quench::fp8 {

#ifdef QUENCH_FUSED_X86
namespace fused {
namespace {

// A slot's table (column j, largest magnitude mc): 64 bytes, entry m (m <= mc) in the low
// nibble of byte m / 2 for even m, the high one for odd m: the nibble of -x(m), idx(m) | 8 *
// [x(m) / eff > 0]; the nibble of +x(m) is its low three bits (fp4_bounds.h, item 1). One
// cache line a table, and one single-source byte permute a group. Slots lie kNvfp4Table
// apart in the workspace's table memory (sized for int4's 256-byte tables). The group's
// E4M3 scale code is ws.col_scale[slot]: never 0 (the zero guard), so 0 there says the slot
// is not built in this band.
constexpr size_t kNvfp4Table = 64;
static_assert(kNvfp4Table <= kTableBytes);

// Nvfp4ScaleCode(x, gs, bf16) (fp4_shared.h) of 16 lanes x >= +0 (finite lanes only; the
// others give codes nobody reads), by the same operations: t = RNE_bf16(x / 6), u =
// min(gs * t, 448) (u >= +0, so the lower clamp is idle), then F32ToE4M3 (float_formats.cc)
// of u: below 2^-6 the FPU's RNE of u + 2^14 places the subnormal code in the low bits, from
// 2^-6 up the exponent is rebiased and 20 mantissa bits dropped with ties to even (u <= 448
// never reaches the NaN code), and a code of 0 becomes 0.125's (0x20, the zero guard).
QUENCH_VBMI inline __m128i ScaleCodes16(__m512 x, __m512 gs) {
  const __m512 t = RoundBf16(_mm512_div_ps(x, _mm512_set1_ps(6.0f)));
  const __m512 u = _mm512_min_ps(_mm512_mul_ps(gs, t), _mm512_set1_ps(448.0f));
  const __m512i bits = _mm512_castps_si512(u);
  const __m512i sub = _mm512_sub_epi32(
      _mm512_castps_si512(_mm512_add_ps(u, _mm512_set1_ps(16384.0f))),
      _mm512_set1_epi32(141 << 23));
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 20), _mm512_set1_epi32(1));
  const __m512i normal = _mm512_srli_epi32(
      _mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(static_cast<int>(
                                                  (uint32_t{7} - 127u) * (1u << 23) + 0x7FFFFu))),
                       odd),
      20);
  __m512i code = _mm512_mask_blend_epi32(
      _mm512_cmplt_epu32_mask(bits, _mm512_set1_epi32(121 << 23)), normal, sub);
  code = _mm512_and_si512(code, _mm512_set1_epi32(0xFF));
  code = _mm512_mask_mov_epi32(code, _mm512_testn_epi32_mask(code, code),
                               _mm512_set1_epi32(fp4::internal::kE4M3Eighth));
  return _mm512_cvtepi32_epi8(code);
}

// What the builds of one call share: the band's decode tables, the global scale, each
// column's 128 group scale codes (one per mc, computed with its first build in the band),
// and the bounds of each group scale code met so far (fp4_bounds.h; eff depends on the code
// and gs only).
struct Nvfp4Builds {
  Band band;
  float gs;
  std::vector<uint32_t> code_epoch;  // per column: the band whose codes `codes` holds
  std::vector<uint8_t> codes;        // per column: Nvfp4ScaleCode(x(mc)) for mc < 128
  uint8_t have[kMags] = {};
  alignas(16) uint16_t bounds[kMags][8];

  QUENCH_VBMI const uint8_t* Codes(size_t j, const uint16_t* dec) {
    uint8_t* c = codes.data() + j * kMags;
    if (code_epoch[j] != band.ws.epoch) {
      const __m512 vgs = _mm512_set1_ps(gs);
      for (size_t m = 0; m < kMags; m += 16) {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(c + m),
                         ScaleCodes16(LoadDecoded(dec + m), vgs));
      }
      code_epoch[j] = band.ws.epoch;
    }
    return c;
  }
  const uint16_t* Bounds(uint8_t code) {
    if (!have[code]) {
      // _quantize: eff = scale / global_scale (f32).
      fp4::internal::Nvfp4Bounds(E4M3ToF32(code) / gs, bounds[code]);
      have[code] = 1;
    }
    return bounds[code];
  }
};

// 32 entries from 32 decoded magnitudes d (bf16 bits): idx | 8 * sign by the bounds b
// (fp4_bounds.h), two a byte. d >= +0 and every bound is <= 0x7F80, so d - bound is exact in
// int16 and its sign bit says d < bound.
QUENCH_VBMI inline __m128i Entries32(__m512i d, const __m512i* b) {
  __m512i below = _mm512_srai_epi16(_mm512_sub_epi16(d, b[1]), 15);  // -[d < b1]
  for (int k = 2; k < 8; ++k) {
    below = _mm512_add_epi16(below, _mm512_srai_epi16(_mm512_sub_epi16(d, b[k]), 15));
  }
  // (7 - #below) | (8 if d >= b0) = 15 + below - 8 * [d < b0].
  const __m512i neg0 = _mm512_and_si512(_mm512_srai_epi16(_mm512_sub_epi16(d, b[0]), 15),
                                        _mm512_set1_epi16(8));
  const __m512i e = _mm512_sub_epi16(_mm512_add_epi16(below, _mm512_set1_epi16(15)), neg0);
  // Entries 2i and 2i + 1 (one 32-bit lane) into one byte, the even one in the low nibble.
  return _mm512_cvtepi32_epi8(_mm512_or_si512(e, _mm512_srli_epi32(e, 12)));
}

// Fills the table at `table` for mc from the column's decode table `dec` (entries m <= mc:
// the only ones a group with this mc looks up). False when x(mc) is not finite. Each entry
// compares x(m)'s bf16 bits with the eight bounds at which the definition's
// Fp4Nibble(+-x / eff) changes (fp4_bounds.h proves the two equal), so no entry divides.
QUENCH_VBMI bool BuildNvfp4(Nvfp4Builds& ctx, size_t j, const uint16_t* dec, uint32_t mc,
                            uint8_t* table, uint8_t* scale) {
  if ((dec[mc] & 0x7FFFu) >= 0x7F80u) return false;
  const uint8_t code = ctx.Codes(j, dec)[mc];
  const uint16_t* bound = ctx.Bounds(code);
  __m512i b[8];
  for (int k = 0; k < 8; ++k) b[k] = _mm512_set1_epi16(static_cast<int16_t>(bound[k]));
  // Usually only the top 64 entries need the bounds: x(m) is non-decreasing in m and x(0) =
  // +0 < bound[0], so when x(1) >= bound[0] and x(w - 1) < bound[1] every entry 0 < m < w is
  // 8 (index 0, sign set) and entry 0 is 0. w is mc - 63 rounded up to even (entries pair
  // up in bytes; an entry past mc is never looked up); 2 <= w <= 64, the fill covers [0, 64).
  const size_t w = (mc - 62) & ~size_t{1};
  if (mc >= 64 && dec[1] >= bound[0] && dec[w - 1] < bound[1]) {
    _mm256_store_si256(reinterpret_cast<__m256i*>(table),
                       _mm256_mask_blend_epi8(~1u, _mm256_set1_epi8(static_cast<char>(0x80)),
                                              _mm256_set1_epi8(static_cast<char>(0x88))));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(table + w / 2),
                     Entries32(_mm512_loadu_si512(dec + w), b));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(table + w / 2 + 16),
                     Entries32(_mm512_loadu_si512(dec + w + 32), b));
  } else {
    for (size_t m = 0; m <= mc; m += 32) {
      _mm_store_si128(reinterpret_cast<__m128i*>(table + m / 2),
                      Entries32(_mm512_load_si512(dec + m), b));
    }
  }
  *scale = code;
  return true;
}

// Builds the table of `slot` (j * 128 + mc) and its scale code; kept out of line so that the
// loops stay small. False for the NaN code (mc = 0x7F) or x(mc) not finite.
[[gnu::noinline]] QUENCH_VBMI bool BuildSlot(Nvfp4Builds& ctx, size_t slot) {
  Workspace& ws = ctx.band.ws;
  const uint32_t mc = static_cast<uint32_t>(slot % kMags);
  return mc != 0x7F && BuildNvfp4(ctx, slot / kMags, ctx.band.Decode(slot / kMags), mc,
                                  ws.tables.get() + slot * kNvfp4Table,
                                  ws.col_scale.get() + slot);
}

// The packed nibbles of 64 codes whose four groups of 16 use tables t[0..3]: each group's
// lanes through its own table (a 64-byte permute indexed by (code & 0x7F) / 2; the index's
// bits 6 and 7 are ignored), the code's nibble of that byte, then the sign: the entry is the
// nibble of -x; for a positive code its bit 3 is cleared (y = e & ((code >> 4) | 7), the
// code's bit 7 landing on bit 3). Even element in the low nibble: y_even + 16 * y_odd per
// 16-bit lane, whose low byte is kept.
QUENCH_VBMI inline __m256i Lookup4(__m512i v, const uint8_t* const* t) {
  const __m512i idx = _mm512_srli_epi16(v, 1);  // byte (code & 0x7F) / 2 in the low 6 bits
  __m512i res = _mm512_permutexvar_epi8(idx, _mm512_load_si512(t[0]));
  for (int k = 1; k < 4; ++k) {
    const __m512i rk = _mm512_permutexvar_epi8(idx, _mm512_load_si512(t[k]));
    res = _mm512_mask_blend_epi8(0xFFFFull << (16 * k), res, rk);
  }
  // An odd code's entry is the high nibble.
  const __m512i nib = _mm512_and_si512(
      _mm512_mask_blend_epi8(_mm512_test_epi8_mask(v, _mm512_set1_epi8(1)), res,
                             _mm512_srli_epi16(res, 4)),
      _mm512_set1_epi8(0x0F));
  const __m512i y = _mm512_ternarylogic_epi64(nib, _mm512_srli_epi16(v, 4),
                                              _mm512_set1_epi8(0x07), 0xE0);  // a & (b | c)
  const __m512i w = _mm512_maddubs_epi16(y, _mm512_set1_epi16(0x1001));  // bytes (1, 16)
  return _mm512_cvtepi16_epi8(w);
}

QUENCH_VBMI FusedResult Nvfp4Impl(const SourceChunk& in, float gs, const ChunkOutputs& out) {
  Workspace& ws = ThreadWorkspace();
  ws.Reserve(in.scale_cols);
  constexpr size_t kGroup = 16;
  const size_t n_groups = in.cols / kGroup;
  const size_t units = (in.cols + 127) / 128;  // 128 codes (two vectors, 8 groups) a unit
  // Whether every unit lies in one block column (blocks a multiple of 128 wide; a last unit
  // of 64 codes then lies in the last column too).
  const bool one_col = in.block_cols % 128 == 0;
  const size_t first_band = in.first_row / in.block_rows;
  Nvfp4Builds ctx{Band{ws, in}, gs, std::vector<uint32_t>(in.scale_cols, 0u),
                  std::vector<uint8_t>(in.scale_cols * kMags)};
  size_t cur = ~size_t{0};
  // base[8u + p]: the slot (j * 128) of mc = 0 in the column of the group whose maximum the
  // reduction below leaves in qword p of unit u: groups a0 b0 a1 b1 a2 b2 a3 b3 (a: the first
  // vector's four, b: the second's). A last unit of 64 codes reduces its vector with itself
  // (b = a).
  const std::vector<uint32_t> col_of = BlockColumns(in, kGroup);
  std::vector<uint64_t> base(units * 8);
  for (size_t u = 0; u < units; ++u) {
    const bool full = (u + 1) * 128 <= in.cols;
    for (size_t p = 0; p < 8; ++p) {
      const size_t g = u * 8 + (p % 2 == 0 || !full ? p / 2 : 4 + p / 2);
      base[u * 8 + p] = col_of[g] * kMags;
    }
  }
  const __m512i low7 = _mm512_set1_epi8(0x7F);
  const __m512i low8 = _mm512_set1_epi64(0xFF);
  // Scale bytes a0 b0 a1 b1 a2 b2 a3 b3 -> a0 a1 a2 a3 b0 b1 b2 b3 (group order).
  const __m128i order = _mm_set_epi8(15, 14, 13, 12, 11, 10, 9, 8, 7, 5, 3, 1, 6, 4, 2, 0);
  constexpr uint8_t kPos[8] = {0, 2, 4, 6, 1, 3, 5, 7};  // group k of a unit -> qword
  const uint8_t* tab = ws.tables.get();
  uint8_t* col_scale = ws.col_scale.get();
  // The row's slots, in base's order, and the units whose tables are not all built.
  std::vector<uint64_t> slots(units * 8);
  std::vector<uint32_t> pending(units);
  StreamOut stream(out.out[0]);
  for (size_t r = 0; r < in.rows; ++r) {
    const size_t b = (in.first_row + r) / in.block_rows;
    if (b != cur) {
      ws.NextEpoch();  // the decode tables
      std::memset(col_scale, 0, in.scale_cols * kMags);
      ctx.band.scale_row = in.scales + (b - first_band) * in.scale_cols;
      cur = b;
    }
    const uint8_t* codes = in.codes + r * in.cols;
    uint8_t* packed = out.out[0] + r * (in.cols / 2);
    uint8_t* scales = out.out[1] + r * n_groups;
    size_t n_pending = 0;
    // 1. Each group's slot: its column's base + mc, mc its largest magnitude: the two
    // vectors' 8-byte halves interleaved and maxed, then the max within each qword (32, 16,
    // 8 bits), left in its low byte. With the unit in one column, the column's 128 scale
    // bytes are a table the maxima look up (0: not built); they are stored either way and
    // rewritten by step 2 for a pending unit, so no branch waits on them.
    for (size_t u = 0; u < units; ++u) {
      const size_t c0 = u * 128;
      const bool full = c0 + 128 <= in.cols;
      const __m512i a = _mm512_and_si512(_mm512_loadu_si512(codes + c0), low7);
      const __m512i bv = full ? _mm512_and_si512(_mm512_loadu_si512(codes + c0 + 64), low7) : a;
      __m512i m = _mm512_max_epu8(_mm512_unpacklo_epi64(a, bv), _mm512_unpackhi_epi64(a, bv));
      m = _mm512_max_epu8(m, _mm512_srli_epi64(m, 32));
      m = _mm512_max_epu8(m, _mm512_srli_epi64(m, 16));
      m = _mm512_max_epu8(m, _mm512_srli_epi64(m, 8));
      m = _mm512_and_si512(m, low8);
      _mm512_storeu_si512(slots.data() + u * 8,
                          _mm512_add_epi64(m, _mm512_loadu_si512(base.data() + u * 8)));
      if (one_col) {
        const uint8_t* cs = col_scale + base[u * 8];
        const __m512i sc = _mm512_permutex2var_epi8(_mm512_load_si512(cs), m,
                                                    _mm512_load_si512(cs + 64));
        const __m128i sc8 = _mm_shuffle_epi8(_mm512_cvtepi64_epi8(sc), order);
        if (full) {
          _mm_storel_epi64(reinterpret_cast<__m128i*>(scales + c0 / kGroup), sc8);
        } else {
          const uint32_t four = static_cast<uint32_t>(_mm_cvtsi128_si32(sc8));
          std::memcpy(scales + c0 / kGroup, &four, 4);
        }
        pending[n_pending] = static_cast<uint32_t>(u);
        n_pending += _mm512_testn_epi64_mask(sc, low8) != 0;
      } else {
        pending[n_pending++] = static_cast<uint32_t>(u);
      }
    }
    // 2. Tables not built in this band are built now (no call in the lookup loop below, so
    // its vectors stay in registers), and the pending units' scale codes stored.
    for (size_t i = 0; i < n_pending; ++i) {
      const size_t u = pending[i];
      const uint64_t* sl = slots.data() + u * 8;
      for (size_t p = 0; p < 8; ++p) {
        if (col_scale[sl[p]] == 0 && !BuildSlot(ctx, sl[p])) {
          stream.Finish();
          return FusedResult::kNotFinite;
        }
      }
      const size_t n = (u + 1) * 128 <= in.cols ? 8 : 4;
      for (size_t k = 0; k < n; ++k) scales[u * 8 + k] = col_scale[sl[kPos[k]]];
    }
    // 3. The lookups.
    for (size_t u = 0; u < units; ++u) {
      const size_t c0 = u * 128;
      const uint64_t* sl = slots.data() + u * 8;
      // The next row's codes, for step 1 (which is too quick to wait for memory).
      _mm_prefetch(reinterpret_cast<const char*>(codes + in.cols + c0), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(codes + in.cols + c0 + 64), _MM_HINT_T0);
      const uint8_t* ta[4] = {tab + sl[0] * kNvfp4Table, tab + sl[2] * kNvfp4Table,
                              tab + sl[4] * kNvfp4Table, tab + sl[6] * kNvfp4Table};
      stream.Put(packed + c0 / 2, Lookup4(_mm512_loadu_si512(codes + c0), ta));
      if (c0 + 128 <= in.cols) {
        const uint8_t* tb[4] = {tab + sl[1] * kNvfp4Table, tab + sl[3] * kNvfp4Table,
                                tab + sl[5] * kNvfp4Table, tab + sl[7] * kNvfp4Table};
        stream.Put(packed + c0 / 2 + 32, Lookup4(_mm512_loadu_si512(codes + c0 + 64), tb));
      }
    }
  }
  stream.Finish();
  return FusedResult::kOk;
}

}  // namespace
}  // namespace fused
#endif  // QUENCH_FUSED_X86

FusedResult QuantizeSourceNvfp4(const SourceChunk& in, float global_scale,
                                const ChunkOutputs& out) {
#ifdef QUENCH_FUSED_X86
  if (!cpu::HasAvx512Vbmi()) return internal::QuantizeSourceNvfp4Avx2(in, global_scale, out);
  if (!fused::Nvfp4Accepts(in, global_scale)) return FusedResult::kNotHandled;
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
