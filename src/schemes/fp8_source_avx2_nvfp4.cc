// FP8-block source -> NVFP4 (NVFP4A16's groups of 16) in one pass on AVX2 CPUs by per-group
// thresholds on the code (fp8_source_avx2.h says why this is exact). A row goes in three
// steps: each group's slot (block column, largest magnitude), the thresholds and scale codes
// of slots new in the band, then the nibbles of 32 codes (two groups) at a time.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "schemes/avx2.h"
#include "schemes/e4m3_avx2.h"
#include "schemes/float_formats.h"
#include "schemes/fp4_bounds.h"
#include "schemes/fp4_shared.h"
#include "schemes/fp8_source_avx2.h"
#include "schemes/fp8_source_quant.h"

namespace quench::fp8 {

#ifdef QUENCH_FUSED_X86
namespace avx2 {
namespace {

// t[k] = #{m < 128 : dec[m] < bound[k]} - 1, k < 8: the NVFP4 thresholds (entry 127 is
// 0x7FFF and every bound at most 0x7F80, so it never counts; all values fit int16). dec is
// sorted, so the count is 16 times the number of runs of 16 whose last entry is below the
// bound, plus the entries below it in the next run.
QUENCH_AVX2 void ThresholdsOfBounds(const uint16_t* dec, const uint16_t* bound, int8_t* t) {
  // All eight bounds' run counts at once, each run's last entry against the eight bounds
  // (one vector instead of a broadcast, compare and popcount per bound on each one's path).
  const __m128i bk = _mm_load_si128(reinterpret_cast<const __m128i*>(bound));
  __m128i runs = _mm_setzero_si128();
  for (int i = 0; i < 8; ++i) {
    const __m128i last = _mm_set1_epi16(static_cast<int16_t>(dec[16 * i + 15]));
    runs = _mm_sub_epi16(runs, _mm_cmpgt_epi16(bk, last));
  }
  alignas(16) uint16_t first[8];  // 16 * runs: the first entry of each bound's run
  _mm_store_si128(reinterpret_cast<__m128i*>(first), _mm_slli_epi16(runs, 4));
  for (int k = 0; k < 8; ++k) {
    const __m256i run = _mm256_load_si256(reinterpret_cast<const __m256i*>(dec + first[k]));
    const __m256i bound_k = _mm256_set1_epi16(static_cast<int16_t>(bound[k]));
    const unsigned below =
        _mm_popcnt_u32(_mm256_movemask_epi8(_mm256_cmpgt_epi16(bound_k, run))) / 2;
    t[k] = static_cast<int8_t>(first[k] + below - 1);
  }
}

// ---- NVFP4 ----

// Nvfp4ScaleCode(x, gs, bf16) (fp4_shared.h) of 8 lanes x >= +0, as fused::ScaleCodes16
// computes it in 16 (finite lanes only; the others give codes nobody reads): t =
// RNE_bf16(x / 6), then e4m3_avx2.h's GuardedScaleCodes8 (u = min(gs * t, 448), its E4M3 code,
// the zero guard). The eight codes are left in bytes 0-3 and 16-19.
QUENCH_AVX2 inline __m256i ScaleCodes8(__m256 x, __m256 gs) {
  const __m256 t = quench::avx2::RoundBf16(_mm256_div_ps(x, _mm256_set1_ps(6.0f)));
  const __m256i code = fp4::avx2::GuardedScaleCodes8(t, gs);
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
// bytes T[k] - 1 in each half, its group's). The index #{k in 1..7 : m >= T[k]} is found by a
// three-step binary search rather than seven compares: the thresholds are non-decreasing in
// k (so are the bounds), so the index is at least p + s iff m >= T[p + s], and each step
// compares every byte with the threshold at its own position (a shuffle by a per-byte index).
QUENCH_AVX2 inline __m256i Nibbles32(__m256i v, __m256i t) {
  const __m256i m = _mm256_and_si256(v, _mm256_set1_epi8(0x7F));
  const __m256i ge0 = _mm256_cmpgt_epi8(m, At(t, 0));
  __m256i pos = _mm256_and_si256(_mm256_cmpgt_epi8(m, At(t, 4)), _mm256_set1_epi8(4));
  pos = _mm256_or_si256(
      pos, _mm256_and_si256(
               _mm256_cmpgt_epi8(
                   m, _mm256_shuffle_epi8(t, _mm256_or_si256(pos, _mm256_set1_epi8(2)))),
               _mm256_set1_epi8(2)));
  // pos - (-1) where m >= T[pos + 1].
  pos = _mm256_sub_epi8(
      pos, _mm256_cmpgt_epi8(m, _mm256_shuffle_epi8(t, _mm256_add_epi8(pos, _mm256_set1_epi8(1)))));
  // 8 where the code is negative and m >= T[0] (bit 7 of ge0 & v).
  const __m256i sign8 = _mm256_blendv_epi8(_mm256_setzero_si256(), _mm256_set1_epi8(8),
                                           _mm256_and_si256(ge0, v));
  return _mm256_or_si256(sign8, pos);
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

FusedResult QuantizeSourceNvfp4Avx2(const SourceChunk& in, float global_scale,
                                    const ChunkOutputs& out) {
#ifdef QUENCH_FUSED_X86
  if (!Avx2FusedAvailable() || !fused::Nvfp4Accepts(in, global_scale)) {
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
