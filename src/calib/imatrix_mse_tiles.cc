// The imatrix_mse kernels' tile search (see imatrix_mse_kernel.h): lanes across groups, each
// lane summing its group's terms in f64 in the definition's order, with the partial bound
// and early stops; and the per-group errors for given parameters (GroupErrorsKernel).
// Compiled once per target through foreach_target.

// The definition rounds every f32 product and difference; GCC contracts a * b - c into an
// FMA in C++ mode wherever the target has one (the AVX2 / AVX-512 targets), so contraction
// is switched off for this whole file.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <numeric>  // std::gcd
#include <vector>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/calib/imatrix_mse_tiles.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/aligned_allocator.h"
#include "hwy/highway.h"
#include "calib/imatrix_mse-inl.h"

HWY_BEFORE_NAMESPACE();
namespace quench::calib::internal {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

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

// The block's groups in tiles (see Tiles) and their min and max.
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

// What both tile passes open with: the block in tiles, and per-lane scale and zero-point
// buffers for every padded group (aligned: TileErrors loads whole vectors).
struct TilePass {
  Tiles t;
  size_t padded = 0;
  hwy::AlignedFreeUniquePtr<float[]> s, zp;
  explicit TilePass(const Block& b) {
    MakeTiles(b, &t);
    padded = t.tiles * t.L;
    s = hwy::AllocateAligned<float>(padded);
    zp = hwy::AllocateAligned<float>(padded);
  }
};

template <DType D, int M, int N>
void SearchTiles(const Block& b) {
  const DF df;
  const TilePass pass(b);
  const Tiles& t = pass.t;
  const size_t L = t.L, padded = pass.padded;
  float* const s = pass.s.get();
  float* const zp = pass.zp.get();
  std::vector<double> bound(L), err(L);
  std::vector<uint8_t> scalar(padded);
  const VF lo = hn::Set(df, static_cast<float>(b.layout.qmin));
  const VF hi = hn::Set(df, static_cast<float>(b.layout.qmax));
  for (int i = b.i0; i <= b.i1; ++i) {
    StepArrays<D, M>(b, t, i, s, zp, scalar.data());
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
      if (!TileErrors<D, M, N>(t, tile, s + tile * L, zp + tile * L, lo, hi,
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

template <DType D, int M, int N>
void ErrorsTiles(const Block& b, const StepParams* params, const double* bound_in,
                 double* err_out) {
  const DF df;
  const TilePass pass(b);
  const Tiles& t = pass.t;
  const size_t L = t.L, padded = pass.padded;
  float* const s = pass.s.get();
  float* const zp = pass.zp.get();
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
    const bool complete = TileErrors<D, M, N>(t, tile, s + tile * L, zp + tile * L,
                                              lo, hi, bound.data(), err.data());
    for (size_t l = 0; l < L && tile * L + l < t.groups; ++l) {
      const size_t g = tile * L + l;
      // Ruled out by the partial bound, or stopped early: some value >= the bound.
      err_out[g] = complete && bound[l] != -1.0 ? err[l] : HUGE_VAL;
    }
  }
}

template <DType D, int M, int N>
struct SearchTilesF {
  static void Run(const Block& b) { SearchTiles<D, M, N>(b); }
};
template <DType D, int M, int N>
struct ErrorsTilesF {
  static void Run(const Block& b, const StepParams* p, const double* bound, double* err) {
    ErrorsTiles<D, M, N>(b, p, bound, err);
  }
};

bool SearchTilesKernel(const Block& b) { return Dispatch<SearchTilesF>(b); }
bool ErrorsTilesKernel(const Block& b, const StepParams* params, const double* bound,
                       double* err) {
  return Dispatch<ErrorsTilesF>(b, params, bound, err);
}

}  // namespace HWY_NAMESPACE
}  // namespace quench::calib::internal
HWY_AFTER_NAMESPACE();
