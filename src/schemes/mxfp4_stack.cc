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
        float lut[16];
        const float p = Pow2(s);
        for (int k = 0; k < 16; ++k) lut[k] = kE2M1[k] * p;
        const uint8_t* row = x.blocks + o * (x.cols / 2);
        for (uint64_t i = i0; i < i1; ++i) {
          const uint8_t byte = row[i / 2];
          const float v = lut[i % 2 == 0 ? byte & 0xF : byte >> 4];
          const uint16_t h = F32ToBF16(v);
          all_finite &= (h & 0x7F80) != 0x7F80;
          tile[(i - i0) * kTile + r] = h;
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
