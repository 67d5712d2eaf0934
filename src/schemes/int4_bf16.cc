// BF16 -> int4, packed, with AVX-512 BF16 (int4_bf16.h says why it is exact).
//
// Per row: pass 1 takes every group's largest |x| (as abs bit patterns) and computes the
// row's scales 16 groups at a time; pass 2 quantizes the row, still in L1, 64 elements at a
// time: two 32-element loads, each widened to f32 by interleaving zero words (elements
// {0-3, 8-11, 16-19, 24-27} in one vector, the rest in the other), multiplied by 1 / scale,
// rounded to bf16 and re-paired by one VCVTNE2PS2BF16, and rounded to integers by two
// VDPBF16PS (one picks each pair's even element, one its odd). One VPERMT2B per half puts
// the 32 even and 32 odd codes in element order; a byte min clamps, a shift and an or pack
// two codes a byte (even element in the low nibble, pack_to_int32's order). Asymmetric
// groups take the row's min and max instead and one more rounding (QuantizeGroupAsym).
#include "schemes/int4_bf16.h"

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <vector>

#include "schemes/avx512bf16.h"  // QUENCH_AVX512BF16, Available, Switch
#include "schemes/fp8_shared.h"  // ReciprocalIsExact, with its proof
#include "schemes/int_shared.h"

namespace quench::intq {
namespace {

avx512bf16::Switch g_enabled;

}  // namespace

void internal::SetInt4Bf16Enabled(bool enabled) { g_enabled.Set(enabled); }

bool Int4Bf16Available() { return avx512bf16::Available(); }

bool Int4Bf16Handles(const WeightChunk& in) {
  if (!g_enabled.on() || !Int4Bf16Available()) return false;
  if (in.dtype != DType::kBF16 || in.params.bits != 4) return false;
  // Smoothing's column factors (WeightChunk::col_scale) go through int.cc's ScaleRow first.
  if (in.col_scale != nullptr) return false;
  internal::Layout l;
  return internal::MakeLayout(in, &l) && l.group % 64 == 0;
}

#ifdef QUENCH_AVX512BF16_X86
namespace {

constexpr size_t kBlock = 64;  // elements a step of pass 2 (32 output bytes)

// The largest abs bit pattern of n bf16 elements at p (n a multiple of 32). For finite
// values it orders like |x|; >= 0x7F80 means an Inf or NaN.
QUENCH_AVX512BF16 inline uint32_t GroupAbsMax(const uint8_t* p, size_t n) {
  const __m512i abs_mask = _mm512_set1_epi16(0x7FFF);
  __m512i acc = _mm512_and_si512(_mm512_loadu_si512(p), abs_mask);
  for (size_t i = 64; i < 2 * n; i += 64) {
    acc = _mm512_max_epu16(acc, _mm512_and_si512(_mm512_loadu_si512(p + i), abs_mask));
  }
  const __m512i lo = _mm512_and_si512(acc, _mm512_set1_epi32(0xFFFF));
  return _mm512_reduce_max_epu32(_mm512_max_epu32(lo, _mm512_srli_epi32(acc, 16)));
}

using avx512bf16::RoundBf16;

// Stores 16 groups' scales from lanes s (each a bf16 value >= +0): the zero guard (0 ->
// eps(bf16) = 2^-7), the first min(left, 16) scales' bf16 bits to `scales`, and per group the
// multiplier (1 / scale where ReciprocalIsExact holds, else the scale to divide by) to `by`
// and whether it is a reciprocal to `recip` (16 each). Returns the mask of the stored lanes.
QUENCH_AVX512BF16 inline __mmask16 StoreScales(__m512 s, size_t left, uint8_t* scales,
                                               float* by, uint8_t* recip) {
  s = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(s, _mm512_setzero_ps(), _CMP_EQ_OQ), s,
                           _mm512_set1_ps(0.0078125f));
  const __m512i bits = _mm512_castps_si512(s);
  // ReciprocalIsExact: positive, normal, below 2^126 (the low half is 0 for a bf16 value).
  const __mmask16 exact = _mm512_cmpge_epu32_mask(bits, _mm512_set1_epi32(0x00800000)) &
                          _mm512_cmplt_epu32_mask(bits, _mm512_set1_epi32(0x7E800000));
  const __m512 m = _mm512_mask_div_ps(s, exact, _mm512_set1_ps(1.0f), s);
  const __mmask16 keep = static_cast<__mmask16>((1u << (left < 16 ? left : 16)) - 1u);
  _mm512_mask_cvtepi32_storeu_epi16(scales, keep, _mm512_srli_epi32(bits, 16));
  _mm512_storeu_ps(by, m);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(recip),
                   _mm512_cvtepi32_epi8(_mm512_maskz_set1_epi32(exact, 1)));
  return keep;
}

// The row's parameters from its groups' abs-max bits (amax[0 .. n), padded to 16 lanes),
// 16 groups at a time, as internal::ComputeParams computes them for symmetric 4 bits:
// scale = RNE_bf16(amax / 7.5), 0 -> eps(bf16) = 2^-7. Writes the scales' bf16 bits to
// `scales` (n of them), and per group the multiplier (1 / scale where ReciprocalIsExact
// holds, else the scale to divide by) and whether it is a reciprocal.
QUENCH_AVX512BF16 inline void RowParams(const uint32_t* amax, size_t n, uint8_t* scales,
                                        float* by, uint8_t* recip) {
  for (size_t g = 0; g < n; g += 16) {
    const __m512 a = _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_loadu_si512(amax + g), 16));  // a bf16 value, >= +0
    const __m512 s = RoundBf16(_mm512_div_ps(a, _mm512_set1_ps(7.5f)));
    StoreScales(s, n - g, scales + 2 * g, by + g, recip + g);
  }
}

// Asymmetric observation: the min and max of n bf16 elements at p (n a multiple of 32),
// as f32 values, folded with 0 (the definition's min(min x, 0) and max(max x, 0)); false for
// an Inf or NaN. Bit patterns become signed keys that order like the values (int.cc's
// OrderedKey: the magnitude bits flipped under a set sign bit).
QUENCH_AVX512BF16 inline bool GroupMinMax(const uint8_t* p, size_t n, float* mn, float* mx) {
  const __m512i mag = _mm512_set1_epi16(0x7FFF);
  __m512i lo = _mm512_setzero_si512(), hi = _mm512_setzero_si512();  // key 0 is +0
  for (size_t i = 0; i < 2 * n; i += 64) {
    const __m512i x = _mm512_loadu_si512(p + i);
    const __m512i k = _mm512_xor_si512(x, _mm512_and_si512(_mm512_srai_epi16(x, 15), mag));
    lo = _mm512_min_epi16(lo, k);
    hi = _mm512_max_epi16(hi, k);
  }
  // Signed 16-bit lanes to 32-bit: the low halves by a shift pair, the high by one shift.
  const int32_t kmin = _mm512_reduce_min_epi32(_mm512_min_epi32(
      _mm512_srai_epi32(_mm512_slli_epi32(lo, 16), 16), _mm512_srai_epi32(lo, 16)));
  const int32_t kmax = _mm512_reduce_max_epi32(_mm512_max_epi32(
      _mm512_srai_epi32(_mm512_slli_epi32(hi, 16), 16), _mm512_srai_epi32(hi, 16)));
  if (kmax >= 0x7F80 || kmin <= -1 - 0x7F80) return false;  // beyond +-Inf's keys
  auto value = [](int32_t key) {
    const uint32_t bits = key >= 0 ? static_cast<uint32_t>(key)
                                   : 0x8000u | static_cast<uint32_t>(-1 - key);
    return std::bit_cast<float>(bits << 16);
  };
  *mn = value(kmin);
  *mx = value(kmax);
  return true;
}

// The row's asymmetric parameters, 16 groups at a time, lane for lane the operations of
// internal::ComputeParams (int.cc's ComputeParamsRow does the same in Highway):
// scale = RNE_bf16(RNE_bf16(mx - mn) / 15); zp = RNE_bf16(-8 - RNE_bf16(mn / scale)) with the
// scale before the zero guard (0/0 = NaN -> 0), clamped to [-8, 7], rounded half to even;
// then scale 0 -> 2^-7. Writes the scales' bf16 bits, each group's multiplier and reciprocal
// flag (as RowParams) and its zero point (as f32, for pass 2, and as int8 into zps).
QUENCH_AVX512BF16 inline void RowParamsAsym(const float* mn_in, const float* mx_in, size_t n,
                                            uint8_t* scales, float* by, uint8_t* recip,
                                            float* zpf, int8_t* zps) {
  const __m512 zero = _mm512_setzero_ps();
  const __m512 qmin = _mm512_set1_ps(-8.0f), qmax = _mm512_set1_ps(7.0f);
  for (size_t g = 0; g < n; g += 16) {
    const __m512 mn = _mm512_min_ps(_mm512_loadu_ps(mn_in + g), zero);
    const __m512 mx = _mm512_max_ps(_mm512_loadu_ps(mx_in + g), zero);
    __m512 s = RoundBf16(_mm512_div_ps(RoundBf16(_mm512_sub_ps(mx, mn)), _mm512_set1_ps(15.0f)));
    const __m512 ratio = _mm512_div_ps(mn, s);
    const __mmask16 is_nan = _mm512_cmp_ps_mask(ratio, ratio, _CMP_UNORD_Q);
    __m512 zp = RoundBf16(_mm512_sub_ps(qmin, RoundBf16(ratio)));
    zp = _mm512_roundscale_ps(_mm512_min_ps(_mm512_max_ps(zp, qmin), qmax),
                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    zp = _mm512_mask_mov_ps(zp, is_nan, zero);  // NaN lanes: whatever min / max made of them
    const __mmask16 keep = StoreScales(s, n - g, scales + 2 * g, by + g, recip + g);
    _mm512_mask_cvtepi32_storeu_epi8(zps + g, keep, _mm512_cvtps_epi32(zp));
    _mm512_storeu_ps(zpf + g, zp);
  }
}

// The VPERMT2B index of pass 2: output byte k < 16 is pair k of the first 32 elements,
// k in [16, 32) pair k - 16 of the next 32 (table b). Pair j of a 32-element load lands in
// lane kLane[j] of the VDPBF16PS results (lanes 0-7 from the first widened vector, whose
// dword lanes hold elements {0-3, 8-11, ...}; lanes 8-15 from the second), byte 0 of a lane.
QUENCH_AVX512BF16 inline __m512i PairIndex() {
  static constexpr uint8_t kLane[16] = {0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15};
  alignas(64) uint8_t idx[64] = {};
  for (int k = 0; k < 16; ++k) {
    idx[k] = static_cast<uint8_t>(4 * kLane[k]);
    idx[16 + k] = static_cast<uint8_t>(64 + 4 * kLane[k]);
  }
  return _mm512_load_si512(idx);
}

// Asks for the 128 bytes of block i (elements i .. i + 63) of the next row (null: none).
QUENCH_AVX512BF16 inline void PrefetchBlock(const uint8_t* next, size_t i) {
  if (next != nullptr) {
    _mm_prefetch(reinterpret_cast<const char*>(next + 2 * i), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(next + 2 * i + 64), _MM_HINT_T0);
  }
}

// 32 bf16 elements at p widened to f32 by interleaving zero words (elements {0-3, 8-11,
// 16-19, 24-27} in yp, the rest in yq), times the multiplier (or divided by the scale),
// rounded to bf16 and re-paired by one VCVTNE2PS2BF16: words yp's 16, then yq's 16.
template <bool kRecip>
QUENCH_AVX512BF16 inline __m512bh Quotients(const uint8_t* p, __m512 by) {
  const __m512i zero = _mm512_setzero_si512();
  const __m512i x = _mm512_loadu_si512(p);
  const __m512 lo = _mm512_castsi512_ps(_mm512_unpacklo_epi16(zero, x));
  const __m512 hi = _mm512_castsi512_ps(_mm512_unpackhi_epi16(zero, x));
  const __m512 yp = kRecip ? _mm512_mul_ps(lo, by) : _mm512_div_ps(lo, by);
  const __m512 yq = kRecip ? _mm512_mul_ps(hi, by) : _mm512_div_ps(hi, by);
  return _mm512_cvtne2ps_pbh(yq, yp);
}

// Quantizes n elements (a multiple of 64) at src with one group's multiplier into n / 2
// packed bytes at dst; next: the same span of the next row, prefetched.
template <bool kRecip>
QUENCH_AVX512BF16 inline void QuantizeGroup(const uint8_t* src, size_t n, __m512 by,
                                            __m512i idx, const uint8_t* next, uint8_t* dst) {
  const __m512 magic = _mm512_set1_ps(12582920.0f);  // 1.5 * 2^23 + 8
  // bf16 pairs (1, 0) and (0, 1): the even (low) or the odd element of each pair times 1.
  const __m512bh pick_even = (__m512bh)_mm512_set1_epi32(0x00003F80);
  const __m512bh pick_odd = (__m512bh)_mm512_set1_epi32(0x3F800000);
  const __m256i fifteen = _mm256_set1_epi8(15);
  for (size_t i = 0; i < n; i += kBlock) {
    PrefetchBlock(next, i);
    __m512i even[2], odd[2];
    for (int h = 0; h < 2; ++h) {
      const __m512bh v = Quotients<kRecip>(src + 2 * i + 64 * h, by);
      even[h] = _mm512_castps_si512(_mm512_dpbf16_ps(magic, v, pick_even));
      odd[h] = _mm512_castps_si512(_mm512_dpbf16_ps(magic, v, pick_odd));
    }
    const __m256i e = _mm256_min_epu8(
        _mm512_castsi512_si256(_mm512_permutex2var_epi8(even[0], idx, even[1])), fifteen);
    const __m256i o = _mm256_min_epu8(
        _mm512_castsi512_si256(_mm512_permutex2var_epi8(odd[0], idx, odd[1])), fifteen);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i / 2),
                        _mm256_or_si256(e, _mm256_slli_epi16(o, 4)));
  }
}

// The VPERMT2B index of the asymmetric pass 2 (QuantizeGroupAsym): from the two halves'
// merged vectors, the 32 even codes in pair order to bytes 0-31 and the 32 odd codes to
// bytes 32-63. In a merged vector, the first rounding's lane j (pair kLane^-1(j), as in
// PairIndex) has its even code at byte 4 * (j / 2) + j % 2 and its odd code 32 bytes on.
QUENCH_AVX512BF16 inline __m512i AsymIndex() {
  static constexpr uint8_t kLane[16] = {0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15};
  alignas(64) uint8_t idx[64];
  for (int h = 0; h < 2; ++h) {
    for (int p = 0; p < 16; ++p) {
      const int j = kLane[p];
      const int even = 4 * (j / 2) + j % 2;
      idx[16 * h + p] = static_cast<uint8_t>(64 * h + even);
      idx[32 + 16 * h + p] = static_cast<uint8_t>(64 * h + 32 + even);
    }
  }
  return _mm512_load_si512(idx);
}

// Asymmetric: v = RNE_bf16(RNE_bf16(x / scale) + zp). The first VDPBF16PS pair adds zp
// (acc = zp: RN_f32(zp + v1), the f32 sum the definition rounds; a subnormal v1 counted as 0
// changes nothing: |v1| is below half an ulp of a nonzero zp, and with zp = 0 it rounds to
// 0 either way). A second VCVTNE2PS2BF16 rounds the sums to bf16 (words: the 16 even
// elements' sums, then the 16 odd ones'), and a second VDPBF16PS pair rounds to integers with
// 1.5 * 2^23 + 8, each lane taking word 2i (first) or 2i + 1 (second). |v| stays below 24
// (|x / scale| <= 15.06, |zp| <= 8), so the low byte of each sum is round(v) + 8 as a signed
// byte, clamped to [0, 15] after the codes are gathered.
template <bool kRecip>
QUENCH_AVX512BF16 inline void QuantizeGroupAsym(const uint8_t* src, size_t n, __m512 by,
                                                __m512 zp, __m512i idx, const uint8_t* next,
                                                uint8_t* dst) {
  const __m512i zero = _mm512_setzero_si512();
  const __m512 magic = _mm512_set1_ps(12582920.0f);  // 1.5 * 2^23 + 8
  const __m512bh pick_even = (__m512bh)_mm512_set1_epi32(0x00003F80);
  const __m512bh pick_odd = (__m512bh)_mm512_set1_epi32(0x3F800000);
  const __mmask64 byte1 = 0x2222222222222222ull;  // byte 1 of every dword
  for (size_t i = 0; i < n; i += kBlock) {
    PrefetchBlock(next, i);
    __m512i merged[2];
    for (int h = 0; h < 2; ++h) {
      const __m512bh v1 = Quotients<kRecip>(src + 2 * i + 64 * h, by);
      const __m512 se = _mm512_dpbf16_ps(zp, v1, pick_even);
      const __m512 so = _mm512_dpbf16_ps(zp, v1, pick_odd);
      const __m512bh v = _mm512_cvtne2ps_pbh(so, se);  // words: se's 16, then so's 16
      const __m512i r1 = _mm512_castps_si512(_mm512_dpbf16_ps(magic, v, pick_even));
      const __m512i r2 = _mm512_castps_si512(_mm512_dpbf16_ps(magic, v, pick_odd));
      merged[h] = _mm512_mask_blend_epi8(byte1, r1, _mm512_slli_epi32(r2, 8));
    }
    __m512i codes = _mm512_permutex2var_epi8(merged[0], idx, merged[1]);
    codes = _mm512_min_epi8(_mm512_max_epi8(codes, zero), _mm512_set1_epi8(15));
    const __m256i e = _mm512_castsi512_si256(codes);
    const __m256i o = _mm512_extracti64x4_epi64(codes, 1);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i / 2),
                        _mm256_or_si256(e, _mm256_slli_epi16(o, 4)));
  }
}

QUENCH_AVX512BF16 bool Impl(const WeightChunk& in, const ChunkOutputs& out) {
  internal::Layout l;
  if (!internal::MakeLayout(in, &l)) return false;
  const bool sym = in.params.symmetric;
  const size_t cols = in.cols, group = l.group, n_groups = l.n_groups;
  const size_t row_bytes = cols * 2, group_bytes = group * 2;
  const size_t padded = (n_groups + 15) / 16 * 16;
  std::vector<uint32_t> amax(padded, 0u);
  std::vector<float> mn(sym ? 0 : padded, 0.0f), mx(sym ? 0 : padded, 0.0f),
      zpf(sym ? 0 : padded, 0.0f), by(padded);
  std::vector<int8_t> zps(sym ? 0 : in.rows * n_groups + 16);  // [rows, n_groups]
  std::vector<uint8_t> recip(padded);
  const __m512i idx = sym ? PairIndex() : AsymIndex();
  for (size_t r = 0; r < in.rows; ++r) {
    const uint8_t* row = in.data + r * row_bytes;
    uint8_t* scales = out.out[1] + r * n_groups * 2;
    if (sym) {
      for (size_t g = 0; g < n_groups; ++g) {
        amax[g] = GroupAbsMax(row + g * group_bytes, group);
        if (amax[g] >= 0x7F80u) return false;  // Inf or NaN in the group
      }
      RowParams(amax.data(), n_groups, scales, by.data(), recip.data());
    } else {
      for (size_t g = 0; g < n_groups; ++g) {
        if (!GroupMinMax(row + g * group_bytes, group, &mn[g], &mx[g])) return false;
      }
      RowParamsAsym(mn.data(), mx.data(), n_groups, scales, by.data(), recip.data(),
                    zpf.data(), zps.data() + r * n_groups);
    }
    const uint8_t* next = r + 1 < in.rows ? row + row_bytes : nullptr;
    uint8_t* dst = out.out[0] + r * (cols / 2);
    for (size_t g = 0; g < n_groups; ++g) {
      const uint8_t* src = row + g * group_bytes;
      const uint8_t* gnext = next != nullptr ? next + g * group_bytes : nullptr;
      uint8_t* gdst = dst + g * group / 2;
      const __m512 m = _mm512_set1_ps(by[g]);
      if (sym) {
        if (recip[g] != 0) {
          QuantizeGroup<true>(src, group, m, idx, gnext, gdst);
        } else {
          QuantizeGroup<false>(src, group, m, idx, gnext, gdst);
        }
      } else {
        const __m512 zp = _mm512_set1_ps(zpf[g]);
        if (recip[g] != 0) {
          QuantizeGroupAsym<true>(src, group, m, zp, idx, gnext, gdst);
        } else {
          QuantizeGroupAsym<false>(src, group, m, zp, idx, gnext, gdst);
        }
      }
    }
  }
  if (!sym) internal::PackZeroPoints(zps.data(), in.rows, n_groups, 4, out.out[2]);
  return true;
}

}  // namespace
#endif  // QUENCH_AVX512BF16_X86

bool QuantizeInt4Bf16(const WeightChunk& in, const ChunkOutputs& out) {
#ifdef QUENCH_AVX512BF16_X86
  return Impl(in, out);
#else
  (void)in;
  (void)out;
  return false;
#endif
}

}  // namespace quench::intq
