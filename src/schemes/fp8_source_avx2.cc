// FP8-block source -> int4 (symmetric groups, W4A16) in one pass on AVX2 CPUs by per-group
// thresholds on the code (fp8_source_avx2.h says why this is exact), and the AVX2 kernels'
// availability.
#include <cstdint>
#include <cstring>
#include <vector>

#include "schemes/avx2.h"
#include "schemes/cpu_x86.h"
#include "schemes/float_formats.h"
#include "schemes/fp8_shared.h"
#include "schemes/fp8_source_avx2.h"
#include "schemes/fp8_source_quant.h"
#include "schemes/int_shared.h"

namespace quench::fp8 {

#ifdef QUENCH_FUSED_X86
namespace avx2 {
namespace {

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
  alignas(32) int8_t c[kMags];
  for (size_t m = 0; m < kMags; m += 8) {
    const __m128i w = _mm_load_si128(reinterpret_cast<const __m128i*>(dec + m));
    const __m256 x = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(w), 16));
    const __m256 v = quench::avx2::RoundBf16(recip ? _mm256_mul_ps(x, by) : _mm256_div_ps(x, by));
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
  if (!Avx2FusedAvailable() || !fused::Int4Accepts(in, group)) return FusedResult::kNotHandled;
  if (in.rows == 0) return FusedResult::kOk;
  return avx2::Int4Impl(in, group, out);
#else
  (void)in;
  (void)group;
  (void)out;
  return FusedResult::kNotHandled;
#endif
}

}  // namespace internal

}  // namespace quench::fp8
