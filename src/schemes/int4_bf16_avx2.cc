// BF16 -> int4 groups, packed, with AVX2 (int4_bf16_avx2.h says why it is exact).
//
// Each row goes in blocks of up to 8 groups, still in L1 between the two passes. Pass 1 takes
// each group's largest abs bit pattern as a vector of 16-bit maxima, folds the 8 vectors into
// one vector of the 8 groups' maxima (three unpack-and-max levels), and computes the 8 scales
// and multipliers in one f32 vector. Pass 2 quantizes each group 64 elements a step: each
// 16-element load is split into its even elements (shifted into f32's high half) and odd
// ones (masked), both multiplied by 1 / scale, rounded to bf16 and then to integers (plus 8)
// in 32-bit lanes, and the two codes re-paired into 16-bit lanes in element order by one
// vpblendw; two such vectors are packed to bytes, clamped to 15 and paired into nibbles by
// vpmaddubsw (even element in the low nibble, pack_to_int32's order), and two of those packed
// again and put in order by one vpermd: 32 output bytes. Asymmetric groups take the min and
// max keys instead (two reductions), their parameters in one vector as well, and one more
// addition and rounding per half before the integer rounding.
#include "schemes/int4_bf16_avx2.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "schemes/avx2.h"
#include "schemes/cpu_x86.h"
#include "schemes/int_shared.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define QUENCH_INT4_AVX2_X86 1
#include <immintrin.h>
#define QUENCH_INT4_AVX2 __attribute__((target("avx2,fma,bmi,bmi2")))
#endif

namespace quench::intq {
namespace {

cpu::KernelSwitch g_enabled;

}  // namespace

void internal::SetInt4Bf16Avx2Enabled(bool enabled) {
  g_enabled.Set(enabled);
}

bool Int4Bf16Avx2Available() {
#ifdef QUENCH_INT4_AVX2_X86
  static const bool ok = cpu::HasAvx2() && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

bool Int4Bf16Avx2Handles(const WeightChunk& in) {
  if (in.dtype != DType::kBF16 || in.params.bits != 4) return false;
  // Smoothing's column factors (WeightChunk::col_scale) go through int.cc's ScaleRow first.
  if (in.col_scale != nullptr) return false;
  if (!g_enabled.on() || !Int4Bf16Avx2Available()) return false;
  internal::Layout l;
  return internal::MakeLayout(in, &l) && l.group % 32 == 0;
}

#ifdef QUENCH_INT4_AVX2_X86
namespace {

constexpr size_t kBlockGroups = 8;          // groups a block: one f32 vector of scales
constexpr size_t kPrefetchRowBytes = 2048;  // rows this long ask for the next row

// The 16-bit maxima of the abs bit patterns of n bf16 elements at p (n a multiple of 32),
// lane by lane.
QUENCH_INT4_AVX2 inline __m256i GroupAbsMax16(const uint8_t* p, size_t n) {
  const __m256i abs_mask = _mm256_set1_epi16(0x7FFF);
  __m256i a0 = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)),
                                abs_mask);
  __m256i a1 = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32)),
                                abs_mask);
  for (size_t i = 32; i < n; i += 32) {
    const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 2 * i));
    const __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 2 * i + 32));
    a0 = _mm256_max_epu16(a0, _mm256_and_si256(v0, abs_mask));
    a1 = _mm256_max_epu16(a1, _mm256_and_si256(v1, abs_mask));
  }
  return _mm256_max_epu16(a0, a1);
}

// The maxima (Op: a 16-bit lane max or min) of 8 vectors of 16-bit lanes, lane k of the
// result from a[k]: each level interleaves pairs (16-, then 32-, then 64-bit units) and
// keeps the larger of the two halves, so that after three levels each 128-bit half holds
// a[0..7]'s partial maxima in order; the two halves' max finishes it.
template <class Op>
QUENCH_INT4_AVX2 inline __m128i Reduce8x16(const __m256i* a, Op op) {
  __m256i m2[4];
  for (int k = 0; k < 4; ++k) {
    m2[k] = op(_mm256_unpacklo_epi16(a[2 * k], a[2 * k + 1]),
               _mm256_unpackhi_epi16(a[2 * k], a[2 * k + 1]));
  }
  const __m256i m4a =
      op(_mm256_unpacklo_epi32(m2[0], m2[1]), _mm256_unpackhi_epi32(m2[0], m2[1]));
  const __m256i m4b =
      op(_mm256_unpacklo_epi32(m2[2], m2[3]), _mm256_unpackhi_epi32(m2[2], m2[3]));
  const __m256i m8 = op(_mm256_unpacklo_epi64(m4a, m4b), _mm256_unpackhi_epi64(m4a, m4b));
  // The 128-bit halves through the same op, widened (op takes 256-bit vectors).
  return _mm256_castsi256_si128(op(m8, _mm256_permute2x128_si256(m8, m8, 0x01)));
}

struct MaxU16 {
  QUENCH_INT4_AVX2 __m256i operator()(__m256i a, __m256i b) const {
    return _mm256_max_epu16(a, b);
  }
};
struct MaxI16 {
  QUENCH_INT4_AVX2 __m256i operator()(__m256i a, __m256i b) const {
    return _mm256_max_epi16(a, b);
  }
};
struct MinI16 {
  QUENCH_INT4_AVX2 __m256i operator()(__m256i a, __m256i b) const {
    return _mm256_min_epi16(a, b);
  }
};

// Sign-magnitude bf16 patterns <-> signed keys that order like the values (int.cc's
// OrderedKey: the magnitude bits flipped under a set sign bit; its own inverse).
QUENCH_INT4_AVX2 inline __m256i OrderedKey(__m256i x) {
  return _mm256_xor_si256(
      x, _mm256_and_si256(_mm256_srai_epi16(x, 15), _mm256_set1_epi16(0x7FFF)));
}

// Asymmetric observation of n bf16 elements at p (n a multiple of 32): the lane-wise min
// and max of their keys, folded with key 0 (+0: the definition's min(min x, 0) and
// max(max x, 0)).
QUENCH_INT4_AVX2 inline void GroupKeyMinMax16(const uint8_t* p, size_t n, __m256i* kmin,
                                              __m256i* kmax) {
  __m256i lo = _mm256_setzero_si256(), hi = _mm256_setzero_si256();
  for (size_t i = 0; i < n; i += 16) {
    const __m256i k =
        OrderedKey(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 2 * i)));
    lo = _mm256_min_epi16(lo, k);
    hi = _mm256_max_epi16(hi, k);
  }
  *kmin = lo;
  *kmax = hi;
}

// The f32 values of 8 bf16 patterns (16-bit lanes).
QUENCH_INT4_AVX2 inline __m256 Bf16x8ToF32(__m128i bits) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
}

using quench::avx2::RoundBf16;  // c10's RNE_bf16 of f32 lanes

// The zero guard (a scale of exactly 0 -> eps(bf16) = 2^-7) on 8 scales (bf16 values >= +0);
// writes their bf16 bits to bits16 (8 lanes).
QUENCH_INT4_AVX2 inline __m256 GuardScales(__m256 s, __m128i* bits16) {
  const __m256 zero = _mm256_cmp_ps(s, _mm256_setzero_ps(), _CMP_EQ_OQ);
  s = _mm256_blendv_ps(s, _mm256_set1_ps(internal::ScaleEps(DType::kBF16)), zero);
  const __m256i hi = _mm256_srli_epi32(_mm256_castps_si256(s), 16);  // <= 0x7F80: packus keeps it
  *bits16 = _mm_packus_epi32(_mm256_castsi256_si128(hi), _mm256_extracti128_si256(hi, 1));
  return s;
}

// The scales of 8 groups from their amax bit patterns (finite, 16-bit lanes), as
// internal::ComputeParams computes them for symmetric 4 bits: RNE_bf16(amax / 7.5) by the
// f32 division, then the zero guard. Writes the scales' bf16 bits to bits16 (8 lanes), and
// returns the scales as f32.
QUENCH_INT4_AVX2 inline __m256 Scales8(__m128i amax, __m128i* bits16) {
  return GuardScales(RoundBf16(_mm256_div_ps(Bf16x8ToF32(amax), _mm256_set1_ps(7.5f))), bits16);
}

// The asymmetric parameters of 8 groups from their (folded) min and max keys, lane for lane
// the operations of internal::ComputeParams: scale = RNE_bf16(RNE_bf16(mx - mn) / 15);
// zp = RNE_bf16(-8 - RNE_bf16(mn / scale)) with the scale before the zero guard (0/0 = NaN
// -> 0; mn < 0 over a scale that underflowed to 0 gives +Inf -> 7), clamped to [-8, 7],
// rounded half to even; then the zero guard. Writes the scales' bf16 bits to bits16 and the
// zero points (int32) to zp; returns the scales.
QUENCH_INT4_AVX2 inline __m256 ParamsAsym8(__m128i kmin, __m128i kmax, __m128i* bits16,
                                           __m256i* zp) {
  const __m128i mag = _mm_set1_epi16(0x7FFF);
  const __m256 mn = Bf16x8ToF32(_mm_xor_si128(kmin, _mm_and_si128(_mm_srai_epi16(kmin, 15), mag)));
  const __m256 mx = Bf16x8ToF32(_mm_xor_si128(kmax, _mm_and_si128(_mm_srai_epi16(kmax, 15), mag)));
  const __m256 s =
      RoundBf16(_mm256_div_ps(RoundBf16(_mm256_sub_ps(mx, mn)), _mm256_set1_ps(15.0f)));
  const __m256 ratio = _mm256_div_ps(mn, s);
  const __m256 is_nan = _mm256_cmp_ps(ratio, ratio, _CMP_UNORD_Q);
  __m256 z = RoundBf16(_mm256_sub_ps(_mm256_set1_ps(-8.0f), RoundBf16(ratio)));
  z = _mm256_min_ps(_mm256_max_ps(z, _mm256_set1_ps(-8.0f)), _mm256_set1_ps(7.0f));
  z = _mm256_round_ps(z, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  z = _mm256_andnot_ps(is_nan, z);  // NaN lanes: whatever min / max made of them -> 0
  *zp = _mm256_cvtps_epi32(z);
  return GuardScales(s, bits16);
}

// 16 elements x (bf16, in element order) -> 16-bit lanes u = round(v) + 8 in element order,
// with v = RNE_bf16(x / scale) (symmetric: u in [0, 16]) or RNE_bf16(RNE_bf16(x / scale) +
// zp) (asymmetric: |v| < 24, u in [-16, 32] as int16), int4_bf16_avx2.h has the steps.
template <bool kSym, bool kRecip>
QUENCH_INT4_AVX2 inline __m256i Codes16(__m256i x, __m256 by, __m256 zp) {
  const __m256i hi_mask = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  __m256 even = _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
  __m256 odd = _mm256_castsi256_ps(_mm256_and_si256(x, hi_mask));
  if constexpr (kRecip) {
    even = _mm256_mul_ps(even, by);
    odd = _mm256_mul_ps(odd, by);
  } else {
    even = _mm256_div_ps(even, by);
    odd = _mm256_div_ps(odd, by);
  }
  // RNE_bf16 in 32-bit lanes: bits + 0x7FFF + lsb, the low half cleared.
  __m256 re = RoundBf16(even);
  __m256 ro = RoundBf16(odd);
  if constexpr (!kSym) {
    // The f32 sum with the zero point, rounded to bf16 again.
    re = RoundBf16(_mm256_add_ps(re, zp));
    ro = RoundBf16(_mm256_add_ps(ro, zp));
  }
  // round(v) + 8 in the low 16 bits of 1.5 * 2^23 + 8 + v (two's complement when negative:
  // the sum stays in [2^23, 2^24), where its bits are 0x4B400000 plus 8 + round(v)).
  const __m256 magic = _mm256_set1_ps(12582920.0f);
  const __m256i se = _mm256_castps_si256(_mm256_add_ps(re, magic));
  const __m256i so = _mm256_castps_si256(_mm256_add_ps(ro, magic));
  return _mm256_blend_epi16(se, _mm256_slli_epi32(so, 16), 0xAA);
}

// Two vectors of 16 codes (elements 0-15 and 16-31, 16-bit lanes) -> the 16 packed bytes of
// the 32 elements, clamped to [0, 15], as 16-bit lanes in the order: elements 0-7, 16-23
// (low 128 bits), 8-15, 24-31 (high 128 bits), 4 bytes each.
template <bool kSym>
QUENCH_INT4_AVX2 inline __m256i Pack32(__m256i c0, __m256i c1) {
  __m256i u;
  if constexpr (kSym) {
    u = _mm256_min_epu8(_mm256_packus_epi16(c0, c1), _mm256_set1_epi8(15));  // u >= 0
  } else {
    u = _mm256_min_epi8(_mm256_max_epi8(_mm256_packs_epi16(c0, c1), _mm256_setzero_si256()),
                        _mm256_set1_epi8(15));
  }
  // Byte pairs (u0, u1) -> u0 + 16 * u1, at most 255.
  return _mm256_maddubs_epi16(u, _mm256_set1_epi16(0x1001));
}

// The 16 bf16 elements at p + 2 * i.
QUENCH_INT4_AVX2 inline __m256i Load16(const uint8_t* p, size_t i) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 2 * i));
}

// Asks for the 128 bytes of elements i .. i + 63 of the next row (null: none).
QUENCH_INT4_AVX2 inline void PrefetchBlock(const uint8_t* next, size_t i) {
  if (next != nullptr) {
    _mm_prefetch(reinterpret_cast<const char*>(next + 2 * i), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(next + 2 * i + 64), _MM_HINT_T0);
  }
}

// Quantizes n elements (a multiple of 32) at src with one group's multiplier (1 / scale, or
// the scale to divide by) and zero point into n / 2 packed bytes at dst; next: the same span
// of the next row, prefetched (or null).
template <bool kSym, bool kRecip>
QUENCH_INT4_AVX2 void QuantizeGroup(const uint8_t* src, size_t n, float by_scalar,
                                    float zp_scalar, const uint8_t* next, uint8_t* dst) {
  const __m256 by = _mm256_set1_ps(by_scalar);
  const __m256 zp = _mm256_set1_ps(zp_scalar);
  // Pack32's 32-bit units: A C A' C' | B D B' D' -> A B C D A' B' C' D'.
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  auto codes = [&](size_t i) QUENCH_INT4_AVX2 {
    return Pack32<kSym>(Codes16<kSym, kRecip>(Load16(src, i), by, zp),
                        Codes16<kSym, kRecip>(Load16(src, i + 16), by, zp));
  };
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    PrefetchBlock(next, i);
    const __m256i m0 = codes(i);
    const __m256i m1 = codes(i + 32);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i / 2),
                        _mm256_permutevar8x32_epi32(_mm256_packus_epi16(m0, m1), order));
  }
  if (i < n) {
    // 32 elements left: A C A C | B D B D, of which the first four units in order.
    PrefetchBlock(next, i);
    const __m256i m0 = codes(i);
    const __m256i p = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(m0, m0), order);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i / 2), _mm256_castsi256_si128(p));
  }
}

// Stores the first n (<= 8) of 8 16-bit lanes at dst.
QUENCH_INT4_AVX2 inline void Store16x8(__m128i v, size_t n, uint8_t* dst) {
  if (n == 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), v);
  } else {
    alignas(16) uint8_t buf[16];
    _mm_store_si128(reinterpret_cast<__m128i*>(buf), v);
    std::memcpy(dst, buf, 2 * n);
  }
}

template <bool kSym>
QUENCH_INT4_AVX2 bool Impl(const WeightChunk& in, const ChunkOutputs& out) {
  internal::Layout l;
  if (!internal::MakeLayout(in, &l)) return false;
  const size_t cols = in.cols, group = l.group, n_groups = l.n_groups;
  const size_t row_bytes = cols * 2, group_bytes = group * 2;
  const bool prefetch = row_bytes >= kPrefetchRowBytes;
  std::vector<int8_t> zps(kSym ? 0 : in.rows * n_groups);  // [rows, n_groups]
  for (size_t r = 0; r < in.rows; ++r) {
    const uint8_t* row = in.data + r * row_bytes;
    const uint8_t* next = prefetch && r + 1 < in.rows ? row + row_bytes : nullptr;
    uint8_t* dst = out.out[0] + r * (cols / 2);
    uint8_t* scales = out.out[1] + r * n_groups * 2;
    for (size_t g0 = 0; g0 < n_groups; g0 += kBlockGroups) {
      const size_t ng = std::min(kBlockGroups, n_groups - g0);
      // Pass 1: the block's observations, scales, multipliers and zero points.
      __m128i bits16;
      __m256 s;
      alignas(32) int32_t zp[kBlockGroups] = {};
      if constexpr (kSym) {
        __m256i acc[kBlockGroups];
        for (size_t k = 0; k < kBlockGroups; ++k) {
          acc[k] = k < ng ? GroupAbsMax16(row + (g0 + k) * group_bytes, group)
                          : _mm256_setzero_si256();
        }
        const __m128i amax = Reduce8x16(acc, MaxU16());
        // An Inf or NaN (abs pattern >= 0x7F80; signed compare: patterns <= 0x7FFF).
        if (_mm_movemask_epi8(_mm_cmpgt_epi16(amax, _mm_set1_epi16(0x7F7F))) != 0) return false;
        s = Scales8(amax, &bits16);
      } else {
        __m256i lo[kBlockGroups], hi[kBlockGroups];
        for (size_t k = 0; k < kBlockGroups; ++k) {
          if (k < ng) {
            GroupKeyMinMax16(row + (g0 + k) * group_bytes, group, &lo[k], &hi[k]);
          } else {
            lo[k] = hi[k] = _mm256_setzero_si256();
          }
        }
        const __m128i kmin = Reduce8x16(lo, MinI16());
        const __m128i kmax = Reduce8x16(hi, MaxI16());
        // An Inf or NaN: keys beyond +-Inf's (+Inf 0x7F80, -Inf -1 - 0x7F80).
        const __m128i bad = _mm_or_si128(_mm_cmpgt_epi16(kmax, _mm_set1_epi16(0x7F7F)),
                                         _mm_cmpgt_epi16(_mm_set1_epi16(-0x7F80), kmin));
        if (_mm_movemask_epi8(bad) != 0) return false;
        __m256i zpv;
        s = ParamsAsym8(kmin, kmax, &bits16, &zpv);
        _mm256_store_si256(reinterpret_cast<__m256i*>(zp), zpv);
        for (size_t k = 0; k < ng; ++k) zps[r * n_groups + g0 + k] = static_cast<int8_t>(zp[k]);
      }
      Store16x8(bits16, ng, scales + 2 * g0);
      // fp8_shared.h's ReciprocalIsExact on each lane: positive normal bf16 values below
      // 2^126 (signed compares: the bits are positive).
      const __m256i sb = _mm256_castps_si256(s);
      const __m256i exact =
          _mm256_and_si256(_mm256_cmpgt_epi32(sb, _mm256_set1_epi32(0x007FFFFF)),
                           _mm256_cmpgt_epi32(_mm256_set1_epi32(0x7E800000), sb));
      alignas(32) float by[kBlockGroups];
      _mm256_store_ps(by, _mm256_blendv_ps(s, _mm256_div_ps(_mm256_set1_ps(1.0f), s),
                                           _mm256_castsi256_ps(exact)));
      const unsigned recip = static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(exact)));
      // Pass 2: the block's groups, still in L1.
      for (size_t k = 0; k < ng; ++k) {
        const size_t g = g0 + k;
        const uint8_t* src = row + g * group_bytes;
        const uint8_t* gnext = next != nullptr ? next + g * group_bytes : nullptr;
        uint8_t* gdst = dst + g * group / 2;
        const float z = static_cast<float>(zp[k]);
        if ((recip >> k) & 1u) {
          QuantizeGroup<kSym, true>(src, group, by[k], z, gnext, gdst);
        } else {
          QuantizeGroup<kSym, false>(src, group, by[k], z, gnext, gdst);
        }
      }
    }
  }
  if constexpr (!kSym) internal::PackZeroPoints(zps.data(), in.rows, n_groups, 4, out.out[2]);
  return true;
}

}  // namespace

bool QuantizeInt4Bf16Avx2(const WeightChunk& in, const ChunkOutputs& out) {
  return in.params.symmetric ? Impl<true>(in, out) : Impl<false>(in, out);
}
#else
bool QuantizeInt4Bf16Avx2(const WeightChunk&, const ChunkOutputs&) { return false; }
#endif

}  // namespace quench::intq
