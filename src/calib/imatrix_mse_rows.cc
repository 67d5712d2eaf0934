// Row helpers of the imatrix_mse observer (see imatrix_mse_rows.h), compiled once per
// Highway target through foreach_target.

// As in the imatrix_mse kernels: the definition rounds every product and difference, so
// GCC's contraction into FMAs is off for this file.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "calib/imatrix_mse_rows.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "schemes/float_formats.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/calib/imatrix_mse_rows.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "schemes/rounding-inl.h"

HWY_BEFORE_NAMESPACE();
namespace quench::calib::internal {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
namespace rd = quench::HWY_NAMESPACE::rounding;

using DF = hn::ScalableTag<float>;

template <DType D>
bool ToF32Impl(const uint8_t* src, size_t n, float* dst) {
  // Inf and NaN are found on the raw patterns (the f16 widening is exact for finite values
  // only), then the values are widened.
  using T = typename rd::Traits<D>::T;
  const hn::ScalableTag<T> dt;
  const auto m = rd::AbsBitsMax<D>(src, n, hn::Zero(dt));
  if (rd::ReduceMax(dt, m) >= rd::Traits<D>::kInfBits) return false;
  const DF df;
  const size_t L = hn::Lanes(df);
  size_t i = 0;
  for (; i + L <= n; i += L) hn::StoreU(rd::LoadF32<D>(df, src + i * sizeof(T)), df, dst + i);
  for (; i < n; ++i) dst[i] = ElementToF32(src, D, i);
  return true;
}

bool ToF32Kernel(const uint8_t* src, DType d, size_t n, float* dst) {
  switch (d) {
    case DType::kBF16: return ToF32Impl<DType::kBF16>(src, n, dst);
    case DType::kF16: return ToF32Impl<DType::kF16>(src, n, dst);
    default: return ToF32Impl<DType::kF32>(src, n, dst);
  }
}

template <DType D>
bool AllFiniteImpl(const uint8_t* src, size_t n) {
  using T = typename rd::Traits<D>::T;
  const hn::ScalableTag<T> dt;
  return rd::ReduceMax(dt, rd::AbsBitsMax<D>(src, n, hn::Zero(dt))) < rd::Traits<D>::kInfBits;
}

bool AllFiniteKernel(const uint8_t* src, DType d, size_t n) {
  switch (d) {
    case DType::kBF16: return AllFiniteImpl<DType::kBF16>(src, n);
    case DType::kF16: return AllFiniteImpl<DType::kF16>(src, n);
    default: return AllFiniteImpl<DType::kF32>(src, n);
  }
}

void GroupMinMaxKernel(const float* x, size_t n_groups, size_t group, float* mn, float* mx) {
  const DF df;
  const size_t L = hn::Lanes(df);
  if (group % L != 0) {
    for (size_t g = 0; g < n_groups; ++g) {
      const float* xg = x + g * group;
      mn[g] = *std::min_element(xg, xg + group);
      mx[g] = *std::max_element(xg, xg + group);
    }
    return;
  }
  for (size_t g = 0; g < n_groups; ++g) {
    const float* xg = x + g * group;
    auto lo = hn::LoadU(df, xg);
    auto hi = lo;
    for (size_t j = L; j < group; j += L) {
      const auto v = hn::LoadU(df, xg + j);
      lo = hn::Min(lo, v);
      hi = hn::Max(hi, v);
    }
    mn[g] = hn::GetLane(hn::MinOfLanes(df, lo));
    mx[g] = hn::GetLane(hn::MaxOfLanes(df, hi));
  }
}

// Lane i of the result: the maximum of v[i]'s lanes, for 8 vectors of 8 lanes: maxima
// within 128-bit blocks first (interleaves, no cross-block permute until the last level; the
// maximum is the same in any order): lane l (mod 4) of c[h] is the block's maximum of
// v[4h + l].
#if HWY_TARGET != HWY_SCALAR
HWY_INLINE hn::Vec<DF> MaxOfEach8(const hn::Vec<DF>* v) {
  const DF df;
  const hn::Repartition<double, DF> dd;
  hn::Vec<DF> a[4], c[2];
  for (size_t i = 0; i < 4; ++i) {
    a[i] = hn::Max(hn::InterleaveLower(df, v[2 * i], v[2 * i + 1]),
                   hn::InterleaveUpper(df, v[2 * i], v[2 * i + 1]));
  }
  for (size_t h = 0; h < 2; ++h) {
    const auto x = hn::BitCast(dd, a[2 * h]), y = hn::BitCast(dd, a[2 * h + 1]);
    c[h] = hn::Max(hn::BitCast(df, hn::InterleaveLower(dd, x, y)),
                   hn::BitCast(df, hn::InterleaveUpper(dd, x, y)));
  }
  return hn::Max(hn::ConcatLowerLower(df, c[1], c[0]), hn::ConcatUpperUpper(df, c[1], c[0]));
}
#endif

// Whole tiles of L groups (L = Lanes): each group's vector of lane-wise maxima of |x|, then
// a tree that halves the vectors at each level, max(ConcatOdd(b, a), ConcatEven(b, a))
// (the lower half from a's adjacent pairs, the upper from b's), so that after log2(L)
// levels lane j holds group j's maximum: one vector per L groups instead of one reduction
// per group. The rest of the groups (and one-lane targets) reduce group by group.
void GroupAbsMaxKernel(const float* x, size_t n_groups, size_t group, float* amax) {
  const DF df;
  const size_t L = hn::Lanes(df);
  if (group % L != 0) {
    for (size_t g = 0; g < n_groups; ++g) {
      float m = 0.f;
      for (size_t j = 0; j < group; ++j) m = std::max(m, std::fabs(x[g * group + j]));
      amax[g] = m;
    }
    return;
  }
  auto group_vec = [&](size_t g) {
    const float* xg = x + g * group;
    auto m = hn::Abs(hn::LoadU(df, xg));
    for (size_t j = L; j < group; j += L) m = hn::Max(m, hn::Abs(hn::LoadU(df, xg + j)));
    return m;
  };
  size_t g = 0;
#if HWY_TARGET != HWY_SCALAR
  if constexpr (hn::MaxLanes(DF()) == 8) {
    for (; g + 8 <= n_groups; g += 8) {
      hn::Vec<DF> v[8];
      for (size_t k = 0; k < 8; ++k) v[k] = group_vec(g + k);
      hn::StoreU(MaxOfEach8(v), df, amax + g);
    }
  }
  HWY_ALIGN float buf[hn::MaxLanes(df) * hn::MaxLanes(df)];
  for (; g + L <= n_groups; g += L) {
    for (size_t k = 0; k < L; ++k) hn::Store(group_vec(g + k), df, buf + k * L);
    for (size_t n = L; n > 1; n /= 2) {
      for (size_t k = 0; k < n / 2; ++k) {
        const auto a = hn::Load(df, buf + 2 * k * L), b = hn::Load(df, buf + (2 * k + 1) * L);
        hn::Store(hn::Max(hn::ConcatOdd(df, b, a), hn::ConcatEven(df, b, a)), df, buf + k * L);
      }
    }
    hn::StoreU(hn::Load(df, buf), df, amax + g);
  }
#endif
  for (; g < n_groups; ++g) amax[g] = hn::GetLane(hn::MaxOfLanes(df, group_vec(g)));
}

// ToF32 and GroupAbsMax of its result in one pass, for bf16 groups of 16 on 8-lane targets:
// each group's two vectors widened, stored, and their |x| bit patterns (the sign cleared)
// kept for the maximum, which is also the Inf / NaN test (0x7F800000 and above; bf16's low
// 16 bits are 0 after the widening). Nonnegative finite floats order as their bit patterns.
// Other dtypes, groups and targets: ToF32 then GroupAbsMax.
bool ToF32GroupAbsMaxKernel(const uint8_t* src, DType d, size_t n_groups, size_t group,
                            float* dst, float* amax) {
  const DF df;
#if HWY_TARGET != HWY_SCALAR
  if constexpr (hn::MaxLanes(DF()) == 8) {
    if (d == DType::kBF16 && group == 16) {
      const hn::RebindToUnsigned<DF> du;
      const auto abs_mask = hn::Set(du, 0x7FFFFFFFu);
      auto all = hn::Zero(du);
      auto group_vec = [&](size_t g) {
        const uint8_t* p = src + g * 32;
        const auto lo = hn::BitCast(du, rd::LoadF32<DType::kBF16>(df, p));
        const auto hi = hn::BitCast(du, rd::LoadF32<DType::kBF16>(df, p + 16));
        hn::StoreU(hn::BitCast(df, lo), df, dst + g * 16);
        hn::StoreU(hn::BitCast(df, hi), df, dst + g * 16 + 8);
        const auto m = hn::Max(hn::And(lo, abs_mask), hn::And(hi, abs_mask));
        all = hn::Max(all, m);
        return hn::BitCast(df, m);
      };
      size_t g = 0;
      for (; g + 8 <= n_groups; g += 8) {
        hn::Vec<DF> v[8];
        for (size_t k = 0; k < 8; ++k) v[k] = group_vec(g + k);
        hn::StoreU(MaxOfEach8(v), df, amax + g);
      }
      for (; g < n_groups; ++g) amax[g] = hn::GetLane(hn::MaxOfLanes(df, group_vec(g)));
      return hn::GetLane(hn::MaxOfLanes(du, all)) < 0x7F800000u;
    }
  }
#endif
  (void)df;
  if (!ToF32Kernel(src, d, n_groups * group, dst)) return false;
  GroupAbsMaxKernel(dst, n_groups, group, amax);
  return true;
}

// p[idx] for each lane's idx (0..L * kTables - 1) from the vectors t[0..kTables - 1] holding
// p[0..L * kTables - 1] (L = 8 or 16 lanes a vector): a lookup in each, picked by idx's bits
// above the lane's. This takes the place of a gather, which cost more on the AMD cores
// measured (bench/README.md, "imatrix_mse NVFP4A16: the chosen quantization's passes", and
// session 54's AVX-512 section).
template <int kTables, class V, class VI>
HWY_INLINE V LookupFactors(DF df, const V* t, VI idx) {
  constexpr int kL = static_cast<int>(hn::MaxLanes(DF()));
  const hn::RebindToSigned<DF> di;
  const auto lane = hn::IndicesFromVec(df, hn::And(idx, hn::Set(di, kL - 1)));
  if constexpr (kTables == 1) {
    return hn::TableLookupLanes(t[0], lane);
  } else {
    const auto second = hn::RebindMask(df, hn::Ne(hn::And(idx, hn::Set(di, kL)), hn::Zero(di)));
    const V lo = hn::IfThenElse(second, hn::TableLookupLanes(t[1], lane),
                                hn::TableLookupLanes(t[0], lane));
    if constexpr (kTables == 2) {
      return lo;
    } else {
      const auto upper =
          hn::RebindMask(df, hn::Ne(hn::And(idx, hn::Set(di, 2 * kL)), hn::Zero(di)));
      const V hi = hn::IfThenElse(second, hn::TableLookupLanes(t[3], lane),
                                  hn::TableLookupLanes(t[2], lane));
      return hn::IfThenElse(upper, hi, lo);
    }
  }
}

// ChosenPosRow lane-wise: each lane's step factor p[i] for the highest of the steps' bits at
// or below stop (as ChosenStep's; p[0] for none), the two roundings to D as
// RoundToDType, and bf16 / f32 encoded in the vector (the bf16 values exact, so the upper
// half of the f32 bits); f16 and the tail through the scalar rule. kTables: p[i] by
// LookupFactors from that many vectors (L = 8 or 16 lanes, stop < L * kTables), or 0: by a
// gather.
template <DType D, int kTables>
float ChosenPosLanes(const float* absmax, const uint32_t* masks, size_t n, int stop,
                     const float* p, float e, uint8_t* out) {
  const DF df;
  const hn::RebindToUnsigned<DF> du;
  const hn::RebindToSigned<DF> di;
  const size_t L = hn::Lanes(df);
  const uint32_t low = stop >= 31 ? ~0u : (2u << stop) - 1u;
  auto scalar = [&](size_t k) {
    const uint32_t m = masks[k] & low;
    const int i = m == 0 ? 0 : 31 - __builtin_clz(m);
    const float a = intq::internal::RoundToDType(absmax[k] * e, D);
    const float pos = intq::internal::RoundToDType(p[i] * a, D);
    intq::internal::StoreScale(out + k * (DTypeBits(D) / 8), pos, D);
    return pos;
  };
  float best = 0.f;
  size_t k = 0;
  if constexpr (D != DType::kF16) {
    auto mx = hn::Zero(df);
    hn::Vec<DF> t[kTables > 0 ? kTables : 1];
    if constexpr (kTables > 0) {
      HWY_ALIGN float padded[hn::MaxLanes(DF()) * (kTables > 0 ? kTables : 1)] = {};
      std::copy(p, p + stop + 1, padded);
      for (int j = 0; j < kTables; ++j) t[j] = hn::Load(df, padded + L * j);
    }
    for (; k + L <= n; k += L) {
      const auto m = hn::And(hn::LoadU(du, masks + k), hn::Set(du, low));
      // The highest set bit's index i (0 for m = 0) from f32's exponent, then p[i] by
      // LookupFactors or a gather: m & ~(m >> 1) keeps m's highest bit and has no two
      // adjacent set bits, so its conversion cannot round up into the next power of two; one
      // more shift keeps it below 2^31 (a positive int32): biased exponent 127 + i - 1, or 0
      // for m <= 1.
      const auto sparse = hn::ShiftRight<1>(hn::AndNot(hn::ShiftRight<1>(m), m));
      const auto fe = hn::ShiftRight<23>(
          hn::BitCast(du, hn::ConvertTo(df, hn::BitCast(di, sparse))));
      const auto idx = hn::Max(hn::Sub(hn::BitCast(di, fe), hn::Set(di, 126)), hn::Zero(di));
      hn::Vec<DF> pv;
      if constexpr (kTables > 0) {
        pv = LookupFactors<kTables>(df, t, idx);
      } else {
        pv = hn::GatherIndex(df, p, idx);
      }
      const auto a = rd::RoundToDType<D>(df, hn::Mul(hn::LoadU(df, absmax + k), hn::Set(df, e)));
      const auto pos = rd::RoundToDType<D>(df, hn::Mul(pv, a));
      mx = hn::Max(mx, pos);
      if constexpr (D == DType::kBF16) {
        // pos >= 0: the bf16 pattern is below 0x8000, so the signed demotion keeps it.
        const hn::Rebind<uint16_t, DF> d16;
        const auto bits = hn::BitCast(di, hn::ShiftRight<16>(hn::BitCast(du, pos)));
        hn::StoreU(hn::DemoteTo(d16, bits), d16, reinterpret_cast<uint16_t*>(out) + k);
      } else {
        hn::StoreU(pos, df, reinterpret_cast<float*>(out) + k);
      }
    }
    best = hn::GetLane(hn::MaxOfLanes(df, mx));
  }
  for (; k < n; ++k) best = std::max(best, scalar(k));
  return best;
}

// ChosenPosLanes with the fewest tables that hold p[0..stop] where lanes are 8 (AVX2) or 16
// (AVX-512), a gather elsewhere (stop < 32: ChosenPos's callers' LastStep).
template <DType D>
float ChosenPosImpl(const float* absmax, const uint32_t* masks, size_t n, int stop,
                    const float* p, float e, uint8_t* out) {
  if constexpr (hn::MaxLanes(DF()) == 8) {
    if (stop < 8) return ChosenPosLanes<D, 1>(absmax, masks, n, stop, p, e, out);
    if (stop < 16) return ChosenPosLanes<D, 2>(absmax, masks, n, stop, p, e, out);
    return ChosenPosLanes<D, 4>(absmax, masks, n, stop, p, e, out);
  } else if constexpr (hn::MaxLanes(DF()) == 16) {
    if (stop < 16) return ChosenPosLanes<D, 1>(absmax, masks, n, stop, p, e, out);
    return ChosenPosLanes<D, 2>(absmax, masks, n, stop, p, e, out);
  }
  return ChosenPosLanes<D, 0>(absmax, masks, n, stop, p, e, out);
}

float ChosenPosKernel(const float* absmax, const uint32_t* masks, size_t n, int stop,
                      const float* p, float e, DType d, uint8_t* out) {
  switch (d) {
    case DType::kBF16: return ChosenPosImpl<DType::kBF16>(absmax, masks, n, stop, p, e, out);
    case DType::kF16: return ChosenPosImpl<DType::kF16>(absmax, masks, n, stop, p, e, out);
    default: return ChosenPosImpl<DType::kF32>(absmax, masks, n, stop, p, e, out);
  }
}

// QuantizeValue on Lanes(df) values: RNE_D(x / s), + zp in D (asymmetric), clamp, round
// half to even (1.5 * 2^23 added and taken away: exact for |v| <= 2^22, as RoundInt in
// imatrix_mse-inl.h), then the integer. bf16 values x and scale (the chosen scales are
// values of D) with 2^-100 <= s <= 2^100: RNE_bf16(x * f32(1 / s)) instead of the division,
// the same value (QuotientBf16 in imatrix_mse-inl.h has the proof): the division was most of
// this pass.
// kPacked4 (4-bit codes, an even number of lanes): u = q + 8 written packed instead, element
// c in bits 4c..4c+3 of the little-endian byte stream (pack_to_int32's order): the rounded
// value plus 1.5 * 2^23 holds q mod 16 in its low bits, q + 8 = (q mod 16) ^ 8 on [-8, 7],
// and each 64-bit pair of lanes folds its odd nibble next to its even one (a narrowing, a
// sign fix-up and a byte loop per row cost more than the codes).
template <DType D, bool kSym, bool kPacked4 = false>
void IntCodesImpl(const float* x, size_t n, size_t group, const intq::internal::GroupParams* p,
                  const intq::internal::Layout& l, int8_t* codes,
                  [[maybe_unused]] uint8_t* packed = nullptr) {
  const DF df;
  const hn::RebindToSigned<DF> di;
  const hn::Rebind<int8_t, DF> d8;
  const size_t L = hn::Lanes(df);
  const auto lo = hn::Set(df, static_cast<float>(l.qmin));
  const auto hi = hn::Set(df, static_cast<float>(l.qmax));
  const auto magic = hn::Set(df, 12582912.0f);
  for (size_t g = 0; g * group < n; ++g) {
    const auto s = hn::Set(df, p[g].scale);
    const auto zp = hn::Set(df, static_cast<float>(p[g].zp));
    const bool recip = D == DType::kBF16 && p[g].scale >= 0x1p-100f && p[g].scale <= 0x1p100f;
    const auto r = hn::Set(df, 1.0f / p[g].scale);
    for (size_t j = g * group; j < (g + 1) * group; j += L) {
      const auto xv = hn::LoadU(df, x + j);
      auto v = rd::RoundToDType<D>(df, recip ? hn::Mul(xv, r) : hn::Div(xv, s));
      if constexpr (!kSym) v = rd::RoundToDType<D>(df, hn::Add(v, zp));
      if constexpr (kPacked4) {
#if HWY_TARGET != HWY_SCALAR  // (one lane: no 64-bit pairs; IntCodesPacked4Kernel declines)
        const hn::RebindToUnsigned<DF> du;
        const hn::Repartition<uint64_t, DF> d64;
        const hn::Rebind<uint8_t, decltype(d64)> du8;
        const auto biased = hn::BitCast(du, hn::Add(hn::Min(hn::Max(v, lo), hi), magic));
        const auto u =
            hn::BitCast(d64, hn::Xor(hn::And(biased, hn::Set(du, 15u)), hn::Set(du, 8u)));
        hn::StoreU(hn::TruncateTo(du8, hn::Or(u, hn::ShiftRight<28>(u))), du8, packed + j / 2);
#endif
      } else {
        v = hn::Sub(hn::Add(hn::Min(hn::Max(v, lo), hi), magic), magic);
        hn::StoreU(hn::DemoteTo(d8, hn::ConvertTo(di, v)), d8, codes + j);
      }
    }
  }
}

void IntCodesKernel(const float* x, size_t n, size_t group, const intq::internal::GroupParams* p,
                    const intq::internal::Layout& l, bool symmetric, DType d, int8_t* codes) {
  const DF df;
  if (group % hn::Lanes(df) != 0) {
    for (size_t c = 0; c < n; ++c) {
      codes[c] = static_cast<int8_t>(
          intq::internal::QuantizeValue(x[c], p[c / group], l, symmetric, d));
    }
    return;
  }
  auto run = [&](auto d_tag) {
    constexpr DType D = decltype(d_tag)::value;
    if (symmetric) {
      IntCodesImpl<D, true>(x, n, group, p, l, codes);
    } else {
      IntCodesImpl<D, false>(x, n, group, p, l, codes);
    }
  };
  switch (d) {
    case DType::kBF16: run(std::integral_constant<DType, DType::kBF16>()); break;
    case DType::kF16: run(std::integral_constant<DType, DType::kF16>()); break;
    default: run(std::integral_constant<DType, DType::kF32>()); break;
  }
}

bool IntCodesPacked4Kernel(const float* x, size_t n, size_t group,
                           const intq::internal::GroupParams* p, const intq::internal::Layout& l,
                           bool symmetric, DType d, uint8_t* packed) {
  const DF df;
  if (hn::Lanes(df) < 2 || group % hn::Lanes(df) != 0 || l.bits != 4) return false;
  auto run = [&](auto d_tag) {
    constexpr DType D = decltype(d_tag)::value;
    if (symmetric) {
      IntCodesImpl<D, true, true>(x, n, group, p, l, nullptr, packed);
    } else {
      IntCodesImpl<D, false, true>(x, n, group, p, l, nullptr, packed);
    }
  };
  switch (d) {
    case DType::kBF16: run(std::integral_constant<DType, DType::kBF16>()); break;
    case DType::kF16: run(std::integral_constant<DType, DType::kF16>()); break;
    default: run(std::integral_constant<DType, DType::kF32>()); break;
  }
  return true;
}

}  // namespace HWY_NAMESPACE
}  // namespace quench::calib::internal
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace quench::calib::internal {

HWY_EXPORT(ToF32Kernel);
HWY_EXPORT(GroupMinMaxKernel);
HWY_EXPORT(AllFiniteKernel);
HWY_EXPORT(GroupAbsMaxKernel);
HWY_EXPORT(ToF32GroupAbsMaxKernel);
HWY_EXPORT(ChosenPosKernel);
HWY_EXPORT(IntCodesKernel);
HWY_EXPORT(IntCodesPacked4Kernel);

bool ToF32(const uint8_t* src, DType d, size_t n, float* dst) {
  if (n == 0) return true;
  return HWY_DYNAMIC_DISPATCH(ToF32Kernel)(src, d, n, dst);
}

bool AllFinite(const uint8_t* src, DType d, size_t n) {
  return n == 0 || HWY_DYNAMIC_DISPATCH(AllFiniteKernel)(src, d, n);
}

void GroupMinMax(const float* x, size_t n_groups, size_t group, float* mn, float* mx) {
  HWY_DYNAMIC_DISPATCH(GroupMinMaxKernel)(x, n_groups, group, mn, mx);
}

void GroupAbsMax(const float* x, size_t n_groups, size_t group, float* amax) {
  HWY_DYNAMIC_DISPATCH(GroupAbsMaxKernel)(x, n_groups, group, amax);
}

bool ToF32GroupAbsMax(const uint8_t* src, DType d, size_t n_groups, size_t group, float* dst,
                      float* amax) {
  if (n_groups == 0) return true;
  return HWY_DYNAMIC_DISPATCH(ToF32GroupAbsMaxKernel)(src, d, n_groups, group, dst, amax);
}

float ChosenPosRow(const float* absmax, const uint32_t* masks, size_t n, int stop,
                   const float* p, double expand, DType d, uint8_t* out) {
  return HWY_DYNAMIC_DISPATCH(ChosenPosKernel)(absmax, masks, n, stop, p,
                                               static_cast<float>(expand), d, out);
}

void IntCodes(const float* x, size_t n, size_t group, const intq::internal::GroupParams* p,
              const intq::internal::Layout& l, bool symmetric, DType d, int8_t* codes) {
  HWY_DYNAMIC_DISPATCH(IntCodesKernel)(x, n, group, p, l, symmetric, d, codes);
}

void IntCodesPacked4(const float* x, size_t n, size_t group, const intq::internal::GroupParams* p,
                     const intq::internal::Layout& l, bool symmetric, DType d, uint8_t* packed) {
  if (HWY_DYNAMIC_DISPATCH(IntCodesPacked4Kernel)(x, n, group, p, l, symmetric, d, packed)) {
    return;
  }
  // Narrow targets and groups of part vectors: the codes, then byte by byte.
  std::vector<int8_t> codes(n);
  IntCodes(x, n, group, p, l, symmetric, d, codes.data());
  for (size_t c = 0; c < n; c += 2) {
    packed[c / 2] = static_cast<uint8_t>(((codes[c] + 8) & 15) | (((codes[c + 1] + 8) & 15) << 4));
  }
}

}  // namespace quench::calib::internal
#endif  // HWY_ONCE
