// The certified search's decision of one step from its f32 sum, shared by the Highway kernel
// (imatrix_mse_certified.cc) and the AVX-512 BF16 one (imatrix_mse_int_bf16.cc), which must
// decide alike to give the same bytes.
#ifndef QUENCH_SRC_CALIB_IMATRIX_MSE_DECIDE_H_
#define QUENCH_SRC_CALIB_IMATRIX_MSE_DECIDE_H_

#include <cstddef>
#include <cstdint>

namespace quench::calib::internal {

// Whether an f32 sum P of nonnegative f32 terms is in the range where the bound holds:
// 0 (every term 0: the definition's sum is 0 too), or far from f32's subnormals and overflow.
inline bool Certifiable(double p) { return p == 0.0 || (p >= 0x1p-100 && p <= 0x1p100); }

// A group's best so far: the definition's error of step `bk` lies in [blo, bhi] (both equal
// to it when `exact`); `mask`: the steps that improved, as bits of the block's masks.
struct CertifiedBest {
  double blo = 0.0, bhi = 0.0;
  bool exact = true;
  size_t bk = SIZE_MAX;  // SIZE_MAX: the best came from before this call
  uint32_t mask = 0;
};

// Step k (mask bit `bit`) with f32 sum p: when `certify` and p is Certifiable, its error lies
// in [p lo_f, p hi_f] (the kernels' bound), which decides it unless the ranges overlap; a near
// tie, a sum outside the bound's range or a step only the definition takes (!certify) is
// decided on the definition's errors, `exact_of(step)`, the earlier step kept on equal errors.
template <class ExactOf>
inline void DecideStep(CertifiedBest& b, size_t k, uint32_t bit, bool certify, double p,
                       double lo_f, double hi_f, ExactOf&& exact_of) {
  if (certify && Certifiable(p)) {
    if (p * lo_f >= b.bhi) return;
    if (p * hi_f < b.blo) {
      b.blo = p * lo_f;
      b.bhi = p * hi_f;
      b.exact = p == 0.0;
      b.bk = k;
      b.mask |= bit;
      return;
    }
  }
  if (!b.exact) {
    b.blo = b.bhi = exact_of(b.bk);
    b.exact = true;
  }
  const double e = exact_of(k);
  if (e < b.blo) {
    b.blo = b.bhi = e;
    b.bk = k;
    b.mask |= bit;
  }
}

}  // namespace quench::calib::internal

#endif  // QUENCH_SRC_CALIB_IMATRIX_MSE_DECIDE_H_
