// What magnitude pruning's per-row (prune.cc) and per-tensor (prune_tensor.cc) paths share:
// the first non-finite magnitude pattern of a dtype, the element size, and ZeroBelow, the
// final branch-free pass that zeroes every element below a threshold magnitude plus the
// first ones equal to it. Private to src/schemes/prune*.cc (the API is schemes/prune.h).
#ifndef QUENCH_SCHEMES_PRUNE_ELEMENTS_H_
#define QUENCH_SCHEMES_PRUNE_ELEMENTS_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "quench/dtype.h"

namespace quench::prune::internal {

// First non-finite magnitude pattern.
inline uint32_t InfMagnitude(DType d) {
  return d == DType::kBF16 ? 0x7F80u : d == DType::kF16 ? 0x7C00u : 0x7F800000u;
}

inline size_t ElemBytes(DType d) { return d == DType::kF32 ? 4 : 2; }

// The final select, shared by every unstructured path: `out` gets `x` with the elements
// |x| < t zeroed, and those with |x| == t among the first `split` elements (out == x allowed).
// Branch-free with signed compares (magnitudes < 2^(bits-1)), so it vectorizes on plain SSE2.
template <typename T, typename S>
void ZeroBelow(const T* x, T* out, size_t n, T t, size_t split) {
  constexpr T kMag = static_cast<T>(static_cast<T>(~T{0}) >> 1);
  const S ts = static_cast<S>(t);
  split = std::min(split, n);
  for (size_t c = 0; c < split; ++c) {
    const S a = static_cast<S>(x[c] & kMag);
    out[c] = x[c] & static_cast<T>(-static_cast<T>(a > ts));
  }
  for (size_t c = split; c < n; ++c) {
    const S a = static_cast<S>(x[c] & kMag);
    out[c] = x[c] & static_cast<T>(-static_cast<T>(a >= ts));
  }
}

}  // namespace quench::prune::internal

#endif  // QUENCH_SCHEMES_PRUNE_ELEMENTS_H_
