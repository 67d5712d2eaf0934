// AWQ's search internals shared by awq.cc (candidates, the full-Hessian proxy) and
// awq_diagonal.cc (the diagonal proxy's search).
#ifndef QUENCH_CALIB_AWQ_INTERNAL_H_
#define QUENCH_CALIB_AWQ_INTERNAL_H_

#include <cstdint>
#include <vector>

#include "calib/awq.h"
#include "schemes/int_shared.h"

namespace quench::calib::awq_internal {

namespace iq = intq::internal;

// One grid point: its scales, their reciprocals (the kernels') and whether the kernels take
// them (ScaledKernelScales).
struct Cand {
  std::vector<double> s, inv;
  bool kernel = false;
};

bool Aligned2(const AwqLayer& l);
iq::Layout LayoutOf(const AwqLayer& l);

// Every quantized layer's layout, and each layer's first row in the candidates' per-row
// arrays (`offset`, one past the last layer holding the total); unquantized layers have none.
void RowLayouts(const std::vector<AwqLayer>& layers, std::vector<iq::Layout>* lays,
                std::vector<uint64_t>* offset);

// The definition's diagonal term of row r: sum_c h[c] dW[c]^2 (ScaledDot4's order), by the
// exact BF16 kernel where it applies.
double ExactLossRow(const AwqLayer& l, const iq::Layout& lay, uint64_t r, const Cand& c,
                    const std::vector<double>& h);

// The definition's terms of row `r` of `l` (its f32 copy `w`) under candidate g1 and, where
// `term2` is not null, g2: from the exact BF16 back values the bound kernel left in back1 /
// back2 where it took the row (took1 / took2; ScaledLossFromBack, the two f64 sums
// interleaved by ScaledLossFromBack2 when it took both), by ExactLossRow where it did not.
void PairTerms(const AwqLayer& l, const iq::Layout& lay, uint64_t r, const float* w,
               const std::vector<Cand>& cands, const std::vector<double>& h, size_t g1,
               bool took1, const float* back1, double* term1, size_t g2, bool took2,
               const float* back2, double* term2);

// Each candidate's diagonal loss sum (over layers, then rows, as the definition adds them).
// `prune`: candidates proven unable to win are not finished (+Inf); see awq_diagonal.cc.
std::vector<double> DiagonalSums(const std::vector<AwqLayer>& layers,
                                 const std::vector<Cand>& cands, const std::vector<double>& h,
                                 bool prune);

// The screened search's by-products: per candidate its last estimate of the loss sum (the
// exact sum where `exact`), and how many candidates were evaluated on every row.
struct ScreenInfo {
  std::vector<double> estimate;
  std::vector<char> exact;
  size_t finalists = 0;
};

// Each candidate's diagonal loss sum where it survives the screen (+Inf where it was
// dropped by an estimate on a row sample); see awq_screen.cc.
std::vector<double> ScreenedSums(const std::vector<AwqLayer>& layers,
                                 const std::vector<Cand>& cands, const std::vector<double>& h,
                                 ScreenInfo* info);

}  // namespace quench::calib::awq_internal

#endif  // QUENCH_CALIB_AWQ_INTERNAL_H_
