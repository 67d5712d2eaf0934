// The imatrix_mse search's kernel dispatch (see imatrix_mse_kernel.h): per target, which
// search a block takes (the certified search, imatrix_mse_certified.cc, or the tile search,
// imatrix_mse_tiles.cc; shared pieces in imatrix_mse-inl.h), and the dynamic dispatch the
// callers use. Compiled once per target through foreach_target.

// As in the files it dispatches to: no contraction into FMAs (the inline pieces of
// imatrix_mse-inl.h are compiled here too).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "calib/imatrix_mse_kernel.h"

#include <cstddef>

#include "calib/imatrix_mse_int8_avx2.h"
#include "calib/imatrix_mse_int_avx2.h"
#include "calib/imatrix_mse_int_avx2_asym.h"
#include "calib/imatrix_mse_int_bf16.h"
#include "calib/imatrix_mse_mx_avx2.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/calib/imatrix_mse_kernel.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "calib/imatrix_mse-inl.h"

HWY_BEFORE_NAMESPACE();
namespace quench::calib::internal {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// NVFP4's groups of 16: lanes across groups (imatrix_mse_fp4_groups.cc); other groups of
// whole vectors: the certified search per group; narrower ones (small int groups) in tiles
// of groups.
bool SearchBlockKernel(const Block& b) {
  const size_t L = hn::Lanes(DF());
  // (Where a vector holds at most one group; at most 32 steps, LastStep's bound.)
  if (b.format == ImatrixFormat::kNvfp4 && b.group == 16 && L > 1 && 16 % L == 0 &&
      b.i1 - b.i0 < 32) {
    return SearchFp4GroupsKernel(b);
  }
  // (At most 2^20 elements: the bound's factors hold while (n - 1) 2^-24 stays well below 1.)
  if (b.group % L == 0 && b.group <= (size_t{1} << 20)) {
    return SearchCertifiedKernel(b);
  }
  return SearchTilesKernel(b);
}

// MxScaleVec over n lanes (n a multiple of the lanes), for MxScalesForTest.
void MxScalesKernel(DType d, const float* pm0, const float* pM0, size_t n, float* s) {
  const DF df;
  for (size_t i = 0; i < n; i += hn::Lanes(df)) {
    const VF a = hn::LoadU(df, pm0 + i), c = hn::LoadU(df, pM0 + i);
    hn::StoreU(d == DType::kBF16 ? MxScaleVec<DType::kBF16>(a, c) : MxScaleVec<DType::kF32>(a, c),
               df, s + i);
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace quench::calib::internal
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace quench::calib::internal {

HWY_EXPORT(SearchBlockKernel);
HWY_EXPORT(Fp4GroupsRawTarget);
HWY_EXPORT(ErrorsTilesKernel);
HWY_EXPORT(Fp4TermsKernel);
HWY_EXPORT(MxScalesKernel);
HWY_EXPORT(MxTermsKernel);

void Fp4TermsForTest(DType d, int norm, int form, const float* ax, const float* imp,
                     size_t n, float s, float* out) {
  HWY_DYNAMIC_DISPATCH(Fp4TermsKernel)(d, norm, form, ax, imp, n, s, out);
}

void MxScalesForTest(DType d, const float* pm0, const float* pM0, size_t n, float* s) {
  HWY_DYNAMIC_DISPATCH(MxScalesKernel)(d, pm0, pM0, n, s);
}

void MxTermsForTest(int norm, const float* x, const float* imp, size_t n, float s, float* out) {
  HWY_DYNAMIC_DISPATCH(MxTermsKernel)(norm, x, imp, n, s, out);
}

bool Fp4GroupsRawHandles(const Block& b) {
  // SearchBlock then reaches SearchFp4GroupsKernel (norm 2 or 3, groups of 16, at most 32
  // steps), whose int32 offsets hold: RunSteps' blocks have at most max(16 cols, 2^16 + cols)
  // weights, below 2^31 for cols <= 2^26.
  return b.format == ImatrixFormat::kNvfp4 && b.dtype == DType::kBF16 && b.group == 16 &&
         (b.norm == 3.0 || b.norm == 2.0) && b.i0 >= 0 && b.i0 <= b.i1 && b.i1 - b.i0 < 32 &&
         b.cols <= (size_t{1} << 26) && HWY_DYNAMIC_DISPATCH(Fp4GroupsRawTarget)();
}

bool SearchBlock(const Block& b) {
  if (b.group == 0 || b.cols % b.group != 0) return false;
  if (b.rows == 0) return true;
  // Other norms (powf): the definition itself.
  if (b.norm != 3.0 && b.norm != 2.0) return SearchBlockScalar(b);
  // Symmetric int codes of bf16 weights (W4A16) on CPUs with AVX-512 BF16: the same search
  // on cheaper terms (imatrix_mse_int_bf16.h).
  if (IntBf16Handles(b)) return SearchIntBf16(b);
  // The same blocks on AVX2 CPUs without it (imatrix_mse_int_avx2.h).
  if (IntAvx2Handles(b)) return SearchIntAvx2(b);
  // Symmetric 5- to 8-bit codes of bf16 weights (W8A16, W8A8) on AVX2 CPUs
  // (imatrix_mse_int8_avx2.h).
  if (Int8Avx2Handles(b)) return SearchInt8Avx2(b);
  // Asymmetric int codes of bf16 weights (W4A16_ASYM) on AVX2 CPUs
  // (imatrix_mse_int_avx2_asym.h).
  if (IntAvx2AsymHandles(b)) return SearchIntAvx2Asym(b);
  // MXFP4 codes of bf16 weights on AVX2 CPUs (imatrix_mse_mx_avx2.h).
  if (MxAvx2Handles(b)) return SearchMxAvx2(b);
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
  HWY_DYNAMIC_DISPATCH(ErrorsTilesKernel)(b, params, bound, err);
}

}  // namespace quench::calib::internal
#endif  // HWY_ONCE
