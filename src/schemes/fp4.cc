// Microscaling float schemes (NVFP4A16, MXFP4A16, MXFP8A16): the scalar references (the
// definitions) and the Highway kernels, compiled once per target through Highway's
// foreach_target skeleton.
//
// The definitions, as compressed-tensors 0.19.0 / llm-compressor 0.14.0.1 / torch 2.13.0 (CPU,
// eager) compute them for a weight in dtype D (bf16, f16 or f32); RNE_D(y) means "y evaluated
// in f32, rounded to D, ties to even" (docs/reference-notes.md sections 11.1 for NVFP4 and 12
// for MXFP4 / MXFP8, confirmed byte for byte against model_free_ptq):
//
// NVFP4 (group 16, E4M3 scales, f32 global scale gs of the fused set):
//   gs    = RNE_D(RNE_D(1 / max(A, tiny_D)) * 2688), non-finite -> 1 (generate_gparam:
//           `448 * 6 / A` is Python's `A.reciprocal() * 2688`);
//   t     = RNE_D(amax_g / 6);  u = f32(gs * t);  s = e4m3(clamp(u, +-448)), 0 -> 0.125;
//   eff   = f32(s / gs);  v = f32(x / eff);  nibble = E2M1_RNE(clamp(v, +-6)).
// MXFP4 / MXFP8 (group 32, uint8 E8M0 scales):
//   p     = round_to_power_2(amax_g) on D's bit pattern (add 1 << (mant_D - 2), keep sign and
//           exponent: the mantissa width of FP4, minus one, for both MX schemes);
//   E     = clamp(127 + log2(p) - off, 0, 255) with off = 2 (FP4) or 8 (FP8); p = 0 -> 0,
//           p = inf -> 255;
//   scale = RNE_D(2^(E - 127)) (inf for E = 255; 0 in f16 for E <= 102), 0 -> 1 (the eps
//           of uint8); stored = uint8(127 + int32(floor(log2(scale)))), which is E except
//           that a guarded scale (1) stores 127, and so does an infinite one;
//   v     = RNE_D(x / scale);  MXFP4: nibble = E2M1_RNE(clamp(v, +-6));
//                              MXFP8: code = e4m3(clamp(v, +-448)).
// E2M1_RNE (cast_to_fp4 then pack_fp4_to_uint8): magnitude onto {0, .5, 1, 1.5, 2, 3, 4, 6}
// with ties to the even code; sign bit (0x8) iff v < 0, so a negative value that rounds to 0
// gives 0x8 while -0 itself gives 0x0 (torch.sign(-0.) is +0). Even element in the low nibble.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>

#include "schemes/float_formats.h"
#include "schemes/fp4.h"
#include "schemes/nvfp4_bf16.h"
#include "schemes/nvfp4_bf16_avx2.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/schemes/fp4.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/aligned_allocator.h"
#include "hwy/cache_control.h"
#include "hwy/highway.h"
#include "schemes/rounding-inl.h"

// Scalar definitions shared by the references and the kernels (compiled once, outside the
// per-target namespaces).
#include "schemes/fp4_shared.h"

HWY_BEFORE_NAMESPACE();
namespace quench::fp4 {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
namespace rounding = quench::HWY_NAMESPACE::rounding;

using rounding::Traits;

using rounding::EncodeE4M3;

// E2M1 nibble (sign << 3 | index) of each f32 lane, as Fp4Nibble: clamp to 6, round the
// magnitude to the E2M1 grid with ties to even, sign iff v < neg_limit (-0 for v itself;
// see MxFp4NegLimit for a v that the reference first rounds to D).
template <class DF>
HWY_INLINE hn::Vec<hn::RebindToUnsigned<DF>> Fp4Codes(DF df, hn::Vec<DF> v,
                                                      hn::Vec<DF> neg_limit) {
  const hn::RebindToUnsigned<DF> du;
  const auto a = hn::Min(hn::Abs(v), hn::Set(df, internal::kFp4Max));
  // |v| < 1 (E2M1's subnormal step 0.5): a + 2^22 has an f32 ulp of 0.5, so the FPU's RNE
  // addition rounds a to k * 0.5 with ties to even k; k (0, 1, 2) is the index of 0, 0.5, 1.
  const auto magic = hn::Set(df, 4194304.0f);  // 2^22
  const auto sub = hn::Sub(hn::BitCast(du, hn::Add(a, magic)), hn::BitCast(du, magic));
  // |v| >= 1: keep 1 of the 23 mantissa bits, RNE on the 22 dropped ones (bias 0x1FFFFF
  // plus the lowest kept bit); bits >> 22 is then 2 * biased exponent + mantissa bit, and
  // 1.0 (254) is index 2, so subtract 252 << 22 first. Ties: 1.25 -> 1, 1.75 -> 2, 2.5 -> 2,
  // 3.5 -> 4, 5 -> 4, as the table.
  const auto b = hn::BitCast(du, a);
  const auto lsb = hn::And(hn::ShiftRight<22>(b), hn::Set(du, 1u));
  const auto normal = hn::ShiftRight<22>(
      hn::Add(hn::Add(b, hn::Set(du, 0x1FFFFFu - (252u << 22))), lsb));
  const auto is_sub = hn::RebindMask(du, hn::Lt(a, hn::Set(df, 1.0f)));
  const auto idx = hn::IfThenElse(is_sub, sub, normal);
  const auto neg = hn::RebindMask(du, hn::Lt(v, neg_limit));
  return hn::IfThenElse(neg, hn::Or(idx, hn::Set(du, 8u)), idx);
}

// Exact f32 lanes of the even and odd elements of 2 * Lanes(df) consecutive elements of
// dtype D at p (unaligned).
template <DType D, class DF>
HWY_INLINE void LoadPairs(DF df, const uint8_t* p, hn::Vec<DF>& even, hn::Vec<DF>& odd) {
  const hn::RebindToUnsigned<DF> du;
  if constexpr (D == DType::kF32) {
    hn::LoadInterleaved2(df, reinterpret_cast<const float*>(p), even, odd);
  } else {
    // One u32 lane holds an (even, odd) pair, the even element in the low half.
    const auto v = hn::LoadU(du, reinterpret_cast<const uint32_t*>(p));
    if constexpr (D == DType::kBF16) {
      // bf16 is the upper half of an f32.
      even = hn::BitCast(df, hn::ShiftLeft<16>(v));
      odd = hn::BitCast(df, hn::And(v, hn::Set(du, 0xFFFF0000u)));
    } else {
      // binary16 -> f32, exact for finite values: place |h| in f32's layout (exponent at
      // bit 23, mantissa in the top 10 bits) and scale by 2^112 (the bias difference);
      // subnormals come out right because both formats scale their mantissa the same way.
      const auto scale = hn::Set(df, 5.192296858534828e+33f);  // 2^112
      const auto lo = hn::ShiftLeft<16>(v);
      const auto hi = hn::And(v, hn::Set(du, 0xFFFF0000u));
      const auto mag_mask = hn::Set(du, 0x7FFF0000u);
      const auto sign_mask = hn::Set(du, 0x80000000u);
      even = hn::Mul(hn::BitCast(df, hn::ShiftRight<3>(hn::And(lo, mag_mask))), scale);
      odd = hn::Mul(hn::BitCast(df, hn::ShiftRight<3>(hn::And(hi, mag_mask))), scale);
      even = hn::Or(even, hn::BitCast(df, hn::And(lo, sign_mask)));
      odd = hn::Or(odd, hn::BitCast(df, hn::And(hi, sign_mask)));
    }
  }
}

// Max abs bit pattern (in D's encoding) over one group of kGroup elements at p.
template <DType D, size_t kGroup>
HWY_INLINE uint32_t GroupAbsBits(const uint8_t* p) {
  const hn::CappedTag<uint32_t, kGroup / 2> du;
  const size_t lanes = hn::Lanes(du);
  auto m = hn::Zero(du);
  if constexpr (D == DType::kF32) {
    const auto mask = hn::Set(du, 0x7FFFFFFFu);
    const uint32_t* src = reinterpret_cast<const uint32_t*>(p);
    for (size_t i = 0; i < kGroup; i += lanes) {
      m = hn::Max(m, hn::And(hn::LoadU(du, src + i), mask));
    }
  } else {
    const auto mask = hn::Set(du, 0x7FFFu);
    const uint32_t* src = reinterpret_cast<const uint32_t*>(p);
    for (size_t i = 0; i < kGroup / 2; i += lanes) {
      const auto v = hn::LoadU(du, src + i);
      m = hn::Max(m, hn::Max(hn::And(v, mask), hn::And(hn::ShiftRight<16>(v), mask)));
    }
  }
  return hn::GetLane(hn::MaxOfLanes(du, m));
}

// f32 values of abs bit patterns of D (finite) held in u32 lanes.
template <DType D, class DF>
HWY_INLINE hn::Vec<DF> AbsBitsToF32(DF df, hn::Vec<hn::RebindToUnsigned<DF>> bits) {
  if constexpr (D == DType::kBF16) {
    return hn::BitCast(df, hn::ShiftLeft<16>(bits));
  } else if constexpr (D == DType::kF16) {
    return hn::Mul(hn::BitCast(df, hn::ShiftLeft<13>(bits)), hn::Set(df, 5.192296858534828e+33f));
  } else {
    return hn::BitCast(df, bits);
  }
}

// Per u32 lane, the larger abs bit pattern (in D's encoding) of the elements it holds: two
// for 16-bit D, one for f32.
template <DType D, class DU>
HWY_INLINE hn::Vec<DU> LaneAbsBits(DU du, const uint32_t* p) {
  const auto v = hn::LoadU(du, p);
  if constexpr (D == DType::kF32) {
    return hn::And(v, hn::Set(du, 0x7FFFFFFFu));
  } else {
    const auto a = hn::And(v, hn::Set(du, 0x7FFF7FFFu));
    return hn::Max(hn::And(a, hn::Set(du, 0xFFFFu)), hn::ShiftRight<16>(a));
  }
}

#if HWY_TARGET != HWY_SCALAR
// Lane j = max abs bits of group j of Lanes(du) consecutive groups of W u32 lanes at p: a
// tree of pairwise maxima of adjacent lanes (ConcatEven / ConcatOdd keep the order), so
// Lanes(du) groups cost W loads and W - 1 compactions instead of a reduction each.
template <DType D, size_t W, class DU>
HWY_INLINE hn::Vec<DU> GroupMaxTree(DU du, const uint32_t* p) {
  if constexpr (W == 1) {
    return LaneAbsBits<D>(du, p);
  } else {
    const auto lo = GroupMaxTree<D, W / 2>(du, p);
    const auto hi = GroupMaxTree<D, W / 2>(du, p + (W / 2) * hn::Lanes(du));
    return hn::Max(hn::ConcatEven(du, hi, lo), hn::ConcatOdd(du, hi, lo));
  }
}
#endif

// Pass 1 of every kernel: the abs bit patterns of each group's amax for one row, into
// `amax` (n_groups entries); false if the row holds NaN or Inf.
template <DType D, size_t kGroup>
HWY_INLINE bool RowGroupAmax(const uint8_t* row, size_t n_groups, uint32_t* amax) {
  constexpr size_t kEsz = sizeof(typename Traits<D>::T);
  size_t g = 0;
  uint32_t row_max = 0;
#if HWY_TARGET != HWY_SCALAR
  constexpr size_t kLanesPerGroup = kGroup * kEsz / 4;  // u32 lanes
  const hn::CappedTag<uint32_t, 16> du;
  const size_t lanes = hn::Lanes(du);
  const uint32_t* src = reinterpret_cast<const uint32_t*>(row);
  auto acc = hn::Zero(du);
  for (; g + lanes <= n_groups; g += lanes) {
    // Ask for the input 2 KiB ahead: this pass is the row's first touch.
    hwy::Prefetch(src + g * kLanesPerGroup + 512);
    const auto m = GroupMaxTree<D, kLanesPerGroup>(du, src + g * kLanesPerGroup);
    acc = hn::Max(acc, m);
    hn::StoreU(m, du, amax + g);
  }
  row_max = hn::GetLane(hn::MaxOfLanes(du, acc));
#endif
  for (; g < n_groups; ++g) {  // the groups that do not fill a vector
    amax[g] = GroupAbsBits<D, kGroup>(row + g * kGroup * kEsz);
    row_max = std::max(row_max, amax[g]);
  }
  return row_max < Traits<D>::kInfBits;
}

// Pass 2 for NVFP4: scale codes (to `codes`) and eff = f32(s / gs) (to `eff`; null: not
// wanted, pass 3 by decision bounds needs the codes only) for n groups; the arrays hold a
// whole number of vectors (padding lanes are computed and ignored).
template <DType D>
HWY_INLINE void Nvfp4Scales(const uint32_t* amax, size_t n, float gs, uint8_t* codes,
                            float* eff) {
  const hn::ScalableTag<float> df;
  const hn::RebindToUnsigned<decltype(df)> du;
  const hn::Rebind<uint8_t, decltype(df)> d8;
  const auto vgs = hn::Set(df, gs);
  for (size_t i = 0; i < n; i += hn::Lanes(df)) {
    const auto a = AbsBitsToF32<D>(df, hn::Load(du, amax + i));
    // t = RNE_D(amax / 6); u = gs * t (f32); clamp to +-448; e4m3 (saturating encode).
    const auto t = rounding::RoundToDType<D>(df, hn::Div(a, hn::Set(df, internal::kFp4Max)));
    const auto u = hn::Min(hn::Max(hn::Mul(vgs, t), hn::Set(df, -internal::kE4M3Max)),
                           hn::Set(df, internal::kE4M3Max));
    auto code = EncodeE4M3(df, u);
    // Zero guard: a scale of +-0 becomes 0.125.
    const auto is_zero = hn::Eq(hn::And(code, hn::Set(du, 0x7Fu)), hn::Zero(du));
    code = hn::IfThenElse(is_zero, hn::Set(du, internal::kE4M3Eighth), code);
    // Decode (code is a positive finite e4m3 here): normal codes rebias the exponent
    // 7 -> 127 (add 120 << 23 to code << 20); subnormal ones (code < 8) are m * 2^-9.
    const auto normal = hn::BitCast(df, hn::Add(hn::ShiftLeft<20>(code), hn::Set(du, 120u << 23)));
    const auto subnormal =
        hn::Mul(hn::ConvertTo(df, hn::BitCast(hn::RebindToSigned<decltype(df)>(), code)),
                hn::Set(df, 0.001953125f));  // 2^-9
    const auto s = hn::IfThenElse(hn::RebindMask(df, hn::Lt(code, hn::Set(du, 8u))),
                                  subnormal, normal);
    // _quantize: scale / global_scale, one f32 division.
    if (eff != nullptr) hn::Store(hn::Div(s, vgs), df, eff + i);
    hn::Store(hn::TruncateTo(d8, code), d8, codes + i);
  }
}

// Pass 2 for MX: stored E8M0 bytes (to `codes`) and the reciprocal of each group's scale
// (to `inv`; an exact power of two, or 0 for an infinite scale, so x * inv == x / scale
// bit for bit, including results in the subnormal range).
template <DType D, int kOffset>
HWY_INLINE void MxScales(const uint32_t* amax, size_t n, uint8_t* codes, float* inv) {
  const hn::ScalableTag<int32_t> di;
  const hn::RebindToUnsigned<decltype(di)> du;
  const hn::Rebind<uint8_t, decltype(di)> d8;
  const hn::RebindToFloat<decltype(di)> df;
  for (size_t i = 0; i < n; i += hn::Lanes(di)) {
    const auto bits = hn::Load(du, amax + i);
    // round_to_power_2 on D's bits, giving p's biased f32 exponent pe (0: p = 0; 255: inf).
    hn::Vec<decltype(di)> pe;
    if constexpr (D == DType::kF16) {
      // Add 1 << (10 - 2), keep the 5 exponent bits; rebias 15 -> 127 unless 0 or 31.
      const auto e16 = hn::BitCast(di, hn::ShiftRight<10>(hn::Add(bits, hn::Set(du, 0x100u))));
      const auto rebiased = hn::Add(e16, hn::Set(di, 127 - 15));
      pe = hn::IfThenElse(hn::Eq(e16, hn::Zero(di)), hn::Zero(di),
                          hn::IfThenElse(hn::Eq(e16, hn::Set(di, 31)), hn::Set(di, 255),
                                         rebiased));
    } else {
      // bf16 (add 0x20 to the 16-bit pattern) and f32 (add 1 << 21) are the same operation
      // on the f32 pattern; keep the 8 exponent bits.
      const auto f32_bits = hn::BitCast(du, AbsBitsToF32<D>(df, bits));
      pe = hn::BitCast(di, hn::ShiftRight<23>(hn::Add(f32_bits, hn::Set(du, 1u << 21))));
    }
    // E = clamp(127 + log2(p) - offset, 0, 255) = max(pe - offset, 0); p = inf gives 255.
    const auto is_inf = hn::Eq(pe, hn::Set(di, 255));
    const auto e = hn::IfThenElse(is_inf, hn::Set(di, 255),
                                  hn::Max(hn::Sub(pe, hn::Set(di, kOffset)), hn::Zero(di)));
    // scale = RNE_D(2^(E - 127)): inf for E = 255; in f16, 0 for E <= 102 (2^-25 is the tie
    // below f16's smallest subnormal 2^-24, rounding to even 0), and then guarded to 1.
    // Both store 127; otherwise the stored byte is E. inv = 2^(127 - E) (E <= 252 here, so
    // the pattern (254 - E) << 23 is a normal f32).
    auto guarded = is_inf;
    if constexpr (D == DType::kF16) guarded = hn::Or(guarded, hn::Lt(e, hn::Set(di, 103)));
    const auto stored = hn::IfThenElse(guarded, hn::Set(di, internal::kMxUnitExponent), e);
    const auto pow2 = hn::BitCast(df, hn::ShiftLeft<23>(hn::Sub(hn::Set(di, 254), e)));
    const auto one_or_zero =
        hn::IfThenElse(hn::RebindMask(df, is_inf), hn::Zero(df), hn::Set(df, 1.0f));
    hn::Store(hn::IfThenElse(hn::RebindMask(df, guarded), one_or_zero, pow2), df, inv + i);
    hn::Store(hn::TruncateTo(d8, hn::BitCast(du, stored)), d8, codes + i);
  }
}

// Per-call scratch: one row's group amaxes, scale codes and per-group factors (eff or
// 1 / scale), padded to a whole number of vectors plus one vector, so that pass 3 may load
// a full vector of factors from any group (padding factors are 1).
struct Scratch {
  hwy::AlignedFreeUniquePtr<uint32_t[]> amax;
  hwy::AlignedFreeUniquePtr<uint8_t[]> codes;
  hwy::AlignedFreeUniquePtr<float[]> factor;
  explicit Scratch(size_t n_groups) {
    const size_t lanes = hn::Lanes(hn::ScalableTag<float>());
    const size_t n = (internal::CeilDiv(n_groups, lanes) + 1) * lanes;
    amax = hwy::AllocateAligned<uint32_t>(n);
    codes = hwy::AllocateAligned<uint8_t>(n);
    factor = hwy::AllocateAligned<float>(n);
    if (amax) std::fill(amax.get(), amax.get() + n, 0u);
    if (factor) std::fill(factor.get(), factor.get() + n, 1.0f);
  }
  bool ok() const { return amax && codes && factor; }
};

// MXFP4's v is RNE_D(x / scale) and its sign nibble comes from torch.sign of that, which is
// 0 when the rounding gives -0. x / scale (exact, or one f32 rounding below f32's normal
// range) rounds to a nonzero value of D exactly when it is beyond half of D's smallest
// subnormal (the tie goes to 0, the even neighbour): 2^-134 for bf16, 2^-25 for f16. Every
// other lane needs no rounding to D at all: x * 2^k is a value of D unless it falls below
// D's normal range, and there (|v| < 0.25) the E2M1 index is 0 either way.
template <DType D>
constexpr float MxFp4NegLimit() {
  if constexpr (D == DType::kBF16) return -0x1p-134f;
  if constexpr (D == DType::kF16) return -0x1p-25f;
  return -0.0f;
}

// Pass 3 of NVFP4 / MXFP4 on 2 * Lanes(df) elements at src: factors f (per pair lane),
// v = x / eff (NVFP4, true IEEE division) or x * (1 / scale) (MX, exactly x / scale), then
// the nibbles, even element in the low nibble, Lanes(df) bytes to dst.
template <DType D, bool kNv, class DF>
HWY_INLINE void PackPairs(DF df, const uint8_t* src, hn::Vec<DF> f, hn::Vec<DF> neg_limit,
                          uint8_t* dst) {
  const hn::Rebind<uint8_t, DF> d8;
  hn::Vec<DF> even, odd;
  LoadPairs<D>(df, src, even, odd);
  if constexpr (kNv) {
    even = hn::Div(even, f);
    odd = hn::Div(odd, f);
  } else {
    even = hn::Mul(even, f);
    odd = hn::Mul(odd, f);
  }
  const auto packed = hn::Or(Fp4Codes(df, even, neg_limit),
                             hn::ShiftLeft<4>(Fp4Codes(df, odd, neg_limit)));
  hn::StoreU(hn::TruncateTo(d8, packed), d8, dst);
}

template <size_t kN>
constexpr int Log2(size_t n = kN) {
  return n <= 1 ? 0 : 1 + Log2<kN>(n / 2);
}

// NVFP4 and MXFP4: pass 3 packs FP4 nibbles from (even, odd) element pairs, one pair per
// f32 lane, Lanes(df) pairs (one or more groups, or part of one) per step. With ranges
// given and `finite` (the caller has already refused NaN / Inf in these rows), pass 1 is
// not needed at all: its maxima are replaced and its check is done, so the rows are read once.
// The ranges come as f32 values of D (`ranges`) or in D's own encoding (`range_bits`, whose
// patterns pass 2 takes as they are; a NaN or Inf among them is refused).
template <DType D, size_t kGroup, bool kNv>
bool Fp4Impl(const WeightChunk& in, const ChunkOutputs& out, const float* ranges = nullptr,
             bool finite = false, const uint8_t* range_bits = nullptr) {
  constexpr size_t kEsz = sizeof(typename Traits<D>::T);
  constexpr size_t kPairsPerGroup = kGroup / 2;
  const hn::CappedTag<float, 16> df;
  const hn::RebindToSigned<decltype(df)> di;
  const size_t lanes = hn::Lanes(df);
  // Pair lane k of a step takes the factor of group k / kPairsPerGroup of the step's first.
  const auto group_of_lane = hn::IndicesFromVec(
      df, hn::ShiftRight<Log2<kPairsPerGroup>()>(hn::Iota(di, 0)));
  const auto neg_limit = hn::Set(df, kNv ? -0.0f : MxFp4NegLimit<D>());
  const size_t n_groups = in.cols / kGroup;
  const size_t n_pairs = in.cols / 2;
  Scratch s(n_groups);
  if (!s.ok()) throw std::bad_alloc();  // the caller reports it; false means NaN/Inf
  // BF16 NVFP4 on AVX-512: pass 3 by decision bounds (nvfp4_bf16.h). Taken from the
  // AVX-512 targets only, so that tests running the lesser targets still run the code below.
  const uint16_t* bounds = nullptr;
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
  if (D == DType::kBF16 && kNv && Nvfp4Bf16Available()) {
    bounds = Nvfp4Bf16Table(in.params.global_scale);
  }
#endif
  // BF16 NVFP4 with given f32 ranges (QuantizeChosen) on the AVX2 target: pass 3 by the AVX2
  // kernel's decision bounds (nvfp4_bf16_avx2.h), which the whole-chunk AVX2 path cannot take
  // (it finds each group's max itself). (Ranges in bf16's encoding on this target go to
  // QuantizeNvfp4Bf16Avx2Ranges instead.)
  const bool given = ranges != nullptr || range_bits != nullptr;
  bool avx2_pack = false;
#if HWY_TARGET == HWY_AVX2
  avx2_pack = D == DType::kBF16 && kNv && given && bounds == nullptr &&
              Nvfp4Bf16Avx2Handles(in);
#endif
  for (size_t r = 0; r < in.rows; ++r) {
    const uint8_t* row = in.data + r * in.cols * kEsz;
    if (!given || !finite) {
      if (!RowGroupAmax<D, kGroup>(row, n_groups, s.amax.get())) return false;
    }
    if (range_bits != nullptr) {
      // The ranges' patterns as they are (what F32ToBits / F32ToF16 below give back for a
      // value of D); the largest |pattern| tells a NaN or Inf.
      using T = typename Traits<D>::T;
      const uint8_t* src = range_bits + r * n_groups * kEsz;
      T seen = 0;
      for (size_t g = 0; g < n_groups; ++g) {
        T bits;
        std::memcpy(&bits, src + g * kEsz, kEsz);
        s.amax[g] = bits;
        seen = std::max<T>(seen, static_cast<T>(bits & Traits<D>::kAbsMask));
      }
      if (seen >= Traits<D>::kInfBits) return false;
    } else if (ranges != nullptr) {
      // Given ranges (values of D, >= 0: imatrix_mse's chosen ones) in place of the
      // groups' max |x|, as D's bit patterns.
      for (size_t g = 0; g < n_groups; ++g) {
        const float v = ranges[r * n_groups + g];
        s.amax[g] = D == DType::kF32 ? F32ToBits(v)
                    : D == DType::kBF16 ? F32ToBits(v) >> 16
                                        : F32ToF16(v);
      }
    }
    if constexpr (kNv) {
      Nvfp4Scales<D>(s.amax.get(), n_groups, in.params.global_scale, s.codes.get(),
                     bounds != nullptr || avx2_pack ? nullptr : s.factor.get());
    } else {
      MxScales<D, internal::kMxFp4Offset>(s.amax.get(), n_groups, s.codes.get(),
                                          s.factor.get());
    }
    std::memcpy(out.out[1] + r * n_groups, s.codes.get(), n_groups);
    // The next row's input is asked for alongside this row's, a step's bytes per step.
    // (Asking for the whole row at once here stalled on the full line-fill buffers.)
    const uint8_t* next_row = r + 1 < in.rows ? row + in.cols * kEsz : nullptr;
    if (avx2_pack) {  // (codes 1..126, as PackGroups asks: Nvfp4ScaleCode's range)
      internal::Nvfp4Bf16Avx2PackGroups(row, n_groups, s.codes.get(), in.params.global_scale,
                                        out.out[0] + r * n_pairs);
      continue;
    }
    if (bounds != nullptr) {
      Nvfp4Bf16PackRow(row, n_groups, s.codes.get(), bounds, next_row, out.out[0] + r * n_pairs);
      continue;
    }
    uint8_t* dst = out.out[0] + r * n_pairs;
    size_t i = 0;
    for (; i + lanes <= n_pairs; i += lanes) {
      if (next_row != nullptr) rounding::PrefetchBytes(next_row + 2 * i * kEsz, 2 * lanes * kEsz);
      const auto f = hn::TableLookupLanes(
          hn::LoadU(df, s.factor.get() + i / kPairsPerGroup), group_of_lane);
      PackPairs<D, kNv>(df, row + 2 * i * kEsz, f, neg_limit, dst + i);
    }
    if (i < n_pairs) {
      // The last pairs (fewer than a vector): the same code on a zero-padded copy.
      HWY_ALIGN uint8_t in_buf[2 * HWY_MAX_BYTES] = {};
      HWY_ALIGN uint8_t out_buf[HWY_MAX_BYTES];
      std::memcpy(in_buf, row + 2 * i * kEsz, 2 * (n_pairs - i) * kEsz);
      const auto f = hn::TableLookupLanes(
          hn::LoadU(df, s.factor.get() + i / kPairsPerGroup), group_of_lane);
      PackPairs<D, kNv>(df, in_buf, f, neg_limit, out_buf);
      std::memcpy(dst + i, out_buf, n_pairs - i);
    }
  }
  return true;
}

// MXFP8: pass 3 writes one e4m3 code per element. No rounding to D is needed: x * 2^k is a
// value of D unless it falls below D's normal range, where e4m3 gives +-0 (sign kept) from
// either value.
template <DType D>
bool Mxfp8Impl(const WeightChunk& in, const ChunkOutputs& out) {
  constexpr size_t kEsz = sizeof(typename Traits<D>::T);
  const hn::CappedTag<float, kMxGroup> df;
  const hn::Rebind<uint8_t, decltype(df)> d8;
  const size_t lanes = hn::Lanes(df);
  const size_t n_groups = in.cols / kMxGroup;
  Scratch s(n_groups);
  if (!s.ok()) throw std::bad_alloc();  // the caller reports it; false means NaN/Inf
  for (size_t r = 0; r < in.rows; ++r) {
    const uint8_t* row = in.data + r * in.cols * kEsz;
    if (!RowGroupAmax<D, kMxGroup>(row, n_groups, s.amax.get())) return false;
    MxScales<D, internal::kMxFp8Offset>(s.amax.get(), n_groups, s.codes.get(), s.factor.get());
    std::memcpy(out.out[1] + r * n_groups, s.codes.get(), n_groups);
    // The next row, a group's bytes per group (as in Fp4Impl).
    const uint8_t* next_row = r + 1 < in.rows ? row + in.cols * kEsz : nullptr;
    uint8_t* dst = out.out[0] + r * in.cols;
    for (size_t g = 0; g < n_groups; ++g) {
      if (next_row != nullptr) {
        rounding::PrefetchBytes(next_row + g * kMxGroup * kEsz, kMxGroup * kEsz);
      }
      const auto f = hn::Set(df, s.factor[g]);
      for (size_t i = 0; i < kMxGroup; i += lanes) {
        const size_t c = g * kMxGroup + i;
        // v = x / scale; e4m3 (saturating, so the clamp to +-448 is implied).
        const auto v = hn::Mul(rounding::LoadF32<D>(df, row + c * kEsz), f);
        hn::StoreU(hn::TruncateTo(d8, EncodeE4M3(df, v)), d8, dst + c);
      }
    }
  }
  return true;
}

template <DType D>
bool AbsMaxImpl(const WeightChunk& in, float* amax) {
  const hn::ScalableTag<typename Traits<D>::T> dt;
  const auto bits = rounding::ReduceMax(
      dt, rounding::AbsBitsMax<D>(in.data, in.rows * in.cols, hn::Zero(dt)));
  if (bits >= Traits<D>::kInfBits) return false;
  if constexpr (D == DType::kBF16) *amax = BF16ToF32(bits);
  if constexpr (D == DType::kF16) *amax = F16ToF32(bits);
  if constexpr (D == DType::kF32) *amax = BitsToF32(bits);
  return true;
}

bool Nvfp4Kernel(const WeightChunk& in, const ChunkOutputs& out) {
#if HWY_TARGET == HWY_AVX2
  // bf16 on the AVX2 target: all three passes on 16-bit lanes, pass 3 by decision bounds
  // (nvfp4_bf16_avx2.h). Taken from this target only, so that tests running the other
  // targets still run the code above.
  if (Nvfp4Bf16Avx2Handles(in)) return QuantizeNvfp4Bf16Avx2(in, out);
#endif
  switch (in.dtype) {
    case DType::kBF16: return Fp4Impl<DType::kBF16, kNvfp4Group, true>(in, out);
    case DType::kF16: return Fp4Impl<DType::kF16, kNvfp4Group, true>(in, out);
    case DType::kF32: return Fp4Impl<DType::kF32, kNvfp4Group, true>(in, out);
    default: return false;
  }
}

bool Mxfp4Kernel(const WeightChunk& in, const ChunkOutputs& out) {
  switch (in.dtype) {
    case DType::kBF16: return Fp4Impl<DType::kBF16, kMxGroup, false>(in, out);
    case DType::kF16: return Fp4Impl<DType::kF16, kMxGroup, false>(in, out);
    case DType::kF32: return Fp4Impl<DType::kF32, kMxGroup, false>(in, out);
    default: return false;
  }
}

bool Nvfp4RangesKernel(const WeightChunk& in, const float* ranges, const ChunkOutputs& out,
                       bool finite) {
  switch (in.dtype) {
    case DType::kBF16: return Fp4Impl<DType::kBF16, kNvfp4Group, true>(in, out, ranges, finite);
    case DType::kF16: return Fp4Impl<DType::kF16, kNvfp4Group, true>(in, out, ranges, finite);
    case DType::kF32: return Fp4Impl<DType::kF32, kNvfp4Group, true>(in, out, ranges, finite);
    default: return false;
  }
}

bool Mxfp4RangesKernel(const WeightChunk& in, const float* ranges, const ChunkOutputs& out,
                       bool finite) {
  switch (in.dtype) {
    case DType::kBF16: return Fp4Impl<DType::kBF16, kMxGroup, false>(in, out, ranges, finite);
    case DType::kF16: return Fp4Impl<DType::kF16, kMxGroup, false>(in, out, ranges, finite);
    case DType::kF32: return Fp4Impl<DType::kF32, kMxGroup, false>(in, out, ranges, finite);
    default: return false;
  }
}

bool Nvfp4RangeBitsKernel(const WeightChunk& in, const uint8_t* ranges, const ChunkOutputs& out,
                          bool finite) {
#if HWY_TARGET == HWY_AVX2
  // bf16 on the AVX2 target (imatrix_mse's kept ranges): pass 2 from the ranges and pass 3 by
  // decision bounds, a row at a time (nvfp4_bf16_avx2.h). Taken from this target only, so that
  // tests running the other targets still run Fp4Impl.
  if (Nvfp4Bf16Avx2Handles(in)) return QuantizeNvfp4Bf16Avx2Ranges(in, ranges, out, finite);
#endif
  switch (in.dtype) {
    case DType::kBF16:
      return Fp4Impl<DType::kBF16, kNvfp4Group, true>(in, out, nullptr, finite, ranges);
    case DType::kF16:
      return Fp4Impl<DType::kF16, kNvfp4Group, true>(in, out, nullptr, finite, ranges);
    case DType::kF32:
      return Fp4Impl<DType::kF32, kNvfp4Group, true>(in, out, nullptr, finite, ranges);
    default: return false;
  }
}

bool Mxfp4RangeBitsKernel(const WeightChunk& in, const uint8_t* ranges, const ChunkOutputs& out,
                          bool finite) {
  switch (in.dtype) {
    case DType::kBF16:
      return Fp4Impl<DType::kBF16, kMxGroup, false>(in, out, nullptr, finite, ranges);
    case DType::kF16:
      return Fp4Impl<DType::kF16, kMxGroup, false>(in, out, nullptr, finite, ranges);
    case DType::kF32:
      return Fp4Impl<DType::kF32, kMxGroup, false>(in, out, nullptr, finite, ranges);
    default: return false;
  }
}

bool Mxfp8Kernel(const WeightChunk& in, const ChunkOutputs& out) {
  switch (in.dtype) {
    case DType::kBF16: return Mxfp8Impl<DType::kBF16>(in, out);
    case DType::kF16: return Mxfp8Impl<DType::kF16>(in, out);
    case DType::kF32: return Mxfp8Impl<DType::kF32>(in, out);
    default: return false;
  }
}

bool AbsMaxKernel(const WeightChunk& in, float* amax) {
  switch (in.dtype) {
    case DType::kBF16: return AbsMaxImpl<DType::kBF16>(in, amax);
    case DType::kF16: return AbsMaxImpl<DType::kF16>(in, amax);
    case DType::kF32: return AbsMaxImpl<DType::kF32>(in, amax);
    default: return false;
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace quench::fp4
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace quench::fp4 {

HWY_EXPORT(Nvfp4Kernel);
HWY_EXPORT(Mxfp4Kernel);
HWY_EXPORT(Mxfp8Kernel);
HWY_EXPORT(Nvfp4RangesKernel);
HWY_EXPORT(Mxfp4RangesKernel);
HWY_EXPORT(Nvfp4RangeBitsKernel);
HWY_EXPORT(Mxfp4RangeBitsKernel);
HWY_EXPORT(AbsMaxKernel);

namespace {

// Shape and dtype preconditions shared by the kernels and the references (the planner
// checks them first; a chunk that breaks them is refused rather than misread).
bool Valid(const WeightChunk& in, size_t group) {
  return internal::IsSupported(in.dtype) && in.cols % group == 0;
}

}  // namespace

bool QuantizeNvfp4(const WeightChunk& in, const ChunkOutputs& out) {
  return Valid(in, kNvfp4Group) && HWY_DYNAMIC_DISPATCH(Nvfp4Kernel)(in, out);
}

bool QuantizeMxfp4(const WeightChunk& in, const ChunkOutputs& out) {
  return Valid(in, kMxGroup) && HWY_DYNAMIC_DISPATCH(Mxfp4Kernel)(in, out);
}

bool QuantizeMxfp8(const WeightChunk& in, const ChunkOutputs& out) {
  return Valid(in, kMxGroup) && HWY_DYNAMIC_DISPATCH(Mxfp8Kernel)(in, out);
}

bool AbsMax(const WeightChunk& in, float* amax) {
  return internal::IsSupported(in.dtype) && HWY_DYNAMIC_DISPATCH(AbsMaxKernel)(in, amax);
}

namespace {

// The NVFP4 reference; `ranges` (rows x groups), when given, replaces each group's max |x|.
bool Nvfp4Scalar(const WeightChunk& in, const float* ranges, const ChunkOutputs& out) {
  if (!Valid(in, kNvfp4Group)) return false;
  const size_t esz = DTypeBits(in.dtype) / 8;
  const size_t n_groups = in.cols / kNvfp4Group;
  const float gs = in.params.global_scale;
  for (size_t r = 0; r < in.rows; ++r) {
    for (size_t g = 0; g < n_groups; ++g) {
      const uint8_t* src = in.data + (r * in.cols + g * kNvfp4Group) * esz;
      float amax;
      if (!internal::GroupAmax(src, kNvfp4Group, in.dtype, &amax)) return false;
      if (ranges != nullptr) amax = ranges[r * n_groups + g];
      const uint8_t code = internal::Nvfp4ScaleCode(amax, gs, in.dtype);
      out.out[1][r * n_groups + g] = code;
      // _quantize: eff = scale / global_scale (f32), then x / eff (f32).
      const float eff = E4M3ToF32(code) / gs;
      uint8_t* dst = out.out[0] + (r * in.cols + g * kNvfp4Group) / 2;
      for (size_t i = 0; i < kNvfp4Group; i += 2) {
        const uint8_t lo = internal::Fp4Nibble(internal::ElementAt(src, i, in.dtype) / eff);
        const uint8_t hi = internal::Fp4Nibble(internal::ElementAt(src, i + 1, in.dtype) / eff);
        dst[i / 2] = static_cast<uint8_t>(lo | (hi << 4));  // even element in the low nibble
      }
    }
  }
  return true;
}

// MXFP4 (fp4 = true) and MXFP8 references; `ranges` as for Nvfp4Scalar.
bool QuantizeMxScalar(const WeightChunk& in, const float* ranges, const ChunkOutputs& out,
                      bool fp4) {
  if (!Valid(in, kMxGroup)) return false;
  const size_t esz = DTypeBits(in.dtype) / 8;
  const size_t n_groups = in.cols / kMxGroup;
  for (size_t r = 0; r < in.rows; ++r) {
    for (size_t g = 0; g < n_groups; ++g) {
      const uint8_t* src = in.data + (r * in.cols + g * kMxGroup) * esz;
      float amax;
      if (!internal::GroupAmax(src, kMxGroup, in.dtype, &amax)) return false;
      if (ranges != nullptr) amax = ranges[r * n_groups + g];
      const internal::MxScale s = internal::MxScaleFor(
          amax, in.dtype, fp4 ? internal::kMxFp4Offset : internal::kMxFp8Offset);
      out.out[1][r * n_groups + g] = s.stored;
      for (size_t i = 0; i < kMxGroup; ++i) {
        // _quantize: x / scale in D (f32 division rounded to D), clamp, cast.
        const float v = internal::RoundToDType(internal::ElementAt(src, i, in.dtype) / s.scale,
                                               in.dtype);
        const size_t c = g * kMxGroup + i;
        if (fp4) {
          uint8_t& byte = out.out[0][(r * in.cols + c) / 2];
          const uint8_t nibble = internal::Fp4Nibble(v);
          byte = (c % 2 == 0) ? nibble : static_cast<uint8_t>(byte | (nibble << 4));
        } else {
          const float clamped = std::min(std::max(v, -internal::kE4M3Max), internal::kE4M3Max);
          out.out[0][r * in.cols + c] = F32ToE4M3(clamped);
        }
      }
    }
  }
  return true;
}

}  // namespace

bool QuantizeNvfp4Scalar(const WeightChunk& in, const ChunkOutputs& out) {
  return Nvfp4Scalar(in, nullptr, out);
}

bool QuantizeMxfp4Scalar(const WeightChunk& in, const ChunkOutputs& out) {
  return QuantizeMxScalar(in, nullptr, out, /*fp4=*/true);
}

bool QuantizeMxfp8Scalar(const WeightChunk& in, const ChunkOutputs& out) {
  return QuantizeMxScalar(in, nullptr, out, /*fp4=*/false);
}

bool QuantizeNvfp4RangesScalar(const WeightChunk& in, const float* ranges,
                               const ChunkOutputs& out) {
  return Nvfp4Scalar(in, ranges, out);
}

bool QuantizeMxfp4RangesScalar(const WeightChunk& in, const float* ranges,
                               const ChunkOutputs& out) {
  return QuantizeMxScalar(in, ranges, out, /*fp4=*/true);
}

bool QuantizeNvfp4Ranges(const WeightChunk& in, const float* ranges, const ChunkOutputs& out,
                         bool finite) {
  if (!Valid(in, kNvfp4Group)) return false;
  // An infinite range (QuantizeChosen's where expand > 1 rounds one up past D's largest
  // value) is outside what the kernels' scale codes and reciprocals derive from the
  // reference's divisions (its bytes differ at the global scale 0 such a fused set gets):
  // such a chunk takes the reference itself, which checks the rows whatever `finite` says.
  const size_t n = in.rows * (in.cols / kNvfp4Group);
  if (!std::all_of(ranges, ranges + n, [](float r) { return std::isfinite(r); })) {
    return QuantizeNvfp4RangesScalar(in, ranges, out);
  }
  return HWY_DYNAMIC_DISPATCH(Nvfp4RangesKernel)(in, ranges, out, finite);
}

bool QuantizeMxfp4Ranges(const WeightChunk& in, const float* ranges, const ChunkOutputs& out,
                         bool finite) {
  return Valid(in, kMxGroup) &&
         HWY_DYNAMIC_DISPATCH(Mxfp4RangesKernel)(in, ranges, out, finite);
}

bool QuantizeNvfp4RangeBits(const WeightChunk& in, const uint8_t* ranges, const ChunkOutputs& out,
                            bool finite) {
  return Valid(in, kNvfp4Group) &&
         HWY_DYNAMIC_DISPATCH(Nvfp4RangeBitsKernel)(in, ranges, out, finite);
}

bool QuantizeMxfp4RangeBits(const WeightChunk& in, const uint8_t* ranges, const ChunkOutputs& out,
                            bool finite) {
  return Valid(in, kMxGroup) &&
         HWY_DYNAMIC_DISPATCH(Mxfp4RangeBitsKernel)(in, ranges, out, finite);
}

float Mxfp4GroupScale(float amax, DType dtype) {
  return internal::MxScaleFor(amax, dtype, internal::kMxFp4Offset).scale;
}

float RoundToE2M1(float v) {
  // cast_to_fp4's table (E2M1 magnitudes by index), signed as torch.sign(v) * |r|.
  static constexpr float kValue[8] = {0.f, 0.5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f};
  const uint8_t nibble = internal::Fp4Nibble(v);
  const float m = kValue[nibble & 7];
  return (nibble & 8) ? -m : m;
}

bool AbsMaxScalar(const WeightChunk& in, float* amax) {
  if (!internal::IsSupported(in.dtype)) return false;
  return internal::GroupAmax(in.data, in.rows * in.cols, in.dtype, amax);
}

float Nvfp4GlobalScale(float amax, DType dtype) {
  // generate_gparam: clamp(max_val_pos, min=finfo(D).tiny), then 448 * 6 / A, which Python
  // evaluates as A.reciprocal() * 2688, each op in D (f32 arithmetic rounded to D).
  const float a = std::max(amax, internal::Tiny(dtype));
  const float recip = internal::RoundToDType(1.0f / a, dtype);
  const float gs = internal::RoundToDType(recip * (internal::kE4M3Max * internal::kFp4Max), dtype);
  // nan_to_num(nan=1, posinf=1, neginf=1), then .to(float32) (exact).
  return std::isfinite(gs) ? gs : 1.0f;
}

}  // namespace quench::fp4
#endif  // HWY_ONCE
