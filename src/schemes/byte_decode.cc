// 8-bit codes times a scale, rounded to BF16 (byte_decode.h), compiled once per target through
// Highway's foreach_target skeleton: a vector of bytes widened to i32 or u32 lanes, made the
// exact f32 value of its code (an int conversion, or E4M3's fields placed in f32's), one f32
// product with the run's scale, then RNE to BF16 on the product's bits (add 0x7FFF plus the
// lowest kept bit, keep the high half; a NaN product becomes 0x7FC0), as float_formats.h's
// F32ToBF16 does element by element.
#include "schemes/byte_decode.h"

#include <algorithm>
#include <cstring>

#include "schemes/float_formats.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/schemes/byte_decode.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace quench {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;
using DU = hn::RebindToUnsigned<DF>;

// The exact f32 values of Lanes(DF) codes at p.
template <ByteCode K>
HWY_INLINE hn::Vec<DF> Values(const uint8_t* p) {
  const DF df;
  const DU du;
  const hn::RebindToSigned<DF> di;
  if constexpr (K == ByteCode::kInt8) {
    const hn::Rebind<int8_t, DF> d8;
    return hn::ConvertTo(df, hn::PromoteTo(di, hn::LoadU(d8, reinterpret_cast<const int8_t*>(p))));
  } else {
    const hn::Rebind<uint8_t, DF> d8;
    const auto c = hn::PromoteTo(du, hn::LoadU(d8, p));
    if constexpr (K == ByteCode::kOffset128) {
      return hn::ConvertTo(df, hn::Sub(hn::BitCast(di, c), hn::Set(di, 128)));
    } else {
      // E4M3 s.eeee.mmm: e >= 1 is 1.mmm * 2^(e - 7) (the 7 bits at f32's exponent and top
      // mantissa bits, the exponent rebiased by 120); e = 0 is mmm * 2^-9; 0x7F is NaN.
      const auto mag = hn::And(c, hn::Set(du, 0x7Fu));
      const auto normal =
          hn::BitCast(df, hn::Add(hn::ShiftLeft<20>(mag), hn::Set(du, 120u << 23)));
      const auto sub = hn::Mul(hn::ConvertTo(df, hn::BitCast(di, mag)), hn::Set(df, 0.001953125f));
      auto v = hn::IfThenElse(hn::RebindMask(df, hn::Lt(mag, hn::Set(du, 8u))), sub, normal);
      v = hn::IfThenElse(hn::RebindMask(df, hn::Eq(mag, hn::Set(du, 0x7Fu))),
                         hn::BitCast(df, hn::Set(du, 0x7FC00000u)), v);
      return hn::Or(v, hn::BitCast(df, hn::ShiftLeft<24>(hn::And(c, hn::Set(du, 0x80u)))));
    }
  }
}

// RNE_bf16 bits of q * s for Lanes(DF) codes at p into out; ORs the lanes in `keep` whose
// result is Inf or NaN into *bad.
template <ByteCode K>
HWY_INLINE void One(const uint8_t* p, hn::Vec<DF> s, hn::Mask<DU> keep, uint8_t* out,
                    hn::Vec<DU>* bad) {
  const DU du;
  const hn::Rebind<uint16_t, DF> d16;
  const auto u = hn::BitCast(du, hn::Mul(Values<K>(p), s));
  const auto nan = hn::Gt(hn::And(u, hn::Set(du, 0x7FFFFFFFu)), hn::Set(du, 0x7F800000u));
  auto h = hn::ShiftRight<16>(
      hn::Add(hn::Add(u, hn::Set(du, 0x7FFFu)), hn::And(hn::ShiftRight<16>(u), hn::Set(du, 1u))));
  h = hn::IfThenElse(nan, hn::Set(du, 0x7FC0u), h);
  const auto inf_or_nan = hn::Eq(hn::And(h, hn::Set(du, 0x7F80u)), hn::Set(du, 0x7F80u));
  *bad = hn::Or(*bad, hn::VecFromMask(du, hn::And(inf_or_nan, keep)));
  hn::StoreU(hn::TruncateTo(d16, h), d16, reinterpret_cast<uint16_t*>(out));
}

template <ByteCode K>
bool Impl(const uint8_t* codes, size_t cols, size_t run, const float* scales, uint8_t* out) {
  const DU du;
  const size_t lanes = hn::Lanes(du);
  auto bad = hn::Zero(du);
  const auto all = hn::FirstN(du, lanes);
  for (size_t c0 = 0, k = 0; c0 < cols; c0 += run, ++k) {
    const size_t c1 = std::min(cols, c0 + run);
    const auto s = hn::Set(DF(), scales[k]);
    size_t c = c0;
    for (; c + lanes <= c1; c += lanes) One<K>(codes + c, s, all, out + 2 * c, &bad);
    if (c < c1) {
      // The run's last codes (fewer than a vector): the same code on a zero-padded copy,
      // only the real lanes kept.
      HWY_ALIGN uint8_t in_buf[HWY_MAX_BYTES] = {};
      HWY_ALIGN uint8_t out_buf[2 * HWY_MAX_BYTES];
      std::memcpy(in_buf, codes + c, c1 - c);
      One<K>(in_buf, s, hn::FirstN(du, c1 - c), out_buf, &bad);
      std::memcpy(out + 2 * c, out_buf, 2 * (c1 - c));
    }
  }
  return hn::AllFalse(du, hn::MaskFromVec(bad));
}

bool ScaleBytesKernel(const uint8_t* codes, size_t cols, size_t run, const float* scales,
                      ByteCode kind, uint8_t* out) {
  switch (kind) {
    case ByteCode::kInt8: return Impl<ByteCode::kInt8>(codes, cols, run, scales, out);
    case ByteCode::kOffset128: return Impl<ByteCode::kOffset128>(codes, cols, run, scales, out);
    case ByteCode::kE4M3: return Impl<ByteCode::kE4M3>(codes, cols, run, scales, out);
  }
  return false;
}

}  // namespace HWY_NAMESPACE
}  // namespace quench
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace quench {

HWY_EXPORT(ScaleBytesKernel);

bool ScaleBytes(const uint8_t* codes, size_t cols, size_t run, const float* scales,
                ByteCode kind, uint8_t* out) {
  return HWY_DYNAMIC_DISPATCH(ScaleBytesKernel)(codes, cols, run, scales, kind, out);
}

bool ScaleBytesScalar(const uint8_t* codes, size_t cols, size_t run, const float* scales,
                      ByteCode kind, uint8_t* out) {
  bool finite = true;
  for (size_t c = 0; c < cols; ++c) {
    float q = 0.f;
    switch (kind) {
      case ByteCode::kInt8: q = static_cast<float>(static_cast<int8_t>(codes[c])); break;
      case ByteCode::kOffset128: q = static_cast<float>(static_cast<int>(codes[c]) - 128); break;
      case ByteCode::kE4M3: q = E4M3ToF32(codes[c]); break;
    }
    const uint16_t h = F32ToBF16(q * scales[c / run]);
    finite &= (h & 0x7F80u) != 0x7F80u;
    std::memcpy(out + 2 * c, &h, 2);
  }
  return finite;
}

}  // namespace quench
#endif  // HWY_ONCE
