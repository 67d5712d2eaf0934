// Magnitude pruning per row (see prune.h for the rules): unstructured rows by a two-level
// counting select, N:M by ranking within each group. Scalar code written so the compiler can
// keep it branch-free: pruning is memory-bound, a row is in L1/L2 while it is worked on. The
// 16-bit N:4 case, the common one (2:4 for sparse tensor cores), also has a Highway kernel
// beside its scalar SWAR reference (PruneN4Swar): the same 64-bit word arithmetic on every
// lane of a vector, compiled once per target through Highway's foreach_target skeleton. The
// spec's parsing is in prune_spec.cc, per-tensor pruning in prune_tensor.cc.
#include "schemes/prune.h"

#include <algorithm>
#include <cstring>
#include <vector>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/schemes/prune.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "schemes/prune_elements.h"

// The SWAR constants, shared by the reference and the kernels (compiled once).
#ifndef QUENCH_SCHEMES_PRUNE_SHARED_
#define QUENCH_SCHEMES_PRUNE_SHARED_
namespace quench::prune::internal {
// A group of four 16-bit elements is one little-endian uint64 (lane j = column j).
inline constexpr uint64_t kH = 0x8000800080008000u, kL = 0x0001000100010001u;
inline constexpr uint64_t kMag = 0x7FFF7FFF7FFF7FFFu;
inline constexpr uint64_t kC1 = 0x0000000100010001u;  // rotate by 1: lanes 0..2 did not wrap
inline constexpr uint64_t kC2 = 0x0000000000010001u;  // rotate by 2: lanes 0..1
inline constexpr uint64_t kC3 = 0x0000000000000001u;  // rotate by 3: lane 0
}  // namespace quench::prune::internal
#endif  // QUENCH_SCHEMES_PRUNE_SHARED_

HWY_BEFORE_NAMESPACE();
namespace quench::prune {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Lanes(d) groups of four at p as u64 lanes (unaligned bytes; a one-lane vector cannot be
// viewed as bytes, so the scalar target copies the word).
template <class D>
HWY_INLINE hn::Vec<D> Load(D d, const uint8_t* p) {
#if HWY_TARGET == HWY_SCALAR
  uint64_t x;
  std::memcpy(&x, p, 8);
  return hn::Set(d, x);
#else
  return hn::BitCast(d, hn::LoadU(hn::Repartition<uint8_t, D>(), p));
#endif
}
template <class D>
HWY_INLINE void Store(D d, hn::Vec<D> v, uint8_t* p) {
#if HWY_TARGET == HWY_SCALAR
  const uint64_t x = hn::GetLane(v);
  (void)d;
  std::memcpy(p, &x, 8);
#else
  const hn::Repartition<uint8_t, D> d8;
  hn::StoreU(hn::BitCast(d8, v), d8, p);
#endif
}

// PruneN4Swar (below, the reference) on Lanes(d) groups per step: every operation there is
// lane-wise on a 64-bit word, so it is the same on each u64 lane, with the rotations as
// RotateRight. The last groups (fewer than a vector) go through a zero-padded copy: zero
// magnitudes are finite, and only the real groups are stored.
bool PruneN4Kernel(const uint8_t* row, uint8_t* out, size_t n_elems, int n,
                   uint16_t inf_mag) {
  using namespace internal;  // NOLINT(build/namespaces): the SWAR constants
  const hn::ScalableTag<uint64_t> d;
  const size_t lanes = hn::Lanes(d);
  const auto h = hn::Set(d, kH), l = hn::Set(d, kL), mag = hn::Set(d, kMag);
  const auto c1 = hn::Set(d, kC1), c2 = hn::Set(d, kC2), c3 = hn::Set(d, kC3);
  const auto prune_h = hn::Set(d, static_cast<uint64_t>(4 - n) * kL | kH);
  const auto inf = hn::Set(d, static_cast<uint64_t>(inf_mag) * kL);
  auto bad = hn::Zero(d);
  auto step = [&](const uint8_t* src, uint8_t* dst) {
    const auto w = Load(d, src);
    const auto a = hn::And(w, mag);
    const auto ah = hn::Or(a, h);
    bad = hn::Or(bad, hn::Sub(ah, inf));  // lane top bit: a >= inf_mag
    // ((a_j | 0x8000) - (a_l + c)) has its top bit set iff a_l + c <= a_j.
    auto le = [&](hn::Vec<decltype(d)> r, hn::Vec<decltype(d)> c) {
      return hn::And(hn::ShiftRight<15>(hn::Sub(ah, hn::Add(r, c))), l);
    };
    const auto rank = hn::Add(hn::Add(le(hn::RotateRight<16>(a), c1),
                                      le(hn::RotateRight<32>(a), c2)),
                              le(hn::RotateRight<48>(a), c3));
    const auto m = hn::And(hn::Sub(prune_h, hn::Add(rank, l)), h);  // top bit: rank < 4 - n
    const auto full = hn::Or(m, hn::Sub(m, hn::ShiftRight<15>(m)));  // 0xFFFF in pruned lanes
    Store(d, hn::AndNot(full, w), dst);
  };
  const size_t groups = n_elems / 4;
  size_t g = 0;
  for (; g + lanes <= groups; g += lanes) step(row + 8 * g, out + 8 * g);
  if (g < groups) {
    HWY_ALIGN uint8_t in_buf[HWY_MAX_BYTES] = {};
    HWY_ALIGN uint8_t out_buf[HWY_MAX_BYTES];
    const size_t bytes = 8 * (groups - g);
    std::memcpy(in_buf, row + 8 * g, bytes);
    step(in_buf, out_buf);
    std::memcpy(out + 8 * g, out_buf, bytes);
  }
  return hn::AllTrue(d, hn::Eq(hn::And(bad, h), hn::Zero(d)));
}

}  // namespace HWY_NAMESPACE
}  // namespace quench::prune
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace quench::prune {

HWY_EXPORT(PruneN4Kernel);

namespace {

using internal::ElemBytes;
using internal::InfMagnitude;
using internal::ZeroBelow;
// ---- per-row unstructured: two-level counting select ----

// Prunes the k smallest (|x|, column) keys of one row. False on NaN/Inf. Level 1 counts the
// high bits of the magnitude, |x| >> kShift (2048 bins for long rows, 256 for short ones, so
// clearing the bins stays cheap next to the row); the one bin holding the k-th smallest is then
// resolved exactly by nth_element on a compacted copy of just its elements. The Inf/NaN
// magnitudes have their low kShift bits clear, so they are exactly the top bins.
template <typename T, typename S, int kShift>
bool PruneRowSelect(const T* row, T* out, size_t cols, size_t k, T inf_mag,
                    std::vector<T>* scratch, std::vector<uint32_t>* col_scratch) {
  constexpr T kMag = static_cast<T>(static_cast<T>(~T{0}) >> 1);
  constexpr size_t kBins = (size_t{kMag} + 1) >> kShift;
  // Two interleaved histograms halve the store-to-load chains on the few hot bins.
  uint32_t h1[kBins], h1b[kBins];
  std::memset(h1, 0, sizeof(h1));
  std::memset(h1b, 0, sizeof(h1b));
  size_t c0 = 0;
  for (; c0 + 2 <= cols; c0 += 2) {
    ++h1[(row[c0] & kMag) >> kShift];
    ++h1b[(row[c0 + 1] & kMag) >> kShift];
  }
  if (c0 < cols) ++h1[(row[c0] & kMag) >> kShift];
  for (size_t b = 0; b < kBins; ++b) h1[b] += h1b[b];
  uint32_t bad = 0;
  for (size_t b = inf_mag >> kShift; b < kBins; ++b) bad |= h1[b];
  if (bad != 0) return false;
  if (k == 0) {
    if (out != row) std::memcpy(out, row, cols * sizeof(T));
    return true;
  }

  // Bin holding the k-th smallest (1-based).
  size_t below = 0;
  size_t hb = 0;
  for (;; ++hb) {
    if (below + h1[hb] >= k) break;
    below += h1[hb];
  }
  // Compact the magnitudes in that bin with their columns (branch-free), select T within
  // them, and find the column of the last equal-to-T element to prune from the same list.
  const size_t cap = size_t{h1[hb]} + 1;
  if (scratch->size() < 2 * cap) scratch->resize(2 * cap);
  if (col_scratch->size() < cap) col_scratch->resize(cap);
  T* in_bin = scratch->data();
  T* sel = in_bin + cap;
  uint32_t* in_col = col_scratch->data();
  size_t n_in = 0;
  for (size_t c = 0; c < cols; ++c) {
    const T a = row[c] & kMag;
    in_bin[n_in] = a;
    in_col[n_in] = static_cast<uint32_t>(c);
    n_in += (a >> kShift) == hb;
  }
  std::memcpy(sel, in_bin, n_in * sizeof(T));
  const size_t r = k - below - 1;  // 0-based rank of T within the bin
  std::nth_element(sel, sel + r, sel + n_in);
  const T t = sel[r];
  size_t less = 0;
  for (size_t i = 0; i < n_in; ++i) less += in_bin[i] < t;
  const size_t need = k - below - less;  // 1 <= need <= (elements equal to T)
  size_t split = cols, seen = 0;
  for (size_t i = 0; i < n_in; ++i) {
    if (in_bin[i] == t && ++seen == need) {
      split = in_col[i] + 1;
      break;
    }
  }
  ZeroBelow<T, S>(row, out, cols, t, split);
  return true;
}

// ---- N:M ----

// Keeps the n largest (|x|, column) keys in every group of M; the key puts the column in the
// low 4 bits, so keys are distinct and a lower column compares smaller (is pruned first).
// Returns the largest magnitude seen, for the caller's NaN/Inf check. Ranks come from the
// M(M-1)/2 pairwise comparisons of the distinct keys, all in registers for small M.
template <int M, typename T, typename Key, int kMagBits>
Key PruneNMImpl(const T* row, T* out, size_t cols, int n) {
  constexpr Key kMask = (Key{1} << kMagBits) - 1;
  const int prune = M - n;
  Key max_mag = 0;
  for (size_t g = 0; g < cols; g += M) {
    Key key[M];
    int rank[M];
    for (int j = 0; j < M; ++j) {
      const Key a = static_cast<Key>(row[g + j]) & kMask;
      max_mag = max_mag < a ? a : max_mag;
      key[j] = (a << 4) | static_cast<Key>(j);
      rank[j] = 0;
    }
    for (int i = 0; i < M; ++i) {
      for (int j = i + 1; j < M; ++j) {
        const int lt = key[i] < key[j];
        rank[j] += lt;
        rank[i] += 1 - lt;
      }
    }
    for (int j = 0; j < M; ++j) out[g + j] = rank[j] < prune ? T{0} : row[g + j];
  }
  return max_mag;
}

template <typename T, typename Key, int kMagBits>
Key PruneNMRow(const T* row, T* out, size_t cols, int n, int m) {
  switch (m) {
#define QUENCH_PRUNE_CASE(MM) \
  case MM:                    \
    return PruneNMImpl<MM, T, Key, kMagBits>(row, out, cols, n);
    QUENCH_PRUNE_CASE(1)
    QUENCH_PRUNE_CASE(2)
    QUENCH_PRUNE_CASE(3)
    QUENCH_PRUNE_CASE(4)
    QUENCH_PRUNE_CASE(5)
    QUENCH_PRUNE_CASE(6)
    QUENCH_PRUNE_CASE(7)
    QUENCH_PRUNE_CASE(8)
    QUENCH_PRUNE_CASE(9)
    QUENCH_PRUNE_CASE(10)
    QUENCH_PRUNE_CASE(11)
    QUENCH_PRUNE_CASE(12)
    QUENCH_PRUNE_CASE(13)
    QUENCH_PRUNE_CASE(14)
    QUENCH_PRUNE_CASE(15)
    QUENCH_PRUNE_CASE(16)
#undef QUENCH_PRUNE_CASE
    default:
      return 0;
  }
}

// N:4 on 16-bit elements, SWAR: a group of four is one little-endian uint64 (lane j = column
// j), and every step below is lane-wise on 16-bit lanes holding 15-bit magnitudes, so no carry
// or borrow ever crosses a lane (and the loop vectorizes on plain SSE2). Lane j's rank is the
// number of lanes l whose key (a_l, l) is smaller: a_l < a_j when l > j, a_l <= a_j when l < j.
// Rotating by s lanes puts a_{(j+s) mod 4} in lane j; the lanes that wrapped have l < j.
// Returns false when a lane holds NaN/Inf (|x| >= inf_mag), after pruning the row.
bool PruneN4Swar(const uint8_t* row, uint8_t* out, size_t cols, int n, uint16_t inf_mag) {
  using namespace internal;  // NOLINT(build/namespaces): the SWAR constants
  const uint64_t prune_h = static_cast<uint64_t>(4 - n) * kL | kH;
  const uint64_t inf = static_cast<uint64_t>(inf_mag) * kL;
  uint64_t bad = 0;
  const size_t groups = cols / 4;
  for (size_t g = 0; g < groups; ++g) {
    uint64_t w;
    std::memcpy(&w, row + 8 * g, 8);
    const uint64_t a = w & kMag;
    const uint64_t ah = a | kH;
    bad |= ah - inf;  // lane top bit: a >= inf_mag
    const uint64_t r1 = (a >> 16) | (a << 48);
    const uint64_t r2 = (a >> 32) | (a << 32);
    const uint64_t r3 = (a >> 48) | (a << 16);
    // ((a_j | 0x8000) - (a_l + c)) has its top bit set iff a_l + c <= a_j.
    const uint64_t rank = (((ah - (r1 + kC1)) >> 15) & kL) + (((ah - (r2 + kC2)) >> 15) & kL) +
                          (((ah - (r3 + kC3)) >> 15) & kL);
    const uint64_t m = (prune_h - (rank + kL)) & kH;  // lane top bit: rank < 4 - n
    const uint64_t full = m | (m - (m >> 15));        // 0xFFFF in pruned lanes
    w &= ~full;
    std::memcpy(out + 8 * g, &w, 8);
  }
  return (bad & kH) == 0;
}

// N:M on one row. A NaN/Inf is only detected after the row is pruned (the buffer is then
// garbage anyway, and one pass is cheaper than two).
bool PruneNM16(const uint16_t* row, uint16_t* out, size_t cols, int n, int m,
               uint16_t inf_mag) {
  return PruneNMRow<uint16_t, uint32_t, 15>(row, out, cols, n, m) < inf_mag;
}

bool PruneNM32(const uint32_t* row, uint32_t* out, size_t cols, int n, int m) {
  return PruneNMRow<uint32_t, uint64_t, 31>(row, out, cols, n, m) < 0x7F800000u;
}

}  // namespace

// ---------------------------------------------------------------------------------------------

bool PruneN4Scalar(const uint8_t* src, uint8_t* dst, DType dtype, size_t n_elems, int n) {
  if (dtype == DType::kF32 || n_elems % 4 != 0 || n < 1 || n > 4) return false;
  return PruneN4Swar(src, dst, n_elems, n, static_cast<uint16_t>(InfMagnitude(dtype)));
}

bool PruneRows(const uint8_t* src, uint8_t* dst, DType dtype, size_t n_rows, size_t cols,
               const PruneSpec& spec, uint64_t* zeroed) {
  const size_t row_bytes = cols * ElemBytes(dtype);
  auto copy_through = [&] {
    if (dst != src && n_rows * row_bytes != 0) std::memcpy(dst, src, n_rows * row_bytes);
  };
  if (spec.kind == PruneSpec::kNone || n_rows == 0 || cols == 0) {
    copy_through();
    return true;
  }
  if (spec.kind == PruneSpec::kUnstructured && spec.per_tensor) return false;
  if (spec.kind == PruneSpec::kNM && (spec.m < 1 || spec.m > kMaxGroup || spec.n < 1 ||
                                      spec.n > spec.m || cols % spec.m != 0))
    return false;
  const bool wide = dtype == DType::kF32;
  std::vector<uint32_t> scratch32, col_scratch;
  std::vector<uint16_t> scratch16;
  std::vector<uint8_t> bounce;
  const uint64_t per_row = spec.kind == PruneSpec::kNM
                               ? (cols / spec.m) * static_cast<uint64_t>(spec.m - spec.n)
                               : PruneCount(spec.fraction, cols);
  if (!wide && spec.kind == PruneSpec::kNM && spec.m == 4) {
    // The N:4 kernel reads and writes bytes, so it needs no alignment and runs on the whole
    // chunk.
    if (!HWY_DYNAMIC_DISPATCH(PruneN4Kernel)(src, dst, n_rows * cols, spec.n,
                                             static_cast<uint16_t>(InfMagnitude(dtype))))
      return false;
    if (zeroed) *zeroed += per_row * n_rows;
    return true;
  }
  const size_t elem = wide ? 4 : 2;
  for (size_t r = 0; r < n_rows; ++r) {
    const uint8_t* p = src + r * row_bytes;
    uint8_t* q = dst + r * row_bytes;
    // Raw bytes from a file need not be aligned for the element type; a row where either side
    // is not goes through an aligned copy, pruned in place there.
    const bool aligned = reinterpret_cast<uintptr_t>(p) % elem == 0 &&
                         reinterpret_cast<uintptr_t>(q) % elem == 0;
    const uint8_t* in = p;
    uint8_t* out = q;
    if (!aligned) {
      bounce.resize(row_bytes + 8);
      std::memcpy(bounce.data(), p, row_bytes);
      in = out = bounce.data();
    }
    bool ok;
    if (wide) {
      const uint32_t* row = reinterpret_cast<const uint32_t*>(in);
      uint32_t* o = reinterpret_cast<uint32_t*>(out);
      if (spec.kind == PruneSpec::kNM)
        ok = PruneNM32(row, o, cols, spec.n, spec.m);
      else if (cols >= 2048)
        ok = PruneRowSelect<uint32_t, int32_t, 20>(row, o, cols, per_row, 0x7F800000u,
                                                   &scratch32, &col_scratch);
      else
        ok = PruneRowSelect<uint32_t, int32_t, 23>(row, o, cols, per_row, 0x7F800000u,
                                                   &scratch32, &col_scratch);
    } else {
      const uint16_t* row = reinterpret_cast<const uint16_t*>(in);
      uint16_t* o = reinterpret_cast<uint16_t*>(out);
      const uint16_t inf = static_cast<uint16_t>(InfMagnitude(dtype));
      if (spec.kind == PruneSpec::kNM)
        ok = PruneNM16(row, o, cols, spec.n, spec.m, inf);
      else if (cols >= 2048)
        ok = PruneRowSelect<uint16_t, int16_t, 4>(row, o, cols, per_row, inf, &scratch16,
                                                  &col_scratch);
      else
        ok = PruneRowSelect<uint16_t, int16_t, 7>(row, o, cols, per_row, inf, &scratch16,
                                                  &col_scratch);
    }
    if (!ok) return false;
    if (!aligned) std::memcpy(q, out, row_bytes);
    if (zeroed) *zeroed += per_row;
  }
  return true;
}

}  // namespace quench::prune
#endif  // HWY_ONCE
