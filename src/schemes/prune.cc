// Magnitude pruning (see prune.h for the rules). Scalar code written so the compiler can keep
// it branch-free: pruning is memory-bound, a row is in L1/L2 while it is worked on. The 16-bit
// N:4 case, the common one (2:4 for sparse tensor cores), also has a Highway kernel beside its
// scalar SWAR reference (PruneN4Swar): the same 64-bit word arithmetic on every lane of a
// vector, compiled once per target through Highway's foreach_target skeleton.
#include "schemes/prune.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <functional>
#include <string>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/schemes/prune.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

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

Status Usage(std::string_view text, const std::string& why) {
  return Error(ErrorCode::kUsage,
               "--prune '" + std::string(text) + "': " + why +
                   " (expected unstructured:FRACTION with 0 <= FRACTION < 1, or N:M with "
                   "1 <= N <= M <= 16)");
}

bool ParseInt(std::string_view s, int* out) {
  if (s.empty() || s.size() > 6) return false;
  for (char c : s)
    if (c < '0' || c > '9') return false;
  auto r = std::from_chars(s.data(), s.data() + s.size(), *out);
  return r.ec == std::errc() && r.ptr == s.data() + s.size();
}

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

Result<PruneSpec> ParsePruneSpec(std::string_view text) {
  PruneSpec spec;
  if (text == "none") return spec;
  const size_t colon = text.find(':');
  if (colon == std::string_view::npos) return Usage(text, "missing ':'");
  const std::string_view head = text.substr(0, colon), tail = text.substr(colon + 1);
  if (head == "unstructured") {
    double f = 0;
    if (tail.empty() || tail.find_first_not_of("0123456789.eE+-") != std::string_view::npos)
      return Usage(text, "the fraction is not a number");
    auto r = std::from_chars(tail.data(), tail.data() + tail.size(), f);
    if (r.ec != std::errc() || r.ptr != tail.data() + tail.size() || !std::isfinite(f))
      return Usage(text, "the fraction is not a number");
    if (!(f >= 0.0 && f < 1.0)) return Usage(text, "the fraction must be in [0, 1)");
    spec.kind = PruneSpec::kUnstructured;
    spec.fraction = f;
    return spec;
  }
  int n = 0, m = 0;
  if (!ParseInt(head, &n) || !ParseInt(tail, &m))
    return Usage(text, "not 'unstructured:FRACTION' nor N:M with integer N and M");
  if (n < 1 || m < 1) return Usage(text, "N and M must be at least 1");
  if (m > kMaxGroup) return Usage(text, "M must be at most 16");
  if (n > m) return Usage(text, "N must not exceed M");
  spec.kind = PruneSpec::kNM;
  spec.n = n;
  spec.m = m;
  return spec;
}

Status ApplyGranularity(std::string_view text, PruneSpec* spec) {
  if (text == "row") {
    spec->per_tensor = false;
    return Status::Ok();
  }
  if (text == "tensor") {
    if (spec->kind == PruneSpec::kNM)
      return Error(ErrorCode::kUsage,
                   "--prune-granularity tensor applies to unstructured pruning only, not N:M");
    spec->per_tensor = true;
    return Status::Ok();
  }
  return Error(ErrorCode::kUsage, "--prune-granularity '" + std::string(text) +
                                      "': expected 'row' or 'tensor'");
}

Status CheckShape(const PruneSpec& spec, uint64_t rows, uint64_t cols) {
  (void)rows;
  if (spec.kind == PruneSpec::kNM && cols % static_cast<uint64_t>(spec.m) != 0)
    return Error(ErrorCode::kUnsupported,
                 std::to_string(spec.n) + ":" + std::to_string(spec.m) + " pruning needs the " +
                     "column count to be a multiple of " + std::to_string(spec.m) + ", got " +
                     std::to_string(cols));
  return Status::Ok();
}

std::string SparsityStructure(const PruneSpec& spec) {
  switch (spec.kind) {
    case PruneSpec::kUnstructured:
      return "unstructured";
    case PruneSpec::kNM:
      return std::to_string(spec.n) + ":" + std::to_string(spec.m);
    default:
      return "";
  }
}

uint64_t PruneCount(double fraction, uint64_t n) {
  if (!(fraction > 0.0)) return 0;
  const double p = std::floor(fraction * static_cast<double>(n));
  if (p >= static_cast<double>(n)) return n;
  return static_cast<uint64_t>(p);
}

uint64_t PrunedElements(const PruneSpec& spec, uint64_t rows, uint64_t cols) {
  switch (spec.kind) {
    case PruneSpec::kUnstructured:
      return spec.per_tensor ? PruneCount(spec.fraction, rows * cols)
                             : rows * PruneCount(spec.fraction, cols);
    case PruneSpec::kNM:
      return rows * (cols / spec.m) * static_cast<uint64_t>(spec.m - spec.n);
    default:
      return 0;
  }
}

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

// ---- per tensor ----

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
#endif  // HWY_ONCE
