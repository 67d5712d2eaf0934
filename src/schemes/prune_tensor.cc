// Per-tensor magnitude pruning (`--prune-granularity tensor`, declared in schemes/prune.h):
// the exact threshold from histograms of magnitude bit patterns (one pass for BF16/F16, two
// for F32), the walk over a whole tensor that finds it, the count of elements equal to it
// (so chunks know how many equal ones earlier rows pruned), and a chunk pruned against it.
#include <algorithm>
#include <cstring>
#include <functional>
#include <vector>

#include "schemes/prune.h"
#include "schemes/prune_elements.h"

namespace quench::prune {
namespace {

using internal::ElemBytes;
using internal::InfMagnitude;
using internal::ZeroBelow;
// ---- element access ----

inline uint16_t Load16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
inline uint32_t Load32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// The `split` for ZeroBelow that prunes exactly the first `need` elements equal to t: one past
// the need-th of them (n when there are no more than `need`; `equal`, if known, skips the scan
// in that case).
template <typename T>
size_t EqualSplit(const T* x, size_t n, T t, uint64_t need, uint64_t equal = UINT64_MAX) {
  constexpr T kMag = static_cast<T>(static_cast<T>(~T{0}) >> 1);
  if (need == 0) return 0;
  if (need >= equal) return n;
  uint64_t seen = 0;
  for (size_t c = 0; c < n; ++c)
    if ((x[c] & kMag) == t && ++seen == need) return c + 1;
  return n;
}

}  // namespace

MagnitudeHistogram::MagnitudeHistogram(DType d)
    : dtype(d), bins(d == DType::kF32 ? (size_t{1} << 16) : (size_t{1} << 15), 0) {}

bool AccumulateHistogram(MagnitudeHistogram* h, const uint8_t* rows, size_t n_rows,
                         size_t cols) {
  const size_t n = n_rows * cols;
  uint64_t* bins = h->bins.data();
  if (h->dtype != DType::kF32) {
    const uint32_t inf = InfMagnitude(h->dtype);
    uint32_t max_mag = 0;
    for (size_t i = 0; i < n; ++i) {
      const uint32_t a = Load16(rows + 2 * i) & 0x7FFFu;
      max_mag = std::max(max_mag, a);
      ++bins[a];
    }
    h->total += n;
    return max_mag < inf;
  }
  uint32_t max_mag = 0;
  if (h->pass == 0) {
    for (size_t i = 0; i < n; ++i) {
      const uint32_t a = Load32(rows + 4 * i) & 0x7FFFFFFFu;
      max_mag = std::max(max_mag, a);
      ++bins[a >> 15];
    }
  } else {
    // Only elements in the coarse bin count; the rest land in a dummy slot past the end.
    const uint32_t cb = h->coarse_bin;
    for (size_t i = 0; i < n; ++i) {
      const uint32_t a = Load32(rows + 4 * i) & 0x7FFFFFFFu;
      max_mag = std::max(max_mag, a);
      if ((a >> 15) == cb) ++bins[a & 0x7FFFu];
    }
  }
  h->total += n;
  return max_mag < 0x7F800000u;
}

TensorThreshold FindThreshold(MagnitudeHistogram* h, uint64_t k) {
  TensorThreshold t;
  k = std::min(k, h->total);  // every pass sees the whole tensor
  t.pruned = k;
  if (k == 0) return t;  // T = 0, prune_equal = 0: nothing is below 0
  uint64_t below = h->pass == 0 ? 0 : h->below_coarse;
  size_t b = 0;
  for (;; ++b) {
    if (below + h->bins[b] >= k) break;
    below += h->bins[b];
  }
  if (h->dtype == DType::kF32 && h->pass == 0) {
    h->pass = 1;
    h->coarse_bin = static_cast<uint32_t>(b);
    h->below_coarse = below;
    h->total = 0;
    h->bins.assign(size_t{1} << 15, 0);
    t.complete = false;
    return t;
  }
  t.magnitude = h->dtype == DType::kF32 ? (h->coarse_bin << 15) | static_cast<uint32_t>(b)
                                        : static_cast<uint32_t>(b);
  t.prune_equal = k - below;
  return t;
}

ThresholdWalk FindTensorThreshold(const uint8_t* x, DType dtype, uint64_t rows, uint64_t cols,
                                  uint64_t k, uint64_t chunk_rows,
                                  const std::function<bool(uint64_t, uint64_t)>& after_chunk,
                                  TensorThreshold* out) {
  chunk_rows = std::max<uint64_t>(chunk_rows, 1);
  const uint64_t row_bytes = cols * ElemBytes(dtype);
  MagnitudeHistogram h(dtype);
  for (;;) {
    for (uint64_t r = 0; r < rows; r += chunk_rows) {
      const uint64_t n = std::min(chunk_rows, rows - r);
      if (!AccumulateHistogram(&h, x + r * row_bytes, n, cols)) return ThresholdWalk::kNonFinite;
      if (after_chunk && !after_chunk(r, n)) return ThresholdWalk::kStopped;
    }
    const TensorThreshold t = FindThreshold(&h, k);
    if (t.complete) {
      *out = t;
      return ThresholdWalk::kComplete;
    }
  }
}

uint64_t CountEqual(const uint8_t* rows, DType dtype, size_t n_rows, size_t cols,
                    uint32_t magnitude) {
  const size_t n = n_rows * cols;
  uint64_t count = 0;
  if (dtype == DType::kF32) {
    for (size_t i = 0; i < n; ++i) count += (Load32(rows + 4 * i) & 0x7FFFFFFFu) == magnitude;
  } else {
    for (size_t i = 0; i < n; ++i) count += (Load16(rows + 2 * i) & 0x7FFFu) == magnitude;
  }
  return count;
}

bool PruneRowsTensor(const uint8_t* src, uint8_t* dst, DType dtype, size_t n_rows, size_t cols,
                     const TensorThreshold& t, uint64_t equal_before, uint64_t* zeroed) {
  const size_t n = n_rows * cols;
  // Equal-to-T elements of this chunk that are still to be pruned (the first ones).
  const uint64_t need = t.prune_equal > equal_before ? t.prune_equal - equal_before : 0;
  const size_t elem = ElemBytes(dtype);
  const bool aligned = reinterpret_cast<uintptr_t>(src) % elem == 0 &&
                       reinterpret_cast<uintptr_t>(dst) % elem == 0;
  std::vector<uint8_t> bounce;
  const uint8_t* in = src;
  uint8_t* out = dst;
  if (!aligned) {
    bounce.assign(src, src + n * elem);
    in = out = bounce.data();
  }
  uint64_t pruned = 0;
  bool ok;
  if (dtype == DType::kF32) {
    const uint32_t* x = reinterpret_cast<const uint32_t*>(in);
    const uint32_t tm = t.magnitude;
    uint32_t max_mag = 0;
    for (size_t i = 0; i < n; ++i) {
      const uint32_t a = x[i] & 0x7FFFFFFFu;
      max_mag = std::max(max_mag, a);
      pruned += a < tm;
    }
    ok = max_mag < 0x7F800000u;
    const size_t split = EqualSplit<uint32_t>(x, n, tm, need);
    for (size_t i = 0; i < split; ++i) pruned += (x[i] & 0x7FFFFFFFu) == tm;
    ZeroBelow<uint32_t, int32_t>(x, reinterpret_cast<uint32_t*>(out), n, tm, split);
  } else {
    const uint16_t* x = reinterpret_cast<const uint16_t*>(in);
    const uint16_t tm = static_cast<uint16_t>(t.magnitude);
    int16_t max_mag = 0;
    for (size_t i = 0; i < n; ++i) {
      const int16_t a = static_cast<int16_t>(x[i] & 0x7FFF);
      max_mag = std::max(max_mag, a);
      pruned += a < static_cast<int16_t>(tm);
    }
    ok = static_cast<uint32_t>(max_mag) < InfMagnitude(dtype);
    const size_t split = EqualSplit<uint16_t>(x, n, tm, need);
    for (size_t i = 0; i < split; ++i) pruned += (x[i] & 0x7FFFu) == tm;
    ZeroBelow<uint16_t, int16_t>(x, reinterpret_cast<uint16_t*>(out), n, tm, split);
  }
  if (!aligned) std::memcpy(dst, out, n * elem);
  if (zeroed) *zeroed += pruned;
  return ok;
}

}  // namespace quench::prune
