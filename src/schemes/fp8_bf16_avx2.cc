// BF16 -> FP8 E4M3 per channel with AVX2 (fp8_bf16_avx2.h says why it is exact).
//
// Each row: pass 1 takes its largest abs bit pattern (16-bit max), the scale and reciprocal
// follow in scalar; pass 2 quantizes the row, still in cache, 32 elements a step: each
// 16-element load is split into its even elements (shifted into f32's high half) and odd ones
// (masked), both multiplied by 1 / scale and rounded to bf16 in 32-bit lanes, re-paired into
// 16-bit lanes in element order by one blend, encoded to e4m3 there, and two such vectors
// packed to 32 bytes.
#include "schemes/fp8_bf16_avx2.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "schemes/avx2.h"
#include "schemes/cpu_x86.h"
#include "schemes/fp8_shared.h"  // ScaleFromAmax, ReciprocalIsExact (with its proof)

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define QUENCH_FP8_AVX2_X86 1
#include <immintrin.h>
#define QUENCH_FP8_AVX2 __attribute__((target("avx2,fma,bmi,bmi2")))
#endif

namespace quench::fp8 {
namespace {

cpu::KernelSwitch g_enabled;

}  // namespace

void internal::SetFp8Bf16Avx2Enabled(bool enabled) {
  g_enabled.Set(enabled);
}

bool Fp8Bf16Avx2Available() {
#ifdef QUENCH_FP8_AVX2_X86
  static const bool ok = cpu::HasAvx2() && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

bool Fp8Bf16Avx2Handles(const WeightChunk& in) {
  return in.dtype == DType::kBF16 && g_enabled.on() &&
         Fp8Bf16Avx2Available();
}

#ifdef QUENCH_FP8_AVX2_X86
namespace {

constexpr size_t kStep = 32;                   // elements per main-loop step
constexpr size_t kPrefetchRowBytes = 2048;     // rows this long ask for the next row
constexpr size_t kBatchRowBytes = 1024;        // rows up to this long go in batches
constexpr size_t kBatchRows = 8;               // one f32 vector of scales

// The largest abs bit pattern of the n bf16 elements at p: for finite values it orders like
// |x|; >= 0x7F80 means an Inf or NaN.
QUENCH_FP8_AVX2 uint32_t RowAbsMax(const uint8_t* p, size_t n) {
  const __m256i abs_mask = _mm256_set1_epi16(0x7FFF);
  __m256i a0 = _mm256_setzero_si256();
  __m256i a1 = _mm256_setzero_si256();
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 2 * i));
    const __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 2 * i + 32));
    a0 = _mm256_max_epu16(a0, _mm256_and_si256(v0, abs_mask));
    a1 = _mm256_max_epu16(a1, _mm256_and_si256(v1, abs_mask));
  }
  __m128i m = _mm_max_epu16(_mm256_castsi256_si128(_mm256_max_epu16(a0, a1)),
                            _mm256_extracti128_si256(_mm256_max_epu16(a0, a1), 1));
  // Max of eight u16: the min of their complements, by PHMINPOSUW.
  m = _mm_minpos_epu16(_mm_xor_si128(m, _mm_set1_epi16(-1)));
  uint32_t best = 0xFFFFu ^ static_cast<uint32_t>(_mm_extract_epi16(m, 0));
  for (; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, p + 2 * i, 2);
    best = std::max<uint32_t>(best, h & 0x7FFFu);
  }
  return best;
}

// e4m3 codes without the sign (low byte of each 16-bit lane, <= 0x7E) of 16 elements x, by
// the steps in fp8_bf16_avx2.h; `sign` gets the rounded bf16 values, whose bit 15 is the sign
// (Pack32 adds it).
template <bool kByReciprocal>
QUENCH_FP8_AVX2 inline __m256i Quantize16(__m256i x, __m256 by, __m256i* sign) {
  const __m256i hi_mask = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  __m256 even = _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
  __m256 odd = _mm256_castsi256_ps(_mm256_and_si256(x, hi_mask));
  if constexpr (kByReciprocal) {
    even = _mm256_mul_ps(even, by);
    odd = _mm256_mul_ps(odd, by);
  } else {
    even = _mm256_div_ps(even, by);
    odd = _mm256_div_ps(odd, by);
  }
  // RNE_bf16 in 32-bit lanes; the bf16 result is the high half. A product by the reciprocal
  // is never a bf16 midpoint (ReciprocalIsExact's proof: the quotient is at least a relative
  // 2^-17 from every midpoint, the product within 2^-23 of the quotient), so rounding half
  // up (bits + 0x8000) is RNE there; a quotient by division takes c10's bits + 0x7FFF + lsb.
  const __m256i qe = _mm256_castps_si256(even);
  const __m256i qo = _mm256_castps_si256(odd);
  __m256i re, ro;
  if constexpr (kByReciprocal) {
    const __m256i half_up = _mm256_set1_epi32(0x8000);
    re = _mm256_add_epi32(qe, half_up);
    ro = _mm256_add_epi32(qo, half_up);
  } else {
    re = quench::avx2::RoundBf16Hi(qe);
    ro = quench::avx2::RoundBf16Hi(qo);
  }
  // v: the rounded bf16 values in element order (even ones in the low halves).
  const __m256i v = _mm256_blend_epi16(_mm256_srli_epi32(re, 16), ro, 0xAA);
  const __m256i f = _mm256_and_si256(v, _mm256_set1_epi16(0x7FFF));
  // Normal: f - (120 << 7) rebiases the exponent; + 7 + the lowest kept bit is RNE on the 4
  // dropped bits. The subtraction saturates, so |v| <= 2^-10 (f <= 0x3A80, code 0) gives 0.
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi16(f, 4), _mm256_set1_epi16(1));
  const __m256i biased =
      _mm256_subs_epu16(_mm256_add_epi16(f, lsb), _mm256_set1_epi16((120 << 7) - 7));
  __m256i code = _mm256_min_epu16(_mm256_srli_epi16(biased, 4), _mm256_set1_epi16(0x7E));
  // 2^-10 < |v| < 2^-6 (0x3A80 < f < 121 << 7; signed compares since f <= 0x7FFF): e4m3
  // subnormal codes 1..8, rare in weights, so computed only when a lane needs them.
  const __m256i above = _mm256_cmpgt_epi16(f, _mm256_set1_epi16(0x3A80));
  const __m256i below = _mm256_cmpgt_epi16(_mm256_set1_epi16(121 << 7), f);
  if (!_mm256_testz_si256(above, below)) [[unlikely]] {
    // The low 16 bits of 1.5 * 2^23 + v * 2^9 are +-RNE(|v| * 2^9).
    const __m256 magic = _mm256_set1_ps(12582912.0f);
    const __m256 p9 = _mm256_set1_ps(512.0f);
    const __m256 se =
        _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(re, hi_mask)), p9, magic);
    const __m256 so =
        _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(ro, hi_mask)), p9, magic);
    const __m256i sub = _mm256_abs_epi16(_mm256_blend_epi16(
        _mm256_castps_si256(se), _mm256_slli_epi32(_mm256_castps_si256(so), 16), 0xAA));
    code = _mm256_blendv_epi8(code, sub, _mm256_and_si256(above, below));
  }
  *sign = v;
  return code;
}

// 32 e4m3 bytes in element order from two Quantize16 results: the codes (<= 0x7E) packed
// unsigned, the signs by a signed pack of the bf16 values (a negative lane saturates to a
// byte with bit 7 set, a positive one to a byte without), one vpor for both vectors.
QUENCH_FP8_AVX2 inline __m256i Pack32(__m256i c0, __m256i c1, __m256i v0, __m256i v1) {
  const __m256i signs =
      _mm256_and_si256(_mm256_packs_epi16(v0, v1), _mm256_set1_epi8(static_cast<char>(0x80)));
  // packs/packus interleave 128-bit halves (0 lo, 1 lo, 0 hi, 1 hi): 0xD8 restores order.
  return _mm256_permute4x64_epi64(_mm256_or_si256(_mm256_packus_epi16(c0, c1), signs), 0xD8);
}

// Quantizes the n elements at src into dst; asks for the same stretch of `ahead` (the next
// row, or null) as it goes, so that pass 1 finds it in cache.
template <bool kByReciprocal>
QUENCH_FP8_AVX2 void QuantizeRow(const uint8_t* src, size_t n, float by_scalar, uint8_t* dst,
                                 const uint8_t* ahead) {
  const __m256 by = _mm256_set1_ps(by_scalar);
  size_t i = 0;
  for (; i + kStep <= n; i += kStep) {
    if (ahead != nullptr) _mm_prefetch(reinterpret_cast<const char*>(ahead + 2 * i), _MM_HINT_T0);
    __m256i v0, v1;
    const __m256i c0 = Quantize16<kByReciprocal>(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 2 * i)), by, &v0);
    const __m256i c1 = Quantize16<kByReciprocal>(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 2 * i + 32)), by, &v1);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), Pack32(c0, c1, v0, v1));
  }
  if (i < n) {
    // Tail: the same code on a zero-padded copy (zeros give code 0), keeping the real lanes.
    alignas(32) uint8_t in_buf[2 * kStep] = {};
    alignas(32) uint8_t out_buf[kStep];
    std::memcpy(in_buf, src + 2 * i, 2 * (n - i));
    __m256i v0, v1;
    const __m256i c0 = Quantize16<kByReciprocal>(
        _mm256_load_si256(reinterpret_cast<__m256i*>(in_buf)), by, &v0);
    const __m256i c1 = Quantize16<kByReciprocal>(
        _mm256_load_si256(reinterpret_cast<__m256i*>(in_buf + 32)), by, &v1);
    _mm256_store_si256(reinterpret_cast<__m256i*>(out_buf), Pack32(c0, c1, v0, v1));
    std::memcpy(dst + i, out_buf, n - i);
  }
}

// Scales of 8 rows from their amax bit patterns (finite): RNE_bf16(amax / 448) by the f32
// division and c10's integer RNE (fp8_shared.h's ScaleFromAmax), 0 replaced by eps(bf16).
QUENCH_FP8_AVX2 inline __m256 Scales8(const uint32_t* amax_bits) {
  const __m256 amax = _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_load_si256(reinterpret_cast<const __m256i*>(amax_bits)), 16));
  const __m256i rounded = _mm256_castps_si256(
      quench::avx2::RoundBf16(_mm256_div_ps(amax, _mm256_set1_ps(internal::kE4M3Max))));
  const __m256i zero = _mm256_cmpeq_epi32(rounded, _mm256_setzero_si256());
  return _mm256_blendv_ps(_mm256_castsi256_ps(rounded),
                          _mm256_set1_ps(internal::ScaleEps(DType::kBF16)),
                          _mm256_castsi256_ps(zero));
}

// Quantizes one row with its scale (and its reciprocal, used where ReciprocalIsExact).
QUENCH_FP8_AVX2 inline void QuantizeRowWith(const uint8_t* row, size_t cols, float scale,
                                            float recip, uint8_t* dst, const uint8_t* ahead) {
  if (internal::ReciprocalIsExact(scale, DType::kBF16)) {
    QuantizeRow<true>(row, cols, recip, dst, ahead);
  } else {
    QuantizeRow<false>(row, cols, scale, dst, ahead);
  }
}

QUENCH_FP8_AVX2 bool ChannelBf16Avx2(const WeightChunk& in, const ChunkOutputs& out) {
  const size_t row_bytes = in.cols * 2;
  if (row_bytes <= kBatchRowBytes) {
    // Short rows (Kimi's 256-byte ones) in batches of 8: one vector of scales and
    // reciprocals instead of two scalar divisions per row.
    alignas(32) uint32_t amax[kBatchRows];
    alignas(32) float scale[kBatchRows];
    alignas(32) float recip[kBatchRows];
    for (size_t r0 = 0; r0 < in.rows; r0 += kBatchRows) {
      const size_t nr = std::min(kBatchRows, in.rows - r0);
      for (size_t k = 0; k < kBatchRows; ++k) {
        amax[k] = k < nr ? RowAbsMax(in.data + (r0 + k) * row_bytes, in.cols) : 0;
        if (amax[k] >= 0x7F80u) return false;  // Inf or NaN in the row
      }
      const __m256 s = Scales8(amax);
      _mm256_store_ps(scale, s);
      _mm256_store_ps(recip, _mm256_div_ps(_mm256_set1_ps(1.0f), s));
      for (size_t k = 0; k < nr; ++k) {
        const size_t r = r0 + k;
        internal::StoreScale(out.out[1] + r * 2, scale[k], DType::kBF16);
        QuantizeRowWith(in.data + r * row_bytes, in.cols, scale[k], recip[k],
                        out.out[0] + r * in.cols, nullptr);
      }
    }
    return true;
  }
  for (size_t r = 0; r < in.rows; ++r) {
    const uint8_t* row = in.data + r * row_bytes;
    const uint32_t amax_bits = RowAbsMax(row, in.cols);
    if (amax_bits >= 0x7F80u) return false;  // Inf or NaN in the row
    const float scale =
        internal::ScaleFromAmax(BF16ToF32(static_cast<uint16_t>(amax_bits)), DType::kBF16);
    internal::StoreScale(out.out[1] + r * 2, scale, DType::kBF16);
    // Long rows ask for the next one as they go.
    const uint8_t* ahead =
        row_bytes >= kPrefetchRowBytes && r + 1 < in.rows ? row + row_bytes : nullptr;
    QuantizeRowWith(row, in.cols, scale, 1.0f / scale, out.out[0] + r * in.cols, ahead);
  }
  return true;
}

}  // namespace

bool QuantizeChannelBf16Avx2(const WeightChunk& in, const ChunkOutputs& out) {
  return ChannelBf16Avx2(in, out);
}
#else
bool QuantizeChannelBf16Avx2(const WeightChunk&, const ChunkOutputs&) { return false; }
#endif

}  // namespace quench::fp8
