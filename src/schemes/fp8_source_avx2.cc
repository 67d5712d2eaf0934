// FP8-block source -> int4 / NVFP4 in one pass on AVX2 CPUs (no AVX-512 VBMI, whose 64-byte
// table lookups fp8_source_quant.cc and fp8_source_nvfp4.cc use). Same outputs, byte for byte,
// as decoding (fp8::DequantizeSource) followed by the scheme's kernel.
//
// Why thresholds on the code. Inside one source block the magnitude m = code & 0x7F (m <= 126;
// 0x7F is the NaN code) decodes to x(m) = RNE_bf16(f32(e4m3(m)) * s), non-decreasing in m
// (fp8_source_quant.cc). A group's parameters follow from its largest magnitude mc, and each
// element's nibble is a count of predicates of x(m), each monotonic in x, so in m:
//   NVFP4 (scale code sc of x(mc), eff = e4m3(sc) / gs): fp4_bounds.h gives eight bf16 bounds
//     b[k] with idx(+-x) = #{k in 1..7 : bits(x) >= b[k]} and the sign of -x's nibble
//     [bits(x) >= b[0]]. With T[k] = #{m <= 126 : x(m) < b[k]} (x sorted), bits(x(m)) >= b[k]
//     iff m >= T[k]: nibble(code) = #{k in 1..7 : m >= T[k]} | 8 * [code < 0 and m >= T[0]].
//   int4 (symmetric, scale s of x(mc)): v(m) = RNE_bf16(x(m) / s) >= 0 and c(m) =
//     round_half_even(min(v, 8)) in 0..8, non-decreasing; +x gives u = 8 + min(c, 7) and -x
//     gives u = 8 - c (RNE, the clamp and round half to even are odd-symmetric, and
//     round(min(v, 7)) = min(round(min(v, 8)), 7)). With T[k] = #{m <= mc : c(m) < k},
//     c(m) >= k iff m >= T[k], so c = #{k in 1..8 : m >= T[k]}.
// A group's thresholds are eight bytes, T[k] - 1 kept so that the test is a signed byte
// compare m > T[k] - 1; each 32 codes cost eight byte compares and adds instead of a decode and
// a division per weight. The thresholds are made per (block column, mc) in the band from the
// column's decode table by the definitions' own arithmetic, as the VBMI kernels' tables are.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "schemes/cpu_x86.h"
#include "schemes/float_formats.h"
#include "schemes/fp4_bounds.h"
#include "schemes/fp4_shared.h"
#include "schemes/fp8_shared.h"
#include "schemes/fp8_source_quant.h"
#include "schemes/fp8_source_tables.h"
#include "schemes/int_shared.h"

namespace quench::fp8 {

#ifdef QUENCH_FUSED_X86
namespace avx2 {
namespace {

#define QUENCH_AVX2 __attribute__((target("avx2,bmi,bmi2,popcnt")))

using fused::kMags;
constexpr size_t kThr = 16;  // bytes of a slot's thresholds (eight used) in ws.tables

// The decode table of one block column, as fused::BuildDecode: bf16 bits of
// RNE_bf16(e4m3(m) * scale) for m < 127; entry 127 (the NaN code, which no group's table
// reads) is 0x7FFF, above every bound, so that counts below a bound leave it out.
QUENCH_AVX2 void BuildDecode(float scale, uint16_t* dst) {
  const float* mags = fused::E4M3Magnitudes();
  const __m256 s = _mm256_set1_ps(scale);
  const __m256i one = _mm256_set1_epi32(1), half = _mm256_set1_epi32(0x7FFF);
  for (size_t m = 0; m < kMags; m += 8) {
    const __m256i bits = _mm256_castps_si256(_mm256_mul_ps(_mm256_load_ps(mags + m), s));
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), one);
    const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(half, lsb)), 16);
    const __m256i w = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
    _mm_store_si128(reinterpret_cast<__m128i*>(dst + m), _mm256_castsi256_si128(w));
  }
  dst[kMags - 1] = 0x7FFF;
}

// t[k] = #{lanes of v (four vectors of 32 bytes) below the byte k + 1} - 1, k < 8, as bytes:
// the int4 thresholds from the 128 counts c(m).
QUENCH_AVX2 void ThresholdsOfCounts(const __m256i* v, int8_t* t) {
  for (int k = 0; k < 8; ++k) {
    const __m256i kk = _mm256_set1_epi8(static_cast<char>(k + 1));
    __m256i n = _mm256_setzero_si256();
    for (int i = 0; i < 4; ++i) n = _mm256_sub_epi8(n, _mm256_cmpgt_epi8(kk, v[i]));
    const __m256i s = _mm256_sad_epu8(n, _mm256_setzero_si256());
    const __m128i h = _mm_add_epi64(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    t[k] = static_cast<int8_t>(_mm_cvtsi128_si32(h) + _mm_extract_epi32(h, 2) - 1);
  }
}

// t[k] = #{m < 128 : dec[m] < bound[k]} - 1, k < 8: the NVFP4 thresholds (entry 127 is
// 0x7FFF and every bound at most 0x7F80, so it never counts; all values fit int16). dec is
// sorted, so the count is 16 times the number of runs of 16 whose last entry is below the
// bound, plus the entries below it in the next run.
QUENCH_AVX2 void ThresholdsOfBounds(const uint16_t* dec, const uint16_t* bound, int8_t* t) {
  const __m128i lasts = _mm_setr_epi16(
      static_cast<int16_t>(dec[15]), static_cast<int16_t>(dec[31]),
      static_cast<int16_t>(dec[47]), static_cast<int16_t>(dec[63]),
      static_cast<int16_t>(dec[79]), static_cast<int16_t>(dec[95]),
      static_cast<int16_t>(dec[111]), static_cast<int16_t>(dec[127]));
  for (int k = 0; k < 8; ++k) {
    const int16_t bk = static_cast<int16_t>(bound[k]);
    const unsigned runs =
        _mm_popcnt_u32(_mm_movemask_epi8(_mm_cmpgt_epi16(_mm_set1_epi16(bk), lasts))) / 2;
    const __m256i run = _mm256_load_si256(reinterpret_cast<const __m256i*>(dec + 16 * runs));
    const unsigned below =
        _mm_popcnt_u32(_mm256_movemask_epi8(_mm256_cmpgt_epi16(_mm256_set1_epi16(bk), run))) / 2;
    t[k] = static_cast<int8_t>(16 * runs + below - 1);
  }
}

// The packed outputs of a chunk as one stream of 32-byte pieces in address order, stored
// non-temporally in whole aligned lines (fused::StreamOut says why and how). An aligned line
// is the previous piece's last k bytes and the current piece's first 32 - k; without VBMI the
// two are joined by dword permutes, so a start that is not 4-byte aligned (k % 4 != 0) is
// stored ordinarily instead.
class StreamOut {
 public:
  QUENCH_AVX2 explicit StreamOut(const uint8_t* start)
      : k_(reinterpret_cast<uintptr_t>(start) & 31) {
    const int kd = static_cast<int>(k_ / 4);
    alignas(32) int32_t idx[8], keep[8];
    for (int i = 0; i < 8; ++i) {
      idx[i] = (i - kd + 8) % 8;
      keep[i] = i < kd ? -1 : 0;  // dwords taken from the previous piece
    }
    idx_ = _mm256_load_si256(reinterpret_cast<const __m256i*>(idx));
    prev_mask_ = _mm256_load_si256(reinterpret_cast<const __m256i*>(keep));
  }
  QUENCH_AVX2 void Put(uint8_t* p, __m256i v) {
    if (k_ == 0) {
      _mm256_stream_si256(reinterpret_cast<__m256i*>(p), v);
      return;
    }
    if (last_ == nullptr || k_ % 4 != 0) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v);
    } else {
      const __m256i line = _mm256_blendv_epi8(_mm256_permutevar8x32_epi32(v, idx_),
                                              _mm256_permutevar8x32_epi32(prev_, idx_), prev_mask_);
      _mm256_stream_si256(reinterpret_cast<__m256i*>(p - k_), line);
    }
    prev_ = v;
    last_ = p;
  }
  QUENCH_AVX2 void Finish() {
    if (last_ != nullptr) _mm256_storeu_si256(reinterpret_cast<__m256i*>(last_), prev_);
    _mm_sfence();
  }

 private:
  size_t k_;
  __m256i idx_, prev_mask_;
  __m256i prev_ = _mm256_setzero_si256();
  uint8_t* last_ = nullptr;
};

// 64 nibbles (bytes < 16, two vectors in element order) packed two a byte, even element low.
QUENCH_AVX2 inline __m256i Pack64(__m256i a, __m256i b) {
  const __m256i w = _mm256_set1_epi16(0x1001);  // bytes (1, 16)
  return _mm256_permute4x64_epi64(
      _mm256_packus_epi16(_mm256_maddubs_epi16(a, w), _mm256_maddubs_epi16(b, w)), 0xD8);
}

// The decode table of column j in the current band.
QUENCH_AVX2 const uint16_t* Decode(fused::Workspace& ws, const float* scale_row, size_t j) {
  uint16_t* dec = reinterpret_cast<uint16_t*>(ws.decode.get()) + j * kMags;
  if (ws.col_stamp[j] != ws.epoch) {
    BuildDecode(scale_row[j], dec);
    ws.col_stamp[j] = ws.epoch;
  }
  return dec;
}

// ---- int4, symmetric ----

// The thresholds of (column j, mc) and the group's bf16 scale; false when x(mc) is not finite.
[[gnu::noinline]] QUENCH_AVX2 bool BuildInt4(const uint16_t* dec, uint32_t mc, int8_t* t,
                                             uint16_t* scale) {
  if (dec[mc] >= 0x7F80u) return false;
  intq::internal::Layout l{};
  l.bits = 4;
  l.qmin = -8;
  l.qmax = 7;
  const float s = intq::internal::ComputeParams(0.0f, BF16ToF32(dec[mc]), l, /*symmetric=*/true,
                                                DType::kBF16).scale;
  *scale = static_cast<uint16_t>(F32ToBits(s) >> 16);  // a bf16 value
  // c(m) as fused::BuildInt4 computes RNE_bf16(x / s), by the reciprocal where fp8_shared.h's
  // proof allows; entries past mc are set to 8 (above every k), so they never count.
  const bool recip = internal::ReciprocalIsExact(s, DType::kBF16);
  const __m256 by = _mm256_set1_ps(recip ? 1.0f / s : s);
  const __m256 magic = _mm256_set1_ps(12582912.0f), eight = _mm256_set1_ps(8.0f);
  const __m256i one = _mm256_set1_epi32(1), half = _mm256_set1_epi32(0x7FFF);
  const __m256i hi = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  alignas(32) int8_t c[kMags];
  for (size_t m = 0; m < kMags; m += 8) {
    const __m128i w = _mm_load_si128(reinterpret_cast<const __m128i*>(dec + m));
    const __m256 x = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(w), 16));
    const __m256i q = _mm256_castps_si256(recip ? _mm256_mul_ps(x, by) : _mm256_div_ps(x, by));
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(q, 16), one);
    const __m256 v = _mm256_castsi256_ps(
        _mm256_and_si256(_mm256_add_epi32(q, _mm256_add_epi32(half, lsb)), hi));
    __m256i r = _mm256_sub_epi32(_mm256_castps_si256(_mm256_add_ps(_mm256_min_ps(v, eight), magic)),
                                 _mm256_castps_si256(magic));
    // Lanes m > mc (never looked up; may be the NaN entry) are 8.
    const __m256i lane = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(m)),
                                          _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    r = _mm256_blendv_epi8(r, _mm256_set1_epi32(8),
                           _mm256_cmpgt_epi32(lane, _mm256_set1_epi32(static_cast<int>(mc))));
    // Bytes: lanes 0-3 in dword 0, lanes 4-7 in dword 4 (packs work within 128-bit halves).
    const __m256i p = _mm256_packs_epi32(r, r);
    const __m256i b8 = _mm256_packs_epi16(p, p);
    const int32_t lo4 = _mm256_extract_epi32(b8, 0), hi4 = _mm256_extract_epi32(b8, 4);
    std::memcpy(c + m, &lo4, 4);
    std::memcpy(c + m + 4, &hi4, 4);
  }
  __m256i v[4];
  for (int i = 0; i < 4; ++i) {
    v[i] = _mm256_load_si256(reinterpret_cast<const __m256i*>(c + 32 * i));
  }
  ThresholdsOfCounts(v, t);
  return true;
}

QUENCH_AVX2 FusedResult Int4Impl(const SourceChunk& in, size_t group, const ChunkOutputs& out) {
  fused::Workspace& ws = fused::ThreadWorkspace();
  ws.Reserve(in.scale_cols);
  const size_t n_groups = in.cols / group;
  const size_t first_band = in.first_row / in.block_rows;
  const std::vector<uint32_t> col_of = fused::BlockColumns(in, group);
  int8_t* thr = reinterpret_cast<int8_t*>(ws.tables.get());
  const __m256i low7 = _mm256_set1_epi8(0x7F), eight = _mm256_set1_epi8(8);
  const __m256i minus7 = _mm256_set1_epi8(-7);
  std::vector<uint32_t> slots(n_groups);  // the row's: j * 128 + mc
  StreamOut stream(out.out[0]);
  const float* scale_row = nullptr;
  size_t cur = ~size_t{0};
  for (size_t r = 0; r < in.rows; ++r) {
    const size_t b = (in.first_row + r) / in.block_rows;
    if (b != cur) {
      ws.NextEpoch();
      scale_row = in.scales + (b - first_band) * in.scale_cols;
      cur = b;
    }
    const uint8_t* codes = in.codes + r * in.cols;
    uint8_t* packed = out.out[0] + r * (in.cols / 2);
    uint8_t* scales = out.out[1] + r * n_groups * 2;
    // 1. Each group's slot (column j, largest magnitude mc).
    for (size_t g = 0; g < n_groups; ++g) {
      const uint8_t* gc = codes + g * group;
      __m256i mx = _mm256_setzero_si256();
      for (size_t i = 0; i < group; i += 32) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(gc + i));
        mx = _mm256_max_epu8(mx, _mm256_and_si256(v, low7));
      }
      __m128i q = _mm_max_epu8(_mm256_castsi256_si128(mx), _mm256_extracti128_si256(mx, 1));
      q = _mm_max_epu8(q, _mm_srli_si128(q, 8));
      q = _mm_max_epu8(q, _mm_srli_si128(q, 4));
      q = _mm_max_epu8(q, _mm_srli_si128(q, 2));
      q = _mm_max_epu8(q, _mm_srli_si128(q, 1));
      slots[g] = col_of[g] * static_cast<uint32_t>(kMags) +
                 (static_cast<uint32_t>(_mm_cvtsi128_si32(q)) & 0xFFu);
    }
    // 2. Thresholds not built in this band are built now (no call in the loop below), and
    // the groups' scales stored.
    for (size_t g = 0; g < n_groups; ++g) {
      const uint32_t slot = slots[g];
      const uint32_t mc = slot % kMags;
      if (ws.slot_stamp[slot] != ws.epoch) {
        if (mc == 0x7F ||  // a NaN code
            !BuildInt4(Decode(ws, scale_row, col_of[g]), mc, thr + size_t{slot} * kThr,
                       &ws.slot_scale[slot])) {
          stream.Finish();
          return FusedResult::kNotFinite;
        }
        ws.slot_stamp[slot] = ws.epoch;
      }
      std::memcpy(scales + 2 * g, &ws.slot_scale[slot], 2);
    }
    // 3. The nibbles.
    for (size_t g = 0; g < n_groups; ++g) {
      const uint8_t* gc = codes + g * group;
      const int8_t* t = thr + size_t{slots[g]} * kThr;
      __m256i tk[8];
      for (int k = 0; k < 8; ++k) tk[k] = _mm256_set1_epi8(t[k]);
      for (size_t i = 0; i < group; i += 64) {
        // The next row's codes, for step 1 (which is too quick to wait for memory).
        _mm_prefetch(reinterpret_cast<const char*>(gc + i + in.cols), _MM_HINT_T0);
        __m256i u[2];
        for (int h = 0; h < 2; ++h) {
          const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(gc + i + 32 * h));
          const __m256i m = _mm256_and_si256(v, low7);
          __m256i acc = _mm256_cmpgt_epi8(m, tk[0]);  // -c(m) after the loop
          for (int k = 1; k < 8; ++k) acc = _mm256_add_epi8(acc, _mm256_cmpgt_epi8(m, tk[k]));
          // +x: 8 + min(c, 7); -x: 8 - c.
          const __m256i pos = _mm256_sub_epi8(eight, _mm256_max_epi8(acc, minus7));
          const __m256i neg = _mm256_add_epi8(eight, acc);
          u[h] = _mm256_blendv_epi8(pos, neg, v);
        }
        stream.Put(packed + (g * group + i) / 2, Pack64(u[0], u[1]));
      }
    }
  }
  stream.Finish();
  return FusedResult::kOk;
}

// ---- NVFP4 ----

// Nvfp4ScaleCode(x, gs, bf16) (fp4_shared.h) of 8 lanes x >= +0, as fused::ScaleCodes16
// computes it in 16 (finite lanes only; the others give codes nobody reads): t =
// RNE_bf16(x / 6), u = min(gs * t, 448) (u >= +0, so the lower clamp is idle), then
// F32ToE4M3 (float_formats.cc) of u: below 2^-6 the FPU's RNE of u + 2^14 places the subnormal
// code in the low bits, from 2^-6 up the exponent is rebiased and 20 mantissa bits dropped
// with ties to even (u <= 448 never reaches the NaN code), and a code of 0 becomes 0.125's
// (0x20, the zero guard). The eight codes are left in bytes 0-3 and 16-19.
QUENCH_AVX2 inline __m256i ScaleCodes8(__m256 x, __m256 gs) {
  const __m256i q = _mm256_castps_si256(_mm256_div_ps(x, _mm256_set1_ps(6.0f)));
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(q, 16), _mm256_set1_epi32(1));
  const __m256 t = _mm256_castsi256_ps(
      _mm256_and_si256(_mm256_add_epi32(q, _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), lsb)),
                       _mm256_set1_epi32(static_cast<int>(0xFFFF0000u))));
  const __m256 u = _mm256_min_ps(_mm256_mul_ps(gs, t), _mm256_set1_ps(448.0f));
  const __m256i bits = _mm256_castps_si256(u);
  const __m256i sub = _mm256_sub_epi32(
      _mm256_castps_si256(_mm256_add_ps(u, _mm256_set1_ps(16384.0f))),
      _mm256_set1_epi32(141 << 23));
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 20), _mm256_set1_epi32(1));
  const __m256i normal = _mm256_srli_epi32(
      _mm256_add_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(static_cast<int>(
                                                  (uint32_t{7} - 127u) * (1u << 23) + 0x7FFFFu))),
                       odd),
      20);
  // bits < 121 << 23 (both non-negative as int32): the subnormal codes.
  __m256i code = _mm256_blendv_epi8(normal, sub,
                                    _mm256_cmpgt_epi32(_mm256_set1_epi32(121 << 23), bits));
  code = _mm256_and_si256(code, _mm256_set1_epi32(0xFF));
  code = _mm256_blendv_epi8(code, _mm256_set1_epi32(fp4::internal::kE4M3Eighth),
                            _mm256_cmpeq_epi32(code, _mm256_setzero_si256()));
  const __m256i w = _mm256_packus_epi32(code, code);
  return _mm256_packus_epi16(w, w);
}

// What the builds of one call share: the band's scale row, the global scale, each column's
// 128 group scale codes (one per mc, made with its first build in the band), and the bounds
// of each group scale code met so far (eff depends on the code and gs only).
struct Nvfp4Builds {
  fused::Workspace& ws;
  const float* scale_row;
  float gs;
  std::vector<uint32_t> code_epoch;  // per column: the band whose codes `codes` holds
  std::vector<uint8_t> codes;        // per column: Nvfp4ScaleCode(x(mc)) for mc < 128
  uint8_t have[kMags] = {};
  alignas(16) uint16_t bounds[kMags][8];

  QUENCH_AVX2 const uint8_t* Codes(size_t j, const uint16_t* dec) {
    uint8_t* c = codes.data() + j * kMags;
    if (code_epoch[j] != ws.epoch) {
      const __m256 vgs = _mm256_set1_ps(gs);
      for (size_t m = 0; m < kMags; m += 8) {
        const __m128i w = _mm_load_si128(reinterpret_cast<const __m128i*>(dec + m));
        const __m256 x = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(w), 16));
        const __m256i b = ScaleCodes8(x, vgs);
        const int32_t lo4 = _mm256_extract_epi32(b, 0), hi4 = _mm256_extract_epi32(b, 4);
        std::memcpy(c + m, &lo4, 4);
        std::memcpy(c + m + 4, &hi4, 4);
      }
      code_epoch[j] = ws.epoch;
    }
    return c;
  }
};

// The thresholds of `slot` (j * 128 + mc) and its scale code (ws.col_scale[slot], never 0:
// the zero guard, so 0 there says "not built in this band"). False for the NaN code (mc =
// 0x7F) or x(mc) not finite.
[[gnu::noinline]] QUENCH_AVX2 bool BuildNvfp4(Nvfp4Builds& ctx, size_t slot) {
  const uint32_t mc = static_cast<uint32_t>(slot % kMags);
  if (mc == 0x7F) return false;
  const size_t j = slot / kMags;
  const uint16_t* dec = Decode(ctx.ws, ctx.scale_row, j);
  if (dec[mc] >= 0x7F80u) return false;
  // The group's amax is x(mc).
  const uint8_t code = ctx.Codes(j, dec)[mc];
  if (!ctx.have[code]) {
    // _quantize: eff = scale / global_scale (f32).
    fp4::internal::Nvfp4Bounds(E4M3ToF32(code) / ctx.gs, ctx.bounds[code]);
    ctx.have[code] = 1;
  }
  ThresholdsOfBounds(dec, ctx.bounds[code],
                     reinterpret_cast<int8_t*>(ctx.ws.tables.get()) + slot * kThr);
  ctx.ws.col_scale.get()[slot] = code;
  return true;
}

// kAt[k]: the byte index k in every lane, for At (kept in memory: the loop's registers are
// full, and a shuffle takes its index from memory as cheaply).
struct alignas(32) AtIndex {
  int8_t k[8][32];
};
constexpr AtIndex MakeAtIndex() {
  AtIndex a{};
  for (int k = 0; k < 8; ++k) {
    for (int i = 0; i < 32; ++i) a.k[k][i] = static_cast<int8_t>(k);
  }
  return a;
}
constexpr AtIndex kAt = MakeAtIndex();

QUENCH_AVX2 inline __m256i At(__m256i t, int k) {  // byte k of each half, in all its bytes
  return _mm256_shuffle_epi8(t, _mm256_load_si256(reinterpret_cast<const __m256i*>(kAt.k[k])));
}
// The nibbles of 32 codes v (two groups: one per 128-bit half) under thresholds t (eight
// bytes T[k] - 1 in each half, its group's).
QUENCH_AVX2 inline __m256i Nibbles32(__m256i v, __m256i t) {
  const __m256i m = _mm256_and_si256(v, _mm256_set1_epi8(0x7F));
  const __m256i ge0 = _mm256_cmpgt_epi8(m, At(t, 0));
  __m256i acc = _mm256_cmpgt_epi8(m, At(t, 1));  // -idx after the loop
  for (int k = 2; k < 8; ++k) acc = _mm256_add_epi8(acc, _mm256_cmpgt_epi8(m, At(t, k)));
  // 8 where the code is negative and m >= T[0] (bit 7 of ge0 & v), minus -idx.
  const __m256i sign8 = _mm256_blendv_epi8(_mm256_setzero_si256(), _mm256_set1_epi8(8),
                                           _mm256_and_si256(ge0, v));
  return _mm256_sub_epi8(sign8, acc);
}

// The thresholds of slots a (low half) and c (high half).
QUENCH_AVX2 inline __m256i TwoSlots(const int8_t* thr, uint64_t a, uint64_t c) {
  return _mm256_inserti128_si256(
      _mm256_castsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(thr + a * kThr))),
      _mm_load_si128(reinterpret_cast<const __m128i*>(thr + c * kThr)), 1);
}

QUENCH_AVX2 FusedResult Nvfp4Impl(const SourceChunk& in, float gs, const ChunkOutputs& out) {
  fused::Workspace& ws = fused::ThreadWorkspace();
  ws.Reserve(in.scale_cols);
  constexpr size_t kGroup = 16;
  const size_t n_groups = in.cols / kGroup;
  const size_t units = in.cols / 64;  // 64 codes (two vectors, four groups) a unit
  const size_t first_band = in.first_row / in.block_rows;
  Nvfp4Builds ctx{ws, nullptr, gs, std::vector<uint32_t>(in.scale_cols, 0u),
                  std::vector<uint8_t>(in.scale_cols * kMags)};
  // base[4u + p]: the slot (j * 128) of mc = 0 in the column of the group whose maximum the
  // reduction below leaves in qword p of unit u: groups 0, 2, 1, 3 of the unit.
  const std::vector<uint32_t> col_of = fused::BlockColumns(in, kGroup);
  std::vector<uint64_t> base(units * 4);
  constexpr uint8_t kGroupOf[4] = {0, 2, 1, 3};
  for (size_t u = 0; u < units; ++u) {
    for (size_t p = 0; p < 4; ++p) base[u * 4 + p] = uint64_t{col_of[u * 4 + kGroupOf[p]]} * kMags;
  }
  const __m256i low7 = _mm256_set1_epi8(0x7F), low8 = _mm256_set1_epi64x(0xFF);
  const int8_t* thr = reinterpret_cast<const int8_t*>(ws.tables.get());
  uint8_t* col_scale = ws.col_scale.get();
  std::vector<uint64_t> slots(units * 4);  // the row's, in base's order
  StreamOut stream(out.out[0]);
  size_t cur = ~size_t{0};
  for (size_t r = 0; r < in.rows; ++r) {
    const size_t b = (in.first_row + r) / in.block_rows;
    if (b != cur) {
      ws.NextEpoch();  // the decode tables
      std::memset(col_scale, 0, in.scale_cols * kMags);
      ctx.scale_row = in.scales + (b - first_band) * in.scale_cols;
      cur = b;
    }
    const uint8_t* codes = in.codes + r * in.cols;
    uint8_t* packed = out.out[0] + r * (in.cols / 2);
    uint8_t* scales = out.out[1] + r * n_groups;
    // 1. Each group's slot, its column's base + mc: the two vectors' 8-byte halves
    // interleaved and maxed, then the max within each qword, left in its low byte (qwords
    // g0, g2 | g1, g3).
    for (size_t u = 0; u < units; ++u) {
      const uint8_t* uc = codes + u * 64;
      const __m256i m0 =
          _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(uc)), low7);
      const __m256i m1 =
          _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(uc + 32)), low7);
      __m256i mx = _mm256_max_epu8(_mm256_unpacklo_epi64(m0, m1), _mm256_unpackhi_epi64(m0, m1));
      mx = _mm256_max_epu8(mx, _mm256_srli_epi64(mx, 32));
      mx = _mm256_max_epu8(mx, _mm256_srli_epi64(mx, 16));
      mx = _mm256_max_epu8(mx, _mm256_srli_epi64(mx, 8));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(slots.data() + u * 4),
                          _mm256_add_epi64(_mm256_and_si256(mx, low8),
                                           _mm256_loadu_si256(reinterpret_cast<const __m256i*>(
                                               base.data() + u * 4))));
    }
    // 2. Tables not built in this band are built now (no call in the loop below, so its
    // vectors stay in registers), and the groups' scale codes stored.
    for (size_t u = 0; u < units; ++u) {
      const uint64_t* sl = slots.data() + u * 4;
      for (size_t p = 0; p < 4; ++p) {
        if (col_scale[sl[p]] == 0 && !BuildNvfp4(ctx, sl[p])) {
          stream.Finish();
          return FusedResult::kNotFinite;
        }
        scales[u * 4 + kGroupOf[p]] = col_scale[sl[p]];
      }
    }
    // 3. The nibbles: groups 0 and 1 (codes 0-31) take qwords 0 and 2, groups 2 and 3
    // qwords 1 and 3.
    for (size_t u = 0; u < units; ++u) {
      const uint8_t* uc = codes + u * 64;
      const uint64_t* sl = slots.data() + u * 4;
      // The next row's codes, for step 1 (which is too quick to wait for memory).
      _mm_prefetch(reinterpret_cast<const char*>(uc + in.cols), _MM_HINT_T0);
      const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(uc));
      const __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(uc + 32));
      stream.Put(packed + u * 32, Pack64(Nibbles32(v0, TwoSlots(thr, sl[0], sl[2])),
                                         Nibbles32(v1, TwoSlots(thr, sl[1], sl[3]))));
    }
  }
  stream.Finish();
  return FusedResult::kOk;
}

}  // namespace
}  // namespace avx2
#endif  // QUENCH_FUSED_X86

namespace internal {

bool Avx2FusedAvailable() {
#ifdef QUENCH_FUSED_X86
  return cpu::HasAvx2();
#else
  return false;
#endif
}

FusedResult QuantizeSourceInt4Avx2(const SourceChunk& in, size_t group, const ChunkOutputs& out) {
#ifdef QUENCH_FUSED_X86
  if (!Avx2FusedAvailable() || group == 0 || group % 64 != 0 || in.block_cols % group != 0 ||
      in.cols % group != 0 || in.block_rows == 0 || !fused::ScalesUnsigned(in)) {
    return FusedResult::kNotHandled;
  }
  if (in.rows == 0) return FusedResult::kOk;
  return avx2::Int4Impl(in, group, out);
#else
  (void)in;
  (void)group;
  (void)out;
  return FusedResult::kNotHandled;
#endif
}

FusedResult QuantizeSourceNvfp4Avx2(const SourceChunk& in, float global_scale,
                                    const ChunkOutputs& out) {
#ifdef QUENCH_FUSED_X86
  if (!Avx2FusedAvailable() || in.cols % 64 != 0 || in.block_cols % 16 != 0 ||
      in.block_rows == 0 || !(global_scale > 0.f) || !std::isfinite(global_scale) ||
      !fused::ScalesUnsigned(in)) {
    return FusedResult::kNotHandled;
  }
  if (in.rows == 0) return FusedResult::kOk;
  return avx2::Nvfp4Impl(in, global_scale, out);
#else
  (void)in;
  (void)global_scale;
  (void)out;
  return FusedResult::kNotHandled;
#endif
}

}  // namespace internal

}  // namespace quench::fp8
