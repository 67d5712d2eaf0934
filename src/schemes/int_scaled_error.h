// The integer schemes' quantization error under column scales, per weight row:
// dW = W - Q(W s)/s with the memoryless min-max quantizer on W s, and the diagonal proxy's
// row term sum_c h[c] dW[c]^2 (AWQ's grid search, src/calib/awq.h, runs it per candidate s).
// The scalar definition for every dtype, and a Highway kernel for BF16 rows that equals it
// bit for bit (tests/test_awq_kernel.cc, every target compiled in): the
// search runs it 20 times per balance weight element, where the scalar loop cost ~8 ns per
// element and candidate (bench/README.md, "AWQ and SmoothQuant speed").
#ifndef QUENCH_SCHEMES_INT_SCALED_ERROR_H_
#define QUENCH_SCHEMES_INT_SCALED_ERROR_H_

#include <cstddef>
#include <cstdint>

#include "quench/dtype.h"
#include "schemes/chunk.h"
#include "schemes/int_shared.h"

namespace quench::intq {

// The scalar definition: one row of dW (f64) for a row of `lay.group * lay.n_groups` values
// `w` (exact f32 values of dtype d), scales s (f64), quantized as KernelParams q says.
// `ws` is scratch of the row's width.
void ScaledErrorRowScalar(const float* w, const double* s, const internal::Layout& lay,
                       const KernelParams& q, DType d, float* ws, double* out);

// sum_i a[i] * b[i] in f64 as the search sums a row: four partial sums over i mod 4 (each
// product rounded before it is added), then (p0 + p1) + (p2 + p3).
double ScaledDot4(const double* a, const double* b, size_t n);

// The kernel's precondition on a candidate: every s[i] in [2^-20, 2^20] (AWQ's scales are
// normalised around 1; a candidate outside runs the scalar definition).
bool ScaledKernelScales(const double* s, size_t n);

// The kernel, BF16 rows (`w`: the row's raw bf16 bits; `inv`: 1 / s[i], f64). False where it
// does not apply (a target with fewer than four f64 lanes, a group width that is not a whole
// number of vectors, a non-finite product or a group scale outside [2^-90, 2^90]); the caller
// then uses the scalar definition for that row. `ws`: scratch of the row's width.
//   Bf16ScaledRowLoss: *loss = ScaledDot4(dW * dW, h) for the row (dW never materialised);
//   Bf16ScaledRowError: the row of dW, as ScaledErrorRowScalar writes it.
bool Bf16ScaledRowLoss(const uint16_t* w, const double* s, const double* inv, const double* h,
                    const internal::Layout& lay, bool symmetric, float* ws, double* loss);
bool Bf16ScaledRowError(const uint16_t* w, const double* s, const double* inv,
                     const internal::Layout& lay, bool symmetric, float* ws, double* dw);

}  // namespace quench::intq

#endif  // QUENCH_SCHEMES_INT_SCALED_ERROR_H_
