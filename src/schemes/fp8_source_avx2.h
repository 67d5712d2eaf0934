// Private to the AVX2 fused FP8-source kernels (fp8_source_avx2.cc: int4,
// fp8_source_avx2_nvfp4.cc: NVFP4), for CPUs without AVX-512 VBMI, whose 64-byte table
// lookups fp8_source_quant.cc and fp8_source_nvfp4.cc use. Same outputs, byte for byte, as
// decoding (fp8::DequantizeSource) followed by the scheme's kernel.
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
#ifndef QUENCH_SCHEMES_FP8_SOURCE_AVX2_H_
#define QUENCH_SCHEMES_FP8_SOURCE_AVX2_H_

#include <cstdint>

#include "schemes/avx2.h"
#include "schemes/fp8_source_tables.h"

#ifdef QUENCH_FUSED_X86
#define QUENCH_AVX2 __attribute__((target("avx2,bmi,bmi2,popcnt")))

namespace quench::fp8::avx2 {

using fused::kMags;
constexpr size_t kThr = 16;  // bytes of a slot's thresholds (eight used) in ws.tables

// The decode table of one block column, as fused::BuildDecode: bf16 bits of
// RNE_bf16(e4m3(m) * scale) for m < 127; entry 127 (the NaN code, which no group's table
// reads) is 0x7FFF, above every bound, so that counts below a bound leave it out.
QUENCH_AVX2 inline void BuildDecode(float scale, uint16_t* dst) {
  const float* mags = fused::E4M3Magnitudes();
  const __m256 s = _mm256_set1_ps(scale);
  for (size_t m = 0; m < kMags; m += 8) {
    const __m256i bits = _mm256_castps_si256(_mm256_mul_ps(_mm256_load_ps(mags + m), s));
    const __m256i r = _mm256_srli_epi32(quench::avx2::RoundBf16Hi(bits), 16);
    const __m256i w = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
    _mm_store_si128(reinterpret_cast<__m128i*>(dst + m), _mm256_castsi256_si128(w));
  }
  dst[kMags - 1] = 0x7FFF;
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
QUENCH_AVX2 inline const uint16_t* Decode(fused::Workspace& ws, const float* scale_row, size_t j) {
  uint16_t* dec = reinterpret_cast<uint16_t*>(ws.decode.get()) + j * kMags;
  if (ws.col_stamp[j] != ws.epoch) {
    BuildDecode(scale_row[j], dec);
    ws.col_stamp[j] = ws.epoch;
  }
  return dec;
}

}  // namespace quench::fp8::avx2
#endif  // QUENCH_FUSED_X86

#endif  // QUENCH_SCHEMES_FP8_SOURCE_AVX2_H_
