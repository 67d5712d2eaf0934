// NVFP4 pass 3 for BF16 weights by decision bounds, with AVX-512 (nvfp4_bf16.h says why it is
// exact).
//
// Per pair of groups (32 elements, one vector of 16-bit lanes): the two groups' eight bounds
// sit in lanes 0-7 and 8-15 of one vector; each element's E2M1 index is found by a binary
// search over bounds 1..7 (bound 4, then 2 or 6, then the odd one between), each step a
// VPERMW that hands every lane its group's bound and an unsigned compare of bits(|x|) with
// it; bound 0 and the element's sign bit give the nibble's sign. The bounds are
// non-decreasing, so the bounds an element meets are a prefix and the search finds their
// count. Two nibbles a byte: (w | w >> 12) of each 32-bit lane, truncated to its low byte.
#include "schemes/nvfp4_bf16.h"

#include <cstdint>
#include <cstring>

#include "schemes/avx512bf16.h"  // QUENCH_AVX512BF16, Available, Switch
#include "schemes/float_formats.h"
#include "schemes/fp4_bounds.h"

namespace quench::fp4 {
namespace {

avx512bf16::Switch g_enabled;

// Bounds of every scale code for one global scale (Nvfp4Bf16Table).
struct BoundsTable {
  bool valid = false;
  uint32_t gs_bits = 0;
  alignas(64) uint16_t bound[128 * 8];
};

}  // namespace

void internal::SetNvfp4Bf16Enabled(bool enabled) { g_enabled.Set(enabled); }

bool Nvfp4Bf16Available() { return g_enabled.on() && avx512bf16::Available(); }

const uint16_t* Nvfp4Bf16Table(float gs) {
  thread_local BoundsTable t;
  const uint32_t bits = F32ToBits(gs);
  if (!t.valid || t.gs_bits != bits) {
    for (uint32_t code = 0; code < 128; ++code) {
      // eff as fp4.cc's Nvfp4Scales computes it: the decoded scale over gs, one f32 division.
      const float eff = E4M3ToF32(static_cast<uint8_t>(code)) / gs;
      internal::Nvfp4Bounds(eff, &t.bound[8 * code]);
    }
    t.gs_bits = bits;
    t.valid = true;
  }
  return t.bound;
}

#ifdef QUENCH_AVX512BF16_X86
namespace {

// Lane l of the 16-bit index vectors: its group's first bound (0 or 8) plus k.
QUENCH_AVX512BF16 inline __m512i BoundIndex(int k) {
  alignas(64) uint16_t idx[32];
  for (int l = 0; l < 32; ++l) idx[l] = static_cast<uint16_t>(l / 16 * 8 + k);
  return _mm512_load_si512(idx);
}

struct Consts {
  __m512i idx0, idx1, idx2, idx4;
};

// The nibbles of 32 bf16 elements x (two groups) whose bounds are in lanes 0-7 (first
// group) and 8-15 (second) of b, packed two a byte into 16 bytes at dst.
QUENCH_AVX512BF16 inline __m128i Nibbles(__m512i x, __m512i b, const Consts& c) {
  const __m512i a = _mm512_and_si512(x, _mm512_set1_epi16(0x7FFF));
  const __mmask32 neg = _mm512_movepi16_mask(x);
  // Index bit 2: bound 4.
  __mmask32 m = _mm512_cmpge_epu16_mask(a, _mm512_permutexvar_epi16(c.idx4, b));
  __m512i idx = _mm512_maskz_mov_epi16(m, _mm512_set1_epi16(4));
  // Bit 1: bound idx + 2 (2 or 6).
  m = _mm512_cmpge_epu16_mask(
      a, _mm512_permutexvar_epi16(_mm512_add_epi16(idx, c.idx2), b));
  idx = _mm512_mask_add_epi16(idx, m, idx, _mm512_set1_epi16(2));
  // Bit 0: bound idx + 1 (1, 3, 5 or 7).
  m = _mm512_cmpge_epu16_mask(
      a, _mm512_permutexvar_epi16(_mm512_add_epi16(idx, c.idx1), b));
  idx = _mm512_mask_add_epi16(idx, m, idx, _mm512_set1_epi16(1));
  // Sign: negative x whose quotient is not 0 (bound 0). idx < 8, so adding 8 sets the bit.
  m = neg & _mm512_cmpge_epu16_mask(a, _mm512_permutexvar_epi16(c.idx0, b));
  idx = _mm512_mask_add_epi16(idx, m, idx, _mm512_set1_epi16(8));
  // Each 32-bit lane holds an (even, odd) pair of indices < 16: even | odd << 4 in its low byte.
  return _mm512_cvtepi32_epi8(_mm512_or_si512(idx, _mm512_srli_epi32(idx, 12)));
}

QUENCH_AVX512BF16 void PackRow(const uint8_t* row, size_t n_groups, const uint8_t* codes,
                               const uint16_t* table, const uint8_t* next, uint8_t* dst) {
  const Consts c{BoundIndex(0), BoundIndex(1), BoundIndex(2), BoundIndex(4)};
  size_t g = 0;
  for (; g + 2 <= n_groups; g += 2) {
    __m512i b = _mm512_castsi128_si512(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(table + 8 * (codes[g] & 0x7F))));
    b = _mm512_inserti32x4(
        b, _mm_loadu_si128(reinterpret_cast<const __m128i*>(table + 8 * (codes[g + 1] & 0x7F))),
        1);
    // The next row's same 64 bytes, so that its pass 1 finds them in the cache.
    if (next != nullptr) _mm_prefetch(reinterpret_cast<const char*>(next + 32 * g), _MM_HINT_T0);
    const __m512i x = _mm512_loadu_si512(row + 32 * g);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 8 * g), Nibbles(x, b, c));
  }
  if (g < n_groups) {
    // The last group of an odd count: its 16 elements in the low half, its bounds in both.
    const __m128i t =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(table + 8 * (codes[g] & 0x7F)));
    const __m512i b = _mm512_inserti32x4(_mm512_castsi128_si512(t), t, 1);
    const __m512i x = _mm512_maskz_loadu_epi16(0xFFFFu, row + 32 * g);
    _mm_storel_epi64(reinterpret_cast<__m128i*>(dst + 8 * g), Nibbles(x, b, c));
  }
}

}  // namespace
#endif  // QUENCH_AVX512BF16_X86

void Nvfp4Bf16PackRow(const uint8_t* row, size_t n_groups, const uint8_t* codes,
                      const uint16_t* table, const uint8_t* next, uint8_t* dst) {
#ifdef QUENCH_AVX512BF16_X86
  PackRow(row, n_groups, codes, table, next, dst);
#else
  (void)row;
  (void)next;
  (void)n_groups;
  (void)codes;
  (void)table;
  (void)dst;
#endif
}

}  // namespace quench::fp4
