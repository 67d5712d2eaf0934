// Smoothing with whole-expert pruning (src/calib/smoothquant_run.cc, src/plan/expert_prune.h):
// the mappings resolve on the pruned model, so only surviving experts are smoothed (per-expert
// up_proj -> down_proj, the norm -> router + survivors' gate/up as one fused set), with the
// statistics of the source's experts. Checked on the tiny Qwen3-MoE fixture against the same
// smoothing run on the reference-pruned checkpoint (data/golden/xprune-2d/E0.5, made by
// compressed-tensors' MagnitudeExpertPruner; kept experts in expert_prune_manifest.json) with
// statistics renamed to its experts: the outputs must be equal byte for byte.
#include <doctest/doctest.h>

#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "compose_stats.h"
#include "format/json.h"
#include "test_util.h"

namespace quench::testing {
namespace {

const fs::path kXprune = DataDir() / "golden" / "xprune-2d";
// expert_prune_manifest.json's "retained" for xprune-2d/E0.5 (the reference's choice).
const std::vector<std::vector<uint32_t>> kKept = {{0, 2, 3, 4}, {0, 4, 6, 7}};
constexpr size_t kN = 128, kExperts = 8;

// One channel set of statistics (E of them for a per-expert site), deterministic in `seed`.
struct Fields {
  std::vector<int64_t> count;
  std::vector<double> x2, abs;
  std::vector<float> min, max;
};

Fields MakeFields(size_t experts, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(0.2f, 2.f);
  Fields f;
  for (size_t e = 0; e < experts; ++e) {
    f.count.push_back(64 + 16 * int64_t(e));
    for (size_t c = 0; c < kN; ++c) {
      const float big = c % 11 == 3 ? 10.f : 1.f;
      const float lo = -u(rng) * big, hi = u(rng) * big;
      f.min.push_back(lo);
      f.max.push_back(hi);
      f.abs.push_back(f.count.back() * 0.4 * (hi - lo));
      f.x2.push_back(f.count.back() * 0.3 * (hi * hi + lo * lo));
    }
  }
  return f;
}

// --moe all statistics of the fixture: per layer the attention input (q/k/v), o_proj's input,
// the MoE input (router and every expert's gate/up) and the per-expert down_proj inputs.
// `kept` empty: the source's 8 experts; else the pruned model's, expert i being source expert
// kept[layer][i] (its slice of the per-expert arrays, its consumers renamed to i).
void WriteMoeStats(const fs::path& dir, const std::vector<std::vector<uint32_t>>& kept) {
  fs::create_directories(dir);
  std::vector<RawTensor> arrays;
  std::string sites, consumers, weights;
  auto consumer = [&](const std::string& w, const std::string& site, int expert, size_t rows) {
    consumers += std::string(consumers.empty() ? "" : ", ") + "\"" + w + "\": {\"site\": \"" +
                 site + "\"" + (expert >= 0 ? ", \"expert\": " + std::to_string(expert) : "") + "}";
    weights += std::string(weights.empty() ? "" : ", ") + "\"" + w + "\": [" +
               std::to_string(rows) + ", " + std::to_string(kN) + "]";
  };
  uint32_t seed = 3;
  for (size_t l = 0; l < 2; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const size_t experts = kept.empty() ? kExperts : kept[l].size();
    struct Site {
      std::string name;
      bool per_expert;
    };
    for (const Site& s : {Site{p + "self_attn.q_proj", false}, Site{p + "self_attn.o_proj", false},
                          Site{p + "mlp.gate", false}, Site{p + "mlp.experts.down_proj", true}}) {
      Fields f = MakeFields(s.per_expert ? kExperts : 1, seed++);
      if (s.per_expert && !kept.empty()) {  // the kept experts' slices, in order
        Fields g;
        for (uint32_t e : kept[l]) {
          g.count.push_back(f.count[e]);
          g.x2.insert(g.x2.end(), f.x2.begin() + e * kN, f.x2.begin() + (e + 1) * kN);
          g.abs.insert(g.abs.end(), f.abs.begin() + e * kN, f.abs.begin() + (e + 1) * kN);
          g.min.insert(g.min.end(), f.min.begin() + e * kN, f.min.begin() + (e + 1) * kN);
          g.max.insert(g.max.end(), f.max.begin() + e * kN, f.max.begin() + (e + 1) * kN);
        }
        f = g;
      }
      const std::vector<uint64_t> shape =
          s.per_expert ? std::vector<uint64_t>{experts, kN} : std::vector<uint64_t>{kN};
      arrays.push_back({s.name + ".count", DType::kI64,
                        s.per_expert ? std::vector<uint64_t>{experts} : std::vector<uint64_t>{},
                        Bytes(f.count)});
      arrays.push_back({s.name + ".sum_x2", DType::kF64, shape, Bytes(f.x2)});
      arrays.push_back({s.name + ".sum_abs", DType::kF64, shape, Bytes(f.abs)});
      arrays.push_back({s.name + ".min", DType::kF32, shape, Bytes(f.min)});
      arrays.push_back({s.name + ".max", DType::kF32, shape, Bytes(f.max)});
      sites += std::string(sites.empty() ? "" : ", ") + "\"" + s.name +
               "\": {\"file\": \"stats-00001.safetensors\", \"in_features\": " +
               std::to_string(kN) + ", \"experts\": " +
               (s.per_expert ? std::to_string(experts) : std::string("null")) +
               ", \"fields\": [\"count\", \"sum_x2\", \"sum_abs\", \"min\", \"max\"]}";
    }
    consumer(p + "self_attn.q_proj.weight", p + "self_attn.q_proj", -1, 128);
    consumer(p + "self_attn.k_proj.weight", p + "self_attn.q_proj", -1, 64);
    consumer(p + "self_attn.v_proj.weight", p + "self_attn.q_proj", -1, 64);
    consumer(p + "self_attn.o_proj.weight", p + "self_attn.o_proj", -1, 128);
    consumer(p + "mlp.gate.weight", p + "mlp.gate", -1, experts);
    for (size_t e = 0; e < experts; ++e) {
      const std::string x = p + "mlp.experts." + std::to_string(e) + ".";
      consumer(x + "gate_proj.weight", p + "mlp.gate", -1, 128);
      consumer(x + "up_proj.weight", p + "mlp.gate", -1, 128);
      consumer(x + "down_proj.weight", p + "mlp.experts.down_proj", int(e), 128);
    }
  }
  WriteStatsDir(dir, "Qwen3MoeForCausalLM", "qwen3_moe", "none", weights, sites, consumers,
                arrays);
}

TEST_CASE("AWQ and SmoothQuant with --prune-experts smooth the surviving experts as the same "
          "smoothing of the reference-pruned checkpoint does, byte for byte") {
  TempDir tmp;
  WriteMoeStats(tmp / "src-stats", {});
  WriteMoeStats(tmp / "pruned-stats", kKept);
  struct Case {
    const char* name;
    std::vector<std::string> args;
    const char* note;  // what the dry run says about the mappings
  };
  const std::vector<Case> cases = {
      // AWQ's Qwen3-MoE mappings: norm -> q/k/v, norm -> router + experts' gate/up, each
      // expert's up -> down (v -> o skipped: grouped-query attention).
      {"awq",
       {"--scheme", "W4A16", "--group-size", "64", "--algorithm", "awq"},
       "12 mappings of Qwen3MoeForCausalLM, rewriting 36 tensors"},  // 4 up -> down per layer
      // SmoothQuant's: the norm -> q/k/v only (llm-compressor leaves MoE MLPs unsmoothed).
      {"smoothquant",
       {"--scheme", "W8A8", "--algorithm", "smoothquant"},
       "2 mappings of Qwen3MoeForCausalLM, rewriting 8 tensors"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.name);
    const std::vector<std::string> common = {"--ignore", "lm_head", "--ignore", "re:.*mlp.gate$",
                                             "-q"};
    std::vector<std::string> a = {"convert", (kXprune / "src").string(),
                                  (tmp / (std::string(c.name) + "-pruned")).string(),
                                  "--prune-experts", "0.5", "--stats",
                                  (tmp / "src-stats").string()};
    a.insert(a.end(), c.args.begin(), c.args.end());
    a.insert(a.end(), common.begin(), common.end());
    std::vector<std::string> b = {"convert", (kXprune / "E0.5").string(),
                                  (tmp / (std::string(c.name) + "-ref")).string(), "--stats",
                                  (tmp / "pruned-stats").string()};
    b.insert(b.end(), c.args.begin(), c.args.end());
    b.insert(b.end(), common.begin(), common.end());
    auto dry = RunQuench([&] {
      auto d = a;
      d.pop_back();
      d[2] = (tmp / "dry").string();
      d.push_back("--dry-run");
      return d;
    }());
    REQUIRE_MESSAGE(dry.exit_code == 0, dry.err);
    CHECK(dry.err.find(c.note) != std::string::npos);
    auto ra = RunQuench(a);
    REQUIRE_MESSAGE(ra.exit_code == 0, ra.err);
    auto rb = RunQuench(b);
    REQUIRE_MESSAGE(rb.exit_code == 0, rb.err);
    const fs::path pa = tmp / (std::string(c.name) + "-pruned");
    const fs::path pb = tmp / (std::string(c.name) + "-ref");
    int shards = 0;
    for (const auto& e : fs::directory_iterator(pb)) {
      if (e.path().extension() != ".safetensors") continue;
      CAPTURE(e.path().filename().string());
      CHECK(ReadBytes(pa / e.path().filename()) == ReadBytes(e.path()));
      ++shards;
    }
    CHECK(shards == 2);
    auto qa = ReadJsonFile((pa / "config.json").string());
    auto qb = ReadJsonFile((pb / "config.json").string());
    REQUIRE(qa.ok());
    REQUIRE(qb.ok());
    CHECK(DumpCompactJson(*qa->Find("quantization_config")) ==
          DumpCompactJson(*qb->Find("quantization_config")));
    CHECK(DumpCompactJson(*qa->Find("num_experts")) == "4");
  }
}

}  // namespace
}  // namespace quench::testing
