// The nibble-table lookup (nibble_lookup.h), compiled once per target through Highway's
// foreach_target skeleton: 16 packed bytes (32 codes) per step on 128-bit vectors, whose
// byte lookups (TableLookupBytes) work within each 16-byte block on every target.
#include "schemes/nibble_lookup.h"

#include <algorithm>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/schemes/nibble_lookup.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace quench {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Elements [c0, c1) of one run through its table, one at a time.
inline void LookupTail(const uint8_t* packed, size_t c0, size_t c1, const uint8_t* t,
                       uint8_t* out) {
  for (size_t c = c0; c < c1; ++c) {
    const uint32_t n = (packed[c / 2] >> (4 * (c & 1))) & 0xF;
    out[2 * c] = t[n];
    out[2 * c + 1] = t[16 + n];
  }
}

void LookupNibblesKernel(const uint8_t* packed, size_t cols, size_t run, const uint8_t* tables,
                         uint8_t* out) {
  for (size_t c0 = 0, k = 0; c0 < cols; c0 += run, ++k) {
    const size_t c1 = std::min(cols, c0 + run);
    const uint8_t* t = tables + 32 * k;
    size_t c = c0;
#if HWY_TARGET != HWY_SCALAR
    const hn::Full128<uint8_t> d8;
    const hn::Full128<uint16_t> d16;
    const auto tl = hn::LoadU(d8, t), th = hn::LoadU(d8, t + 16);
    const auto low4 = hn::Set(d8, uint8_t{0x0F});
    for (; c + 32 <= c1; c += 32) {
      const auto v = hn::LoadU(d8, packed + c / 2);
      const auto lo = hn::And(v, low4);            // even elements' codes
      const auto hi = hn::ShiftRight<4>(v);        // odd elements'
      // 16-bit values of the even and the odd elements of bytes 0..7 and 8..15.
      const auto ev_a =
          hn::ZipLower(d16, hn::TableLookupBytes(tl, lo), hn::TableLookupBytes(th, lo));
      const auto ev_b =
          hn::ZipUpper(d16, hn::TableLookupBytes(tl, lo), hn::TableLookupBytes(th, lo));
      const auto od_a =
          hn::ZipLower(d16, hn::TableLookupBytes(tl, hi), hn::TableLookupBytes(th, hi));
      const auto od_b =
          hn::ZipUpper(d16, hn::TableLookupBytes(tl, hi), hn::TableLookupBytes(th, hi));
      uint8_t* o = out + 2 * c;
      hn::StoreU(hn::InterleaveLower(d16, ev_a, od_a), d16, reinterpret_cast<uint16_t*>(o));
      hn::StoreU(hn::InterleaveUpper(d16, ev_a, od_a), d16, reinterpret_cast<uint16_t*>(o + 16));
      hn::StoreU(hn::InterleaveLower(d16, ev_b, od_b), d16, reinterpret_cast<uint16_t*>(o + 32));
      hn::StoreU(hn::InterleaveUpper(d16, ev_b, od_b), d16, reinterpret_cast<uint16_t*>(o + 48));
    }
#endif
    LookupTail(packed, c, c1, t, out);
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace quench
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace quench {

HWY_EXPORT(LookupNibblesKernel);

void LookupNibbles(const uint8_t* packed, size_t cols, size_t run, const uint8_t* tables,
                   uint8_t* out) {
  HWY_DYNAMIC_DISPATCH(LookupNibblesKernel)(packed, cols, run, tables, out);
}

void LookupNibblesScalar(const uint8_t* packed, size_t cols, size_t run, const uint8_t* tables,
                         uint8_t* out) {
  for (size_t c = 0; c < cols; ++c) {
    const uint32_t n = (packed[c / 2] >> (4 * (c & 1))) & 0xF;
    const uint8_t* t = tables + 32 * (c / run);
    out[2 * c] = t[n];
    out[2 * c + 1] = t[16 + n];
  }
}

}  // namespace quench
#endif  // HWY_ONCE
