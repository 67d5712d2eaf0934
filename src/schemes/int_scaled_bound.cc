// AWQ's row loss in f32 lanes with a proven bound (see int_scaled_bound.h), compiled once per
// Highway target through foreach_target.
//
// Why the f32 shortcuts give the definition's values (u = 2^-24, all values normal: see the
// ranges below). W s: the definition rounds the f64 product to f32, y = x(1 + a), |a| <= u
// (+ 2^-53); the kernel takes p = fl32(w * fl32(s)) = x(1 + b), |b| <= 2u + u^2. So
// |p - y| <= 3.01 u |x|, at most 3 ulps of p within its binade and 6 patterns across a
// binade boundary (ulps halve below a power of two). RNE to BF16 maps p and y to the same
// value unless a BF16 midpoint (an f32 whose low 16 bits are 0x8000) lies between them, so a
// lane whose pattern is more than 8 from every midpoint pattern is exact; the others are
// recomputed by the definition. (So the kernel rounds those lanes half up, by adding 0x8000
// to the pattern: that differs from RNE only on an exact tie, which is a near lane.) The same holds
// for ws / scale (as ws * fl32(1 / scale): two roundings of the reciprocal and product against one
// of the quotient) and for deq / s (deq * fl32(1 / s) against fl32(deq / s in f64)). Ranges: |w| in
// {0} U [2^-80, 2^80] (BoundRowOk), s in [2^-20, 2^20], so W s in {0} U [2^-100, 2^100]; group
// scales are checked in [2^-90, 2^90], so deq / s in {0} U [2^-110, 2^118], always normal. ws /
// scale may leave the normal range, but only where |q| < 0.5 or |q| > 2^99, where both round and
// clamp to the same code. deq = (v - zp) scale is exact in f32 (8-bit by 8-bit) as in the
// definition (for codes of at most 4 bits on 16 lanes, read from a per-group table of the
// 16 values); back = RNE(deq / s) is then the definition's BF16 value, and fl32(w - back)
// the f32 rounding of its exact f64 dW.
#include "schemes/int_scaled_bound.h"

#include <cmath>
#include <cstring>
#include <vector>

// Exactness of dW relies on each product being rounded on its own (no fused a * b + c).
#pragma GCC optimize("fp-contract=off")

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/schemes/int_scaled_bound.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "schemes/int_scaled-inl.h"  // hn, rd, iq; GroupParamsInRange

HWY_BEFORE_NAMESPACE();
namespace quench::intq {
namespace HWY_NAMESPACE {

// dW of lanes [c, c + N) by the definition (ScaledErrorRowScalar's loop), from the exact ws.
HWY_INLINE void ExactLanes(size_t c, size_t N, const double* s, const float* ws,
                           const iq::GroupParams& gp, const iq::Layout& lay, bool symmetric,
                           float* back) {
  for (size_t i = 0; i < N; ++i) {
    const int qv = iq::QuantizeValue(ws[c + i], gp, lay, symmetric, DType::kBF16);
    const float deq =
        iq::RoundToDType(static_cast<float>(qv - gp.zp) * gp.scale, DType::kBF16);
    back[i] = iq::RoundToDType(static_cast<float>(double(deq) / s[c + i]), DType::kBF16);
  }
}

// Per-group scratch of a row: its parameters, 1 / scale, and (table) the 16 deq values.
struct GroupScratch {
  std::vector<iq::GroupParams> params;
  std::vector<float> tables, inv_scales;
  void Size(size_t n_groups, size_t lanes) {
    if (params.size() < n_groups) params.resize(n_groups);
    if (inv_scales.size() < n_groups) inv_scales.resize(n_groups);
    if (tables.size() < n_groups * lanes) tables.resize(n_groups * lanes);
  }
};

// kTable: codes of at most 4 bits on 16 lanes: deq from a per-group table of the 16 codes
// (each entry the definition's RNE((v - zp) * scale)) instead of per lane.
template <bool kSym, bool kTable, class DF>
HWY_INLINE bool BoundRow(DF df, const float* w, const double* s, const float* s32,
                         const float* inv32, const float* h32, const iq::Layout& lay,
                         GroupScratch& scratch, float* ws, float* back_out, float* approx) {
  const hn::RebindToUnsigned<DF> du;
  const hn::RebindToSigned<DF> di;
  const size_t N = hn::Lanes(df);
  if (N < 4 || lay.group % N != 0) return false;
  constexpr bool table = kTable;
  HWY_ALIGN float tmp[hn::MaxLanes(df)];
  // A lane within 8 patterns of a BF16 midpoint: (bits + 8 - 0x8000) mod 2^16 <= 16.
  const auto win_bias = hn::Set(du, 8u - 0x8000u);
  const auto low16 = hn::Set(du, 0xFFFFu);
  const auto win = hn::Set(du, 17u);
  auto near = [&](hn::Vec<DF> v) {
    return hn::Lt(hn::And(hn::Add(hn::BitCast(du, v), win_bias), low16), win);
  };
  // RNE to BF16 of a lane that is not near a midpoint: no tie (low 16 bits 0x8000) is
  // farther than 8 patterns from one, so rounding half up is RNE there (2 integer operations
  // instead of 5); values rounded so are used only where no lane of their vector is near.
  const auto half = hn::Set(du, 0x8000u);
  const auto high16 = hn::Set(du, 0xFFFF0000u);
  auto half_up = [&](hn::Vec<DF> v) {
    return hn::BitCast(df, hn::And(hn::Add(hn::BitCast(du, v), half), high16));
  };
  const auto qmin = hn::Set(df, static_cast<float>(lay.qmin));
  const auto qmax = hn::Set(df, static_cast<float>(lay.qmax));
  const auto qmin_i = hn::Set(di, lay.qmin);
  const size_t group = lay.group;
  // Pass 1 over the whole row, then pass 2: the group parameters (a reduction, then scalar
  // arithmetic with two divisions) are off the vector loops' critical path.
  scratch.Size(lay.n_groups, N);
  iq::GroupParams* params = scratch.params.data();
  float* tables = scratch.tables.data();  // per group, the 16 deq values (table)
  float* inv_scales = scratch.inv_scales.data();
  for (size_t g = 0; g < lay.n_groups; ++g) {
    const size_t c0 = g * group, c1 = c0 + group;
    auto mn = hn::Set(df, HUGE_VALF), mx = hn::Set(df, -HUGE_VALF);
    for (size_t c = c0; c < c1; c += N) {
      const auto p = hn::Mul(hn::LoadU(df, w + c), hn::LoadU(df, s32 + c));
      auto r = half_up(p);
      if (HWY_UNLIKELY(!hn::AllFalse(du, near(p)))) {
        for (size_t i = 0; i < N; ++i) tmp[i] = static_cast<float>(double(w[c + i]) * s[c + i]);
        r = rd::RoundToDType<DType::kBF16>(df, hn::Load(df, tmp));
      }
      hn::StoreU(r, df, ws + c);
      if constexpr (kSym) {
        mx = hn::Max(mx, hn::Abs(r));
      } else {
        mn = hn::Min(mn, r);
        mx = hn::Max(mx, r);
      }
    }
    // Symmetric: the definition's scale depends on max(-min(mn, 0), max(mx, 0)) alone,
    // which is max |ws| over the group (an all-zero group: +0 either way); so one reduction
    // of |ws|, passed on as [-amax, amax].
    const float fmx = hn::GetLane(hn::MaxOfLanes(df, mx));
    const float fmn = kSym ? -fmx : hn::GetLane(hn::MinOfLanes(df, mn));
    if (!(fmn > -HUGE_VALF && fmx < HUGE_VALF)) return false;  // an infinite product
    iq::GroupParams gp;
    if (!GroupParamsInRange(fmn, fmx, lay, kSym, &gp)) return false;
    params[g] = gp;
    inv_scales[g] = 1.0f / gp.scale;
    if (table) {
      // table[c mod 16] = RNE((c - zp) * scale) for the codes c in [qmin, qmin + 15]
      // (c = qmin + ((j - qmin) mod 16) at entry j): (int)q - zp is an integer, exact in f32.
      const auto code = hn::Add(hn::And(hn::Sub(hn::Iota(di, 0), qmin_i), hn::Set(di, 15)), qmin_i);
      hn::StoreU(rd::RoundToDType<DType::kBF16>(
                     df, hn::Mul(hn::ConvertTo(df, hn::Sub(code, hn::Set(di, gp.zp))),
                                 hn::Set(df, gp.scale))),
                 df, &tables[g * N]);
    }
  }
  auto acc = hn::Zero(df);
  for (size_t g = 0; g < lay.n_groups; ++g) {
    const size_t c0 = g * group, c1 = c0 + group;
    const iq::GroupParams& gp = params[g];
    const auto inv_scale = hn::Set(df, inv_scales[g]);
    const auto scale = hn::Set(df, gp.scale);
    const auto zp = hn::Set(df, static_cast<float>(gp.zp));
    const auto neg_zp = hn::Set(df, static_cast<float>(-gp.zp));  // +0 when zp is 0
    const auto deq_table = table ? hn::LoadU(df, &tables[g * N]) : scale;
    for (size_t c = c0; c < c1; c += N) {
      // Lanes next to a midpoint (of ws / scale or of deq / s) are redone by the definition.
      const auto q = hn::Mul(hn::LoadU(df, ws + c), inv_scale);
      auto m = near(q);
      auto v = half_up(q);
      if constexpr (!kSym) v = rd::RoundToDType<DType::kBF16>(df, hn::Add(v, zp));
      v = hn::Min(hn::Max(v, qmin), qmax);
      hn::Vec<DF> deq;
      if constexpr (kTable) {
        // The code round_half_even(v) mod 16 as the low bits of v + 1.5 * 2^23: |v| <= 128
        // (clamped), so the sum is exact up to its rounding to an integer, which is to
        // nearest, ties to even (1.5 * 2^23 is even); its pattern is 0x4B400000 + code, and
        // 0x4B400000 is a multiple of 16.
        const auto k = hn::BitCast(di, hn::Add(v, hn::Set(df, 12582912.0f)));
        const auto idx = hn::And(k, hn::Set(di, 15));
        deq = hn::TableLookupLanes(deq_table, hn::IndicesFromVec(df, idx));
      } else {
        deq = rd::RoundToDType<DType::kBF16>(df, hn::Mul(hn::Add(hn::Round(v), neg_zp), scale));
      }
      const auto b = hn::Mul(deq, hn::LoadU(df, inv32 + c));
      m = hn::Or(m, near(b));
      auto back = half_up(b);
      if (HWY_UNLIKELY(!hn::AllFalse(du, m))) {
        ExactLanes(c, N, s, ws, gp, lay, kSym, tmp);
        back = hn::Load(df, tmp);
      }
      if (back_out != nullptr) hn::StoreU(back, df, back_out + c);
      const auto e = hn::Sub(hn::LoadU(df, w + c), back);
      acc = hn::MulAdd(hn::Mul(e, e), hn::LoadU(df, h32 + c), acc);
    }
  }
  *approx = hn::GetLane(hn::SumOfLanes(df, acc));
  return true;
}

bool RowLossBoundKernel(const float* w, const double* s, const float* s32, const float* inv32,
                        const float* h32, const iq::Layout& lay, bool symmetric, float* ws,
                        float* back_out, float* approx) {
  const hn::ScalableTag<float> df;
  thread_local GroupScratch scratch;
  if (hn::Lanes(df) == 16 && lay.qmax - lay.qmin < 16) {
    return symmetric
               ? BoundRow<true, true>(df, w, s, s32, inv32, h32, lay, scratch, ws, back_out, approx)
               : BoundRow<false, true>(df, w, s, s32, inv32, h32, lay, scratch, ws, back_out,
                                       approx);
  }
  return symmetric
             ? BoundRow<true, false>(df, w, s, s32, inv32, h32, lay, scratch, ws, back_out, approx)
             : BoundRow<false, false>(df, w, s, s32, inv32, h32, lay, scratch, ws, back_out,
                                      approx);
}

// Rows one after another (a tile of narrow rows: one call, one scratch).
template <bool kSym, bool kTable>
HWY_INLINE void BoundRows(const float* w, size_t rows, const char* ok, const double* s,
                          const float* s32, const float* inv32, const float* h32,
                          const iq::Layout& lay, float* ws, float* approx, char* taken) {
  const hn::ScalableTag<float> df;
  thread_local GroupScratch scratch;
  const size_t cols = lay.group * lay.n_groups;
  for (size_t r = 0; r < rows; ++r) {
    taken[r] = ok[r] && BoundRow<kSym, kTable>(df, w + r * cols, s, s32, inv32, h32, lay, scratch,
                                               ws, nullptr, &approx[r]);
  }
}

void RowsLossBoundKernel(const float* w, size_t rows, const char* ok, const double* s,
                         const float* s32, const float* inv32, const float* h32,
                         const iq::Layout& lay, bool symmetric, float* ws, float* approx,
                         char* taken) {
  const bool table = hn::Lanes(hn::ScalableTag<float>()) == 16 && lay.qmax - lay.qmin < 16;
  if (symmetric) {
    table ? BoundRows<true, true>(w, rows, ok, s, s32, inv32, h32, lay, ws, approx, taken)
          : BoundRows<true, false>(w, rows, ok, s, s32, inv32, h32, lay, ws, approx, taken);
  } else {
    table ? BoundRows<false, true>(w, rows, ok, s, s32, inv32, h32, lay, ws, approx, taken)
          : BoundRows<false, false>(w, rows, ok, s, s32, inv32, h32, lay, ws, approx, taken);
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace quench::intq
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace quench::intq {

HWY_EXPORT(RowLossBoundKernel);
HWY_EXPORT(RowsLossBoundKernel);

// Compiled per ISA (chosen at load time): the search calls these on every row it loads.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
bool LoadBf16RowBound(const uint16_t* src, size_t n, float* w) {
  uint32_t bad = 0;
  for (size_t i = 0; i < n; ++i) {
    const uint32_t b = uint32_t{src[i]} << 16;
    std::memcpy(&w[i], &b, 4);
    const uint32_t a = b & 0x7FFFFFFFu;
    bad |= uint32_t(a - (47u << 23) > (160u << 23)) & uint32_t(a != 0);  // as BoundRowOk
  }
  return bad == 0;
}

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
bool BoundRowOk(const float* w, size_t n) {
  uint32_t bad = 0;
  for (size_t i = 0; i < n; ++i) {
    uint32_t b;
    std::memcpy(&b, &w[i], 4);
    b &= 0x7FFFFFFFu;
    // 0, or 2^-80 (exponent field 47) <= |w| <= 2^80 (field 207, mantissa 0): b - 1 wraps
    // for 0, which is then told apart by its own test (branch-free, so it vectorises).
    bad |= uint32_t(b - (47u << 23) > (160u << 23)) & uint32_t(b != 0);
  }
  return bad == 0;
}

bool Bf16ScaledRowLossBound(const float* w, const double* s, const float* s32,
                            const float* inv32, const float* h32, const internal::Layout& lay,
                            bool symmetric, float* ws, float* back_out, float* approx) {
  return HWY_DYNAMIC_DISPATCH(RowLossBoundKernel)(w, s, s32, inv32, h32, lay, symmetric, ws,
                                                  back_out, approx);
}

void Bf16ScaledRowsLossBound(const float* w, size_t rows, const char* ok, const double* s,
                             const float* s32, const float* inv32, const float* h32,
                             const internal::Layout& lay, bool symmetric, float* ws,
                             float* approx, char* taken) {
  HWY_DYNAMIC_DISPATCH(RowsLossBoundKernel)(w, rows, ok, s, s32, inv32, h32, lay, symmetric, ws,
                                            approx, taken);
}

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
double ScaledLossFromBack(const float* w, const float* back, const double* h, size_t cols) {
  // ScaledErrorRowScalar's dW = w - back in f64, squared, then ScaledDot4 with h.
  double acc[4] = {0, 0, 0, 0};
  size_t i = 0;
  for (; i + 4 <= cols; i += 4) {
    for (int k = 0; k < 4; ++k) {
      const double e = double(w[i + k]) - double(back[i + k]);
      acc[k] += (e * e) * h[i + k];
    }
  }
  for (; i < cols; ++i) {
    const double e = double(w[i]) - double(back[i]);
    acc[0] += (e * e) * h[i];
  }
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

// Lane k of a 4-wide f64 vector is ScaledLossFromBack's acc[k] (columns k mod 4, in order).
typedef double F64x4 __attribute__((vector_size(32)));
typedef float F32x4 __attribute__((vector_size(16)));

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void ScaledLossFromBack2(const float* w, const float* back_a, const float* back_b,
                         const double* h, size_t cols, double* a, double* b) {
  F64x4 acc_a = {0, 0, 0, 0}, acc_b = {0, 0, 0, 0};
  size_t i = 0;
  for (; i + 4 <= cols; i += 4) {
    F32x4 wf, af, bf;
    F64x4 hv;
    std::memcpy(&wf, w + i, sizeof wf);
    std::memcpy(&af, back_a + i, sizeof af);
    std::memcpy(&bf, back_b + i, sizeof bf);
    std::memcpy(&hv, h + i, sizeof hv);
    const F64x4 wd = __builtin_convertvector(wf, F64x4);
    const F64x4 ea = wd - __builtin_convertvector(af, F64x4);
    const F64x4 eb = wd - __builtin_convertvector(bf, F64x4);
    acc_a += (ea * ea) * hv;
    acc_b += (eb * eb) * hv;
  }
  for (; i < cols; ++i) {
    const double ea = double(w[i]) - double(back_a[i]);
    const double eb = double(w[i]) - double(back_b[i]);
    acc_a[0] += (ea * ea) * h[i];
    acc_b[0] += (eb * eb) * h[i];
  }
  *a = (acc_a[0] + acc_a[1]) + (acc_a[2] + acc_a[3]);
  *b = (acc_b[0] + acc_b[1]) + (acc_b[2] + acc_b[3]);
}

// Terms h32 * fl(dW^2) with dW, dW^2, h32 and the product each rounded (FMA or not): within
// 5.01 u of h dW^2. Summed in N >= 4 lanes of at most cols / 4 terms, then a reduction of
// at most 16 lanes: at most cols / 4 + 16 additions on any path, so the sum is within
// (cols / 4 + 23) u (1 + 1e-3) of the exact sum of h dW^2 (all terms >= 0; standard
// recursive-summation bound).
// The definition's f64 sum is within (cols / 4 + 4) 2^-53 of the same exact sum; 2^-28 covers that
// and the step from the exact sum to the approximate one as the reference of the relative bound.
double ScaledBoundRel(size_t cols) {
  return (double(cols) / 4.0 + 24.0) * 0x1p-24 * 1.01 + 0x1p-28;
}

// Subnormal results carry an absolute error of at most 2^-150 each: dW^2 (then times h),
// the products and the additions.
double ScaledBoundAbs(size_t cols, double hmax) {
  return (double(cols) + 32.0) * (hmax + 4.0) * 0x1p-147;
}

}  // namespace quench::intq
#endif  // HWY_ONCE
