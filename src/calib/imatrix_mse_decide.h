// The certified search's decision of one step from its f32 sum, shared by the Highway kernel
// (imatrix_mse_certified.cc) and the AVX-512 BF16 and AVX2 ones (imatrix_mse_int_bf16.cc,
// imatrix_mse_int_avx2.cc), which must decide alike to give the same bytes; and the scalar
// set-up the two batched int kernels share.
#ifndef QUENCH_SRC_CALIB_IMATRIX_MSE_DECIDE_H_
#define QUENCH_SRC_CALIB_IMATRIX_MSE_DECIDE_H_

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <vector>

#include "calib/imatrix_mse_kernel.h"

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

// The smallest f32 >= d for d >= 0 (an error bound: an f32 t is >= d exactly when t >= it);
// the next f32 up from a nonnegative f is the next bit pattern (+0 to the least subnormal, the
// largest finite to +Inf).
inline float CeilF32(double d) {
  float f = static_cast<float>(d);
  if (static_cast<double>(f) < d) f = std::bit_cast<float>(std::bit_cast<uint32_t>(f) + 1u);
  return f;
}

// A block's steps as the batched int kernels take them: P[k] = f32(1 - (i0 + k) / grid) for
// its steps k < i1 - i0 + 1 (the reference's shrink factors; lanes up to `lanes` padded with 1,
// never read), the mask of those steps' bits, and the bound's factors 1 -+ (n + 2) 2^-23 for
// groups of n terms (imatrix_mse_certified.cc says why).
struct BlockSteps {
  uint32_t step_bits;
  double lo_f, hi_f;
};
inline BlockSteps SetUpSteps(int i0, int i1, int grid, size_t n, float* P, size_t lanes) {
  const size_t steps = static_cast<size_t>(i1 - i0 + 1);
  for (size_t k = 0; k < lanes; ++k) {
    P[k] = k < steps ? StepFactor(i0 + static_cast<int>(k), grid) : 1.0f;
  }
  const double m = static_cast<double>(n + 2) * 0x1p-23;
  return {steps == 32 ? ~0u : (1u << steps) - 1u, 1.0 - m, 1.0 + m};
}

// Per-thread scratch of the batched kernels, reused across blocks (fresh pages per block cost
// more than the search): `floats` floats aligned to 64 bytes, and n ones (the terms' weights
// when a site has no importance).
inline float* ThreadScratch(size_t floats) {
  struct Buffer {
    float* p = nullptr;
    size_t n = 0;
    ~Buffer() { std::free(p); }
  };
  thread_local Buffer buf;
  if (buf.n < floats) {
    std::free(buf.p);
    const size_t bytes = (floats * sizeof(float) + 63) / 64 * 64;
    buf.p = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (buf.p == nullptr) throw std::bad_alloc();
    buf.n = floats;
  }
  return buf.p;
}
inline const float* ThreadOnes(size_t n) {
  thread_local std::vector<float> ones;
  if (ones.size() < n) ones.assign(n, 1.0f);
  return ones.data();
}

}  // namespace quench::calib::internal

#endif  // QUENCH_SRC_CALIB_IMATRIX_MSE_DECIDE_H_
