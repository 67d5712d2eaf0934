#include "schemes/stack_transpose.h"

#include <algorithm>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace quench {
namespace {

bool NonFinite(uint16_t v) { return (v & 0x7F80) == 0x7F80; }

// A tile: 128 output rows (a stored row's run of 256 bytes, four cache lines) by 64 inputs;
// its buffer (16 KB) stays in L1.
constexpr uint64_t kTileRows = 128, kTileIns = 64;

// Rows [k0, k1) x inputs [j0, j1) of a tile: b[k][j] = src[j * stride + k], one at a time.
// Returns whether any value read was NaN or Inf.
bool TileScalar(const uint16_t* src, uint64_t stride, uint64_t k0, uint64_t k1, uint64_t j0,
                uint64_t j1, uint16_t (*b)[kTileIns]) {
  uint16_t bad = 0;
  for (uint64_t j = j0; j < j1; ++j) {
    for (uint64_t k = k0; k < k1; ++k) {
      const uint16_t v = src[j * stride + k];
      b[k][j] = v;
      bad |= static_cast<uint16_t>(NonFinite(v));
    }
  }
  return bad != 0;
}

#if defined(__SSE2__)
// An 8 x 8 block: b[k0 + c][j0 + r] = src[(j0 + r) * stride + k0 + c], by the three rounds of
// 16-, 32- and 64-bit interleaves (SSE2, which every x86-64 CPU has). Returns whether any
// value was NaN or Inf.
bool Block8x8(const uint16_t* src, uint64_t stride, uint64_t k0, uint64_t j0,
              uint16_t (*b)[kTileIns]) {
  __m128i r[8];
  const __m128i exp = _mm_set1_epi16(0x7F80);
  __m128i bad = _mm_setzero_si128();
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + (j0 + i) * stride + k0));
    bad = _mm_or_si128(bad, _mm_cmpeq_epi16(_mm_and_si128(r[i], exp), exp));
  }
  __m128i t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm_unpacklo_epi16(r[2 * i], r[2 * i + 1]);
    t[i + 4] = _mm_unpackhi_epi16(r[2 * i], r[2 * i + 1]);
  }
  // t[0..3]: inputs (0,1), (2,3), (4,5), (6,7) at columns 0-3; t[4..7] at columns 4-7.
  for (int h = 0; h < 2; ++h) {
    const __m128i* q = t + 4 * h;
    u[4 * h + 0] = _mm_unpacklo_epi32(q[0], q[1]);  // inputs 0-3, columns 4h, 4h+1
    u[4 * h + 1] = _mm_unpackhi_epi32(q[0], q[1]);  // inputs 0-3, columns 4h+2, 4h+3
    u[4 * h + 2] = _mm_unpacklo_epi32(q[2], q[3]);  // inputs 4-7, columns 4h, 4h+1
    u[4 * h + 3] = _mm_unpackhi_epi32(q[2], q[3]);  // inputs 4-7, columns 4h+2, 4h+3
  }
  for (int h = 0; h < 2; ++h) {
    for (int p = 0; p < 2; ++p) {
      const __m128i lo = u[4 * h + p], hi = u[4 * h + 2 + p];
      const uint64_t c = k0 + 4 * h + 2 * p;
      _mm_storeu_si128(reinterpret_cast<__m128i*>(&b[c][j0]), _mm_unpacklo_epi64(lo, hi));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(&b[c + 1][j0]), _mm_unpackhi_epi64(lo, hi));
    }
  }
  return _mm_movemask_epi8(bad) != 0;
}
#endif

}  // namespace

int64_t TransposeBf16Columns(const uint16_t* block, uint64_t in, uint64_t cols, uint64_t col0,
                             uint64_t r0, uint64_t r1, uint16_t* out) {
  // Tiles of kTileRows output rows by kTileIns inputs, transposed into a buffer `b` by 8 x 8
  // blocks and written out as 128-byte runs of each output row. Within a tile, the blocks of
  // 8 stored rows are taken in turn, each read across the tile's columns while those lines
  // are in L1. Writing the output rows directly instead (strides of several KB, which map
  // every row to the same few L1 sets) or copying value by value was 2-3 times slower
  // (bench/README.md, "Llama 4's stacks linearized").
  alignas(64) uint16_t b[kTileRows][kTileIns];
  bool bad = false;
  for (uint64_t o0 = r0; o0 < r1; o0 += kTileRows) {
    const uint64_t n = std::min(kTileRows, r1 - o0);
    const uint16_t* src = block + col0 + o0;
    for (uint64_t i0 = 0; i0 < in; i0 += kTileIns) {
      const uint64_t m = std::min(kTileIns, in - i0);
      const uint16_t* tile = src + i0 * cols;
      // The next tile's stored rows, a page or more apart, where the hardware prefetchers do
      // not follow: asked for now, so that their reads overlap this tile's work.
      if (i0 + kTileIns < in) {
        const uint64_t next = std::min(kTileIns, in - i0 - kTileIns);
        for (uint64_t j = 0; j < next; ++j) {
          const uint16_t* row = tile + (kTileIns + j) * cols;
          for (uint64_t k = 0; k < n; k += 32) __builtin_prefetch(row + k);
        }
      }
      uint64_t m8 = 0, n8 = 0;
#if defined(__SSE2__)
      m8 = m / 8 * 8;
      n8 = n / 8 * 8;
      for (uint64_t j = 0; j < m8; j += 8) {
        for (uint64_t k = 0; k < n8; k += 8) bad |= Block8x8(tile, cols, k, j, b);
      }
#endif
      // What the blocks leave: the columns past n8 of every input, the inputs past m8.
      if (n8 < n) bad |= TileScalar(tile, cols, n8, n, 0, m, b);
      if (m8 < m) bad |= TileScalar(tile, cols, 0, n8, m8, m, b);
      for (uint64_t k = 0; k < n; ++k) std::memcpy(out + (o0 - r0 + k) * in + i0, b[k], m * 2);
    }
  }
  if (!bad) return -1;
  // Rare (the caller refuses the weight): the first in the output's order.
  for (uint64_t k = 0; k < (r1 - r0) * in; ++k) {
    if (NonFinite(out[k])) return static_cast<int64_t>(k);
  }
  return -1;
}

int64_t TransposeBf16ColumnsScalar(const uint16_t* block, uint64_t in, uint64_t cols,
                                   uint64_t col0, uint64_t r0, uint64_t r1, uint16_t* out) {
  int64_t first = -1;
  for (uint64_t o = r0; o < r1; ++o) {
    for (uint64_t i = 0; i < in; ++i) {
      const uint16_t v = block[i * cols + col0 + o];
      out[(o - r0) * in + i] = v;
      if (first < 0 && NonFinite(v)) first = static_cast<int64_t>((o - r0) * in + i);
    }
  }
  return first;
}

}  // namespace quench
