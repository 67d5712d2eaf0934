// The chosen quantization's codes as bytes from raw bf16 rows on AVX2 (imatrix_mse_int8_avx2.h
// Int8Avx2Codes), with the operations of the search's term (imatrix_mse_int8_avx2.cc says why
// each is the definition's), on signed values: t = x * f32(1 / s), whose RNE_bf16 is
// RNE_bf16(x / s) for s in [2^-100, 2^100] (imatrix_mse-inl.h QuotientBf16); c = clamp(t,
// qmin, qmax) before the bf16 rounding (the bounds are bf16 values and RNE_bf16 is monotone);
// RNE_bf16(c) by rounding the sign-magnitude bits half up (no quotient is a midpoint, nor are
// the bounds; the rounding of the magnitude is the odd rounding of c); then + 1.5 * 2^23 + 128,
// rounding half to even to an integer (1.5 * 2^23 + 128 is even: the tie goes to an even q),
// whose low 8 bits are u = q + 128 in [0, 255]. Groups with a scale outside [2^-100, 2^100]
// (absurd magnitudes) take QuantizeValue itself, element by element.

// The definition rounds every product: no contraction into FMAs.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <cstdint>
#include <cstring>

#include "calib/imatrix_mse_int8_avx2.h"
#include "calib/imatrix_mse_int_avx2.h"
#include "calib/imatrix_mse_int_avx2_shared.h"
#include "schemes/float_formats.h"
#include "schemes/int_shared.h"

namespace quench::calib::internal {
namespace {

// QuantizeValue element by element (the definition), as bytes.
void GroupScalar(const uint8_t* src, size_t n, const intq::internal::GroupParams& p, int qmin,
                 int qmax, uint8_t flip, uint8_t* dst) {
  intq::internal::Layout l{};
  l.bits = 8;
  l.qmin = qmin;
  l.qmax = qmax;
  for (size_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, 2);
    const int q = intq::internal::QuantizeValue(BF16ToF32(h), p, l, true, DType::kBF16);
    dst[i] = static_cast<uint8_t>(static_cast<int8_t>(q)) ^ flip;
  }
}

}  // namespace

bool Int8Avx2CodesHandle(size_t group, size_t n) {
  return Int8Avx2Enabled() && IntAvx2Enabled() && IntAvx2Available() && group > 0 &&
         group % 32 == 0 && n % group == 0;
}

#ifdef QUENCH_IMX_AVX2_X86
namespace {

// u = q + 128 of 8 bf16 values (their f32 bits xb) at reciprocal r: the low 8 bits of each
// lane (the rest holds 1.5 * 2^23's bits).
QUENCH_IMX_AVX2 inline __m256i Codes8(__m256i xb, __m256 r, __m256 lo, __m256 hi) {
  const __m256 t = _mm256_mul_ps(_mm256_castsi256_ps(xb), r);
  const __m256 c = _mm256_min_ps(_mm256_max_ps(t, lo), hi);
  const __m256 v = _mm256_castsi256_ps(
      _mm256_and_si256(_mm256_add_epi32(_mm256_castps_si256(c), _mm256_set1_epi32(0x8000)),
                       _mm256_set1_epi32(static_cast<int>(0xFFFF0000u))));
  return _mm256_castps_si256(_mm256_add_ps(v, _mm256_set1_ps(12583040.0f)));  // 1.5 * 2^23 + 128
}

QUENCH_IMX_AVX2 void CodesImpl(const uint8_t* row, size_t n, size_t group,
                               const intq::internal::GroupParams* p, int qmin, int qmax,
                               bool flip, uint8_t* dst) {
  const __m256 lo = _mm256_set1_ps(static_cast<float>(qmin));
  const __m256 hi = _mm256_set1_ps(static_cast<float>(qmax));
  const __m256i low8 = _mm256_set1_epi32(0xFF);
  // u = q + 128; unpacked codes are q = u ^ 0x80.
  const __m256i x80 = _mm256_set1_epi8(flip ? 0 : static_cast<char>(0x80));
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (size_t g = 0; g * group < n; ++g) {
    const float s = p[g].scale;
    const uint8_t* src = row + 2 * g * group;
    uint8_t* out = dst + g * group;
    if (!(s >= 0x1p-100f && s <= 0x1p100f)) {
      GroupScalar(src, group, p[g], qmin, qmax, flip ? 0x80 : 0, out);
      continue;
    }
    const __m256 r = _mm256_set1_ps(1.0f / s);
    for (size_t i = 0; i < group; i += 32) {
      __m256i w[4];
      for (int h = 0; h < 4; ++h) {
        const __m128i b =
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * (i + 8 * h)));
        w[h] = _mm256_and_si256(
            Codes8(_mm256_slli_epi32(_mm256_cvtepu16_epi32(b), 16), r, lo, hi), low8);
      }
      // Lanes of 4 bytes: w0's first half, w1's, w2's, w3's, then their second halves.
      const __m256i bytes = _mm256_packus_epi16(_mm256_packus_epi32(w[0], w[1]),
                                                _mm256_packus_epi32(w[2], w[3]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i),
                          _mm256_xor_si256(_mm256_permutevar8x32_epi32(bytes, order), x80));
    }
  }
}

}  // namespace
#endif  // QUENCH_IMX_AVX2_X86

void Int8Avx2Codes(const uint8_t* row, size_t n, size_t group,
                   const intq::internal::GroupParams* p, int qmin, int qmax, bool flip,
                   uint8_t* dst) {
#ifdef QUENCH_IMX_AVX2_X86
  CodesImpl(row, n, group, p, qmin, qmax, flip, dst);
#else
  for (size_t g = 0; g * group < n; ++g) {
    GroupScalar(row + 2 * g * group, group, p[g], qmin, qmax, flip ? 0x80 : 0,
                dst + g * group);
  }
#endif
}

}  // namespace quench::calib::internal
