// Integer weight quantization (int-quantized and pack-quantized formats): the scalar reference
// (the definition) and the Highway kernels, compiled once per target through Highway's
// foreach_target skeleton.
//
// The definition, as compressed-tensors 0.19.0 / llm-compressor 0.14.0.1 / torch 2.13.0 (CPU,
// eager) compute it for a weight in dtype D (bf16, f16 or f32); RNE_D(y) means y evaluated in
// f32 with IEEE arithmetic, then rounded to D to nearest even (torch's reduced-float
// elementwise ops on CPU). See docs/reference-notes.md sections 10.2 (symmetric), 10.3
// (asymmetric) and 10.4 (packing), and 3.1. Per group of group_size columns of a row (or
// per row, channel strategy), with qmin = -2^(b-1), qmax = 2^(b-1) - 1:
//   mn = min(min x, 0), mx = max(max x, 0)                 (observer amin/amax, exact in D)
//   symmetric:  scale = RNE_D(max(|mn|, |mx|) / ((qmax - qmin) / 2)),  zp = 0
//   asymmetric: scale = RNE_D(RNE_D(mx - mn) / (qmax - qmin))
//               zp    = RNE_D(qmin - RNE_D(mn / scale)), clamped to [qmin, qmax], rounded
//                       half to even, cast to int8 -- all with the scale BEFORE the zero guard,
//                       so an all-zero group gives 0/0 = NaN, which the cast makes 0
//   zero guard: scale == 0 exactly -> eps(D)                (calculate_qparams step 5)
//   q = round_half_even(clamp(RNE_D(RNE_D(x / scale) + zp), qmin, qmax))  (asymmetric)
//   q = round_half_even(clamp(RNE_D(x / scale), qmin, qmax))               (symmetric)
// Packing (pack_to_int32, dense): u = q + 2^(b-1); element i of a row occupies bits
// [i*b, i*b + b) of the row's little-endian int32 word stream, zero padded, truncated to
// ceil(cols*b/32) words. Zero points are packed the same way down each column (dim 0).

#include "schemes/int.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <vector>

#include "schemes/float_formats.h"
#include "schemes/int4_bf16.h"
#include "schemes/int4_bf16_avx2.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/schemes/int.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/aligned_allocator.h"
#include "hwy/highway.h"
#include "schemes/rounding-inl.h"

#include "schemes/fp8_shared.h"  // ReciprocalIsExact, with its proof
#include "schemes/int_shared.h"

HWY_BEFORE_NAMESPACE();
namespace quench::intq {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
namespace rd = quench::HWY_NAMESPACE::rounding;

using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

template <DType D>
using Traits = rd::Traits<D>;

// Horizontal max / min of 16- or 32-bit lanes, through 32-bit lanes (Highway 1.0.3 has
// MaxOfLanes for 16-bit lanes on some targets only). Runs once per group.
template <class DT>
HWY_INLINE hn::TFromD<DT> ReduceMax(DT dt, hn::Vec<DT> v) {
  using T = hn::TFromD<DT>;
  if constexpr (sizeof(T) == 4 || HWY_TARGET == HWY_SCALAR) {
    return hn::GetLane(hn::MaxOfLanes(dt, v));
  } else {
    const hn::Repartition<hwy::MakeWide<T>, DT> dw;  // u32 or i32
    const auto w = hn::BitCast(dw, v);
    // Lane 2k in the low half (sign- or zero-extended by the shift pair), 2k+1 in the high.
    const auto lo = hn::ShiftRight<16>(hn::ShiftLeft<16>(w));
    const auto hi = hn::ShiftRight<16>(w);
    return static_cast<T>(hn::GetLane(hn::MaxOfLanes(dw, hn::Max(lo, hi))));
  }
}
template <class DT>
HWY_INLINE hn::TFromD<DT> ReduceMin(DT dt, hn::Vec<DT> v) {
  using T = hn::TFromD<DT>;
  if constexpr (sizeof(T) == 4 || HWY_TARGET == HWY_SCALAR) {
    return hn::GetLane(hn::MinOfLanes(dt, v));
  } else {
    const hn::Repartition<hwy::MakeWide<T>, DT> dw;
    const auto w = hn::BitCast(dw, v);
    const auto lo = hn::ShiftRight<16>(hn::ShiftLeft<16>(w));
    const auto hi = hn::ShiftRight<16>(w);
    return static_cast<T>(hn::GetLane(hn::MinOfLanes(dw, hn::Min(lo, hi))));
  }
}

// Loads one vector of raw elements at p + i (unaligned), or, for the last partial vector
// (n - i < lanes), a copy zero-padded to a whole vector: zero patterns change neither an abs
// max nor min(min x, 0) / max(max x, 0).
template <class DT>
HWY_INLINE hn::Vec<DT> LoadPadded(DT dt, const hn::TFromD<DT>* p, size_t n) {
  using T = hn::TFromD<DT>;
  if (n >= hn::Lanes(dt)) return hn::LoadU(dt, p);
  HWY_ALIGN T buf[HWY_MAX_BYTES / sizeof(T)] = {};
  std::memcpy(buf, p, n * sizeof(T));
  return hn::Load(dt, buf);
}

// Symmetric observation: the max of the abs bit patterns over n elements at p. For finite
// values it orders like |x|, so it is max(|mn|, |mx|); a result >= kInfBits means the run
// holds an Inf or NaN.
template <DType D>
HWY_INLINE typename Traits<D>::T AbsBitsMax(const uint8_t* p, size_t n) {
  using T = typename Traits<D>::T;
  const hn::ScalableTag<T> dt;
  const size_t lanes = hn::Lanes(dt);
  const T* src = reinterpret_cast<const T*>(p);
  const auto mask = hn::Set(dt, Traits<D>::kAbsMask);
  auto acc0 = hn::Zero(dt), acc1 = hn::Zero(dt), acc2 = hn::Zero(dt), acc3 = hn::Zero(dt);
  size_t i = 0;
  for (; i + 4 * lanes <= n; i += 4 * lanes) {
    acc0 = hn::Max(acc0, hn::And(hn::LoadU(dt, src + i), mask));
    acc1 = hn::Max(acc1, hn::And(hn::LoadU(dt, src + i + lanes), mask));
    acc2 = hn::Max(acc2, hn::And(hn::LoadU(dt, src + i + 2 * lanes), mask));
    acc3 = hn::Max(acc3, hn::And(hn::LoadU(dt, src + i + 3 * lanes), mask));
  }
  for (; i < n; i += lanes) {
    acc0 = hn::Max(acc0, hn::And(LoadPadded(dt, src + i, n - i), mask));
  }
  return ReduceMax(dt, hn::Max(hn::Max(acc0, acc1), hn::Max(acc2, acc3)));
}

// Sign-magnitude bits -> a signed key that orders like the value: key = bits for x >= +0,
// key = -1 - |bits| for x <= -0 (the magnitude bits flipped under the sign bit).
template <class DS>
HWY_INLINE hn::Vec<DS> OrderedKey(DS ds, hn::Vec<DS> bits) {
  using S = hn::TFromD<DS>;
  constexpr int kSignShift = sizeof(S) * 8 - 1;
  const auto mag_mask = hn::Set(ds, static_cast<S>(hwy::LimitsMax<S>()));
  return hn::Xor(bits, hn::And(hn::ShiftRight<kSignShift>(bits), mag_mask));
}

// Asymmetric observation: min and max of n elements at p as ordered keys; false if the run
// holds an Inf or NaN (keys beyond those of +-Inf).
template <DType D>
HWY_INLINE bool KeyMinMax(const uint8_t* p, size_t n, typename Traits<D>::S* kmin,
                          typename Traits<D>::S* kmax) {
  using S = typename Traits<D>::S;
  const hn::ScalableTag<S> ds;
  const size_t lanes = hn::Lanes(ds);
  const S* src = reinterpret_cast<const S*>(p);
  auto mn0 = hn::Zero(ds), mn1 = hn::Zero(ds), mx0 = hn::Zero(ds), mx1 = hn::Zero(ds);
  size_t i = 0;
  for (; i + 2 * lanes <= n; i += 2 * lanes) {
    const auto k0 = OrderedKey(ds, hn::LoadU(ds, src + i));
    const auto k1 = OrderedKey(ds, hn::LoadU(ds, src + i + lanes));
    mn0 = hn::Min(mn0, k0);
    mx0 = hn::Max(mx0, k0);
    mn1 = hn::Min(mn1, k1);
    mx1 = hn::Max(mx1, k1);
  }
  for (; i < n; i += lanes) {
    const auto k = OrderedKey(ds, LoadPadded(ds, src + i, n - i));
    mn0 = hn::Min(mn0, k);
    mx0 = hn::Max(mx0, k);
  }
  *kmin = ReduceMin(ds, hn::Min(mn0, mn1));
  *kmax = ReduceMax(ds, hn::Max(mx0, mx1));
  constexpr S kInf = static_cast<S>(Traits<D>::kInfBits);
  return *kmax < kInf && *kmin > static_cast<S>(-1 - kInf);
}

// The f32 value of a finite element bit pattern of dtype D.
template <DType D>
HWY_INLINE float BitsToValue(uint32_t bits) {
  if constexpr (D == DType::kBF16) return std::bit_cast<float>(bits << 16);
  if constexpr (D == DType::kF16) return F16ToF32(static_cast<uint16_t>(bits));
  return std::bit_cast<float>(bits);
}

// Inverse of OrderedKey, as the f32 value of the element.
template <DType D>
HWY_INLINE float KeyToValue(typename Traits<D>::S key) {
  using T = typename Traits<D>::T;
  constexpr T kSign = static_cast<T>(~Traits<D>::kAbsMask);
  const T bits = key >= 0 ? static_cast<T>(key) : static_cast<T>(kSign | static_cast<T>(-1 - key));
  return BitsToValue<D>(bits);
}

// calculate_qparams (internal::ComputeParams, the definition) for n groups at once, from the
// groups' observed min and max (asymmetric) or abs max (symmetric; `mx` only), values of D.
// Lane for lane the same IEEE operations and RNE_D roundings as the scalar function, so a
// row's groups share vector divisions instead of each running a dependent chain of two
// scalar divisions and five roundings, the kernel's costliest step. Reads and writes whole vectors:
// the arrays hold n rounded up to a multiple of Lanes(df) (padding lanes compute parameters nobody
// reads).
template <DType D, bool kSym>
HWY_INLINE void ComputeParamsRow(const float* mn_in, const float* mx_in, size_t n,
                                 const internal::Layout& l, float* scale_out, int32_t* zp_out) {
  const DF df;
  const hn::RebindToSigned<DF> di;
  const size_t lanes = hn::Lanes(df);
  const auto zero = hn::Zero(df);
  const float bit_range = static_cast<float>(l.qmax - l.qmin);
  const auto eps = hn::Set(df, internal::ScaleEps(D));
  const auto qmin = hn::Set(df, static_cast<float>(l.qmin));
  const auto qmax = hn::Set(df, static_cast<float>(l.qmax));
  for (size_t i = 0; i < n; i += lanes) {
    // mn = min(min x, 0), mx = max(max x, 0).
    const auto mx = hn::Max(hn::LoadU(df, mx_in + i), zero);
    VF scale;
    if constexpr (kSym) {
      // scale = RNE_D(max(|mn|, |mx|) / ((qmax - qmin) / 2)); the caller passes the abs max.
      scale = rd::RoundToDType<D>(df, hn::Div(mx, hn::Set(df, bit_range / 2.0f)));
      hn::StoreU(hn::Zero(di), di, zp_out + i);
    } else {
      const auto mn = hn::Min(hn::LoadU(df, mn_in + i), zero);
      // scale = RNE_D(RNE_D(mx - mn) / bit_range); zp from the scale before the zero guard.
      scale = rd::RoundToDType<D>(
          df, hn::Div(rd::RoundToDType<D>(df, hn::Sub(mx, mn)), hn::Set(df, bit_range)));
      const auto ratio = hn::Div(mn, scale);  // NaN for 0/0 (an all-zero group)
      const auto is_nan = hn::IsNaN(ratio);
      auto zp = rd::RoundToDType<D>(df, hn::Sub(qmin, rd::RoundToDType<D>(df, ratio)));
      // clamp, round half to even; a NaN zero point casts to 0 (torch 2.13, x86 CPU). The
      // NaN lanes are chosen by the mask, whatever Min / Max made of them.
      zp = hn::Round(hn::Min(hn::Max(zp, qmin), qmax));
      zp = hn::IfThenZeroElse(is_nan, zp);
      hn::StoreU(hn::ConvertTo(di, zp), di, zp_out + i);
    }
    // Zero guard: a scale of exactly 0 becomes eps(D).
    hn::StoreU(hn::IfThenElse(hn::Eq(scale, zero), eps, scale), df, scale_out + i);
  }
}

// The low byte of q + offset for one vector, in the low byte of each u32 lane:
// v = RNE_D(x / scale) (IEEE f32 division), asymmetric v = RNE_D(v + zp), clamp to
// [qmin, qmax] (v is never NaN: x finite, scale > 0), then torch.round. The rounding adds
// 1.5 * 2^23 + offset: on [2^23, 2^24) the f32 ulp is 1, so the FPU's RNE addition rounds v
// to an integer, ties to the even one (the constant is even, so the parity of the sum is
// that of round(v)); the sum's mantissa is then 2^22 + offset + round(v), whose low byte is
// (round(v) + offset) mod 256: the int8 value (offset 0) or the packing's u (2^(b-1)).
// kByRecip: `scale` holds RN_f32(1 / scale) and the quotient is x times it, which gives the
// division's RNE_D(x / scale) for bf16 x and a scale that fp8::internal::ReciprocalIsExact
// accepts (fp8_shared.h has the proof; every later step is a function of that bf16 value).
template <DType D, bool kSym, bool kByRecip = false>
HWY_INLINE hn::Vec<hn::RebindToUnsigned<DF>> QuantizeLanes(DF df, VF x, VF scale, VF zp, VF lo,
                                                           VF hi, VF magic) {
  VF v = rd::RoundToDType<D>(df, kByRecip ? hn::Mul(x, scale) : hn::Div(x, scale));
  if constexpr (!kSym) v = rd::RoundToDType<D>(df, hn::Add(v, zp));
  v = hn::Min(hn::Max(v, lo), hi);
  return hn::BitCast(hn::RebindToUnsigned<DF>(), hn::Add(v, magic));
}

// Quantizes n elements of dtype D at src with one group's parameters, writing the n low
// bytes of q + offset to dst (offset 0: int8 two's complement; 2^(b-1): the packing's u).
template <DType D, bool kSym>
HWY_INLINE void QuantizeRun(const uint8_t* src, size_t n, const internal::GroupParams& p,
                            const internal::Layout& l, int offset, uint8_t* dst) {
  constexpr size_t kEsz = sizeof(typename Traits<D>::T);
  const DF df;
  const hn::Rebind<uint8_t, DF> d8;
  const size_t lanes = hn::Lanes(df);
  const VF scale = hn::Set(df, p.scale);
  const VF zp = hn::Set(df, static_cast<float>(p.zp));
  const VF lo = hn::Set(df, static_cast<float>(l.qmin));
  const VF hi = hn::Set(df, static_cast<float>(l.qmax));
  const VF magic = hn::Set(df, 12582912.0f + static_cast<float>(offset));  // 1.5 * 2^23
  auto store = [&](hn::Vec<hn::RebindToUnsigned<DF>> q, uint8_t* to) {
    hn::StoreU(hn::TruncateTo(d8, q), d8, to);
  };
  size_t i = 0;
  for (; i + 2 * lanes <= n; i += 2 * lanes) {
    const auto q0 = QuantizeLanes<D, kSym>(df, rd::LoadF32<D>(df, src + i * kEsz), scale, zp, lo,
                                           hi, magic);
    const auto q1 = QuantizeLanes<D, kSym>(df, rd::LoadF32<D>(df, src + (i + lanes) * kEsz),
                                           scale, zp, lo, hi, magic);
    store(q0, dst + i);
    store(q1, dst + i + lanes);
  }
  for (; i + lanes <= n; i += lanes) {
    store(QuantizeLanes<D, kSym>(df, rd::LoadF32<D>(df, src + i * kEsz), scale, zp, lo, hi,
                                 magic),
          dst + i);
  }
  if (i < n) {
    // Tail: the same vector code on a zero-padded copy, keeping only the real lanes.
    HWY_ALIGN uint8_t in_buf[HWY_MAX_BYTES] = {};
    HWY_ALIGN uint8_t out_buf[HWY_MAX_BYTES];
    std::memcpy(in_buf, src + i * kEsz, (n - i) * kEsz);
    store(QuantizeLanes<D, kSym>(df, rd::LoadF32<D>(df, in_buf), scale, zp, lo, hi, magic),
          out_buf);
    std::memcpy(dst + i, out_buf, n - i);
  }
}

// bf16, 4 bits, packed: quantizes n elements at src (n a multiple of 2 * Lanes(df)) with
// one group's parameters straight into n / 2 packed bytes at dst. Each u32 lane holds an
// (even, odd) pair of elements, so the two codes u = q + 8 of a lane form one output byte
// (even in the low nibble, pack_to_int32's order) with no pass through a row of u bytes.
// The low byte of QuantizeLanes's result is u (< 16, the bits above it are the magic sum's).
template <bool kSym, bool kByRecip>
HWY_INLINE void QuantizePairs4(const uint8_t* src, size_t n, float by,
                               const internal::GroupParams& p, uint8_t* dst) {
  const DF df;
  const hn::RebindToUnsigned<DF> du;
  const hn::Rebind<uint8_t, DF> d8;
  const size_t lanes = hn::Lanes(df);
  const VF vby = hn::Set(df, by);
  const VF zp = hn::Set(df, static_cast<float>(p.zp));
  const VF lo = hn::Set(df, -8.0f);
  const VF hi = hn::Set(df, 7.0f);
  const VF magic = hn::Set(df, 12582912.0f + 8.0f);  // 1.5 * 2^23 plus the offset 8
  const auto high_half = hn::Set(du, 0xFFFF0000u);
  for (size_t i = 0; i < n; i += 2 * lanes) {
    const auto pair = hn::LoadU(du, reinterpret_cast<const uint32_t*>(src + 2 * i));
    const VF even = hn::BitCast(df, hn::ShiftLeft<16>(pair));
    const VF odd = hn::BitCast(df, hn::And(pair, high_half));
    const auto ue = QuantizeLanes<DType::kBF16, kSym, kByRecip>(df, even, vby, zp, lo, hi, magic);
    const auto uo = QuantizeLanes<DType::kBF16, kSym, kByRecip>(df, odd, vby, zp, lo, hi, magic);
    hn::StoreU(hn::TruncateTo(d8, hn::Or(ue, hn::ShiftLeft<4>(uo))), d8, dst + i / 2);
  }
}

// Packs 8 values of B bits (one per byte of a 64-bit lane, element k in byte k) into the low
// 8*B bits, element k at bits [k*B, k*B + B): pairs, then quads, then the two halves. Eight
// elements are exactly B bytes of the little-endian word stream, whatever B.
template <int B, class V, class D64>
HWY_INLINE V Compact8(D64 d64, V x) {
  using T = uint64_t;
  x = hn::Or(hn::And(x, hn::Set(d64, T{0x00FF00FF00FF00FF})),
             hn::ShiftRight<8 - B>(hn::And(x, hn::Set(d64, T{0xFF00FF00FF00FF00}))));
  x = hn::Or(hn::And(x, hn::Set(d64, T{0x0000FFFF0000FFFF})),
             hn::ShiftRight<16 - 2 * B>(hn::And(x, hn::Set(d64, T{0xFFFF0000FFFF0000}))));
  return hn::Or(hn::And(x, hn::Set(d64, T{0x00000000FFFFFFFF})),
                hn::ShiftRight<32 - 4 * B>(hn::And(x, hn::Set(d64, T{0xFFFFFFFF00000000}))));
}

// Packs n8 offset values (n8 a multiple of 8) at u into n8 / 8 * B bytes at dst. For B other
// than 2 and 4, each lane is written with an 8-byte store, so dst needs 8 bytes of slack.
template <int B>
HWY_INLINE void PackRow(const uint8_t* u, size_t n8, uint8_t* dst) {
  size_t i = 0;  // in elements (bytes of u)
#if HWY_TARGET != HWY_SCALAR  // (one-lane vectors cannot hold 8 bytes as u8 lanes)
  const hn::ScalableTag<uint64_t> d64;
  const hn::Repartition<uint8_t, decltype(d64)> d8;
  const size_t lanes = hn::Lanes(d64);
  for (; i + 8 * lanes <= n8; i += 8 * lanes, dst += B * lanes) {
    const auto x = Compact8<B>(d64, hn::BitCast(d64, hn::LoadU(d8, u + i)));
    if constexpr (B == 4) {
      const hn::Rebind<uint32_t, decltype(d64)> d32;
      hn::StoreU(hn::TruncateTo(d32, x), d32, reinterpret_cast<uint32_t*>(dst));
    } else if constexpr (B == 2) {
      const hn::Rebind<uint16_t, decltype(d64)> d16;
      hn::StoreU(hn::TruncateTo(d16, x), d16, reinterpret_cast<uint16_t*>(dst));
    } else {
      HWY_ALIGN uint64_t buf[HWY_MAX_BYTES / 8];
      hn::Store(x, d64, buf);
      for (size_t k = 0; k < lanes; ++k) std::memcpy(dst + k * B, &buf[k], 8);
    }
  }
#endif
  // Remaining 8-element groups, one u64 at a time (same arithmetic on a one-lane view).
  const hn::CappedTag<uint64_t, 1> d1;
  for (; i < n8; i += 8, dst += B) {
    uint64_t x;
    std::memcpy(&x, u + i, 8);
    x = hn::GetLane(Compact8<B>(d1, hn::Set(d1, x)));
    std::memcpy(dst, &x, B);
  }
}

// Dispatches PackRow on the runtime bit width (2..7; 8 bits need no packing).
HWY_INLINE void PackRowBits(int bits, const uint8_t* u, size_t n8, uint8_t* dst) {
  switch (bits) {
    case 2: return PackRow<2>(u, n8, dst);
    case 3: return PackRow<3>(u, n8, dst);
    case 4: return PackRow<4>(u, n8, dst);
    case 5: return PackRow<5>(u, n8, dst);
    case 6: return PackRow<6>(u, n8, dst);
    default: return PackRow<7>(u, n8, dst);
  }
}

// Smoothing's column factors (WeightChunk::col_scale) folded into one row: dst[c] =
// RNE_D(x[c] * s[c]) (the f32 product, rounded to D) as raw D elements, so that the passes
// below read the smoothed row from L1 as they read a source row. False when a product is
// NaN or rounds to Inf (the chunk is refused, as the definition refuses it). BF16 and F32
// store such a product as NaN or Inf, which the observation pass then refuses as it refuses
// a source row's; F16 checks here, because Highway's f16 demotion without F16C saturates
// instead of giving Inf.
template <DType D>
HWY_INLINE bool ScaleRow(const uint8_t* src, const float* s, size_t n, uint8_t* dst) {
  using T = typename Traits<D>::T;
  constexpr size_t kEsz = sizeof(T);
  const DF df;
  const size_t lanes = hn::Lanes(df);
  auto bad = hn::Zero(df);  // F16: lanes that saw a non-finite product, all bits set
  auto one = [&](const uint8_t* from, const float* sc, uint8_t* to) {
    const VF p = hn::Mul(rd::LoadF32<D>(df, from), hn::LoadU(df, sc));
    // RoundToDType is defined for non-NaN lanes: a NaN product is kept as it is.
    const VF v = hn::IfThenElse(hn::IsNaN(p), p, rd::RoundToDType<D>(df, p));
    if constexpr (D == DType::kBF16) {
      // v is a bf16 value (or NaN): its upper half, exactly.
      const hn::RebindToUnsigned<DF> du;
      const hn::Rebind<uint16_t, DF> d16;
      hn::StoreU(hn::TruncateTo(d16, hn::ShiftRight<16>(hn::BitCast(du, v))), d16,
                 reinterpret_cast<uint16_t*>(to));
    } else if constexpr (D == DType::kF16) {
      // v is a finite binary16 value (other lanes flagged): the demotion is exact.
      bad = hn::Or(bad, hn::VecFromMask(df, hn::Not(hn::IsFinite(v))));
      const hn::Rebind<hwy::float16_t, DF> d16;
      hn::StoreU(hn::DemoteTo(d16, v), d16, reinterpret_cast<hwy::float16_t*>(to));
    } else {
      hn::StoreU(v, df, reinterpret_cast<float*>(to));
    }
  };
  size_t i = 0;
  for (; i + lanes <= n; i += lanes) one(src + i * kEsz, s + i, dst + i * kEsz);
  if (i < n) {
    // Tail: zero-padded copies of the elements and factors, only the real lanes kept.
    HWY_ALIGN uint8_t in_buf[HWY_MAX_BYTES] = {};
    HWY_ALIGN float s_buf[HWY_MAX_BYTES / sizeof(float)] = {};
    HWY_ALIGN uint8_t out_buf[HWY_MAX_BYTES];
    std::memcpy(in_buf, src + i * kEsz, (n - i) * kEsz);
    std::memcpy(s_buf, s + i, (n - i) * sizeof(float));
    one(in_buf, s_buf, out_buf);
    std::memcpy(dst + i * kEsz, out_buf, (n - i) * kEsz);
  }
  return hn::AllFalse(df, hn::MaskFromVec(bad));
}

template <DType D, bool kSym>
bool QuantizeImpl(const WeightChunk& in, const ChunkOutputs& out, bool packed) {
  internal::Layout l;
  if (!internal::MakeLayout(in, &l)) return false;
  constexpr size_t kEsz = sizeof(typename Traits<D>::T);
  const size_t cols = in.cols;
  const size_t row_bytes = cols * kEsz;
  const int offset = packed ? (1 << (l.bits - 1)) : 0;
  // Packed rows of fewer than 8 bits go through a row of offset values u, zero padded to a
  // multiple of 8 (the reference pads with raw 0 after the offset), plus the packer's slack.
  const bool via_buffer = packed && l.bits != 8;
  const size_t n8 = internal::CeilDiv(cols, 8) * 8;
  const size_t packed_bytes = n8 / 8 * static_cast<size_t>(l.bits);
  const size_t out_row_bytes = l.words_per_row * 4;
  // Pack straight into the output when the stream is exactly the row's words and the stores
  // stay inside it (B = 2, 4 write only their own bytes); else into a scratch row.
  const bool direct = packed_bytes == out_row_bytes && (l.bits == 2 || l.bits == 4);
  // bf16 int4 in whole vectors of pairs: quantized and packed in one step (QuantizePairs4).
  // A group that is a multiple of 8 columns makes the row exactly cols / 2 bytes of words.
  const bool pairs4 = D == DType::kBF16 && packed && l.bits == 4 &&
                      l.group % (2 * hn::Lanes(DF())) == 0 && l.group % 8 == 0;
  hwy::AlignedFreeUniquePtr<uint8_t[]> ubuf, pbuf;
  if (via_buffer) {
    ubuf = hwy::AllocateAligned<uint8_t>(n8);
    // The scratch row: the stream, the 8-byte stores' slack, and the row's last word. Bytes
    // past the stream are only ever written with zeros (Compact8 leaves the high bits 0), so
    // zeroing once gives the zero padding of the last word.
    const size_t pbuf_bytes = std::max(packed_bytes + 8, out_row_bytes);
    if (!direct) pbuf = hwy::AllocateAligned<uint8_t>(pbuf_bytes);
    if (!ubuf || (!direct && !pbuf)) throw std::bad_alloc();  // false means NaN/Inf
    std::memset(ubuf.get() + cols, 0, n8 - cols);
    if (!direct) std::memset(pbuf.get(), 0, pbuf_bytes);
  }
  // The current row's observations and parameters, one slot per group, padded to whole
  // vectors for ComputeParamsRow (the padding lanes' parameters are never read).
  const size_t n_padded = internal::CeilDiv(l.n_groups, hn::Lanes(DF())) * hn::Lanes(DF());
  std::vector<float> mn(n_padded, 0.0f), mx(n_padded, 0.0f), scale(n_padded);
  std::vector<int32_t> zp(n_padded);
  std::vector<int8_t> zps;  // [rows, n_groups], packed asymmetric only
  if (!kSym && packed) zps.resize(in.rows * l.n_groups);
  const size_t group_bytes = l.group * kEsz;
  // With column factors, each row is smoothed into `srow` first (ScaleRow) and quantized
  // from there; the next source row is still the one prefetched.
  hwy::AlignedFreeUniquePtr<uint8_t[]> srow;
  if (in.col_scale != nullptr) {
    srow = hwy::AllocateAligned<uint8_t>(row_bytes);
    if (!srow) throw std::bad_alloc();
  }
  for (size_t r = 0; r < in.rows; ++r) {
    const uint8_t* src_row = in.data + r * row_bytes;
    const uint8_t* row = src_row;
    if (in.col_scale != nullptr) {
      if (!ScaleRow<D>(src_row, in.col_scale, cols, srow.get())) return false;
      row = srow.get();
    }
    uint8_t* qrow = packed ? (via_buffer ? ubuf.get() : out.out[0] + r * out_row_bytes)
                           : out.out[0] + r * cols;
    // Pass 1: every group's observation, then all the row's parameters in vectors.
    for (size_t g = 0; g < l.n_groups; ++g) {
      const uint8_t* src = row + g * group_bytes;
      if constexpr (kSym) {
        const auto amax_bits = AbsBitsMax<D>(src, l.group);
        if (amax_bits >= Traits<D>::kInfBits) return false;  // Inf or NaN in the group
        mx[g] = BitsToValue<D>(amax_bits);
      } else {
        typename Traits<D>::S kmin, kmax;
        if (!KeyMinMax<D>(src, l.group, &kmin, &kmax)) return false;
        mn[g] = KeyToValue<D>(kmin);
        mx[g] = KeyToValue<D>(kmax);
      }
    }
    ComputeParamsRow<D, kSym>(mn.data(), mx.data(), n_padded, l, scale.data(), zp.data());
    for (size_t g = 0; g < l.n_groups; ++g) {
      if constexpr (!kSym) {
        const size_t zi = r * l.n_groups + g;
        if (packed) {
          zps[zi] = static_cast<int8_t>(zp[g]);
        } else {
          out.out[2][zi] = static_cast<uint8_t>(static_cast<int8_t>(zp[g]));
        }
      }
      internal::StoreScale(out.out[1] + (r * l.n_groups + g) * kEsz, scale[g], D);
    }
    // Pass 2: quantize the row (still in L1 / L2) group by group.
    const uint8_t* next_row = r + 1 < in.rows ? src_row + row_bytes : nullptr;
    if (pairs4) {
      uint8_t* dst = out.out[0] + r * out_row_bytes;
      for (size_t g = 0; g < l.n_groups; ++g) {
        if (next_row != nullptr) rd::PrefetchBytes(next_row + g * group_bytes, group_bytes);
        const internal::GroupParams gp{scale[g], zp[g]};
        uint8_t* gdst = dst + g * l.group / 2;
        if (fp8::internal::ReciprocalIsExact(scale[g], DType::kBF16)) {
          QuantizePairs4<kSym, true>(row + g * group_bytes, l.group, 1.0f / scale[g], gp, gdst);
        } else {
          QuantizePairs4<kSym, false>(row + g * group_bytes, l.group, scale[g], gp, gdst);
        }
      }
      continue;
    }
    for (size_t g = 0; g < l.n_groups; ++g) {
      if (next_row != nullptr) rd::PrefetchBytes(next_row + g * group_bytes, group_bytes);
      QuantizeRun<D, kSym>(row + g * group_bytes, l.group, internal::GroupParams{scale[g], zp[g]},
                           l, offset, qrow + g * l.group);
    }
    if (packed && !via_buffer) {
      // 8 bits: the u bytes are the words' little-endian bytes; zero the padding up to the
      // row's last word (pack_to_int32 pads the row with raw 0).
      std::memset(qrow + cols, 0, out_row_bytes - cols);
    } else if (via_buffer) {
      uint8_t* dst = out.out[0] + r * out_row_bytes;
      if (direct) {
        PackRowBits(l.bits, ubuf.get(), n8, dst);
      } else {
        PackRowBits(l.bits, ubuf.get(), n8, pbuf.get());
        std::memcpy(dst, pbuf.get(), out_row_bytes);  // truncated to ceil(cols*b/32) words
      }
    }
  }
  if (!kSym && packed) {
    internal::PackZeroPoints(zps.data(), in.rows, l.n_groups, l.bits, out.out[2]);
  }
  return true;
}

template <bool kPacked>
bool QuantizeKernel(const WeightChunk& in, const ChunkOutputs& out) {
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
  // bf16 symmetric int4 on CPUs with AVX-512 BF16: about half this target's CPU
  // (int4_bf16.h). Taken from the AVX-512 targets only, so that tests running the lesser
  // targets still run their Highway code.
  if (kPacked && Int4Bf16Handles(in)) return QuantizeInt4Bf16(in, out);
#elif HWY_TARGET == HWY_AVX2
  // bf16 int4 on the AVX2 target: codes re-paired into 16-bit lanes
  // (int4_bf16_avx2.h), taken from this target only for the same reason.
  if (kPacked && Int4Bf16Avx2Handles(in)) return QuantizeInt4Bf16Avx2(in, out);
#endif
  const bool sym = in.params.symmetric;
  switch (in.dtype) {
    case DType::kBF16:
      return sym ? QuantizeImpl<DType::kBF16, true>(in, out, kPacked)
                 : QuantizeImpl<DType::kBF16, false>(in, out, kPacked);
    case DType::kF16:
      return sym ? QuantizeImpl<DType::kF16, true>(in, out, kPacked)
                 : QuantizeImpl<DType::kF16, false>(in, out, kPacked);
    case DType::kF32:
      return sym ? QuantizeImpl<DType::kF32, true>(in, out, kPacked)
                 : QuantizeImpl<DType::kF32, false>(in, out, kPacked);
    default: return false;
  }
}

bool QuantizeUnpackedKernel(const WeightChunk& in, const ChunkOutputs& out) {
  return QuantizeKernel<false>(in, out);
}
bool QuantizePackedKernel(const WeightChunk& in, const ChunkOutputs& out) {
  return QuantizeKernel<true>(in, out);
}

}  // namespace HWY_NAMESPACE
}  // namespace quench::intq
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace quench::intq {

HWY_EXPORT(QuantizeUnpackedKernel);
HWY_EXPORT(QuantizePackedKernel);

bool QuantizeUnpacked(const WeightChunk& in, const ChunkOutputs& out) {
  return HWY_DYNAMIC_DISPATCH(QuantizeUnpackedKernel)(in, out);
}

bool QuantizePacked(const WeightChunk& in, const ChunkOutputs& out) {
  return HWY_DYNAMIC_DISPATCH(QuantizePackedKernel)(in, out);
}

namespace {

// Element (r, c) of the chunk as an exact f32; with column factors, the smoothed element
// RNE_D(x * col_scale[c]) (the f32 product, as calib::ApplySmoothOps computes it for f32
// factors, then rounded to the dtype).
float ElementAt(const WeightChunk& in, size_t r, size_t c) {
  const float x = ElementToF32(in.data, in.dtype, r * in.cols + c);
  if (in.col_scale == nullptr) return x;
  return internal::RoundToDType(x * in.col_scale[c], in.dtype);  // NaN stays NaN
}

// The definition, element by element (see the top of this file).
bool QuantizeScalar(const WeightChunk& in, const ChunkOutputs& out, bool packed) {
  internal::Layout l;
  if (!internal::MakeLayout(in, &l)) return false;
  const bool sym = in.params.symmetric;
  const size_t esz = DTypeBits(in.dtype) / 8;
  std::vector<int8_t> zps(in.rows * l.n_groups);
  std::vector<uint8_t> u(in.cols);
  for (size_t r = 0; r < in.rows; ++r) {
    for (size_t g = 0; g < l.n_groups; ++g) {
      const size_t c0 = g * l.group;
      // Observer (memoryless min-max): amin / amax over the group, in D (exact).
      float mn = ElementAt(in, r, c0);
      float mx = mn;
      for (size_t c = c0; c < c0 + l.group; ++c) {
        const float x = ElementAt(in, r, c);
        if (!std::isfinite(x)) return false;
        mn = std::min(mn, x);
        mx = std::max(mx, x);
      }
      const internal::GroupParams p = internal::ComputeParams(mn, mx, l, sym, in.dtype);
      internal::StoreScale(out.out[1] + (r * l.n_groups + g) * esz, p.scale, in.dtype);
      zps[r * l.n_groups + g] = static_cast<int8_t>(p.zp);
      for (size_t c = c0; c < c0 + l.group; ++c) {
        const int q = internal::QuantizeValue(ElementAt(in, r, c), p, l, sym, in.dtype);
        if (packed) {
          u[c] = static_cast<uint8_t>(q + (1 << (l.bits - 1)));  // pack_to_int32's offset
        } else {
          out.out[0][r * in.cols + c] = static_cast<uint8_t>(static_cast<int8_t>(q));
        }
      }
    }
    if (packed) {
      internal::PackRowScalar(u.data(), in.cols, l.bits, out.out[0] + r * l.words_per_row * 4);
    }
  }
  if (!sym) {
    if (packed) {
      internal::PackZeroPoints(zps.data(), in.rows, l.n_groups, l.bits, out.out[2]);
    } else {
      std::memcpy(out.out[2], zps.data(), zps.size());  // int8 [rows, n_groups], unpacked
    }
  }
  return true;
}

}  // namespace

bool QuantizeUnpackedScalar(const WeightChunk& in, const ChunkOutputs& out) {
  return QuantizeScalar(in, out, /*packed=*/false);
}

bool QuantizePackedScalar(const WeightChunk& in, const ChunkOutputs& out) {
  return QuantizeScalar(in, out, /*packed=*/true);
}

}  // namespace quench::intq
#endif  // HWY_ONCE
