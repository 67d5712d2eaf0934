// Per-target pieces of the NVFP4 groups search (imatrix_mse_fp4_groups.cc): one element's
// term |dq - x|^norm * imp at a step's scale, in the forms the search takes (lanes across
// groups; the live pairs' step table; the largest element's clipped term; the first steps'
// two-base dq), the exact roundings they rest on, and the constants they look up.
// Fp4TermsKernel (the test hook in that file) checks every form against the definition.
//
// Highway "-inl.h" convention: include after calib/imatrix_mse-inl.h, once per target (the
// toggled include guard below), from inside a file compiled through foreach_target. The
// terms must be the definition's f32 values bit for bit: the including file switches FP
// contraction off before its first include (imatrix_mse-inl.h does so too).

#if defined(QUENCH_CALIB_IMATRIX_MSE_FP4_TERMS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef QUENCH_CALIB_IMATRIX_MSE_FP4_TERMS_INL_H_
#undef QUENCH_CALIB_IMATRIX_MSE_FP4_TERMS_INL_H_
#else
#define QUENCH_CALIB_IMATRIX_MSE_FP4_TERMS_INL_H_
#endif

#include <cstddef>
#include <cstdint>

#include "hwy/highway.h"
#include "calib/imatrix_mse-inl.h"

HWY_BEFORE_NAMESPACE();
namespace quench::calib::internal {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

constexpr size_t kMaxL = hn::MaxLanes(DF());
using MF = hn::Mask<DF>;
// Whether vectors have 8 or 16 lanes, where the forms below that look lanes up in 8-entry
// tables apply (AVX2: one vpermps; AVX-512: the same permute over 16 lanes, each table's
// 8 entries stored twice so that a 16-lane load reads them).
constexpr bool kLaneTables = kMaxL == 8 || kMaxL == 16;

// One element's term at a step with scale s (r = f32(1 / s), read for bf16 only), from
// ax = |x|: the definition's TermOf (imatrix_mse-inl.h) on magnitudes. The quotient x / s has
// x's sign (s > 0) and RNE_D, the clamp to 6, E2M1's grid and the product with s are
// symmetric, so dq = sign(x) RNE_D(E2M1(min(RNE_D(|x| / s), 6)) s) and |dq - x| equals
// |RNE_D(...) - |x|| bit for bit (a zero x gives 0 either way). E2M1's grid by an addition:
// a + C rounds a onto multiples of C's ulp (RNE; ties to an even multiple), which is 0.5, 1
// and 2 for C = 2^22, 2^23, 2^24, E2M1's steps below 2, below 4 and up to 6 (the grid and
// ties TermOf's RoundInt(a / step) * step gives); subtracting C back is exact.
//
// With 8 or 16 lanes (kLaneTables) the constant is C' = 2^22, 2^23 + 2 or 2^24 + 8 instead (each
// offset an even multiple of the sum's ulp, so the rounding of a + C' is a's rounding plus the
// offset, ties included): the low 3 bits of a + C' are then E2M1's code index, 2 g for g <= 2, 2 +
// g for g in {2, 3, 4} and 4 + g / 2 for g in {4, 6} (kE2M1Grid's order), and C' is picked by a's
// exponent field e (<= 129 after the clamp): lane (max(e, 122) mod 8) of kCPrime. Fp4Index returns
// a + C' (Fp4Round, or Fp4RoundBf16 from the product ax r); Fp4Term subtracts C' back to g,
// Fp4TermTable looks the index up.
//
// The lane tables: 8 entries, stored twice (a 16-lane load reads both copies).
alignas(64) constexpr float kE2M1Grid[16] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f,
                                             0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
alignas(64) constexpr float kCPrime[16] = {
    0x1p23f + 2.0f, 0x1p24f + 8.0f, 0x1p22f, 0x1p22f, 0x1p22f, 0x1p22f, 0x1p22f, 0x1p22f,
    0x1p23f + 2.0f, 0x1p24f + 8.0f, 0x1p22f, 0x1p22f, 0x1p22f, 0x1p22f, 0x1p22f, 0x1p22f};
constexpr bool TwoCopies(const float* t) {
  for (int i = 0; i < 8; ++i) {
    if (t[i] != t[i + 8]) return false;
  }
  return true;
}
static_assert(TwoCopies(kE2M1Grid) && TwoCopies(kCPrime));

// Lane i of the result: lane (idx[i] mod 8) of `table` (kLaneTables targets only; a table
// of 16 lanes holds its 8 entries twice, so lanes 0-7 are the entries). VPERMPS reads only
// an index's low 3 bits (8 lanes) or 4 bits (16 lanes), and lane i + 8 of a 16-lane table
// is lane i, so the raw index needs no mask (Highway's TableLookupLanes wants indices below
// the lane count: an AND more per lookup).
template <class VI>
HWY_INLINE VF Permute8(DF df, VF table, VI idx) {
#if HWY_TARGET == HWY_AVX2
  (void)df;
  return VF{_mm256_permutevar8x32_ps(table.raw, idx.raw)};
#elif HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
  (void)df;
  return VF{_mm512_permutexvar_ps(idx.raw, table.raw)};
#else
  const hn::RebindToSigned<DF> di;
  return hn::TableLookupLanes(
      table, hn::IndicesFromVec(df, hn::And(hn::BitCast(di, idx), hn::Set(di, 7))));
#endif
}

// a = min(q, 6) and C' (above, kLaneTables) or C (otherwise); returns a + C' and sets *c.
HWY_INLINE VF Fp4Round(DF df, VF q, VF* c) {
  const VF a = hn::Min(q, hn::Set(df, 6.0f));
  if constexpr (kLaneTables) {
    const hn::RebindToUnsigned<DF> du;
    const auto e = hn::Max(hn::ShiftRight<23>(hn::BitCast(du, a)), hn::Set(du, 122u));
    *c = Permute8(df, hn::Load(df, kCPrime), e);
  } else {
    *c = hn::IfThenElse(hn::Lt(a, hn::Set(df, 2.0f)), hn::Set(df, 0x1p22f),
                        hn::IfThenElse(hn::Lt(a, hn::Set(df, 4.0f)), hn::Set(df, 0x1p23f),
                                       hn::Set(df, 0x1p24f)));
  }
  return hn::Add(a, *c);
}

template <DType D>
HWY_INLINE VF Fp4Quotient(DF df, VF ax, VF s, VF r) {
  return D == DType::kBF16 ? QuotientBf16(df, ax, r) : Quotient<D>(df, ax, s);
}

// RNE_D(v) of a product v >= 0 that is +0 or in [2^-126, 2^111) (other values: unspecified)
// for D = bf16 by two additions: with v in [2^E, 2^(E + 1)), C = 2^(E + 16) (v's exponent
// field plus 16; 2^-111 for v = 0, which gives 0) has f32 ulp 2^(E - 7), bf16's ulp at v, and
// v + C lies in [2^(E + 16), 2^(E + 17)) (rounded too: at most C + 2^(E + 1)), so the FPU's RNE
// addition rounds v onto bf16's grid exactly as c10's RNE does (the sum's significand is 2^23
// plus the bf16 significand's low bits: the same parity for ties; a carry to 2^(E + 1) is
// bf16's too), and subtracting C back is exact (both in one binade). Four operations instead
// of RoundToDType's five. Callers: scales of tiles whose group maxima are 0 or in
// [2^-60, 2^60] (every p >= 2^-30), and products g s of E2M1 values with a scale in
// QuotientBf16's range [2^-100, 2^100] (where a tile's scale is outside it, its values are
// computed but never used: the tile goes to the definition). Other D: RoundToDType.
template <DType D>
HWY_INLINE VF RoundPos(DF df, VF v) {
  if constexpr (D == DType::kBF16) {
    const hn::RebindToUnsigned<DF> du;
    const VF c = hn::BitCast(df, hn::Add(hn::And(hn::BitCast(du, v), hn::Set(du, 0x7F800000u)),
                                         hn::Set(du, 16u << 23)));
    return hn::Sub(hn::Add(v, c), c);
  } else {
    return rd::RoundToDType<D>(df, v);
  }
}

// For bf16 on kLaneTables targets, Fp4Round(QuotientBf16(ax, r)) by two additions instead of the
// integer RNE_bf16 (five operations) and one: with y = f32(ax * r) (>= 0, possibly +Inf,
// never NaN) and a = min(y, 6),
//  - RNE_bf16(a) = min(RNE_bf16(y), 6): RNE is monotone and 6 a bf16 value, so it commutes
//    with the minimum (the order Fp4Round takes them in);
//  - e = max(a's exponent field, 122), as Fp4Round picks C' (lane e mod 8 of kCPrime);
//  - for a in [2^E, 2^(E + 1)), E = e - 127 in [-5, 2] (a >= 2^-5, so normal): with
//    C = 2^(E + 16), a + C lies in [2^(E + 16), 2^(E + 16) + 2^(E + 1)), one binade whose f32
//    ulp 2^(E - 7) is bf16's ulp at a, so the FPU's RNE addition gives C + RNE_bf16(a) exactly:
//    the sum's significand is 2^23 + RNE_bf16(a) / 2^(E - 7), whose parity is the bf16
//    mantissa's (ties to even alike; a carry to 2^(E + 1) is bf16's too, and stays below
//    2^(E + 17));
//  - adding C' - C (exact in f32: 2^22 - 2^(E + 16) for E <= 0, a multiple of 0.25 in
//    [2^21, 2^22); 2^23 + 2 - 2^17 (multiple of 0.5 in [2^22, 2^23)) and 2^24 + 8 - 2^18
//    (integer in [2^23, 2^24)) for E = 1, 2) then rounds the exact real RNE_bf16(a) + C' once:
//    the value Fp4Round's a + C' has, bit for bit;
//  - a < 2^-5 (e < 122, zero included) takes e = 122: a + 2^11 <= 2^11 + 2^-5 and adding
//    2^22 - 2^11 gives 2^22 + (a value <= 2^-5 rounded to a multiple of 0.5) = 2^22 = 0 + C':
//    E2M1's 0, which RNE_bf16(a) <= 2^-5 < 0.25 also gives.
// Returns a + C' (Fp4Round's value) and sets *c = C'.
alignas(64) constexpr float kBf16Magic[16] = {0x1p17f, 0x1p18f, 0x1p11f, 0x1p12f,
                                              0x1p13f, 0x1p14f, 0x1p15f, 0x1p16f,
                                              0x1p17f, 0x1p18f, 0x1p11f, 0x1p12f,
                                              0x1p13f, 0x1p14f, 0x1p15f, 0x1p16f};
alignas(64) constexpr float kBf16ToE2M1[16] = {
    0x1p23f + 2.0f - 0x1p17f, 0x1p24f + 8.0f - 0x1p18f, 0x1p22f - 0x1p11f,
    0x1p22f - 0x1p12f,        0x1p22f - 0x1p13f,        0x1p22f - 0x1p14f,
    0x1p22f - 0x1p15f,        0x1p22f - 0x1p16f,
    0x1p23f + 2.0f - 0x1p17f, 0x1p24f + 8.0f - 0x1p18f, 0x1p22f - 0x1p11f,
    0x1p22f - 0x1p12f,        0x1p22f - 0x1p13f,        0x1p22f - 0x1p14f,
    0x1p22f - 0x1p15f,        0x1p22f - 0x1p16f};
constexpr bool MagicSumsToCPrime() {  // C + (C' - C) == C' in every lane (all exact)
  for (int i = 0; i < 8; ++i) {
    if (kBf16Magic[i] + kBf16ToE2M1[i] != kCPrime[i]) return false;
  }
  return true;
}
static_assert(MagicSumsToCPrime() && TwoCopies(kBf16Magic) && TwoCopies(kBf16ToE2M1));
HWY_INLINE VF Fp4RoundBf16(DF df, VF ax, VF r, VF* c) {
  const hn::RebindToUnsigned<DF> du;
  const VF a = hn::Min(hn::Mul(ax, r), hn::Set(df, 6.0f));
  const auto e = hn::Max(hn::ShiftRight<23>(hn::BitCast(du, a)), hn::Set(du, 122u));
  *c = Permute8(df, hn::Load(df, kCPrime), e);
  const VF q = hn::Add(a, Permute8(df, hn::Load(df, kBf16Magic), e));  // C + RNE_bf16(a)
  return hn::Add(q, Permute8(df, hn::Load(df, kBf16ToE2M1), e));
}

// Fp4Round of the quotient RNE_D(ax / s) (r: as Fp4Quotient takes it): a + C' and *c.
template <DType D>
HWY_INLINE VF Fp4Index(DF df, VF ax, VF s, VF r, VF* c) {
  if constexpr (kLaneTables && D == DType::kBF16) {
    return Fp4RoundBf16(df, ax, r, c);
  } else {
    return Fp4Round(df, Fp4Quotient<D>(df, ax, s, r), c);
  }
}

template <int N>
HWY_INLINE VF TermFromDq(VF dq, VF ax, VF im) {
  const VF d = hn::Abs(hn::Sub(dq, ax));
  VF e = hn::Mul(d, d);
  if constexpr (N == 3) e = hn::Mul(e, d);
  return hn::Mul(e, im);
}

template <DType D, int N>
HWY_INLINE VF Fp4Term(DF df, VF ax, VF im, VF s, VF r) {
  VF c;
  const VF g = hn::Sub(Fp4Index<D>(df, ax, s, r, &c), c);
  return TermFromDq<N>(RoundPos<D>(df, hn::Mul(g, s)), ax, im);
}

// Fp4Term for a group's element of largest |x| (the one-term bound's), cheaper where its code
// is E2M1's 6: where 5.5 s <= ax (exact for bf16 and f16 scales, of at most 11 significant
// bits), ax / s >= 5.5, so RNE_D(ax / s) >= 5.5 (5.5 is a D value), which E2M1 rounds to 6
// after the clamp, and dq = RNE_D(6 s): no quotient, no E2M1 rounding. That holds at every
// step unless expand > 1 or the zero guard gave eps; other lanes, and every lane for f32
// scales (the product rounds), take Fp4Term.
// (No reciprocal of s is passed: the search computes it only for the steps it sums.)
// Fp4TermSix is that term, for lanes known to have 5.5 s <= ax (D bf16 or f16).
template <DType D, int N>
HWY_INLINE VF Fp4TermSix(DF df, VF ax, VF im, VF s) {
  return TermFromDq<N>(RoundPos<D>(df, hn::Mul(s, hn::Set(df, 6.0f))), ax, im);
}
template <DType D, int N>
HWY_INLINE VF Fp4TermLargest(DF df, VF ax, VF im, VF s) {
  const auto full = [&] {
    return Fp4Term<D, N>(df, ax, im, s, D == DType::kBF16 ? hn::Div(hn::Set(df, 1.0f), s) : s);
  };
  if constexpr (D == DType::kF32) {
    return full();
  } else {
    const VF t = Fp4TermSix<D, N>(df, ax, im, s);
    const MF six = hn::Le(hn::Mul(s, hn::Set(df, 5.5f)), ax);
    if (HWY_LIKELY(hn::AllTrue(df, six))) return t;
    return hn::IfThenElse(six, t, full());
  }
}

// A step's dequantized values RNE_D(g s) for E2M1's grid g (kE2M1Grid's order), s the same
// in every lane (kLaneTables targets only: lanes 0-7 are the grid's 8 values).
template <DType D>
HWY_INLINE VF Fp4Table(DF df, VF s) {
  return RoundPos<D>(df, hn::Mul(hn::LoadU(df, kE2M1Grid), s));
}

// Fp4Term with dq looked up in the step's Fp4Table (kLaneTables only; the same products).
template <DType D, int N>
HWY_INLINE VF Fp4TermTable(DF df, VF ax, VF im, VF s, VF r, VF table) {
  VF c;
  const VF y = Fp4Index<D>(df, ax, s, r, &c);
  const hn::RebindToUnsigned<DF> du;
  return TermFromDq<N>(Permute8(df, table, hn::BitCast(du, y)), ax, im);
}

// Fp4Term with a different s in each lane, for bf16 scales in [2^-100, 2^100] (kLaneTables only),
// given s15 = RNE_bf16(1.5 s): E2M1's g is m * 1 or m * 1.5 with m a power of two (or 0), and
// RNE_bf16(m y) = m RNE_bf16(y) wherever m y stays normal (here: 2^-101 <= |m y| < 2^103), so dq =
// RNE_bf16(g s) is m s (codes 0, 1, 2, 4, 6: g = 0, 0.5, 1, 2, 4) or m s15 (codes 3, 5, 7: g = 1.5,
// 3, 6). One lookup gives m, negated for the codes of s15 (kTwoBaseSigned), whose sign then
// picks s or -s15: dq = (-m)(-s15) = m s15 or m s, exact products either way (m a power of
// two or 0; a negative times a negative is the positive product): a lookup, a blend and a
// product instead of the product and its rounding.
alignas(64) constexpr float kTwoBaseSigned[16] = {0.0f, 0.5f, 1.0f, -1.0f, 2.0f, -2.0f,
                                                  4.0f, -4.0f, 0.0f, 0.5f, 1.0f, -1.0f,
                                                  2.0f, -2.0f, 4.0f, -4.0f};
static_assert(TwoCopies(kTwoBaseSigned));
template <int N>
HWY_INLINE VF Fp4TermTwoBase(DF df, VF ax, VF im, VF s, VF r, VF s15) {
  VF c;
  const VF y = Fp4Index<DType::kBF16>(df, ax, s, r, &c);
  const hn::RebindToUnsigned<DF> du;
  const VF m = Permute8(df, hn::Load(df, kTwoBaseSigned), hn::BitCast(du, y));
  return TermFromDq<N>(hn::Mul(m, hn::IfNegativeThenElse(m, hn::Neg(s15), s)), ax, im);
}

// RNE_bf16(1.5 s) for Fp4TermTwoBase (the product is exact: s has 8 significant bits).
HWY_INLINE VF OneAndHalf(DF df, VF s) {
  return RoundPos<DType::kBF16>(df, hn::Mul(s, hn::Set(df, 1.5f)));
}

}  // namespace HWY_NAMESPACE
}  // namespace quench::calib::internal
HWY_AFTER_NAMESPACE();

#endif  // QUENCH_CALIB_IMATRIX_MSE_FP4_TERMS_INL_H_
