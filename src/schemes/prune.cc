// Magnitude pruning (see prune.h for the rules). Scalar code written so the compiler can keep
// it branch-free: pruning is memory-bound, a row is in L1/L2 while it is worked on.
#include "schemes/prune.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <string>

namespace quench::prune {
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

// ---- per-row unstructured, 16-bit: two-level counting select ----

// Prunes the k smallest (|x|, column) keys of one row of 16-bit elements. False on NaN/Inf.
bool PruneRow16(uint16_t* row, size_t cols, size_t k, uint16_t inf_mag) {
  // Level 1: the high 8 bits of the magnitude (the exponent for BF16). Four interleaved
  // sub-histograms break the store-to-load chains on the few bins real weights fall in.
  uint32_t h1[4][256];
  std::memset(h1, 0, sizeof(h1));
  uint16_t max_mag = 0;
  size_t i = 0;
  for (; i + 4 <= cols; i += 4) {
    const uint16_t a = row[i] & 0x7FFF, b = row[i + 1] & 0x7FFF;
    const uint16_t c = row[i + 2] & 0x7FFF, d = row[i + 3] & 0x7FFF;
    ++h1[0][a >> 7];
    ++h1[1][b >> 7];
    ++h1[2][c >> 7];
    ++h1[3][d >> 7];
    max_mag = std::max<uint16_t>(max_mag, std::max(std::max(a, b), std::max(c, d)));
  }
  for (; i < cols; ++i) {
    const uint16_t a = row[i] & 0x7FFF;
    ++h1[0][a >> 7];
    max_mag = std::max(max_mag, a);
  }
  if (max_mag >= inf_mag) return false;
  if (k == 0) return true;

  // Bin holding the k-th smallest (1-based).
  size_t below = 0;
  unsigned hb = 0;
  for (;; ++hb) {
    const size_t c = size_t{h1[0][hb]} + h1[1][hb] + h1[2][hb] + h1[3][hb];
    if (below + c >= k) break;
    below += c;
  }

  // Level 2: the low 7 bits of the elements in that bin; slot 128.. takes the others.
  uint32_t h2[4][132];
  std::memset(h2, 0, sizeof(h2));
  i = 0;
  for (; i + 4 <= cols; i += 4) {
    for (int j = 0; j < 4; ++j) {
      const uint16_t a = row[i + j] & 0x7FFF;
      const unsigned slot = (a >> 7) == hb ? (a & 0x7F) : 128u + j;
      ++h2[j][slot];
    }
  }
  for (; i < cols; ++i) {
    const uint16_t a = row[i] & 0x7FFF;
    ++h2[0][(a >> 7) == hb ? (a & 0x7F) : 128u];
  }
  unsigned lo = 0;
  size_t equal = 0;
  for (;; ++lo) {
    equal = size_t{h2[0][lo]} + h2[1][lo] + h2[2][lo] + h2[3][lo];
    if (below + equal >= k) break;
    below += equal;
  }
  const uint16_t t = static_cast<uint16_t>((hb << 7) | lo);
  const size_t need = k - below;  // 1 <= need <= equal
  // Last column whose element equals T and is pruned (the need-th equal one).
  size_t last = cols;
  if (need < equal) {
    size_t seen = 0;
    for (size_t c = 0;; ++c) {
      if ((row[c] & 0x7FFF) == t && ++seen == need) {
        last = c;
        break;
      }
    }
  }
  for (size_t c = 0; c < cols; ++c) {
    const uint16_t a = row[c] & 0x7FFF;
    const bool prune = a < t || (a == t && c <= last);
    row[c] = prune ? 0 : row[c];
  }
  return true;
}

// ---- per-row unstructured, F32: nth_element on the magnitudes ----

bool PruneRow32(uint32_t* row, size_t cols, size_t k, std::vector<uint32_t>* scratch) {
  uint32_t max_mag = 0;
  for (size_t c = 0; c < cols; ++c) max_mag = std::max(max_mag, row[c] & 0x7FFFFFFFu);
  if (max_mag >= 0x7F800000u) return false;
  if (k == 0) return true;
  scratch->resize(cols);
  uint32_t* s = scratch->data();
  for (size_t c = 0; c < cols; ++c) s[c] = row[c] & 0x7FFFFFFFu;
  std::nth_element(s, s + (k - 1), s + cols);
  const uint32_t t = s[k - 1];  // the k-th smallest magnitude
  size_t below = 0, equal = 0;
  for (size_t c = 0; c < cols; ++c) {
    const uint32_t a = row[c] & 0x7FFFFFFFu;
    below += a < t;
    equal += a == t;
  }
  const size_t need = k - below;
  size_t last = cols;
  if (need < equal) {
    size_t seen = 0;
    for (size_t c = 0;; ++c) {
      if ((row[c] & 0x7FFFFFFFu) == t && ++seen == need) {
        last = c;
        break;
      }
    }
  }
  for (size_t c = 0; c < cols; ++c) {
    const uint32_t a = row[c] & 0x7FFFFFFFu;
    const bool prune = a < t || (a == t && c <= last);
    row[c] = prune ? 0 : row[c];
  }
  return true;
}

// ---- N:M ----

// Keeps the n largest (|x|, column) keys in every group of M; the key puts the column in the
// low 4 bits, so keys are distinct and a lower column compares smaller (is pruned first).
template <int M, typename T, typename Key, int kMagBits>
bool PruneNMImpl(T* row, size_t cols, int n) {
  constexpr Key kMask = (Key{1} << kMagBits) - 1;
  const int prune = M - n;
  Key max_mag = 0;
  for (size_t g = 0; g < cols; g += M) {
    Key key[M];
    for (int j = 0; j < M; ++j) {
      const Key a = static_cast<Key>(row[g + j]) & kMask;
      max_mag = std::max(max_mag, a);
      key[j] = (a << 4) | static_cast<Key>(j);
    }
    for (int j = 0; j < M; ++j) {
      int rank = 0;
      for (int l = 0; l < M; ++l) rank += key[l] < key[j];
      row[g + j] = rank < prune ? T{0} : row[g + j];
    }
  }
  return max_mag < (sizeof(T) == 4 ? Key{0x7F800000u} : Key{0});  // 16-bit: checked by caller
}

template <typename T, typename Key, int kMagBits>
bool PruneNMRow(T* row, size_t cols, int n, int m) {
  switch (m) {
#define QUENCH_PRUNE_CASE(MM) \
  case MM:                    \
    return PruneNMImpl<MM, T, Key, kMagBits>(row, cols, n);
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
      return false;
  }
}

// N:M on one 16-bit row; the NaN/Inf check is a separate max over the row (cheap, and keeps
// the group loop free of it).
bool PruneNM16(uint16_t* row, size_t cols, int n, int m, uint16_t inf_mag) {
  uint16_t max_mag = 0;
  for (size_t c = 0; c < cols; ++c) max_mag = std::max<uint16_t>(max_mag, row[c] & 0x7FFF);
  if (max_mag >= inf_mag) return false;
  PruneNMRow<uint16_t, uint32_t, 15>(row, cols, n, m);
  return true;
}

bool PruneNM32(uint32_t* row, size_t cols, int n, int m) {
  uint32_t max_mag = 0;
  for (size_t c = 0; c < cols; ++c) max_mag = std::max(max_mag, row[c] & 0x7FFFFFFFu);
  if (max_mag >= 0x7F800000u) return false;
  PruneNMRow<uint32_t, uint64_t, 31>(row, cols, n, m);
  return true;
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

bool PruneRows(uint8_t* rows, DType dtype, size_t n_rows, size_t cols, const PruneSpec& spec,
               uint64_t* zeroed) {
  if (spec.kind == PruneSpec::kNone || n_rows == 0 || cols == 0) return true;
  if (spec.kind == PruneSpec::kUnstructured && spec.per_tensor) return false;
  if (spec.kind == PruneSpec::kNM && (spec.m < 1 || spec.m > kMaxGroup || spec.n < 1 ||
                                      spec.n > spec.m || cols % spec.m != 0))
    return false;
  const size_t row_bytes = cols * ElemBytes(dtype);
  const bool wide = dtype == DType::kF32;
  // Rows in a writable buffer of raw bytes: the caller's buffer is not necessarily aligned.
  // Work on an aligned row copy only when it is not.
  std::vector<uint32_t> scratch;
  std::vector<uint8_t> bounce;
  const uint64_t per_row = spec.kind == PruneSpec::kNM
                               ? (cols / spec.m) * static_cast<uint64_t>(spec.m - spec.n)
                               : PruneCount(spec.fraction, cols);
  for (size_t r = 0; r < n_rows; ++r) {
    uint8_t* p = rows + r * row_bytes;
    const bool aligned = reinterpret_cast<uintptr_t>(p) % (wide ? 4 : 2) == 0;
    uint8_t* w = p;
    if (!aligned) {
      bounce.resize(row_bytes + 8);
      w = bounce.data();
      std::memcpy(w, p, row_bytes);
    }
    bool ok;
    if (wide) {
      uint32_t* row = reinterpret_cast<uint32_t*>(w);
      ok = spec.kind == PruneSpec::kNM ? PruneNM32(row, cols, spec.n, spec.m)
                                       : PruneRow32(row, cols, per_row, &scratch);
    } else {
      uint16_t* row = reinterpret_cast<uint16_t*>(w);
      const uint16_t inf = static_cast<uint16_t>(InfMagnitude(dtype));
      ok = spec.kind == PruneSpec::kNM ? PruneNM16(row, cols, spec.n, spec.m, inf)
                                       : PruneRow16(row, cols, per_row, inf);
    }
    if (!ok) return false;
    if (!aligned) std::memcpy(p, w, row_bytes);
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
  const uint64_t n = h->pass == 0 ? h->total : h->total;  // elements in the whole tensor
  k = std::min(k, n);
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

bool PruneRowsTensor(uint8_t* rows, DType dtype, size_t n_rows, size_t cols,
                     const TensorThreshold& t, uint64_t equal_before, uint64_t* zeroed) {
  const size_t n = n_rows * cols;
  const uint32_t inf = InfMagnitude(dtype);
  const uint32_t tm = t.magnitude;
  // Equal-to-T elements of this chunk that are still to be pruned.
  uint64_t eq_left = t.prune_equal > equal_before ? t.prune_equal - equal_before : 0;
  uint64_t pruned = 0;
  uint32_t max_mag = 0;
  if (dtype == DType::kF32) {
    for (size_t i = 0; i < n; ++i) {
      uint8_t* p = rows + 4 * i;
      const uint32_t a = Load32(p) & 0x7FFFFFFFu;
      max_mag = std::max(max_mag, a);
      const bool eq = a == tm && eq_left > 0;
      eq_left -= eq;
      if (a < tm || eq) {
        std::memset(p, 0, 4);
        ++pruned;
      }
    }
  } else {
    for (size_t i = 0; i < n; ++i) {
      uint8_t* p = rows + 2 * i;
      const uint32_t a = Load16(p) & 0x7FFFu;
      max_mag = std::max(max_mag, a);
      const bool eq = a == tm && eq_left > 0;
      eq_left -= eq;
      if (a < tm || eq) {
        std::memset(p, 0, 2);
        ++pruned;
      }
    }
  }
  if (zeroed) *zeroed += pruned;
  return max_mag < inf;
}

bool PruneTensor(uint8_t* data, DType dtype, size_t rows, size_t cols, const PruneSpec& spec,
                 uint64_t* zeroed, size_t chunk_rows) {
  if (!(spec.kind == PruneSpec::kUnstructured && spec.per_tensor))
    return PruneRows(data, dtype, rows, cols, spec, zeroed);
  if (chunk_rows == 0) chunk_rows = rows == 0 ? 1 : rows;
  const size_t row_bytes = cols * ElemBytes(dtype);
  const uint64_t k = PruneCount(spec.fraction, uint64_t{rows} * cols);
  MagnitudeHistogram h(dtype);
  TensorThreshold t;
  for (;;) {
    for (size_t r = 0; r < rows; r += chunk_rows) {
      const size_t nr = std::min(chunk_rows, rows - r);
      if (!AccumulateHistogram(&h, data + r * row_bytes, nr, cols)) return false;
    }
    t = FindThreshold(&h, k);
    if (t.complete) break;
  }
  uint64_t equal_before = 0;
  for (size_t r = 0; r < rows; r += chunk_rows) {
    const size_t nr = std::min(chunk_rows, rows - r);
    uint8_t* p = data + r * row_bytes;
    const uint64_t eq = CountEqual(p, dtype, nr, cols, t.magnitude);
    if (!PruneRowsTensor(p, dtype, nr, cols, t, equal_before, zeroed)) return false;
    equal_before += eq;
  }
  return true;
}

}  // namespace quench::prune
