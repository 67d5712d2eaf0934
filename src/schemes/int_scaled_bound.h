// AWQ's diagonal loss of one BF16 row under column scales, computed fast with a proven error
// bound, so that the grid search (src/calib/awq.cc) can rule candidates out without the
// definition's f64 arithmetic and evaluate exactly only those that may win.
//
// Every per-element quantity up to dW is the definition's (int_scaled_error.h) exactly: the
// f64 products and quotients (W s, deq / s) and the f32 division ws / scale are taken as f32
// products by f32 reciprocals, which land within 3 f32 ulps of the definition's f32 value;
// RNE to BF16 then agrees unless that value lies within 8 f32 patterns of a BF16 midpoint,
// where the lane is recomputed by the definition (about once in 4,000 lanes). So the codes,
// the group parameters and dW (as the f32 rounding of the definition's f64 dW) are exact;
// only the loss sum sum_c h[c] dW[c]^2 is taken in f32 lanes (16 on AVX-512), within
// ScaledBoundRel(cols) relative (plus ScaledBoundAbs) of the definition's f64 sum.
// tests/test_awq_bound.cc: dW bit for bit against the definition on every target, the bound
// on adversarial rows, and the search's choice against the exhaustive exact search.
#ifndef QUENCH_SCHEMES_INT_SCALED_BOUND_H_
#define QUENCH_SCHEMES_INT_SCALED_BOUND_H_

#include <cstddef>
#include <cstdint>

#include "schemes/int_shared.h"

namespace quench::intq {

// A row the bound kernel may take: every value zero or of magnitude in [2^-80, 2^80]
// (finite), so that with scales in [2^-20, 2^20] no product is subnormal or overflows.
bool BoundRowOk(const float* w, size_t n);

// A row of n BF16 values (raw bits) as f32 into w; returns BoundRowOk(w, n).
bool LoadBf16RowBound(const uint16_t* src, size_t n, float* w);

// One row: w (f32 values of BF16 weights, BoundRowOk), s the candidate's scales (f64, in
// [2^-20, 2^20]: ScaledKernelScales), s32 = float(s), inv32 = float(1 / s), h32 = float(h).
// *approx: the row's loss in f32 (see above). back_out (may be null): the definition's
// BF16 value of Q(W s) / s per column (dW = w - back in f64). ws: scratch of the row's width. False
// where the kernel does not apply (fewer than four f32 lanes, a group width that is not a whole
// number of vectors, a non-finite product, a group scale outside [2^-90, 2^90]): the caller
// evaluates that row by the definition.
bool Bf16ScaledRowLossBound(const float* w, const double* s, const float* s32,
                            const float* inv32, const float* h32, const internal::Layout& lay,
                            bool symmetric, float* ws, float* back_out, float* approx);

// Bf16ScaledRowLossBound on `rows` consecutive rows of w (each lay.group * lay.n_groups
// wide), without back values: approx[r] and taken[r] (false where the kernel declines the
// row, or ok[r] is false: the caller takes that row by the definition).
void Bf16ScaledRowsLossBound(const float* w, size_t rows, const char* ok, const double* s,
                             const float* s32, const float* inv32, const float* h32,
                             const internal::Layout& lay, bool symmetric, float* ws,
                             float* approx, char* taken);

// The definition's row term from the kernel's back values: dW = w - back in f64, then
// ScaledDot4(dW * dW, h), bit for bit ScaledErrorRowScalar's and ScaledDot4's.
double ScaledLossFromBack(const float* w, const float* back, const double* h, size_t cols);

// ScaledLossFromBack of one row under two candidates (back values back_a, back_b) into *a
// and *b, each bit for bit the single call's; the two sums interleaved.
void ScaledLossFromBack2(const float* w, const float* back_a, const float* back_b,
                         const double* h, size_t cols, double* a, double* b);

// |approx - loss| <= ScaledBoundRel(cols) * approx + ScaledBoundAbs(cols, hmax), for the
// definition's loss of a row the kernel took (hmax: the largest h32).
double ScaledBoundRel(size_t cols);
double ScaledBoundAbs(size_t cols, double hmax);

}  // namespace quench::intq

#endif  // QUENCH_SCHEMES_INT_SCALED_BOUND_H_
