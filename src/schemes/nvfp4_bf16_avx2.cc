// BF16 -> NVFP4 with AVX2 (nvfp4_bf16_avx2.h says why it is exact).
//
// A row goes in blocks of 16 groups (256 elements, 512 bytes), all three passes per block
// while its bytes are in L1:
//  - pass 1: the 16 groups' abs vectors (one group of 16 bf16 a vector) folded into one vector
//    of their maxima by a tree of 16-bit unpacks and maxima (three levels within 128-bit
//    lanes, then one across), the groups loaded in an order that leaves the maxima in group
//    order;
//  - pass 2: the 16 scale codes in two vectors of 8 f32 lanes, packed to 16 bytes and stored;
//  - pass 3: per group, its eight bounds (minus one, as int16: a >= b is a > b - 1, and every
//    pattern and bound is below 0x8000, so the signed compare orders them) broadcast to both
//    128-bit lanes; each 16-bit lane's bound k is taken by a VPSHUFB with the byte pair (2k,
//    2k + 1); a binary search of three compares gives the index; the sign is one more compare
//    of x ^ 0x8000 with bound 0 (negative x: |x|; positive x: a negative int16, below every
//    bound). Four groups' 16-bit nibbles are packed to 32 bytes by VPACKUSWB, VPMADDUBSW
//    (even + 16 * odd) and VPACKUSWB again, VPERMD restoring the order.
// The last groups of a row (fewer than 16) go through the same code on a zero-padded copy.
#include "schemes/nvfp4_bf16_avx2.h"

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "schemes/avx2.h"
#include "schemes/cpu_x86.h"
#include "schemes/e4m3_avx2.h"
#include "schemes/float_formats.h"
#include "schemes/fp4_bounds.h"
#include "schemes/fp4_shared.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define QUENCH_NVFP4_AVX2_X86 1
#include <immintrin.h>
#define QUENCH_NVFP4_AVX2 __attribute__((target("avx2,bmi,bmi2")))
#endif

namespace quench::fp4 {
namespace {

cpu::KernelSwitch g_enabled;

constexpr size_t kGroup = 16;
constexpr size_t kBlockGroups = 16;                 // groups per block
constexpr size_t kBlockBytes = kBlockGroups * kGroup * 2;
constexpr size_t kPrefetchRowBytes = 2048;          // rows this long ask for the next row

// Bounds minus one of every scale code for one global scale: t[8 * code + k] =
// Nvfp4Bounds(E4M3(code) / gs)[k] - 1 (code 0 and the NaN code are never used).
struct BoundsTable {
  bool valid = false;
  uint32_t gs_bits = 0;
  alignas(64) int16_t t[128 * 8];
};

// The table for gs, cached per thread for the last gs, so a chunk's rows share one table.
const int16_t* TableFor(float gs) {
  thread_local BoundsTable tb;
  const uint32_t bits = F32ToBits(gs);
  if (!tb.valid || tb.gs_bits != bits) {
    for (uint32_t code = 0; code < 128; ++code) {
      // eff as the definition computes it: the decoded scale over gs, one f32 division.
      const float eff = E4M3ToF32(static_cast<uint8_t>(code)) / gs;
      uint16_t b[8];
      internal::Nvfp4Bounds(eff, b);
      for (int k = 0; k < 8; ++k) tb.t[8 * code + k] = static_cast<int16_t>(b[k] - 1);
    }
    tb.gs_bits = bits;
    tb.valid = true;
  }
  return tb.t;
}

}  // namespace

void internal::SetNvfp4Bf16Avx2Enabled(bool enabled) {
  g_enabled.Set(enabled);
}

bool Nvfp4Bf16Avx2Available() {
#ifdef QUENCH_NVFP4_AVX2_X86
  return cpu::HasAvx2();
#else
  return false;
#endif
}

bool Nvfp4Bf16Avx2Handles(const WeightChunk& in) {
  const float gs = in.params.global_scale;
  return in.dtype == DType::kBF16 && gs > 0.0f && std::isfinite(gs) &&
         g_enabled.on() && Nvfp4Bf16Avx2Available();
}

#ifdef QUENCH_NVFP4_AVX2_X86
namespace {

// The byte pair (2k, 2k + 1) in every 16-bit lane: VPSHUFB's index of 16-bit entry k.
QUENCH_NVFP4_AVX2 inline __m256i Entry(int k) {
  return _mm256_set1_epi16(static_cast<int16_t>(((2 * k + 1) << 8) | (2 * k)));
}

// The nibble (index | 8 * sign) of each 16-bit lane of one group's 16 elements x, under the
// group's bounds minus one in both 128-bit lanes of b.
QUENCH_NVFP4_AVX2 inline __m256i GroupNibbles(__m256i x, __m256i b) {
  const __m256i a = _mm256_and_si256(x, _mm256_set1_epi16(0x7FFF));
  // Index bit 2: bound 4.
  const __m256i m4 = _mm256_cmpgt_epi16(a, _mm256_shuffle_epi8(b, Entry(4)));
  // Bit 1: bound 2 or 6, the shuffle index picked by a blend on m4.
  const __m256i m2 =
      _mm256_cmpgt_epi16(a, _mm256_shuffle_epi8(b, _mm256_blendv_epi8(Entry(2), Entry(6), m4)));
  // Bit 0: bound p = 1 + 4 * [m4] + 2 * [m2] (Entry(p) = Entry(1 or 5) + 0x0404 * [m2]).
  const __m256i i3 = _mm256_add_epi16(_mm256_blendv_epi8(Entry(1), Entry(5), m4),
                                      _mm256_and_si256(m2, _mm256_set1_epi16(0x0404)));
  const __m256i m1 = _mm256_cmpgt_epi16(a, _mm256_shuffle_epi8(b, i3));
  // Sign: x negative and |x| >= bound 0; x ^ 0x8000 is |x| for negative x and a negative
  // int16 (below every bound minus one, which is >= 0) for positive x.
  const __m256i m0 = _mm256_cmpgt_epi16(_mm256_xor_si256(x, _mm256_set1_epi16(-0x8000)),
                                        _mm256_shuffle_epi8(b, Entry(0)));
  // Index = p - 1 + [m1] (Entry(p) >> 9 = p; m1 is -1 where met), plus 8 for the sign: the
  // -1 and the 8 come as one blend (7 or -1).
  return _mm256_add_epi16(
      _mm256_sub_epi16(_mm256_srli_epi16(i3, 9), m1),
      _mm256_blendv_epi8(_mm256_set1_epi16(-1), _mm256_set1_epi16(7), m0));
}

// One group's bounds minus one, in both 128-bit lanes.
QUENCH_NVFP4_AVX2 inline __m256i Bounds(const int16_t* table, uint8_t code) {
  return _mm256_broadcastsi128_si256(
      _mm_load_si128(reinterpret_cast<const __m128i*>(table + 8 * (code & 0x7F))));
}

// GroupNibbles of group j at src under its code codes[j].
QUENCH_NVFP4_AVX2 inline __m256i GroupAt(const uint8_t* src, const uint8_t* codes,
                                         const int16_t* table, int j) {
  return GroupNibbles(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 32 * j)),
                      Bounds(table, codes[j]));
}

// Nibbles of four groups (64 elements at src, codes[0..3]) packed two a byte, even element
// low, into 32 bytes at dst.
QUENCH_NVFP4_AVX2 inline void Pack4(const uint8_t* src, const uint8_t* codes,
                                    const int16_t* table, uint8_t* dst) {
  const __m256i n[4] = {GroupAt(src, codes, table, 0), GroupAt(src, codes, table, 1),
                        GroupAt(src, codes, table, 2), GroupAt(src, codes, table, 3)};
  // Bytes [n0 0-7, n1 0-7 | n0 8-15, n1 8-15]; then (even + 16 * odd) in 16-bit lanes.
  const __m256i pair = _mm256_set1_epi16(0x1001);
  const __m256i q01 = _mm256_maddubs_epi16(_mm256_packus_epi16(n[0], n[1]), pair);
  const __m256i q23 = _mm256_maddubs_epi16(_mm256_packus_epi16(n[2], n[3]), pair);
  // Dwords [g0 a, g1 a, g2 a, g3 a | g0 b, g1 b, g2 b, g3 b] (a: bytes 0-3 of a group's
  // eight, b: 4-7), reordered to g0 a, g0 b, g1 a, ...
  const __m256i r = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(q01, q23),
                                                _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), r);
}

QUENCH_NVFP4_AVX2 inline __m256i AbsLoad(const uint8_t* p) {
  return _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)),
                          _mm256_set1_epi16(0x7FFF));
}

// Lanes of a and b interleaved by 16-bit words within 128-bit lanes, then folded by max: a
// lane's words alternate a's and b's partial maxima, half as many of each.
QUENCH_NVFP4_AVX2 inline __m256i Fold(__m256i a, __m256i b) {
  return _mm256_max_epu16(_mm256_unpacklo_epi16(a, b), _mm256_unpackhi_epi16(a, b));
}

// The maxima of eight groups at p, word k of each 128-bit lane the partial maximum of group
// k over that lane's elements (0-7 or 8-15): the groups enter in the order 0 4 2 6 1 5 3 7
// (three bits reversed), which the three folds' interleaving undoes.
QUENCH_NVFP4_AVX2 inline __m256i Max8(const uint8_t* p) {
  const __m256i u0 = Fold(AbsLoad(p + 0 * 32), AbsLoad(p + 4 * 32));
  const __m256i u1 = Fold(AbsLoad(p + 2 * 32), AbsLoad(p + 6 * 32));
  const __m256i u2 = Fold(AbsLoad(p + 1 * 32), AbsLoad(p + 5 * 32));
  const __m256i u3 = Fold(AbsLoad(p + 3 * 32), AbsLoad(p + 7 * 32));
  return Fold(Fold(u0, u1), Fold(u2, u3));
}

// Nvfp4ScaleCode (bf16) of 8 amax bit patterns (finite, in the low halves of 32-bit lanes)
// under gs > 0, by the steps in nvfp4_bf16_avx2.h; codes in the low byte of each lane.
QUENCH_NVFP4_AVX2 inline __m256i ScaleCodes8(__m256i amax_bits, __m256 gs) {
  const __m256 x = _mm256_castsi256_ps(_mm256_slli_epi32(amax_bits, 16));
  // amax * RN(1/6) rounds to bf16 as amax / 6 does (nvfp4_bf16_avx2.h); a division here
  // held each block's pass 3 on its latency.
  const __m256 t = quench::avx2::RoundBf16(_mm256_mul_ps(x, _mm256_set1_ps(1.0f / 6.0f)));
  return avx2::GuardedScaleCodes8(t, gs);
}

// Pass 2 for 16 groups whose amax patterns (< 0x8000; the callers refuse a chunk where one
// is NaN or Inf) are the words of amax in group order: their codes (each 1..126) to `codes`
// (16 bytes).
QUENCH_NVFP4_AVX2 inline void Codes16(__m256i amax, __m256 gs, uint8_t* codes) {
  const __m256i c0 = ScaleCodes8(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(amax)), gs);
  const __m256i c1 = ScaleCodes8(_mm256_cvtepu16_epi32(_mm256_extracti128_si256(amax, 1)), gs);
  // Words [0-3, 8-11 | 4-7, 12-15], bytes likewise in each dword; dwords 0, 4, 1, 5 in order.
  const __m256i w = _mm256_packus_epi32(c0, c1);
  const __m256i b = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(w, w),
                                                _mm256_setr_epi32(0, 4, 1, 5, 0, 4, 1, 5));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(codes), _mm256_castsi256_si128(b));
}

// Pass 3 for the 16 groups at src under their codes: nibbles to dst (128 bytes).
QUENCH_NVFP4_AVX2 inline void Pack16(const uint8_t* src, const uint8_t* codes,
                                     const int16_t* table, uint8_t* dst) {
  for (size_t j = 0; j < kBlockGroups; j += 4) {
    Pack4(src + 32 * j, codes + j, table, dst + 8 * j);
  }
}

// Passes 1-3 for the 16 groups at src: codes to `codes` (16 bytes), nibbles to dst (128
// bytes). Returns the groups' amax bit patterns (>= 0x7F80: a NaN or Inf among them).
QUENCH_NVFP4_AVX2 inline __m256i Block(const uint8_t* src, __m256 gs, const int16_t* table,
                                       uint8_t* codes, uint8_t* dst) {
  const __m256i y = Max8(src);
  const __m256i z = Max8(src + 8 * 32);
  // Word k: group k's amax (lanes: groups 0-7, 8-15).
  const __m256i amax = _mm256_max_epu16(_mm256_permute2x128_si256(y, z, 0x20),
                                        _mm256_permute2x128_si256(y, z, 0x31));
  Codes16(amax, gs, codes);
  Pack16(src, codes, table, dst);
  return amax;
}

QUENCH_NVFP4_AVX2 bool QuantizeImpl(const WeightChunk& in, const ChunkOutputs& out) {
  const size_t n_groups = in.cols / kGroup;
  const size_t row_bytes = in.cols * 2;
  const __m256 gs = _mm256_set1_ps(in.params.global_scale);
  const int16_t* table = TableFor(in.params.global_scale);
  __m256i seen = _mm256_setzero_si256();  // max of every group's amax pattern
  for (size_t r = 0; r < in.rows; ++r) {
    const uint8_t* row = in.data + r * row_bytes;
    uint8_t* codes = out.out[1] + r * n_groups;
    uint8_t* dst = out.out[0] + r * n_groups * 8;
    // Long rows ask for the next row's block alongside each block, so that its pass 1 finds
    // it in cache.
    const uint8_t* next =
        row_bytes >= kPrefetchRowBytes && r + 1 < in.rows ? row + row_bytes : nullptr;
    size_t g = 0;
    for (; g + kBlockGroups <= n_groups; g += kBlockGroups) {
      if (next != nullptr) {
        for (size_t b = 0; b < kBlockBytes; b += 64) {
          _mm_prefetch(reinterpret_cast<const char*>(next + 32 * g + b), _MM_HINT_T0);
        }
      }
      seen = _mm256_max_epu16(seen, Block(row + 32 * g, gs, table, codes + g, dst + 8 * g));
    }
    if (g < n_groups) {
      // The last groups: the same code on a zero-padded copy (zero groups take code 0x20
      // and nibbles 0, both ignored), keeping the real groups' bytes.
      const size_t left = n_groups - g;
      alignas(32) uint8_t in_buf[kBlockBytes] = {};
      alignas(32) uint8_t code_buf[kBlockGroups];
      alignas(32) uint8_t out_buf[kBlockGroups * 8];
      std::memcpy(in_buf, row + 32 * g, 32 * left);
      seen = _mm256_max_epu16(seen, Block(in_buf, gs, table, code_buf, out_buf));
      std::memcpy(codes + g, code_buf, left);
      std::memcpy(dst + 8 * g, out_buf, 8 * left);
    }
  }
  // A NaN or Inf anywhere: some amax pattern >= 0x7F80, i.e. > 0x7F7F as int16 (all < 0x8000).
  return _mm256_testz_si256(_mm256_cmpgt_epi16(seen, _mm256_set1_epi16(0x7F7F)),
                            _mm256_set1_epi16(-1)) != 0;
}

// QuantizeImpl with each group's range given (bf16 patterns, rows x groups at `ranges`) in
// place of its amax, a row at a time: pass 2 from the row's ranges, then pass 3 (and, where
// the rows are not declared finite, pass 1 for the NaN / Inf check alone). The sign bits of
// the ranges are ignored (ranges are >= 0). (Passes 2 and 3 block by block, as QuantizeImpl
// does them, held each block's pass 3 on its codes.)
QUENCH_NVFP4_AVX2 bool QuantizeRangesImpl(const WeightChunk& in, const uint8_t* ranges,
                                          bool finite, const ChunkOutputs& out) {
  const size_t n_groups = in.cols / kGroup;
  const size_t row_bytes = in.cols * 2;
  const size_t full = n_groups / kBlockGroups * kBlockGroups;  // groups in whole blocks
  const size_t left = n_groups - full;
  const __m256 gs = _mm256_set1_ps(in.params.global_scale);
  const int16_t* table = TableFor(in.params.global_scale);
  const __m256i abs = _mm256_set1_epi16(0x7FFF);
  // The largest |range| pattern, and (not finite) every group's amax pattern.
  __m256i seen = _mm256_setzero_si256();
  for (size_t r = 0; r < in.rows; ++r) {
    const uint8_t* row = in.data + r * row_bytes;
    const uint8_t* range = ranges + r * n_groups * 2;
    uint8_t* codes = out.out[1] + r * n_groups;
    uint8_t* dst = out.out[0] + r * n_groups * 8;
    for (size_t g = 0; g < full; g += kBlockGroups) {
      const __m256i amax = _mm256_and_si256(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(range + 2 * g)), abs);
      seen = _mm256_max_epu16(seen, amax);
      Codes16(amax, gs, codes + g);
    }
    // The last groups (fewer than a block): zero-padded copies (zero groups take code 0x20
    // and nibbles 0, both ignored), keeping the real groups' bytes.
    alignas(32) uint8_t code_buf[kBlockGroups];
    if (left > 0) {
      alignas(32) uint8_t range_buf[kBlockGroups * 2] = {};
      std::memcpy(range_buf, range + 2 * full, 2 * left);
      const __m256i amax =
          _mm256_and_si256(_mm256_load_si256(reinterpret_cast<const __m256i*>(range_buf)), abs);
      seen = _mm256_max_epu16(seen, amax);
      Codes16(amax, gs, code_buf);
      std::memcpy(codes + full, code_buf, left);
    }
    const uint8_t* next =
        row_bytes >= kPrefetchRowBytes && r + 1 < in.rows ? row + row_bytes : nullptr;
    for (size_t g = 0; g < full; g += kBlockGroups) {
      if (next != nullptr) {
        for (size_t b = 0; b < kBlockBytes; b += 64) {
          _mm_prefetch(reinterpret_cast<const char*>(next + 32 * g + b), _MM_HINT_T0);
        }
      }
      const uint8_t* src = row + 32 * g;
      if (!finite) seen = _mm256_max_epu16(seen, _mm256_max_epu16(Max8(src), Max8(src + 256)));
      Pack16(src, codes + g, table, dst + 8 * g);
    }
    if (left > 0) {
      alignas(32) uint8_t in_buf[kBlockBytes] = {};
      alignas(32) uint8_t out_buf[kBlockGroups * 8];
      std::memcpy(in_buf, row + 32 * full, 32 * left);
      if (!finite) {
        seen = _mm256_max_epu16(seen, _mm256_max_epu16(Max8(in_buf), Max8(in_buf + 256)));
      }
      Pack16(in_buf, code_buf, table, out_buf);
      std::memcpy(dst + 8 * full, out_buf, 8 * left);
    }
  }
  return _mm256_testz_si256(_mm256_cmpgt_epi16(seen, _mm256_set1_epi16(0x7F7F)),
                            _mm256_set1_epi16(-1)) != 0;
}

QUENCH_NVFP4_AVX2 void PackGroupsImpl(const uint8_t* row, size_t n_groups, const uint8_t* codes,
                                      float gs, uint8_t* dst) {
  const int16_t* table = TableFor(gs);
  size_t g = 0;
  for (; g + 4 <= n_groups; g += 4) Pack4(row + 32 * g, codes + g, table, dst + 8 * g);
  if (g < n_groups) {
    const size_t left = n_groups - g;
    alignas(32) uint8_t in_buf[4 * 32] = {};
    uint8_t code_buf[4] = {0x20, 0x20, 0x20, 0x20};
    alignas(32) uint8_t out_buf[32];
    std::memcpy(in_buf, row + 32 * g, 32 * left);
    std::memcpy(code_buf, codes + g, left);
    Pack4(in_buf, code_buf, table, out_buf);
    std::memcpy(dst + 8 * g, out_buf, 8 * left);
  }
}

}  // namespace

bool QuantizeNvfp4Bf16Avx2(const WeightChunk& in, const ChunkOutputs& out) {
  return QuantizeImpl(in, out);
}

bool QuantizeNvfp4Bf16Avx2Ranges(const WeightChunk& in, const uint8_t* ranges,
                                 const ChunkOutputs& out, bool finite) {
  return QuantizeRangesImpl(in, ranges, finite, out);
}

void internal::Nvfp4Bf16Avx2PackGroups(const uint8_t* row, size_t n_groups, const uint8_t* codes,
                                       float gs, uint8_t* dst) {
  PackGroupsImpl(row, n_groups, codes, gs, dst);
}
#else
bool QuantizeNvfp4Bf16Avx2(const WeightChunk&, const ChunkOutputs&) { return false; }
bool QuantizeNvfp4Bf16Avx2Ranges(const WeightChunk&, const uint8_t*, const ChunkOutputs&,
                                 bool) {
  return false;
}
void internal::Nvfp4Bf16Avx2PackGroups(const uint8_t*, size_t, const uint8_t*, float,
                                       uint8_t*) {}
#endif

}  // namespace quench::fp4
