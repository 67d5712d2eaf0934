// The largest |x| of a whole FP8-block source weight, found by reading only the blocks that
// can hold it (fp8.h: SearchSourceAbsMax). The NVFP4 global scale of a fused set needs this
// before any member is quantized; reading every code for it was a second pass over the
// weights (its cost: bench/README.md, "Quantized sources: global-scale search").
//
// Why the search is exact. Let block b have scale s_b >= 0 (DecodeSourceRows' checks: finite,
// not negative; -0 multiplies like +0 in magnitude) and let x = RNE_bf16(f32(e4m3(c)) * s_b)
// be a decoded element (DequantizeSourceScalar). Then
//  1. |x| = RNE_bf16(e4m3(c & 0x7F) * s_b): negation commutes with IEEE multiplication and
//     with round-to-nearest-even, so the sign bit of c only sets the sign of x.
//  2. For the finite magnitudes m = 0..0x7E, e4m3(m) is non-decreasing in m (E4M3 orders its
//     values like their bit patterns), the product by s_b >= 0 is non-decreasing (IEEE
//     multiplication is monotone in each argument), and RNE_bf16 is non-decreasing. So the
//     block's largest |x| is A_b = RNE_bf16(e4m3(mc_b) * s_b), mc_b its largest magnitude
//     (the existing SourceAbsMax rule).
//  3. By the same monotonicity, A_b <= U_b = RNE_bf16(448 * s_b) (448 = e4m3(0x7E), the
//     largest finite magnitude), and U_b is non-decreasing in s_b.
// Visit blocks by s_b descending, keeping best = max of the A_b seen. When the next block has
// U_b <= best, every block left has A <= U <= U_b <= best (3), so best is the tensor's
// largest |x|. A checkpoint quantized with s_b = amax_b / 448 (DeepSeek's, Kimi's) holds the
// code 448 in every block, so the first block decides; with power-of-two (E8M0) scales only
// the blocks of the largest scale are read. Within a block the rows stop once mc_b = 0x7E.
//
// NaN codes and overflowing products: a block read that holds a NaN code (magnitude 0x7F) or
// whose A_b is not finite makes the search return false, as SourceAbsMax does; blocks it
// does not read are checked where the pipeline decodes them (DecodeSourceRows and the fused
// kernels stop the run naming the row).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "schemes/float_formats.h"
#include "schemes/fp8.h"

namespace quench::fp8 {

namespace {

// RNE_bf16(e4m3(m) * s) as f32 (the definition's decode of one magnitude).
float DecodedMagnitude(uint32_t m, float s) {
  return BF16ToF32(F32ToBF16(E4M3ToF32(static_cast<uint8_t>(m)) * s));
}

}  // namespace

bool SearchSourceAbsMax(const SourceChunk& in, float* amax, size_t* blocks_read,
                        const RowsRead& rows_read) {
  const size_t scale_rows = in.rows == 0 ? 0 : (in.rows - 1) / in.block_rows + 1;
  const size_t n = scale_rows * in.scale_cols;
  std::vector<uint32_t> order(n);
  std::iota(order.begin(), order.end(), 0u);
  // By |s| descending (-0 as +0); equal scales in storage order, so the blocks read do not
  // depend on the sort's implementation.
  std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) {
    return std::fabs(in.scales[a]) > std::fabs(in.scales[b]);
  });
  float best = 0.f;
  size_t read = 0;
  for (const uint32_t k : order) {
    const float s = std::fabs(in.scales[k]);
    if (DecodedMagnitude(0x7E, s) <= best) break;  // U_b <= best: no block left can exceed it
    ++read;
    const size_t r0 = k / in.scale_cols * in.block_rows;
    const size_t r1 = std::min(in.rows, r0 + in.block_rows);
    const size_t c0 = k % in.scale_cols * in.block_cols;
    const size_t c1 = std::min(in.cols, c0 + in.block_cols);
    // Rows in steps of at most kStepRows, each reported read (a per-tensor scale's block is
    // the whole weight: the caller releases its pages as they are done).
    constexpr size_t kStepRows = 128;
    uint32_t mc = 0;
    for (size_t s0 = r0; s0 < r1 && mc < 0x7E;) {
      const size_t s1 = std::min(r1, s0 + kStepRows);
      size_t r = s0;
      for (; r < s1 && mc < 0x7E; ++r) {
        const uint8_t* row = in.codes + r * in.cols;
        uint8_t m = 0;
        for (size_t c = c0; c < c1; ++c) m = std::max<uint8_t>(m, row[c] & 0x7F);
        mc = std::max<uint32_t>(mc, m);
      }
      if (rows_read) rows_read(s0, r);
      s0 = r;
    }
    if (mc == 0x7F) return false;  // a NaN code
    const float a = DecodedMagnitude(mc, s);
    if (!std::isfinite(a)) return false;
    best = std::max(best, a);
  }
  if (blocks_read != nullptr) *blocks_read = read;
  *amax = best;
  return true;
}

}  // namespace quench::fp8
