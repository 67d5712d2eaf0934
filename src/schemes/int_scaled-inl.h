// Per-target code shared by AWQ's scaled-row kernels (int_scaled_error.cc, exact in f64
// lanes; int_scaled_bound.cc, f32 lanes with a bound): the namespace aliases they are written
// with and the check of a group's parameters both need.
//
// Highway "-inl.h" convention: include after hwy/highway.h, once per target (the toggled
// include guard below), from inside a file compiled through foreach_target.

#if defined(QUENCH_SCHEMES_INT_SCALED_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef QUENCH_SCHEMES_INT_SCALED_INL_H_
#undef QUENCH_SCHEMES_INT_SCALED_INL_H_
#else
#define QUENCH_SCHEMES_INT_SCALED_INL_H_
#endif

#include "hwy/highway.h"
#include "schemes/int_shared.h"
#include "schemes/rounding-inl.h"

HWY_BEFORE_NAMESPACE();
namespace quench::intq {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
namespace rd = quench::HWY_NAMESPACE::rounding;
namespace iq = internal;

// The definition's parameters of a group whose W s lies in [mn, mx] (ComputeParams), into
// *gp; false when its scale is outside [2^-90, 2^90]: with s in [2^-20, 2^20] that keeps
// deq / s a normal f32 (or 0), where the kernels' midpoint tests are exact.
HWY_INLINE bool GroupParamsInRange(float mn, float mx, const iq::Layout& lay, bool symmetric,
                                   iq::GroupParams* gp) {
  *gp = iq::ComputeParams(mn, mx, lay, symmetric, DType::kBF16);
  return gp->scale >= 0x1p-90f && gp->scale <= 0x1p90f;
}

}  // namespace HWY_NAMESPACE
}  // namespace quench::intq
HWY_AFTER_NAMESPACE();

#endif  // QUENCH_SCHEMES_INT_SCALED_INL_H_
