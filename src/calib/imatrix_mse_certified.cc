// The imatrix_mse kernels' certified search (see imatrix_mse_kernel.h): per group, f32 sums
// with a rigorous bound on the definition's value, the definition's own sums only where the
// bound cannot decide. Compiled once per target through foreach_target.

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
#include <vector>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/calib/imatrix_mse_certified.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/aligned_allocator.h"
#include "hwy/highway.h"
#include "calib/imatrix_mse-inl.h"

HWY_BEFORE_NAMESPACE();
namespace quench::calib::internal {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

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
struct SearchCertifiedF {
  static void Run(const Block& b) { SearchCertified<D, M, N>(b); }
};

bool SearchCertifiedKernel(const Block& b) { return Dispatch<SearchCertifiedF>(b); }

}  // namespace HWY_NAMESPACE
}  // namespace quench::calib::internal
HWY_AFTER_NAMESPACE();
