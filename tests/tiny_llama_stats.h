// Statistics for data/tiny-llama written in place (Hessians of synthetic, correlated
// activations with outlier channels, one site per distinct input, as docs/statistics-format.md
// defines; layer 1's down_proj left without statistics) and the GPTQ-against-RTN comparison
// the GPTQ conversion tests (tests/test_gptq_convert.cc, tests/test_gptq_float_convert.cc) share.
#ifndef QUENCH_TESTS_TINY_LLAMA_STATS_H_
#define QUENCH_TESTS_TINY_LLAMA_STATS_H_

#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "stats_folder.h"
#include "test_util.h"

namespace quench::testing {

struct Site {
  std::string name;
  size_t n;
  std::vector<std::string> consumers;
  std::vector<double> h;  // full n x n: sum over tokens of x x^T
};

// Correlated activations: a random mix of a lower-dimensional signal, channel scales over a
// decade, a few outlier channels (what makes GPTQ differ from RTN), summed over `tokens`.
inline std::vector<double> MakeHessian(size_t n, uint32_t seed, size_t tokens = 512) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> g;
  std::uniform_real_distribution<double> u(0.1, 1.0);
  const size_t k = n / 2;
  std::vector<double> mix(k * n), scale(n);
  for (double& m : mix) m = g(rng) / std::sqrt(double(k));
  for (size_t j = 0; j < n; ++j) scale[j] = u(rng) * (j % 37 == 5 ? 20.0 : 1.0);
  std::vector<double> h(n * n, 0.0), x(n), z(k);
  for (size_t t = 0; t < tokens; ++t) {
    for (double& v : z) v = g(rng);
    for (size_t j = 0; j < n; ++j) {
      double s = 0;
      for (size_t i = 0; i < k; ++i) s += z[i] * mix[i * n + j];
      x[j] = s * scale[j];
    }
    for (size_t i = 0; i < n; ++i) {
      for (size_t j = 0; j < n; ++j) h[i * n + j] += x[i] * x[j];
    }
  }
  return h;
}

// Sites of data/tiny-llama's layers 0 and 1; layer 1's down_proj is left without statistics.
inline std::vector<Site> TinyLlamaSites() {
  std::vector<Site> sites;
  uint32_t seed = 19;
  for (const SiteShape& s : TinyLlamaSiteShapes()) {
    if (s.name == "model.layers.1.mlp.down_proj") continue;
    sites.push_back({s.name, s.n, s.consumers, MakeHessian(s.n, seed++)});
  }
  return sites;
}

inline void WriteStats(const fs::path& dir, const std::vector<Site>& sites) {
  auto folder = LoadModelFolder(DataDir() / "tiny-llama");
  REQUIRE(folder.ok());
  StatsParts parts;
  for (const Site& s : sites) {
    for (const std::string& c : s.consumers) parts.AddModelConsumer(*folder, c, s.name);
    std::vector<double> packed, x2(s.n), abs(s.n);
    for (size_t i = 0; i < s.n; ++i) {
      x2[i] = s.h[i * s.n + i];
      abs[i] = std::sqrt(x2[i]);
      for (size_t j = i; j < s.n; ++j) packed.push_back(s.h[i * s.n + j]);
    }
    parts.AddSite(s.name, 512, x2, abs, std::vector<float>(s.n, -1.f),
                  std::vector<float>(s.n, 1.f), &packed);
  }
  WriteStatsFolder(dir, kTinyLlamaModel, TinyLlamaCollection("full"), parts);
}

// tr(dW H dW^T) for dW = src - q (rows x n) and the full n x n H.
inline double ProxyLoss(const std::vector<double>& src, const std::vector<double>& q,
                        const std::vector<double>& h, size_t rows, size_t n) {
  double total = 0;
  std::vector<double> d(n);
  for (size_t r = 0; r < rows; ++r) {
    for (size_t j = 0; j < n; ++j) d[j] = src[r * n + j] - q[r * n + j];
    for (size_t i = 0; i < n; ++i) {
      double s = 0;
      for (size_t j = 0; j < n; ++j) s += h[i * n + j] * d[j];
      total += d[i] * s;
    }
  }
  return total;
}

using Outputs = std::map<std::string, Loaded>;

// Module `m`'s dequantized weight (rows x cols) in an output, from the format's definition.
using Dequantizer = std::function<std::vector<double>(const Outputs& out, const std::string& m,
                                                      size_t rows, size_t cols)>;

// data/tiny-llama converted with `scheme` (and `extra` arguments) twice, into tmp/gptq-SCHEME
// with --algorithm gptq on the statistics in tmp/stats (report in `report`) and into
// tmp/rtn-SCHEME rounded to nearest; for every weight with statistics in `sites` GPTQ's proxy
// loss is below RTN's, and `each(gptq, rtn, module)` runs the scheme's own checks.
struct GptqRtn {
  Outputs gptq, rtn;
  fs::path gptq_dir;
};
inline GptqRtn CheckGptqBeatsRtn(
    const TempDir& tmp, const std::vector<Site>& sites, const std::string& scheme,
    const std::vector<std::string>& extra, const fs::path& report, const Dequantizer& dequant,
    const std::function<void(const Outputs&, const Outputs&, const std::string&)>& each) {
  const fs::path src = DataDir() / "tiny-llama";
  const fs::path g = tmp / ("gptq-" + scheme), r = tmp / ("rtn-" + scheme);
  std::vector<std::string> ga = {"convert", src.string(), g.string(), "--scheme", scheme};
  std::vector<std::string> ra = ga;
  ra[2] = r.string();
  ga.insert(ga.end(), extra.begin(), extra.end());
  ga.insert(ga.end(), {"--stats", (tmp / "stats").string(), "--algorithm", "gptq", "-q",
                       "--report", report.string()});
  ra.insert(ra.end(), extra.begin(), extra.end());
  ra.push_back("-q");
  auto rg = RunQuench(ga);
  REQUIRE_MESSAGE(rg.exit_code == 0, rg.err);
  auto rr = RunQuench(ra);
  REQUIRE_MESSAGE(rr.exit_code == 0, rr.err);
  GptqRtn out{LoadAll(g), LoadAll(r), g};
  const Outputs sources = LoadAll(src);
  for (const Site& s : sites) {
    for (const std::string& c : s.consumers) {
      CAPTURE(c);
      const std::string m = c.substr(0, c.size() - 7);  // drop ".weight"
      const TensorInfo* st = FindTensor(sources, c).second;
      const size_t rows = st->shape[0], cols = st->shape[1];
      const std::vector<double> w = Bf16Weight(sources, c);
      const double lg = ProxyLoss(w, dequant(out.gptq, m, rows, cols), s.h, rows, cols);
      const double lr = ProxyLoss(w, dequant(out.rtn, m, rows, cols), s.h, rows, cols);
      MESSAGE(scheme << " " << m << ": proxy loss GPTQ/RTN " << lg / lr);
      CHECK(lg < lr);
      each(out.gptq, out.rtn, m);
    }
  }
  return out;
}

}  // namespace quench::testing

#endif  // QUENCH_TESTS_TINY_LLAMA_STATS_H_
