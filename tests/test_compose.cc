// Composed calibration end to end (src/calib/composite.h): several algorithms in one run.
//
// Smoothing then a later stage is checked against that stage run alone on the reference's
// smoothed checkpoint (data/golden/smoothquant/tiny-llama-smoothed, made by llm-compressor
// 0.14.0.1's own SmoothQuantModifier) with statistics transformed here, independently of
// quench, with the reference's scales (data/golden/compose, scripts/make_golden_compose.py):
// the smoothed inputs x / s have Hessian H_ij / (s_i s_j) and channel ranges
// [min_c / s_c, max_c / s_c]. The outputs must be equal byte for byte.
//
// SparseGPT (or magnitude pruning) then GPTQ: every pruned position stays exactly zero, the
// mask is the pruning stage's, and GPTQ's proxy loss on the sparse weights is below rounding
// the sparse weights to nearest.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "compose_stats.h"
#include "format/safetensors.h"
#include "plan_fingerprint.h"
#include "quench/convert.h"
#include "test_util.h"

namespace quench::testing {
namespace {


// `a` (the composed run) against `b` (the later stage alone on the reference-smoothed
// checkpoint): every shard byte for byte, and config.json. `smoothing_config`: `b` ran without
// a smoothing stage, but a run with one writes its config as llm-compressor's oneshot does with
// SmoothQuantModifier/AWQModifier (data/golden/oneshot-smooth, tests/test_recipe_smooth.cc):
// the weights' observer is "memoryless_minmax" where the plain run writes null.
void CheckSameOutput(const fs::path& a, const fs::path& b, bool smoothing_config = false) {
  int shards = 0;
  for (const auto& e : fs::directory_iterator(b)) {
    const std::string name = e.path().filename().string();
    if (e.path().extension() != ".safetensors" && name != "config.json") continue;
    CAPTURE(name);
    std::string expected = ReadBytes(e.path());
    if (name == "config.json" && smoothing_config) {
      // The second "observer" of the one config group is its weights' (input_activations
      // come first in the written order).
      const std::string null_obs = "\"observer\": null";
      const size_t first = expected.find(null_obs);
      REQUIRE(first != std::string::npos);
      const size_t second = expected.find(null_obs, first + 1);
      REQUIRE(second != std::string::npos);
      expected.replace(second, null_obs.size(), "\"observer\": \"memoryless_minmax\"");
    }
    CHECK(ReadBytes(a / name) == expected);
    shards += e.path().extension() == ".safetensors";
  }
  CHECK(shards == 2);
}

RunResult Convert(const fs::path& src, const fs::path& dst, std::vector<std::string> args) {
  std::vector<std::string> all = {"convert", src.string(), dst.string(), "-q"};
  all.insert(all.end(), args.begin(), args.end());
  return RunQuench(all);
}

struct Stats {
  TempDir tmp;
  Stats() {
    WriteStats(tmp / "plain", false);
    WriteStats(tmp / "smoothed", true);
  }
  std::string plain() const { return (tmp / "plain").string(); }
  std::string smoothed() const { return (tmp / "smoothed").string(); }
};

TEST_CASE("SmoothQuant then GPTQ is GPTQ of the reference-smoothed checkpoint with the smoothed "
          "model's Hessians, byte for byte, whatever the order given") {
  Stats st;
  TempDir tmp;
  const std::vector<std::string> w4 = {"--scheme", "W4A16", "--group-size", "64"};
  auto args = [&](const std::string& algo, const std::string& stats) {
    std::vector<std::string> a = w4;
    a.insert(a.end(), {"--algorithm", algo, "--stats", stats});
    return a;
  };
  auto ref = Convert(kSq / "tiny-llama-smoothed", tmp / "ref", args("gptq", st.smoothed()));
  REQUIRE_MESSAGE(ref.exit_code == 0, ref.err);
  for (const std::string algo : {"smoothquant,gptq", "gptq,smoothquant"}) {
    CAPTURE(algo);
    const fs::path out = tmp / algo;
    auto r = Convert(DataDir() / "tiny-llama", out, args(algo, st.plain()));
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    CheckSameOutput(out, tmp / "ref");
  }
  // And it is not GPTQ with the unsmoothed Hessians: the transform matters.
  auto wrong = Convert(kSq / "tiny-llama-smoothed", tmp / "wrong", args("gptq", st.plain()));
  REQUIRE_MESSAGE(wrong.exit_code == 0, wrong.err);
  CHECK(ReadBytes(tmp / "wrong" / "model-00001-of-00002.safetensors") !=
        ReadBytes(tmp / "ref" / "model-00001-of-00002.safetensors"));
}

TEST_CASE("static activation scales after SmoothQuant are the smoothed inputs' ranges, with "
          "RTN and with GPTQ") {
  Stats st;
  TempDir tmp;
  for (const std::string quant : {"", "gptq"}) {
    CAPTURE(quant);
    const std::vector<std::string> a = {"--scheme", "W8A8", "--static-activations"};
    std::vector<std::string> ra = a, qa = a;
    ra.insert(ra.end(), {"--stats", st.smoothed()});
    if (!quant.empty()) ra.insert(ra.end(), {"--algorithm", quant});
    qa.insert(qa.end(), {"--stats", st.plain(), "--algorithm",
                         quant.empty() ? "smoothquant" : "smoothquant," + quant});
    auto ref = Convert(kSq / "tiny-llama-smoothed", tmp / ("ref" + quant), ra);
    REQUIRE_MESSAGE(ref.exit_code == 0, ref.err);
    auto r = Convert(DataDir() / "tiny-llama", tmp / ("sq" + quant), qa);
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    CheckSameOutput(tmp / ("sq" + quant), tmp / ("ref" + quant));
  }
  // The scales did change: the unsmoothed ranges give other input_scale values.
  auto stale = Convert(kSq / "tiny-llama-smoothed", tmp / "stale",
                       {"--scheme", "W8A8", "--static-activations", "--stats", st.plain()});
  REQUIRE_MESSAGE(stale.exit_code == 0, stale.err);
  auto a = LoadAll(tmp / "stale"), b = LoadAll(tmp / "ref");
  const std::string name = "model.layers.0.self_attn.q_proj.input_scale";
  auto [la, ta] = FindTensor(a, name);
  auto [lb, tb] = FindTensor(b, name);
  REQUIRE(ta != nullptr);
  REQUIRE(tb != nullptr);
  CHECK(DecodeBF16(la->Data(*ta)) != DecodeBF16(lb->Data(*tb)));
}

TEST_CASE("pruning after SmoothQuant prunes the smoothed weights: magnitude pruning of the "
          "reference-smoothed checkpoint, byte for byte") {
  Stats st;
  TempDir tmp;
  for (const std::string spec : {"2:4", "unstructured:0.5"}) {
    CAPTURE(spec);
    const std::vector<std::string> a = {"--scheme", "W8A8", "--prune", spec};
    std::vector<std::string> qa = a;
    qa.insert(qa.end(), {"--algorithm", "smoothquant", "--stats", st.plain()});
    auto ref = Convert(kSq / "tiny-llama-smoothed", tmp / ("ref" + spec), a);
    REQUIRE_MESSAGE(ref.exit_code == 0, ref.err);
    auto r = Convert(DataDir() / "tiny-llama", tmp / ("sq" + spec), qa);
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    CheckSameOutput(tmp / ("sq" + spec), tmp / ("ref" + spec), /*smoothing_config=*/true);
  }
  // SparseGPT after smoothing (N:M row by row; unstructured on the whole smoothed weight):
  // SparseGPT of the smoothed checkpoint with the smoothed model's Hessians; then GPTQ too.
  for (const std::string spec : {"2:4", "unstructured:0.5"}) {
    for (const std::string algo : {"sparsegpt", "sparsegpt,gptq"}) {
      CAPTURE(spec);
      CAPTURE(algo);
      const std::vector<std::string> a = {"--scheme", "W4A16", "--group-size", "64", "--prune",
                                          spec, "--algorithm"};
      std::vector<std::string> ra = a, qa = a;
      ra.insert(ra.end(), {algo, "--stats", st.smoothed()});
      qa.insert(qa.end(), {"smoothquant," + algo, "--stats", st.plain()});
      const std::string name = algo + spec.substr(0, 2);
      auto ref = Convert(kSq / "tiny-llama-smoothed", tmp / ("ref" + name), ra);
      REQUIRE_MESSAGE(ref.exit_code == 0, ref.err);
      auto r = Convert(DataDir() / "tiny-llama", tmp / ("sq" + name), qa);
      REQUIRE_MESSAGE(r.exit_code == 0, r.err);
      CheckSameOutput(tmp / ("sq" + name), tmp / ("ref" + name));
    }
  }
}

TEST_CASE("Wanda after SmoothQuant scores the smoothed weights with the smoothed statistics") {
  Stats st;
  TempDir tmp;
  const std::vector<std::string> a = {"--scheme", "W8A8", "--prune", "2:4", "--prune-metric",
                                      "wanda", "--stats"};
  std::vector<std::string> ra = a, qa = a;
  ra.push_back(st.smoothed());
  qa.insert(qa.end(), {st.plain(), "--algorithm", "smoothquant"});
  auto ref = Convert(kSq / "tiny-llama-smoothed", tmp / "ref", ra);
  REQUIRE_MESSAGE(ref.exit_code == 0, ref.err);
  auto r = Convert(DataDir() / "tiny-llama", tmp / "sq", qa);
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  CheckSameOutput(tmp / "sq", tmp / "ref", /*smoothing_config=*/true);
}

// Codes (q, centred) and dequantized values of a W4A16 (symmetric, packed int4) weight.
void DecodeW4(const std::map<std::string, Loaded>& out, const std::string& m, size_t rows,
              size_t cols, std::vector<int>* codes, std::vector<double>* deq) {
  auto [ql, qt] = FindTensor(out, m + ".weight_packed");
  auto [sl, stt] = FindTensor(out, m + ".weight_scale");
  REQUIRE(qt != nullptr);
  REQUIRE(stt != nullptr);
  const size_t groups = stt->shape[1], gs = cols / groups;
  codes->assign(rows * cols, 0);
  deq->assign(rows * cols, 0.0);
  for (size_t r = 0; r < rows; ++r) {
    for (size_t c = 0; c < cols; ++c) {
      uint32_t word;
      std::memcpy(&word, ql->Data(*qt) + (r * (cols / 8) + c / 8) * 4, 4);
      const int q = int((word >> (4 * (c % 8))) & 0xF) - 8;
      (*codes)[r * cols + c] = q;
      (*deq)[r * cols + c] = q * DecodeBF16(sl->Data(*stt) + (r * groups + c / gs) * 2);
    }
  }
}

// tr(dW H dW^T) for W [rows, n], from H's upper triangle.
double ProxyLossUpper(const std::vector<double>& w, const std::vector<double>& q,
                 const std::vector<double>& upper, size_t rows, size_t n) {
  double total = 0;
  std::vector<double> d(n);
  for (size_t r = 0; r < rows; ++r) {
    for (size_t j = 0; j < n; ++j) d[j] = w[r * n + j] - q[r * n + j];
    for (size_t i = 0; i < n; ++i) {
      total += d[i] * d[i] * upper[i * n + i];
      for (size_t j = i + 1; j < n; ++j) total += 2 * d[i] * d[j] * upper[i * n + j];
    }
  }
  return total;
}

TEST_CASE("pruning then GPTQ: pruned weights stay exactly zero, the mask is the pruning stage's, "
          "and GPTQ beats rounding the sparse weights to nearest") {
  Stats st;
  TempDir tmp;
  const fs::path src = DataDir() / "tiny-llama";
  for (const std::string pruner : {"sparsegpt", "magnitude"}) {
    CAPTURE(pruner);
    const std::vector<std::string> common = {"--prune", "2:4", "--stats", st.plain()};
    auto with = [&](std::vector<std::string> a) {
      a.insert(a.end(), common.begin(), common.end());
      return a;
    };
    const std::string p = pruner == "sparsegpt" ? "sparsegpt," : "";
    const fs::path sparse = tmp / (pruner + "-sparse"), rtn = tmp / (pruner + "-rtn"),
                   gptq = tmp / (pruner + "-gptq");
    const std::vector<std::string> none = pruner == "sparsegpt"
                                              ? std::vector<std::string>{"--algorithm", "sparsegpt"}
                                              : std::vector<std::string>{};
    std::vector<std::string> a = {"--scheme", "none"};
    a.insert(a.end(), none.begin(), none.end());
    auto r1 = Convert(src, sparse, with(a));
    REQUIRE_MESSAGE(r1.exit_code == 0, r1.err);
    std::vector<std::string> b = {"--scheme", "W4A16", "--group-size", "64"};
    b.insert(b.end(), none.begin(), none.end());
    auto r2 = Convert(src, rtn, with(b));
    REQUIRE_MESSAGE(r2.exit_code == 0, r2.err);
    auto r3 = Convert(src, gptq, with({"--scheme", "W4A16", "--group-size", "64", "--algorithm",
                                       "gptq," + p.substr(0, p.size() - (p.empty() ? 0 : 1))}));
    if (p.empty()) {
      // "gptq," is not a list: the magnitude run names gptq alone.
      CHECK(r3.exit_code == 2);
      r3 = Convert(src, gptq, with({"--scheme", "W4A16", "--group-size", "64", "--algorithm",
                                    "gptq"}));
    }
    REQUIRE_MESSAGE(r3.exit_code == 0, r3.err);
    auto so = LoadAll(sparse), ro = LoadAll(rtn), go = LoadAll(gptq);
    uint32_t seed = 7;
    size_t weights = 0;
    for (const SqSite& s : TinyLlamaSqSites()) {
      const std::vector<double> h = MakeHessian(s.n, seed++, kComposeTokens);
      for (size_t k = 0; k < s.members.size(); ++k) {
        const std::string& m = s.members[k];
        CAPTURE(m);
        const size_t rows = s.rows[k], n = s.n;
        const std::vector<double> w = Bf16Weight(so, m + ".weight");
        std::vector<int> gc, rc;
        std::vector<double> gd, rd;
        DecodeW4(go, m, rows, n, &gc, &gd);
        DecodeW4(ro, m, rows, n, &rc, &rd);
        size_t kept_zero = 0, zeros = 0;
        for (size_t i = 0; i < rows * n; ++i) {
          if (w[i] != 0) continue;
          ++zeros;
          kept_zero += gc[i] == 0;
        }
        CHECK(zeros >= rows * n / 2);  // 2:4
        CHECK(kept_zero == zeros);
        CHECK(ProxyLossUpper(w, gd, h, rows, n) < ProxyLossUpper(w, rd, h, rows, n));
        ++weights;
      }
    }
    CHECK(weights == 14);
  }
}

TEST_CASE("--algorithm lists: syntax errors and the combinations still refused") {
  Stats st;
  TempDir tmp;
  const fs::path src = DataDir() / "tiny-llama";
  struct Case {
    std::vector<std::string> args;
    int code;
    std::string says;
  };
  const std::vector<Case> cases = {
      {{"--scheme", "W4A16", "--algorithm", "awq,smoothquant"}, 2, "one smoothing per run"},
      {{"--scheme", "W4A16", "--algorithm", "rtn,gptq"}, 2, "leave it out of a list"},
      {{"--scheme", "W4A16", "--algorithm", "gptq,gptq"}, 2, "names gptq twice"},
      {{"--scheme", "W4A16", "--algorithm", "gptq,foo"}, 2, "unknown --algorithm 'foo'"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> a = c.args;
    a.insert(a.end(), {"--stats", st.plain()});
    CAPTURE(a);
    auto r = Convert(src, tmp / "o", a);
    CHECK(r.exit_code == c.code);
    CHECK_MESSAGE(r.err.find(c.says) != std::string::npos, r.err);
  }
}

TEST_CASE("the resume fingerprint of a composed run holds every stage's settings") {
  Stats st;
  TempDir tmp;
  auto fingerprint = [&](const std::string& algorithm, double alpha, double dampening,
                         const std::string& prune) {
    ConvertOptions o;
    o.src = DataDir() / "tiny-llama";
    o.dst = tmp / "o";
    o.scheme = "W4A16";
    o.group_size = 64;
    o.algorithm = algorithm;
    o.stats = st.plain();
    o.smoothing_strength = alpha;
    o.dampening = dampening;
    o.prune = prune;
    return FirstShardFingerprint(o);
  };
  const std::string base = fingerprint("smoothquant,gptq", 0.5, 0.01, "");
  CHECK(base == fingerprint("gptq,smoothquant", 0.5, 0.01, ""));
  CHECK(base != fingerprint("smoothquant,gptq", 0.6, 0.01, ""));  // smoothing's setting
  CHECK(base != fingerprint("smoothquant,gptq", 0.5, 0.02, ""));  // GPTQ's setting
  CHECK(base != fingerprint("gptq", 0.5, 0.01, ""));
  CHECK(base != fingerprint("smoothquant", 0.5, 0.01, ""));
  const std::string sparse = fingerprint("sparsegpt,gptq", 0.5, 0.01, "2:4");
  CHECK(sparse != fingerprint("sparsegpt", 0.5, 0.01, "2:4"));
  CHECK(sparse != fingerprint("gptq", 0.5, 0.01, "2:4"));  // magnitude, then GPTQ
}

}  // namespace
}  // namespace quench::testing
