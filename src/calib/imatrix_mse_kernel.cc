// The imatrix_mse search's inner loop: the scalar definition and the Highway kernels
// (see imatrix_mse_kernel.h), compiled once per target through foreach_target.

// The definition rounds every f32 product and difference; GCC contracts a * b - c into an
// FMA in C++ mode wherever the target has one (the AVX2 / AVX-512 targets), so contraction
// is switched off for this whole file, the scalar definition included.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "calib/imatrix_mse_kernel.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>  // std::gcd
#include <vector>


#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/calib/imatrix_mse_kernel.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/aligned_allocator.h"
#include "hwy/highway.h"
#include "schemes/rounding-inl.h"

HWY_BEFORE_NAMESPACE();
namespace quench::calib::internal {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
namespace rd = quench::HWY_NAMESPACE::rounding;

using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;
#if HWY_TARGET == HWY_SCALAR
using DD = hn::Rebind<double, DF>;  // one lane: one f64 accumulator
#else
using DH = hn::Half<DF>;
using DD = hn::Repartition<double, DF>;  // half the lanes: two f64 accumulators
#endif
using VD = hn::Vec<DD>;

enum Mode { kIntSym = 0, kIntAsym = 1, kFp4 = 2 };

// Round half to even of |v| <= 2^22: adding 1.5 * 2^23 leaves an f32 whose ulp is 1, so the
// FPU's RNE addition rounds v to an integer, and subtracting it back is exact. Equal to
// torch.round / rint there (the sign of a zero result aside, which no error sees: dq is a
// product with it, and |dq - x| drops the sign). Used on every target: Highway's scalar
// Round adds 0.5, which rounds 0.49999997 up.
HWY_INLINE VF RoundInt(DF df, VF v) {
  const VF magic = hn::Set(df, 12582912.0f);
  return hn::Sub(hn::Add(v, magic), magic);
}

// One element's term e = |dq - x|^norm * imp (the definition in imatrix_mse_kernel.h).
template <DType D, int M, int N>
HWY_INLINE VF Term(DF df, VF x, VF im, VF s, VF zp, VF lo, VF hi) {
  VF v = rd::RoundToDType<D>(df, hn::Div(x, s));
  VF dq;
  if constexpr (M == kFp4) {
    // cast_to_fp4 of clamp(v, -6, 6): E2M1 rounds |v| to nearest even on a grid of 0.5
    // below 2, 1 below 4, 2 up to 6 (the table's <= / < thresholds are exactly those ties).
    const VF a = hn::Min(hn::Abs(v), hn::Set(df, 6.0f));
    const VF inv = hn::IfThenElse(
        hn::Lt(a, hn::Set(df, 2.0f)), hn::Set(df, 2.0f),
        hn::IfThenElse(hn::Lt(a, hn::Set(df, 4.0f)), hn::Set(df, 1.0f), hn::Set(df, 0.5f)));
    const VF step = hn::IfThenElse(
        hn::Lt(a, hn::Set(df, 2.0f)), hn::Set(df, 0.5f),
        hn::IfThenElse(hn::Lt(a, hn::Set(df, 4.0f)), hn::Set(df, 1.0f), hn::Set(df, 2.0f)));
    // Powers of two: both products are exact.
    const VF r = hn::Mul(RoundInt(df, hn::Mul(a, inv)), step);
    dq = rd::RoundToDType<D>(df, hn::Mul(hn::CopySign(r, v), s));
  } else {
    if constexpr (M == kIntAsym) v = rd::RoundToDType<D>(df, hn::Add(v, zp));
    const VF q = RoundInt(df, hn::Min(hn::Max(v, lo), hi));
    dq = rd::RoundToDType<D>(df, hn::Mul(M == kIntAsym ? hn::Sub(q, zp) : q, s));
  }
  const VF d = hn::Abs(hn::Sub(dq, x));
  VF e = hn::Mul(d, d);
  if constexpr (N == 3) e = hn::Mul(e, d);
  return hn::Mul(e, im);
}

// Two f64 accumulators (lower and upper f32 lanes), or one on the one-lane target.
struct Acc {
  VD lo, hi;
};

HWY_INLINE Acc Zero2() {
  const DD dd;
  return {hn::Zero(dd), hn::Zero(dd)};
}

HWY_INLINE void AddTerm(Acc& acc, VF e) {
  const DD dd;
#if HWY_TARGET == HWY_SCALAR
  acc.lo = hn::Add(acc.lo, hn::PromoteTo(dd, e));
#else
  const DH dh;
  acc.lo = hn::Add(acc.lo, hn::PromoteTo(dd, hn::LowerHalf(dh, e)));
  acc.hi = hn::Add(acc.hi, hn::PromoteTo(dd, hn::UpperHalf(dh, e)));
#endif
}

// Whether every lane's (acc * scale) >= bound (bound: Lanes(DF) doubles).
HWY_INLINE bool AllAtLeast(const Acc& acc, double scale, const double* bound) {
  const DD dd;
  const VD m = hn::Set(dd, scale);
  bool all = hn::AllTrue(dd, hn::Ge(hn::Mul(acc.lo, m), hn::LoadU(dd, bound)));
#if HWY_TARGET != HWY_SCALAR
  all = all && hn::AllTrue(dd, hn::Ge(hn::Mul(acc.hi, m), hn::LoadU(dd, bound + hn::Lanes(dd))));
#endif
  return all;
}

HWY_INLINE void StoreAcc(const Acc& acc, double* out) {
  const DD dd;
  hn::StoreU(acc.lo, dd, out);
#if HWY_TARGET != HWY_SCALAR
  hn::StoreU(acc.hi, dd, out + hn::Lanes(dd));
#endif
}

// Sums a tile's terms over `len` elements (x, imp: len x L, element-major) into acc,
// checking every 8 elements whether all lanes reached `bound` (times `scale`); returns
// false when it stopped there.
template <DType D, int M, int N>
HWY_INLINE bool SumTile(const float* x, const float* im, size_t len, VF s, VF zp, VF lo,
                        VF hi, double scale, const double* bound, Acc& acc) {
  const DF df;
  const size_t L = hn::Lanes(df);
  for (size_t j = 0; j < len;) {
    const size_t end = std::min(len, j + 8);
    for (; j < end; ++j) {
      AddTerm(acc, Term<D, M, N>(df, hn::Load(df, x + j * L), hn::Load(df, im + j * L), s, zp,
                                 lo, hi));
    }
    if (j < len && AllAtLeast(acc, scale, bound)) return false;
  }
  return true;
}

// The block's groups in tiles of L (lane l of tile t: group t * L + l), element-major; the
// importance tiles (their pattern repeats every `period` tiles, as the groups' columns do);
// each group's min and max; and for the bound, the term of each group's element of largest
// |x|^3 * imp (x and imp of that element). Buffers are kept per thread and reused: fresh
// pages for every block cost more than the search.
struct Tiles {
  size_t n = 0, groups = 0, L = 0, tiles = 0, period = 0;
  float* x = nullptr;
  float* imp = nullptr;
  float* kx = nullptr;
  float* kimp = nullptr;
  float* m0 = nullptr;
  float* M0 = nullptr;
  const float* Imp(size_t tile) const { return imp + (tile % period) * n * L; }
};

// A per-thread aligned buffer of at least n floats.
float* Scratch(int which, size_t n) {
  thread_local hwy::AlignedFreeUniquePtr<float[]> buf[8];
  thread_local size_t size[8] = {};
  if (size[which] < n) {
    buf[which] = hwy::AllocateAligned<float>(n);
    size[which] = n;
  }
  return buf[which].get();
}

void MakeTiles(const Block& b, Tiles* t) {
  const DF df;
  t->n = b.group;
  const size_t ng = b.cols / b.group;
  t->groups = b.rows * ng;
  t->L = hn::Lanes(df);
  t->tiles = (t->groups + t->L - 1) / t->L;
  const size_t n = t->n, L = t->L, T = t->tiles;
  t->period = std::min(T, ng / std::gcd(ng, L));
  t->x = Scratch(0, T * n * L);
  t->imp = Scratch(1, t->period * n * L);
  t->kx = Scratch(2, T * L);
  t->kimp = Scratch(3, T * L);
  t->m0 = Scratch(4, T * L);
  t->M0 = Scratch(5, T * L);
  // The transposition (padding lanes: x 0, a zero term whatever the scale and importance).
  if (T * L > t->groups) {
    for (size_t j = 0; j < n; ++j) std::fill_n(t->x + ((T - 1) * n + j) * L, L, 0.0f);
  }
  for (size_t g = 0; g < t->groups; ++g) {
    const float* xg = b.x + g * n;
    float* xt = t->x + (g / L) * n * L + g % L;
    for (size_t j = 0; j < n; ++j) xt[j * L] = xg[j];
  }
  for (size_t g = 0; g < t->period * L; ++g) {
    const float* ig = b.imp == nullptr ? nullptr : b.imp + (g % ng) * n;
    float* it = t->imp + (g / L) * n * L + g % L;
    for (size_t j = 0; j < n; ++j) it[j * L] = ig == nullptr ? 1.0f : ig[j];
  }
  // Lane-wise over each tile: min, max, and the element of largest key = |x|^3 * imp (a
  // heuristic only: any element gives a valid bound, and Inf or NaN keys merely lose).
  for (size_t tile = 0; tile < T; ++tile) {
    const float* xt = t->x + tile * n * L;
    const float* it = t->Imp(tile);
    auto mn = hn::Load(df, xt), mx = mn;
    auto top = hn::Set(df, -1.0f), kx = hn::Zero(df), kimp = hn::Set(df, 1.0f);
    for (size_t j = 0; j < n; ++j) {
      const auto v = hn::Load(df, xt + j * L);
      const auto w = hn::Load(df, it + j * L);
      mn = hn::Min(mn, v);
      mx = hn::Max(mx, v);
      const auto a = hn::Abs(v);
      const auto key = hn::Mul(hn::Mul(hn::Mul(a, a), a), w);
      const auto more = hn::Gt(key, top);
      top = hn::IfThenElse(more, key, top);
      kx = hn::IfThenElse(more, v, kx);
      kimp = hn::IfThenElse(more, w, kimp);
    }
    hn::Store(mn, df, t->m0 + tile * L);
    hn::Store(mx, df, t->M0 + tile * L);
    hn::Store(kx, df, t->kx + tile * L);
    hn::Store(kimp, df, t->kimp + tile * L);
  }
  // min_val = amin * expand, once for all steps (StepRange; 1.0 is the identity on D values).
  if (b.expand != 1.0) {
    for (size_t g = 0; g < T * L; ++g) {
      t->m0[g] = Expanded(t->m0[g], b.expand, b.dtype);
      t->M0[g] = Expanded(t->M0[g], b.expand, b.dtype);
    }
  }
}

// The errors of one tile's groups with parameters s, zp: out[l] = the definition's sum when
// it is below bound[l]; otherwise out[l] >= bound[l]. bound is modified (lanes the partial
// bound rules out become -1). Returns false when no lane can be below its bound.
template <DType D, int M, int N>
HWY_INLINE bool TileErrors(const Tiles& t, size_t tile, const float* s_arr, const float* zp_arr,
                           VF lo, VF hi, double* bound, double* out) {
  const DF df;
  const DD dd;
  const size_t L = t.L, n = t.n, k = 1;
  const VF s = hn::Load(df, s_arr);
  const VF zp = hn::Load(df, zp_arr);
  // Partial bound: any f64 sum of some of the terms, times the margin, is at most the
  // definition's sum (imatrix_mse_kernel.h).
  const double margin = 1.0 - static_cast<double>(n + k + 4) * 0x1p-52;
  Acc kb = Zero2();
  SumTile<D, M, N>(t.kx + tile * L, t.kimp + tile * L, k, s, zp, lo, hi, margin, bound, kb);
  if (AllAtLeast(kb, margin, bound)) return false;
  {
    const VD m = hn::Set(dd, margin);
    const VD neg = hn::Set(dd, -1.0);
    const VD b0 = hn::LoadU(dd, bound);
    hn::StoreU(hn::IfThenElse(hn::Ge(hn::Mul(kb.lo, m), b0), neg, b0), dd, bound);
#if HWY_TARGET != HWY_SCALAR
    const VD b1 = hn::LoadU(dd, bound + hn::Lanes(dd));
    hn::StoreU(hn::IfThenElse(hn::Ge(hn::Mul(kb.hi, m), b1), neg, b1), dd,
               bound + hn::Lanes(dd));
#endif
  }
  // The definition's sums, in element order per lane, stopped once every lane reached its
  // bound (the partial sums never decrease).
  Acc acc = Zero2();
  const bool complete = SumTile<D, M, N>(t.x + tile * n * L, t.Imp(tile),
                                         n, s, zp, lo, hi, 1.0, bound, acc);
  StoreAcc(acc, out);
  return complete;
}

// Per-tile parameter arrays for step i (lanes past the block's groups: scale 1, zp 0);
// groups whose scale is not finite are left to the scalar definition (flag set). Int and
// NVFP4 compute ParamsOf lane-wise (the same operations; a zero may differ in sign where
// the scalar std::min / std::max keep their first argument, which no parameter sees: a
// zero range gives scale 0 -> eps and zp 0 either way, and is otherwise added to, or
// divided by, a nonzero value); MXFP4's E8M0 scale stays scalar.
template <DType D, int M>
void StepArrays(const Block& b, const Tiles& t, int i, float* s, float* zp, uint8_t* scalar) {
  const size_t padded = t.tiles * t.L;
  if (M == kFp4 && b.format == ImatrixFormat::kMxfp4) {
    for (size_t g = 0; g < padded; ++g) {
      if (g >= t.groups) {
        s[g] = 1.0f;
        zp[g] = 0.0f;
        scalar[g] = 0;
        continue;
      }
      float mn, mx;
      StepRange(t.m0[g], t.M0[g], i, b.grid, /*expand=*/1.0, b.dtype, &mn, &mx);  // expanded
      const StepParams p = ParamsOf(b, mn, mx);
      s[g] = p.scale;
      zp[g] = p.zp;
      scalar[g] = std::isfinite(p.scale) ? 0 : 1;
    }
    return;
  }
  const DF df;
  const float p = static_cast<float>(1.0 - static_cast<double>(i) / b.grid);
  const auto vp = hn::Set(df, p);
  const auto zero = hn::Zero(df);
  const auto eps = hn::Set(df, intq::internal::ScaleEps(b.dtype));
  const float range = static_cast<float>(b.layout.qmax - b.layout.qmin);
  const auto qmin = hn::Set(df, static_cast<float>(b.layout.qmin));
  const auto qmax = hn::Set(df, static_cast<float>(b.layout.qmax));
  for (size_t g = 0; g < padded; g += t.L) {
    const auto mn = rd::RoundToDType<D>(df, hn::Mul(vp, hn::Load(df, t.m0 + g)));
    const auto mx = rd::RoundToDType<D>(df, hn::Mul(vp, hn::Load(df, t.M0 + g)));
    hn::Vec<DF> scale, z = zero;
    if constexpr (M == kFp4) {
      // NVFP4: RNE_D(pos / 6), zero guard eps.
      const auto pos = hn::Max(hn::Abs(hn::Min(mn, zero)), hn::Abs(hn::Max(mx, zero)));
      scale = rd::RoundToDType<D>(df, hn::Div(pos, hn::Set(df, 6.0f)));
    } else {
      const auto lo = hn::Min(mn, zero), hi = hn::Max(mx, zero);
      if constexpr (M == kIntSym) {
        // calculate_qparams, symmetric: RNE_D(max(-mn, mx) / (bit_range / 2)).
        scale = rd::RoundToDType<D>(
            df, hn::Div(hn::Max(hn::Neg(lo), hi), hn::Set(df, range / 2.0f)));
      } else {
        // Asymmetric: RNE_D(RNE_D(mx - mn) / bit_range); zp = RNE_D(qmin - RNE_D(mn / s))
        // with the unguarded scale, clamped unless NaN, rounded (NaN -> 0).
        scale = rd::RoundToDType<D>(
            df, hn::Div(rd::RoundToDType<D>(df, hn::Sub(hi, lo)), hn::Set(df, range)));
        const auto q = rd::RoundToDType<D>(
            df, hn::Sub(qmin, rd::RoundToDType<D>(df, hn::Div(lo, scale))));
        const auto clamped = RoundInt(df, hn::Min(hn::Max(q, qmin), qmax));
        z = hn::IfThenZeroElse(hn::IsNaN(q), clamped);
      }
    }
    scale = hn::IfThenElse(hn::Eq(scale, zero), eps, scale);
    hn::Store(scale, df, s + g);
    hn::Store(z, df, zp + g);
    // Only an asymmetric range (mx - mn) can overflow D; the other scales are finite.
    for (size_t l = 0; M == kIntAsym && l < t.L; ++l) scalar[g + l] = !std::isfinite(s[g + l]);
  }
  if (M != kIntAsym) std::fill_n(scalar, padded, uint8_t{0});
  for (size_t g = t.groups; g < padded; ++g) {
    s[g] = 1.0f;
    zp[g] = 0.0f;
    scalar[g] = 0;
  }
}

template <DType D, int M, int N>
void SearchTiles(const Block& b) {
  const DF df;
  Tiles t;
  MakeTiles(b, &t);
  const size_t L = t.L, padded = t.tiles * L;
  auto s = hwy::AllocateAligned<float>(padded);
  auto zp = hwy::AllocateAligned<float>(padded);
  std::vector<uint8_t> scalar(padded);
  std::vector<double> bound(L), err(L);
  const VF lo = hn::Set(df, static_cast<float>(b.layout.qmin));
  const VF hi = hn::Set(df, static_cast<float>(b.layout.qmax));
  for (int i = b.i0; i <= b.i1; ++i) {
    StepArrays<D, M>(b, t, i, s.get(), zp.get(), scalar.data());
    bool any = false;
    const bool none_scalar =
        M != kIntAsym || std::find(scalar.begin(), scalar.end(), 1) == scalar.end();
    for (size_t tile = 0; tile < t.tiles; ++tile) {
      if (none_scalar && (tile + 1) * L <= t.groups) {
        // Every lane a group of the block (the common case: no per-lane checks).
        std::copy_n(b.best + tile * L, L, bound.data());
      } else {
        bool live = false;
        for (size_t l = 0; l < L; ++l) {
          const size_t g = tile * L + l;
          const bool on = g < t.groups && !scalar[g];
          bound[l] = on ? b.best[g] : -1.0;
          live = live || on;
        }
        if (!live) continue;
      }
      if (!TileErrors<D, M, N>(t, tile, s.get() + tile * L, zp.get() + tile * L, lo, hi,
                               bound.data(), err.data())) {
        continue;
      }
      for (size_t l = 0; l < L; ++l) {
        const size_t g = tile * L + l;
        // Only live lanes: the others' bound is -1. Compared and kept rounded to f32 (ErrorF32).
        if (ErrorF32(err[l]) < bound[l]) {
          b.best[g] = ErrorF32(err[l]);
          b.masks[g] |= 1u << i;
          any = true;
        }
      }
    }
    // Non-finite scales (a range overflowing D): the scalar definition.
    for (size_t g = 0; g < t.groups && !none_scalar; ++g) {
      if (!scalar[g]) continue;
      const size_t ng = b.cols / b.group;
      const double e = ErrorF32(GroupErrorScalar(
          b, b.x + g * t.n, b.imp == nullptr ? nullptr : b.imp + (g % ng) * t.n, t.n,
          {s[g], zp[g]}));
      if (e < b.best[g]) {
        b.best[g] = e;
        b.masks[g] |= 1u << i;
        any = true;
      }
    }
    if (any) *b.improved |= 1u << i;
  }
}

// Whether an f32 sum P of nonnegative f32 terms is in the range where the bound below holds:
// 0 (every term 0: the definition's sum is 0 too), or far from f32's subnormals and overflow.
// Vectors of every step summed before any decision (2 measured best of 1-3 on the bench's
// int4 groups of 128: 5.1 ns per weight against 5.3 and 5.2).
constexpr size_t kHead = 2;
HWY_INLINE bool Certifiable(double p) { return p == 0.0 || (p >= 0x1p-100 && p <= 0x1p100); }

// The certified search (imatrix_mse_kernel.h): per group, lanes along its elements, the same
// f32 terms as the definition summed in f32 in any order, with a bound on what the
// definition's value can be; the definition's own sum only where the bound cannot decide.
// Bound: for n nonnegative terms with exact sum S, any f32 summation order gives P with
// |P - S| <= (n - 1) u S / (1 - (n - 1) u), u = 2^-24; the definition's f64 sum in element
// order is within (n - 1) 2^-53 S of S and its f32 rounding within 2^-24 of that (normal
// range). So E (the definition's value) lies in [P (1 - m), P (1 + m)] with m = (n + 2) 2^-23
// (twice what these add up to, which also covers the rounding of the double products
// below), and any partial f32 sum P_c of some of the terms gives E >= P_c (1 - m).
// Each group keeps its best as an interval [blo, bhi] around the definition's best value:
//   P_c (1 - m) >= bhi         -> E >= best: not an improvement (stop summing);
//   P (1 + m) < blo            -> E < best: an improvement, best in [P (1 - m), P (1 + m)];
//   otherwise (a near tie)     -> the definition's sums of this step and of the best step,
//                                 compared exactly (ErrorF32, the earlier step kept on ties).
// Equal parameters give equal errors: such a step is not an improvement. The masks and
// improved bits are the definition's; best is its value when b.exact_best.
template <DType D, int M, int N>
void SearchCertified(const Block& b) {
  const DF df;
  const size_t L = hn::Lanes(df), n = b.group, nv = n / L;
  const size_t ng = b.cols / n;
  Tiles t;  // only m0, M0 (per group, in the layout StepArrays reads)
  t.n = n;
  t.groups = b.rows * ng;
  t.L = L;
  t.tiles = (t.groups + L - 1) / L;
  const size_t padded = t.tiles * L;
  t.m0 = Scratch(4, padded);
  t.M0 = Scratch(5, padded);
  for (size_t g = 0; g < padded; ++g) {
    if (g >= t.groups) {
      t.m0[g] = t.M0[g] = 0.0f;
      continue;
    }
    const float* xg = b.x + g * n;
    auto mn = hn::LoadU(df, xg), mx = mn;
    for (size_t v = 1; v < nv; ++v) {
      mn = hn::Min(mn, hn::LoadU(df, xg + v * L));
      mx = hn::Max(mx, hn::LoadU(df, xg + v * L));
    }
    t.m0[g] = hn::GetLane(hn::MinOfLanes(df, mn));
    t.M0[g] = hn::GetLane(hn::MaxOfLanes(df, mx));
    if (b.expand != 1.0) {  // as MakeTiles
      t.m0[g] = Expanded(t.m0[g], b.expand, b.dtype);
      t.M0[g] = Expanded(t.M0[g], b.expand, b.dtype);
    }
  }
  // Every step's parameters for every group, lane-wise as SearchTiles computes them.
  const size_t steps = static_cast<size_t>(b.i1 - b.i0 + 1);
  // (aligned: StepArrays stores whole vectors)
  float* s_buf = Scratch(6, steps * padded);
  float* zp_buf = Scratch(7, steps * padded);
  thread_local std::vector<float> ones;
  thread_local std::vector<uint8_t> scalar_buf;
  scalar_buf.resize(steps * padded);
  for (size_t k = 0; k < steps; ++k) {
    StepArrays<D, M>(b, t, b.i0 + static_cast<int>(k), s_buf + k * padded, zp_buf + k * padded,
                     scalar_buf.data() + k * padded);
  }
  if (b.imp == nullptr && ones.size() < n) ones.assign(n, 1.0f);
  const double m = static_cast<double>(n + 2) * 0x1p-23;
  const double lo_f = 1.0 - m, hi_f = 1.0 + m;
  const VF qlo = hn::Set(df, static_cast<float>(b.layout.qmin));
  const VF qhi = hn::Set(df, static_cast<float>(b.layout.qmax));
  uint32_t any = 0;
  for (size_t g = 0; g < t.groups; ++g) {
    const float* xg = b.x + g * n;
    const float* ig = b.imp == nullptr ? nullptr : b.imp + (g % ng) * n;
    const float* im = ig == nullptr ? ones.data() : ig;
    auto exact_of = [&](size_t k) {
      return ErrorF32(GroupErrorScalar(b, xg, ig, n, {s_buf[k * padded + g], zp_buf[k * padded + g]}));
    };
    // The first kHead vectors' partial sums of every step at once: independent of each other
    // and of the decisions, so they overlap in the pipeline (one step at a time, each sum
    // waited for its decision).
    const size_t head = std::min(nv, kHead);
    VF heads[32];
    for (size_t k = 0; k < steps; ++k) {
      const VF vs = hn::Set(df, s_buf[k * padded + g]);
      const VF vz = hn::Set(df, zp_buf[k * padded + g]);
      VF acc = hn::Zero(df);
      for (size_t v = 0; v < head; ++v) {
        acc = hn::Add(acc, Term<D, M, N>(df, hn::LoadU(df, xg + v * L), hn::LoadU(df, im + v * L),
                                         vs, vz, qlo, qhi));
      }
      heads[k] = acc;
    }
    double blo = b.best[g], bhi = blo;
    bool exact = true;  // blo == bhi == the definition's best
    size_t bk = SIZE_MAX;  // the step of the best (SIZE_MAX: from before this call)
    uint32_t mask = 0;
    for (size_t k = 0; k < steps; ++k) {
      const size_t at = k * padded + g;
      const uint32_t bit = 1u << (b.i0 + static_cast<int>(k));
      if (!scalar_buf[at]) {
        if (bk != SIZE_MAX && s_buf[at] == s_buf[bk * padded + g] &&
            zp_buf[at] == zp_buf[bk * padded + g]) {
          continue;  // the best step's parameters: the same error, and the earlier stays
        }
        VF acc = heads[k];
        if (head < nv) {
          const double pc = hn::GetLane(hn::SumOfLanes(df, acc));
          if (Certifiable(pc) && pc * lo_f >= bhi) continue;
          const VF vs = hn::Set(df, s_buf[at]);
          const VF vz = hn::Set(df, zp_buf[at]);
          for (size_t v = head; v < nv; ++v) {
            acc = hn::Add(acc, Term<D, M, N>(df, hn::LoadU(df, xg + v * L),
                                             hn::LoadU(df, im + v * L), vs, vz, qlo, qhi));
          }
        }
        const double p = hn::GetLane(hn::SumOfLanes(df, acc));
        if (Certifiable(p)) {
          if (p * lo_f >= bhi) continue;
          if (p * hi_f < blo) {
            blo = p * lo_f;
            bhi = p * hi_f;
            exact = p == 0.0;
            bk = k;
            mask |= bit;
            continue;
          }
        }
      }
      // A near tie, a sum outside the bound's range, or a scale only the definition takes.
      if (!exact) {
        blo = bhi = exact_of(bk);
        exact = true;
      }
      const double e = exact_of(k);
      if (e < blo) {
        blo = bhi = e;
        bk = k;
        mask |= bit;
      }
    }
    if (b.exact_best && !exact) blo = exact_of(bk);
    b.best[g] = blo;
    b.masks[g] |= mask;
    any |= mask;
  }
  *b.improved |= any;
}

template <DType D, int M, int N>
void ErrorsTiles(const Block& b, const StepParams* params, const double* bound_in,
                 double* err_out) {
  const DF df;
  Tiles t;
  MakeTiles(b, &t);
  const size_t L = t.L, padded = t.tiles * L;
  auto s = hwy::AllocateAligned<float>(padded);
  auto zp = hwy::AllocateAligned<float>(padded);
  std::vector<double> bound(L), err(L);
  for (size_t g = 0; g < padded; ++g) {
    s[g] = g < t.groups ? params[g].scale : 1.0f;
    zp[g] = g < t.groups ? params[g].zp : 0.0f;
  }
  const VF lo = hn::Set(df, static_cast<float>(b.layout.qmin));
  const VF hi = hn::Set(df, static_cast<float>(b.layout.qmax));
  for (size_t tile = 0; tile < t.tiles; ++tile) {
    for (size_t l = 0; l < L; ++l) {
      const size_t g = tile * L + l;
      bound[l] = g < t.groups ? bound_in[g] : -1.0;
    }
    const bool complete = TileErrors<D, M, N>(t, tile, s.get() + tile * L, zp.get() + tile * L,
                                              lo, hi, bound.data(), err.data());
    for (size_t l = 0; l < L && tile * L + l < t.groups; ++l) {
      const size_t g = tile * L + l;
      // Ruled out by the partial bound, or stopped early: some value >= the bound.
      err_out[g] = complete && bound[l] != -1.0 ? err[l] : HUGE_VAL;
    }
  }
}

// Dispatch over dtype, mode and norm (the kernels take norm 2 and 3; others go scalar).
template <template <DType, int, int> class F, class... Args>
bool Dispatch(const Block& b, Args... args) {
  const int mode = b.format != ImatrixFormat::kInt ? kFp4 : b.symmetric ? kIntSym : kIntAsym;
  const int norm = b.norm == 3.0 ? 3 : b.norm == 2.0 ? 2 : 0;
  if (norm == 0) return false;
  auto by_norm = [&](auto d_tag, auto m_tag) {
    constexpr DType D = decltype(d_tag)::value;
    constexpr int M = decltype(m_tag)::value;
    if (norm == 3) {
      F<D, M, 3>::Run(b, args...);
    } else {
      F<D, M, 2>::Run(b, args...);
    }
  };
  auto by_mode = [&](auto d_tag) {
    if (mode == kFp4) {
      by_norm(d_tag, std::integral_constant<int, kFp4>());
    } else if (mode == kIntSym) {
      by_norm(d_tag, std::integral_constant<int, kIntSym>());
    } else {
      by_norm(d_tag, std::integral_constant<int, kIntAsym>());
    }
  };
  switch (b.dtype) {
    case DType::kBF16: by_mode(std::integral_constant<DType, DType::kBF16>()); break;
    case DType::kF16: by_mode(std::integral_constant<DType, DType::kF16>()); break;
    case DType::kF32: by_mode(std::integral_constant<DType, DType::kF32>()); break;
    default: return false;
  }
  return true;
}

template <DType D, int M, int N>
struct SearchF {
  // Groups of at least 4 vectors: the certified search per group; narrower ones (NVFP4's 16
  // elements, small int groups) in tiles of groups, where one group per vector would leave
  // the per-group work (parameters, the sum across lanes, the decision) dominant.
  static void Run(const Block& b) {
    const size_t L = hn::Lanes(DF());
    // (At most 2^20 elements: the bound's factors hold while (n - 1) 2^-24 stays well below 1.)
    if (b.group % L == 0 && b.group / L >= 4 && b.group <= (size_t{1} << 20)) {
      SearchCertified<D, M, N>(b);
    } else {
      SearchTiles<D, M, N>(b);
    }
  }
};
template <DType D, int M, int N>
struct ErrorsF {
  static void Run(const Block& b, const StepParams* p, const double* bound, double* err) {
    ErrorsTiles<D, M, N>(b, p, bound, err);
  }
};

bool SearchBlockKernel(const Block& b) { return Dispatch<SearchF>(b); }
bool GroupErrorsKernelImpl(const Block& b, const StepParams* p, const double* bound,
                           double* err) {
  return Dispatch<ErrorsF>(b, p, bound, err);
}

}  // namespace HWY_NAMESPACE
}  // namespace quench::calib::internal
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace quench::calib::internal {

HWY_EXPORT(SearchBlockKernel);
HWY_EXPORT(GroupErrorsKernelImpl);

bool SearchBlock(const Block& b) {
  if (b.group == 0 || b.cols % b.group != 0) return false;
  if (b.rows == 0) return true;
  // Other norms (powf): the definition itself.
  if (b.norm != 3.0 && b.norm != 2.0) return SearchBlockScalar(b);
  return HWY_DYNAMIC_DISPATCH(SearchBlockKernel)(b);
}

void GroupErrorsKernel(const Block& b, const StepParams* params, const double* bound,
                       double* err) {
  if (b.rows == 0) return;
  if (b.norm != 3.0 && b.norm != 2.0) {
    const size_t ng = b.cols / b.group;
    for (size_t g = 0; g < b.rows * ng; ++g) {
      err[g] = GroupErrorScalar(b, b.x + g * b.group,
                                b.imp == nullptr ? nullptr : b.imp + (g % ng) * b.group, b.group,
                                params[g]);
    }
    return;
  }
  HWY_DYNAMIC_DISPATCH(GroupErrorsKernelImpl)(b, params, bound, err);
}

}  // namespace quench::calib::internal
#endif  // HWY_ONCE
