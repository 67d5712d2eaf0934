#include "schemes/mxfp4_stack.h"

#include <algorithm>
#include <cstring>

#include "schemes/float_formats.h"

namespace quench {
namespace {

// OCP MX E2M1 values by code (transformers' FP4_VALUES), -0 included.
constexpr float kE2M1[16] = {0.f,  0.5f,  1.f,  1.5f,  2.f,  3.f,  4.f,  6.f,
                             -0.f, -0.5f, -1.f, -1.5f, -2.f, -3.f, -4.f, -6.f};
constexpr uint64_t kGroup = 32;
// Output features decoded together before their columns are written out: the rows of a tile
// are written as one run of kTile values per input, instead of one value per output row.
constexpr uint64_t kTile = 16;
// The smallest E8M0 exponent at which an E2M1 value (6: 1.5 * 2^2) times it passes bf16's
// largest finite value, about 2^128.
constexpr uint8_t kFirstOverflow = 253;

// 2^(s - 127) as f32 (s = 0: 2^-127, a subnormal); s < 0xFF.
float Pow2(uint8_t s) {
  const uint32_t bits = s == 0 ? 1u << 22 : uint32_t{s} << 23;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

}  // namespace

uint16_t Mxfp4ElementScalar(const Mxfp4Expert& x, uint64_t o, uint64_t i) {
  const uint8_t byte = x.blocks[(o * x.cols + i) / 2];
  const uint8_t code = i % 2 == 0 ? byte & 0xF : byte >> 4;
  const uint8_t s = x.scales[o * (x.cols / kGroup) + i / kGroup];
  if (s == 0xFF) return 0x7FC0;
  return F32ToBF16(kE2M1[code] * Pow2(s));
}

int64_t DecodeMxfp4Transposed(const Mxfp4Expert& x, uint64_t c0, uint64_t c1, uint16_t* out,
                              bool* finite) {
  const uint64_t groups = x.cols / kGroup;
  uint16_t tile[kGroup * kTile];  // up to one group's inputs x kTile outputs, input-major
  bool all_finite = true;
  for (uint64_t o0 = 0; o0 < x.rows; o0 += kTile) {
    const uint64_t tr = std::min(kTile, x.rows - o0);
    // Inputs [i0, i1): the part of [c0, c1) in group g, which one scale per row covers.
    for (uint64_t i0 = c0; i0 < c1;) {
      const uint64_t g = i0 / kGroup, i1 = std::min(c1, (g + 1) * kGroup);
      for (uint64_t r = 0; r < tr; ++r) {
        const uint64_t o = o0 + r;
        const uint8_t s = x.scales[o * groups + g];
        if (s == 0xFF) return static_cast<int64_t>(o * groups + g);
        // The group's 16 values. Each product is exact in f32 (two significant bits times a
        // power of two, subnormal ones included) and so is its bf16, the f32's high half; it
        // overflows to Inf only from exponent kFirstOverflow on (6 * 2^126).
        uint16_t lut[16];
        const float p = Pow2(s);
        for (int k = 0; k < 16; ++k) {
          lut[k] = static_cast<uint16_t>(F32ToBits(kE2M1[k] * p) >> 16);
        }
        const uint8_t* row = x.blocks + o * (x.cols / 2);
        uint16_t* t = tile + r;  // t[(i - i0) * kTile]: input i's value
        uint64_t i = i0;
        if (i % 2 == 1) {  // the high nibble of a byte whose low one is not ours
          t[(i - i0) * kTile] = lut[row[i / 2] >> 4];
          ++i;
        }
        for (; i + 1 < i1; i += 2) {  // the low nibble first
          const uint8_t byte = row[i / 2];
          t[(i - i0) * kTile] = lut[byte & 0xF];
          t[(i + 1 - i0) * kTile] = lut[byte >> 4];
        }
        if (i < i1) t[(i - i0) * kTile] = lut[row[i / 2] & 0xF];
        if (s >= kFirstOverflow) {  // only the values used count
          for (uint64_t j = i0; j < i1; ++j) {
            all_finite &= (t[(j - i0) * kTile] & 0x7FFF) != 0x7F80;
          }
        }
      }
      for (uint64_t i = i0; i < i1; ++i) {
        std::memcpy(out + (i - c0) * x.rows + o0, tile + (i - i0) * kTile, tr * 2);
      }
      i0 = i1;
    }
  }
  if (!all_finite) *finite = false;
  return -1;
}

}  // namespace quench
