// Statistics folders (src/calib/stats.cc, stats_merge.cc): the input describes a folder
// (fuzz_folder.h; scripts/fuzz makes the seeds from the statistics folders in data/golden),
// which is opened with Statistics::Open, every array read, and merged with itself.
// Properties: nothing crashes (no exception escapes, no sanitizer finding, signed overflow
// included); a refusal always says why; an opened folder's arrays hold as many values as the
// format's shape for their field says (FieldLayout) and REAP arrays one per expert; a merge of
// a folder with itself either refuses, saying why, or writes a folder that opens with the same
// sites and arrays, whose counts and sums are the input's doubled (x + x, exact in f64 and
// int64) and whose min and max are the input's (NaN kept), as the format defines a merge.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "calib/stats.h"
#include "fuzz_folder.h"
#include "fuzz_util.h"

namespace {

using quench::calib::Statistics;
using quench::fuzz::Require;

uint64_t Elements(const std::vector<uint64_t>& shape) {
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;
  return n;
}

// The merged value of one element from the input's value x, by the format's rule for the
// field: counts and sums add, min and max reduce (x with itself: x).
bool MergedAsDefined(const std::string& field, double x, double merged) {
  if (std::isnan(x)) return std::isnan(merged);
  if (field == "min" || field == "max") return merged == x;
  return merged == x + x;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const std::filesystem::path root = quench::fuzz::Scratch() / "s";
  if (!quench::fuzz::WriteFolder(root, in)) return 0;
  auto stats = Statistics::Open(root);
  if (!stats.ok()) {
    Require(!stats.status().message().empty(), "an error without a message");
    return 0;
  }
  for (const auto& [weight, c] : stats->consumers()) {
    Require(stats->sites().contains(c.site), "a consumer of a site the folder lacks");
  }
  for (const auto& [name, site] : stats->sites()) {
    for (const quench::calib::StatsField& f : site.fields) {
      auto values = stats->ReadField(name, f.name);
      Require(values.ok(), "an opened folder's array cannot be read");
      Require(values->size() == Elements(f.shape), "an array's size is not its field's shape");
    }
  }
  for (const auto& [router, r] : stats->reap()) {
    auto sum = stats->ReadReapSum(r);
    auto count = stats->ReadReapCount(r);
    Require(sum.ok() && count.ok(), "an opened folder's REAP arrays cannot be read");
    Require(sum->size() == r.experts && count->size() == r.experts,
            "a REAP array without one value per expert");
  }

  const std::filesystem::path out = quench::fuzz::Scratch() / "merged";
  std::error_code ec;
  std::filesystem::remove_all(out, ec);
  const quench::Status merged = quench::calib::MergeStatistics({root, root}, out);
  if (!merged.ok()) {
    Require(!merged.message().empty(), "an error without a message");
    Require(!std::filesystem::exists(out, ec), "a refused merge left its folder");
    return 0;
  }
  auto m = Statistics::Open(out);
  Require(m.ok(), "a merged folder does not open");
  Require(m->sites().size() == stats->sites().size(), "a merged folder lost sites");
  for (const auto& [name, site] : stats->sites()) {
    for (const quench::calib::StatsField& f : site.fields) {
      auto a = stats->ReadField(name, f.name);
      auto b = m->ReadField(name, f.name);
      Require(a.ok() && b.ok() && a->size() == b->size(), "a merged array is missing or resized");
      for (size_t i = 0; i < a->size(); ++i) {
        Require(MergedAsDefined(f.name, (*a)[i], (*b)[i]), "a merged value is not the rule's");
      }
    }
  }
  for (const auto& [router, r] : stats->reap()) {
    auto it = m->reap().find(router);
    Require(it != m->reap().end(), "a merged folder lost a REAP block");
    auto sum = stats->ReadReapSum(r);
    auto count = stats->ReadReapCount(r);
    auto msum = m->ReadReapSum(it->second);
    auto mcount = m->ReadReapCount(it->second);
    Require(msum.ok() && mcount.ok() && msum->size() == r.experts &&
                mcount->size() == r.experts,
            "a merged REAP block is missing or resized");
    for (size_t e = 0; e < r.experts; ++e) {
      Require(MergedAsDefined("reap_sum", (*sum)[e], (*msum)[e]), "a merged REAP sum");
      // (x + x in int64: the input's count twice, where that fits.)
      Require((*mcount)[e] / 2 == (*count)[e] && (*mcount)[e] % 2 == 0, "a merged REAP count");
    }
  }
  return 0;
}
