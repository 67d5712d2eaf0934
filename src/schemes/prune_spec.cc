// The pruning spec (declared in schemes/prune.h): `--prune` and `--prune-granularity` parsed
// with one-line usage errors, the planner's shape check, the sparsity structure string, and
// the exact number of elements a spec prunes (Python's int(sparsity * n)), known before any
// weight is read.
#include <charconv>
#include <cmath>
#include <string>

#include "schemes/prune.h"

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

}  // namespace

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

}  // namespace quench::prune
