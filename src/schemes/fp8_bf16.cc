// BF16 -> FP8 E4M3 per channel with AVX-512 BF16 (fp8_bf16.h says why it is exact).
//
// Rows go in batches (up to 16, at most ~64 KiB): pass 1 takes each row's largest abs bit
// pattern, then the batch's scales and reciprocals are computed in one vector; pass 2
// quantizes each row, still in cache, 64 elements a step: two 32-element loads, each split
// into its even elements (shifted into f32's high half) and odd ones (masked), multiplied by
// 1 / scale and rounded and re-paired by one VCVTNE2PS2BF16 (even elements in the low half),
// encoded to e4m3 in 16-bit lanes; one VPERMT2B puts the 64 codes in element order.
#include "schemes/fp8_bf16.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "schemes/avx512bf16.h"  // QUENCH_AVX512BF16, Available, Switch
#include "schemes/fp8_shared.h"  // ReciprocalIsExact (with its proof), ScaleEps, kE4M3Max

namespace quench::fp8 {
namespace {

avx512bf16::Switch g_enabled;

}  // namespace

void internal::SetFp8Bf16Enabled(bool enabled) { g_enabled.Set(enabled); }

bool Fp8Bf16Available() { return avx512bf16::Available(); }

bool Fp8Bf16Handles(const WeightChunk& in) {
  return g_enabled.on() && Fp8Bf16Available() &&
         in.dtype == DType::kBF16;
}

#ifdef QUENCH_AVX512BF16_X86
namespace {

constexpr size_t kMaxBatchRows = 16;          // one f32 vector of scales
constexpr size_t kBatchBytes = size_t{64} << 10;  // pass 2 rereads the batch from L2
constexpr size_t kPrefetchRowBytes = 2048;        // rows this long ask for the next batch

QUENCH_AVX512BF16 inline __mmask32 Mask32(size_t n) {
  return n >= 32 ? ~__mmask32{0} : _bzhi_u32(~0u, static_cast<uint32_t>(n));
}

// The largest abs bit pattern of the n bf16 elements at p: for finite values it orders like
// |x|; >= 0x7F80 means an Inf or NaN. Masked loads read nothing past the row.
QUENCH_AVX512BF16 inline uint32_t RowAbsMax(const uint8_t* p, size_t n) {
  const __m512i abs_mask = _mm512_set1_epi16(0x7FFF);
  __m512i a0 = _mm512_setzero_si512();
  __m512i a1 = _mm512_setzero_si512();
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    a0 = _mm512_max_epu16(a0, _mm512_and_si512(_mm512_loadu_si512(p + 2 * i), abs_mask));
    a1 = _mm512_max_epu16(a1, _mm512_and_si512(_mm512_loadu_si512(p + 2 * i + 64), abs_mask));
  }
  if (i < n) {
    const size_t left = n - i;
    a0 = _mm512_max_epu16(
        a0, _mm512_and_si512(_mm512_maskz_loadu_epi16(Mask32(left), p + 2 * i), abs_mask));
    if (left > 32) {
      a1 = _mm512_max_epu16(a1, _mm512_and_si512(
                                    _mm512_maskz_loadu_epi16(Mask32(left - 32), p + 2 * i + 64),
                                    abs_mask));
    }
  }
  const __m512i acc = _mm512_max_epu16(a0, a1);
  const __m512i lo = _mm512_and_si512(acc, _mm512_set1_epi32(0xFFFF));
  return _mm512_reduce_max_epu32(_mm512_max_epu32(lo, _mm512_srli_epi32(acc, 16)));
}

// e4m3 codes (low byte of each 16-bit lane) of 32 bf16 values v (fp8_bf16.h: the steps).
QUENCH_AVX512BF16 inline __m512i EncodeE4M3(__m512i v) {
  const __m512i f = _mm512_and_si512(v, _mm512_set1_epi16(0x7FFF));
  // Normal: f - (120 << 7) rebiases the exponent; + 7 + the lowest kept bit is RNE on the 4
  // dropped bits (f >= 121 << 7 there, so nothing wraps).
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi16(f, 4), _mm512_set1_epi16(1));
  const __m512i biased =
      _mm512_add_epi16(_mm512_add_epi16(f, _mm512_set1_epi16(7 - (120 << 7))), lsb);
  const __m512i normal = _mm512_min_epu16(_mm512_srli_epi16(biased, 4), _mm512_set1_epi16(0x7E));
  // Subnormal: 1.5 * 2^23 + |v| * 2^9 (bf16 2^9 = 0x4400), one pair element at a time.
  const __m512 magic = _mm512_set1_ps(12582912.0f);
  const __m512 even = _mm512_dpbf16_ps(magic, (__m512bh)f, (__m512bh)_mm512_set1_epi32(0x4400));
  const __m512 odd =
      _mm512_dpbf16_ps(magic, (__m512bh)f, (__m512bh)_mm512_set1_epi32(0x44000000));
  // (even & 0xFFFF) | (odd << 16): 0xEC is (A & C) | B.
  const __m512i sub = _mm512_ternarylogic_epi32(_mm512_castps_si512(even),
                                                _mm512_slli_epi32(_mm512_castps_si512(odd), 16),
                                                _mm512_set1_epi32(0xFFFF), 0xEC);
  const __mmask32 is_sub = _mm512_cmplt_epu16_mask(f, _mm512_set1_epi16(121 << 7));
  const __m512i code = _mm512_mask_blend_epi16(is_sub, normal, sub);
  // code | ((v >> 8) & 0x80): 0xF8 is A | (B & C).
  return _mm512_ternarylogic_epi32(code, _mm512_srli_epi16(v, 8), _mm512_set1_epi16(0x80),
                                   0xF8);
}

// Codes of 32 bf16 elements x: element 2j's in lane j, element 2j+1's in lane 16 + j.
template <bool kByReciprocal>
QUENCH_AVX512BF16 inline __m512i Quantize32(__m512i x, __m512 by) {
  __m512 even = _mm512_castsi512_ps(_mm512_slli_epi32(x, 16));
  __m512 odd = _mm512_castsi512_ps(_mm512_and_si512(x, _mm512_set1_epi32(0xFFFF0000u)));
  if constexpr (kByReciprocal) {
    even = _mm512_mul_ps(even, by);
    odd = _mm512_mul_ps(odd, by);
  } else {
    even = _mm512_div_ps(even, by);
    odd = _mm512_div_ps(odd, by);
  }
  return EncodeE4M3((__m512i)_mm512_cvtne2ps_pbh(odd, even));
}

// The VPERMT2B index putting two Quantize32 results' codes in element order.
QUENCH_AVX512BF16 inline __m512i OrderIndex() {
  alignas(64) uint8_t idx[64];
  for (int k = 0; k < 64; ++k) {
    const int local = k & 31;
    idx[k] = static_cast<uint8_t>((k & 32) * 2 + ((local & 1) ? 32 + local - 1 : local));
  }
  return _mm512_load_si512(idx);
}

// Quantizes the n elements at src into dst; asks for the same stretch of `ahead` (the row
// the next batch's pass 1 reads first, or null) as it goes, so that pass 1 finds it in cache
// instead of waiting on memory with nothing to overlap.
template <bool kByReciprocal>
QUENCH_AVX512BF16 void QuantizeRow(const uint8_t* src, size_t n, float by_scalar, uint8_t* dst,
                                   const uint8_t* ahead) {
  const __m512 by = _mm512_set1_ps(by_scalar);
  const __m512i order = OrderIndex();
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    if (ahead != nullptr) {  // the two cache lines of the next batch's row these 64 match
      _mm_prefetch(reinterpret_cast<const char*>(ahead + 2 * i), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(ahead + 2 * i + 64), _MM_HINT_T0);
    }
    const __m512i c0 = Quantize32<kByReciprocal>(_mm512_loadu_si512(src + 2 * i), by);
    const __m512i c1 = Quantize32<kByReciprocal>(_mm512_loadu_si512(src + 2 * i + 64), by);
    _mm512_storeu_si512(dst + i, _mm512_permutex2var_epi8(c0, order, c1));
  }
  if (i < n) {
    // Lanes past the row read as +0 (code 0) and are not stored.
    const size_t left = n - i;
    if (ahead != nullptr) {
      for (size_t b = 2 * i; b < 2 * n; b += 64) {
        _mm_prefetch(reinterpret_cast<const char*>(ahead + b), _MM_HINT_T0);
      }
    }
    const __m512i c0 =
        Quantize32<kByReciprocal>(_mm512_maskz_loadu_epi16(Mask32(left), src + 2 * i), by);
    const __m512i c1 = Quantize32<kByReciprocal>(
        _mm512_maskz_loadu_epi16(left > 32 ? Mask32(left - 32) : 0, src + 2 * i + 64), by);
    _mm512_mask_storeu_epi8(dst + i, _bzhi_u64(~0ull, static_cast<uint32_t>(left)),
                            _mm512_permutex2var_epi8(c0, order, c1));
  }
}

// Scales of up to 16 rows from their amax bit patterns (finite): RNE_bf16(amax / 448) by the
// f32 division and c10's integer RNE (as fp8_shared.h's ScaleFromAmax; not VCVTNEPS2BF16,
// which would flush a subnormal quotient that RNE keeps), 0 replaced by eps(bf16).
QUENCH_AVX512BF16 inline __m512 Scales(const uint32_t* amax_bits) {
  const __m512 amax = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_loadu_si512(amax_bits), 16));
  const __m512i q = _mm512_castps_si512(_mm512_div_ps(amax, _mm512_set1_ps(internal::kE4M3Max)));
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(q, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_and_si512(
      _mm512_add_epi32(q, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), lsb)),
      _mm512_set1_epi32(static_cast<int>(0xFFFF0000u)));
  const __mmask16 zero = _mm512_cmpeq_epi32_mask(rounded, _mm512_setzero_si512());
  return _mm512_mask_blend_ps(zero, _mm512_castsi512_ps(rounded),
                              _mm512_set1_ps(internal::ScaleEps(DType::kBF16)));
}

QUENCH_AVX512BF16 bool ChannelBf16(const WeightChunk& in, const ChunkOutputs& out) {
  const size_t row_bytes = in.cols * 2;
  const size_t batch = std::clamp<size_t>(kBatchBytes / std::max<size_t>(row_bytes, 1), 1,
                                          kMaxBatchRows);
  alignas(64) uint32_t amax[kMaxBatchRows];
  alignas(64) float scale[kMaxBatchRows];
  alignas(64) float recip[kMaxBatchRows];
  for (size_t r0 = 0; r0 < in.rows; r0 += batch) {
    const size_t nr = std::min(batch, in.rows - r0);
    for (size_t k = 0; k < kMaxBatchRows; ++k) {
      amax[k] = k < nr ? RowAbsMax(in.data + (r0 + k) * row_bytes, in.cols) : 0;
      if (amax[k] >= 0x7F80) return false;  // Inf or NaN in the row
    }
    const __m512 s = Scales(amax);
    _mm512_store_ps(scale, s);
    _mm512_store_ps(recip, _mm512_div_ps(_mm512_set1_ps(1.0f), s));
    // The scales as bf16 (the low halves are zero), little-endian, one per row.
    _mm256_mask_storeu_epi16(out.out[1] + r0 * 2, static_cast<__mmask16>(_bzhi_u32(~0u, nr)),
                             _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(s), 16)));
    for (size_t k = 0; k < nr; ++k) {
      const uint8_t* row = in.data + (r0 + k) * row_bytes;
      uint8_t* dst = out.out[0] + (r0 + k) * in.cols;
      // Short rows (Kimi's 256-byte ones) are left to the hardware prefetcher: asking for
      // them measured slower (bench/README.md).
      const uint8_t* ahead = row_bytes >= kPrefetchRowBytes && r0 + batch + k < in.rows
                                 ? row + batch * row_bytes
                                 : nullptr;
      if (internal::ReciprocalIsExact(scale[k], DType::kBF16)) {
        QuantizeRow<true>(row, in.cols, recip[k], dst, ahead);
      } else {
        QuantizeRow<false>(row, in.cols, scale[k], dst, ahead);
      }
    }
  }
  return true;
}

}  // namespace

bool QuantizeChannelBf16(const WeightChunk& in, const ChunkOutputs& out) {
  return ChannelBf16(in, out);
}
#else
bool QuantizeChannelBf16(const WeightChunk&, const ChunkOutputs&) { return false; }
#endif

}  // namespace quench::fp8
