// AWQ's screened search (src/calib/awq_screen.cc) against the exhaustive exact search
// (AwqSearch with prune false): where the screen provably keeps the exact argmin it returns
// the exact search's choice, scales and loss bit for bit; everywhere the chosen loss is the
// exact loss of the chosen candidate; and every result, estimates included, is the same
// whatever the thread count and the Highway target.
#include <doctest/doctest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include <tbb/global_control.h>

#include "awq_rows.h"
#include "calib/awq.h"
#include "format/json.h"
#include "kernel_test_util.h"
#include "plan_fingerprint.h"
#include "quench/convert.h"
#include "test_util.h"

namespace quench::testing {
namespace {

using calib::AwqSearchKind;

calib::AwqLayer Layer(const std::vector<uint16_t>& w, uint64_t rows, uint64_t cols, int group) {
  calib::AwqLayer l;
  l.data = reinterpret_cast<const uint8_t*>(w.data());
  l.rows = rows;
  l.cols = cols;
  l.q.bits = 4;
  l.q.group_size = group;
  l.q.symmetric = true;
  return l;
}

uint64_t Bits(double v) { return std::bit_cast<uint64_t>(v); }

// The screened result equals the exact one: choice, scales, chosen loss bit for bit.
void CheckSameChoice(const calib::AwqResult& screened, const calib::AwqResult& exact) {
  CHECK(screened.search == AwqSearchKind::kScreened);
  CHECK(screened.ratio == exact.ratio);
  CHECK(screened.duo == exact.duo);
  CHECK(screened.scales == exact.scales);
  CHECK(Bits(screened.loss) == Bits(exact.loss));
}

TEST_CASE("AWQ's screened search returns the exact argmin where the screen provably keeps it") {
  std::mt19937 rng(5);
  const uint64_t cols = 128;
  std::vector<float> x_mean;
  std::vector<double> h;
  Activations(rng, cols, &x_mean, &h);
  SUBCASE("rows that are power-of-two multiples of one row") {
    // Row r = 2^e_r * base (e_r in -3..3: exact in BF16, inside the kernels' range). The
    // symmetric min-max quantizer is equivariant under powers of two (every rounding in the
    // definition scales exactly), so each row's term is 4^e_r times the base row's under
    // every candidate: the candidates rank alike on every row, and on every row sample the
    // f64 estimates (sums of exact multiples, rounded monotonically) rank the exact argmin
    // first or tied first. It is then never dropped (its distance to the best estimate is 0),
    // so the survivors' exact losses choose as the exhaustive search. The rows' weights vary
    // by 4^6, so the paired differences have a variance: the screen runs and drops.
    const uint64_t rows = 4096;  // 64 rows at the first stage (1 in 64): every stage screens
    const std::vector<uint16_t> base = AwqRow(rng, cols, 0.02f);
    std::uniform_int_distribution<int> e(-3, 3);
    std::vector<uint16_t> w(rows * cols);
    for (uint64_t r = 0; r < rows; ++r) {
      const float m = std::ldexp(1.0f, e(rng));
      for (uint64_t c = 0; c < cols; ++c) w[r * cols + c] = F32ToBF16(Bf16Value(base[c]) * m);
    }
    for (const auto duo : {calib::DuoScaling::kTrue, calib::DuoScaling::kFalse}) {
      const calib::AwqLayer l = Layer(w, rows, cols, 64);
      auto exact = calib::AwqSearch({l}, x_mean, h, false, 64.0, 20, duo, false);
      auto screened = calib::AwqSearch({l}, x_mean, h, false, 64.0, 20, duo, true,
                                       AwqSearchKind::kScreened);
      REQUIRE(exact.ok());
      REQUIRE(screened.ok());
      CheckSameChoice(*screened, *exact);
      MESSAGE("finalists " << screened->finalists << " of 20");
      CHECK(screened->finalists < 20);  // the screen dropped candidates
    }
  }
  SUBCASE("layers too small to screen: every candidate is evaluated exactly") {
    // 48 rows: fewer than 32 sampled rows at every stage but the last (1 in 2 gives 24).
    const uint64_t rows = 48;
    const std::vector<uint16_t> w = AwqRow(rng, rows * cols, 0.02f);
    const calib::AwqLayer l = Layer(w, rows, cols, 32);
    auto exact = calib::AwqSearch({l}, x_mean, h, false, 64.0, 20, calib::DuoScaling::kTrue);
    auto screened = calib::AwqSearch({l}, x_mean, h, false, 64.0, 20, calib::DuoScaling::kTrue,
                                     true, AwqSearchKind::kScreened);
    REQUIRE(exact.ok());
    REQUIRE(screened.ok());
    CheckSameChoice(*screened, *exact);
    CHECK(screened->finalists == 20);
    CHECK(screened->rtn_exact);
    CHECK(Bits(screened->loss_rtn) == Bits(exact->loss_rtn));
    for (size_t g = 0; g < 20; ++g) CHECK(Bits(screened->losses[g]) == Bits(exact->losses[g]));
  }
}

TEST_CASE("AWQ's screened search is the same on every thread count and target, its loss exact") {
  // Random layers (no guarantee on the choice): two layers, 4096 and 1100 rows.
  std::mt19937 rng(17);
  const uint64_t cols = 256;
  std::vector<std::vector<uint16_t>> data;
  std::vector<calib::AwqLayer> layers;
  for (uint64_t rows : {uint64_t{4096}, uint64_t{1100}}) {
    data.push_back(AwqRow(rng, rows * cols, 0.02f));
    layers.push_back(Layer(data.back(), rows, cols, 128));
  }
  std::vector<float> x_mean;
  std::vector<double> h;
  Activations(rng, cols, &x_mean, &h);
  auto search = [&] {
    auto r = calib::AwqSearch(layers, x_mean, h, false, 64.0, 20, calib::DuoScaling::kTrue,
                              true, AwqSearchKind::kScreened);
    REQUIRE(r.ok());
    return *r;
  };
  const calib::AwqResult first = search();
  auto same = [&](const calib::AwqResult& r) {
    CHECK(r.ratio == first.ratio);
    CHECK(r.duo == first.duo);
    CHECK(Bits(r.loss) == Bits(first.loss));
    CHECK(Bits(r.loss_rtn) == Bits(first.loss_rtn));
    CHECK(r.rtn_exact == first.rtn_exact);
    CHECK(r.finalists == first.finalists);
    REQUIRE(r.losses.size() == first.losses.size());
    for (size_t g = 0; g < r.losses.size(); ++g) {
      CHECK(Bits(r.losses[g]) == Bits(first.losses[g]));  // estimates too
    }
  };
  for (const int threads : {1, 2, 3, 8}) {
    CAPTURE(threads);
    tbb::global_control limit(tbb::global_control::max_allowed_parallelism, threads);
    same(search());
  }
  const auto targets = ForEachTarget([&](const std::string& target) {
    CAPTURE(target);
    same(search());
  });
  MESSAGE("targets: " << targets.size() << ", finalists " << first.finalists);
  // The chosen loss is the chosen candidate's exact loss (the exhaustive search's value).
  auto exact = calib::AwqSearch(layers, x_mean, h, false, 64.0, 20, calib::DuoScaling::kTrue);
  REQUIRE(exact.ok());
  const auto grid = calib::AwqGrid(20, calib::DuoScaling::kTrue);
  size_t chosen = grid.size();
  for (size_t g = 0; g < grid.size(); ++g) {
    if (grid[g].first == first.ratio && grid[g].second == first.duo) chosen = g;
  }
  REQUIRE(chosen < grid.size());
  CHECK(Bits(first.loss) == Bits(exact->losses[chosen]));
  CHECK(first.loss >= exact->loss);  // never below the exhaustive minimum
  MESSAGE("screened " << first.ratio << " / exact " << exact->ratio << ", loss ratio "
                      << first.loss / exact->loss);
}

TEST_CASE("--awq-search: in the resume fingerprint, named in the report, refused when unknown") {
  const fs::path src = DataDir() / "tiny-llama",
                 stats = DataDir() / "golden" / "smoothquant" / "stats";
  auto fingerprint = [&](const std::string& search) {
    ConvertOptions o;
    o.src = src;
    o.dst = DataDir() / "unused";
    o.scheme = "W4A16";
    o.group_size = 64;
    o.algorithm = "awq";
    o.stats = stats;
    o.awq_search = search;
    return FirstShardFingerprint(o);
  };
  // The searches may choose differently, so a shard made by one is not resumed by the other.
  CHECK(fingerprint("screened") == fingerprint("screened"));
  CHECK(fingerprint("screened") != fingerprint("exact"));
  TempDir tmp;
  for (const std::string search : {"screened", "exact"}) {
    CAPTURE(search);
    const fs::path out = tmp / search, report = tmp / (search + ".json");
    auto r = RunQuench({"convert", src.string(), out.string(), "--scheme", "W4A16",
                        "--group-size", "64", "--algorithm", "awq", "--stats", stats.string(),
                        "--awq-search", search, "--report", report.string()});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    CHECK(r.err.find(search + " search)") != std::string::npos);  // the notes name it
    auto json = ReadJsonFile(report.string());
    REQUIRE(json.ok());
    for (const auto& m : json->Find("smoothing")->as_array()) {
      CHECK(m.Find("search")->as_string() == search);
      CHECK(m.Find("proxy_loss")->is_double());
      // The exact search always has RTN's exact loss; the screened one says whether it has.
      if (search == "exact") CHECK(m.Find("proxy_loss_rtn_exact")->as_bool());
      CHECK((m.Find("finalists") != nullptr) == (search == "screened"));
    }
  }
  CheckRefusals({"convert", src.string(), (tmp / "no").string(), "--scheme", "W4A16",
                 "--group-size", "64", "--algorithm", "awq", "--stats", stats.string()},
                {{{"--awq-search", "maybe"}, 2, "--awq-search must be exact or screened"}},
                tmp / "no");
}

}  // namespace
}  // namespace quench::testing
