// Whole-expert pruning (--prune-experts): byte parity with compressed-tensors 0.19.0's
// MagnitudeExpertPruner (alone through convert_checkpoint, and followed by model_free_ptq),
// torch.topk's tie order, the reference's rounding of F * E, and the refusals.
// Expected values: data/golden/expert_prune_manifest.json and data/golden/xprune-*, written by
// scripts/make_golden_expert_prune.py with the pinned reference; Python's round() for
// ExpertsKept.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <unistd.h>

#include <cmath>
#include <limits>
#include <map>

#include "format/json.h"
#include "plan/expert_prune.h"
#include "quench/convert.h"
#include "test_util.h"

namespace qt = quench::testing;
namespace fs = std::filesystem;
using quench::DType;
using qt::RawTensor;

namespace {

const quench::JsonValue& Manifest() {
  static const quench::JsonValue m = [] {
    auto r = quench::ReadJsonFile((qt::DataDir() / "golden/expert_prune_manifest.json").string());
    REQUIRE_MESSAGE(r.ok(), r.status().ToString());
    return *r;
  }();
  return m;
}

quench::ConvertOptions OptionsFor(const quench::JsonValue& c, const fs::path& dst) {
  quench::ConvertOptions o;
  o.src = qt::DataDir() / c.Find("source")->as_string();
  o.dst = dst;
  o.scheme = c.Find("scheme")->as_string();
  o.prune_experts = c.Find("prune_experts")->as_double();
  o.default_ignore = false;  // exactly what the reference selects
  for (const auto& i : c.Find("ignore")->as_array()) o.ignore.push_back(i.as_string());
  return o;
}

// A tiny MoE folder: `layers` of one router each ([experts, 8] BF16) with 2-D experts
// `experts.<i>.w.weight` [4, 8], plus whatever `extra` adds; config.json from `config`.
fs::path WriteMoe(const qt::TempDir& tmp, const std::vector<RawTensor>& extra,
                  const std::string& config, int experts = 4, bool with_router = true) {
  const fs::path src = tmp / "src";
  fs::create_directories(src);
  std::vector<RawTensor> t = extra;
  std::vector<float> router(static_cast<size_t>(experts) * 8);
  for (size_t i = 0; i < router.size(); ++i) router[i] = static_cast<float>(i % 8 + i / 8);
  if (with_router) {
    t.push_back({"model.layers.0.mlp.gate.weight", DType::kBF16,
                 {static_cast<uint64_t>(experts), 8}, qt::Bf16Bytes(router)});
  }
  for (int e = 0; e < experts; ++e) {
    t.push_back({"model.layers.0.mlp.experts." + std::to_string(e) + ".w.weight", DType::kBF16,
                 {4, 8}, qt::Bf16Bytes(std::vector<float>(32, 1.0f + static_cast<float>(e)))});
  }
  qt::WriteShard(src / "model.safetensors", t);
  qt::WriteBytes(src / "config.json", config);
  return src;
}

constexpr const char* kConfig = R"({"num_experts": 4, "num_experts_per_tok": 1})";

// Plans (headers only, no output) and returns the planning error, or Ok.
quench::Status PlanStatus(const fs::path& src, double fraction, const std::string& scheme = "none",
                          bool default_ignore = true) {
  qt::TempDir out;
  quench::ConvertOptions o;
  o.src = src;
  o.dst = out / "dst";
  o.scheme = scheme;
  o.prune_experts = fraction;
  o.default_ignore = default_ignore;
  auto plan = quench::DryRun(o);
  if (!plan.ok()) return plan.status();
  return plan->errors.empty() ? quench::Status::Ok() : plan->errors.front();
}

}  // namespace

TEST_SUITE("expert_prune") {
  TEST_CASE("every golden case equals the reference's output byte for byte") {
    const auto& cases = Manifest().Find("cases")->as_array();
    REQUIRE(cases.size() == 12);
    for (const auto& c : cases) {
      CAPTURE(c.Find("name")->as_string());
      qt::TempDir tmp;
      quench::ConvertOptions o = OptionsFor(c, tmp / "out");
      o.chunk_bytes = 1024;  // small chunks: copies of sliced routers cut into pieces
      auto r = quench::Convert(o);
      REQUIRE_MESSAGE(r.ok(), r.status().ToString());
      // "weights": a shard emptied by pruning makes the reference's two-step composition fail;
      // its one-pass run (model_free_ptq(converter=)) wrote these, with a config.json that
      // keeps the unpruned expert count, which is not compared.
      const auto* compare = c.Find("compare");
      const bool weights_only = compare != nullptr && compare->as_string() == "weights";
      qt::CheckSameFiles(qt::DataDir() / c.Find("expected")->as_string(), o.dst,
                         [&](const std::string& f) { return !weights_only || qt::WeightsOnly(f); });
      if (weights_only) {
        CHECK(qt::ReadBytes(o.dst / "config.json").find("\"num_experts\": 2") != std::string::npos);
      }
    }
  }

  TEST_CASE("scores and kept experts equal the reference's for every router") {
    for (const auto& c : Manifest().Find("cases")->as_array()) {
      const std::string name = c.Find("name")->as_string();
      CAPTURE(name);
      qt::TempDir tmp;
      auto plan = quench::DryRun(OptionsFor(c, tmp / "out"));
      REQUIRE_MESSAGE(plan.ok(), plan.status().ToString());
      REQUIRE(plan->expert_prune.has_value());
      const std::string case_name = name.substr(0, name.find('/'));
      const auto* scores = Manifest().Find("scores")->Find(case_name);
      const auto* retained = c.Find("retained");
      REQUIRE(plan->expert_prune->layers.size() == retained->as_object().size());
      for (const quench::PlannedExpertLayer& l : plan->expert_prune->layers) {
        CAPTURE(l.router);
        std::vector<double> want_scores;  // float scores, held as doubles
        for (const auto& v : scores->Find(l.router)->as_array()) {
          want_scores.push_back(static_cast<float>(v.as_double()));
        }
        CHECK(l.scores == want_scores);
        std::vector<uint32_t> want;
        for (const auto& v : retained->Find(l.router)->as_array()) {
          want.push_back(static_cast<uint32_t>(v.as_int()));
        }
        CHECK(l.kept == want);
      }
    }
  }

  TEST_CASE("ties fall as torch.topk leaves them (partial_sort and nth_element branches)") {
    const auto& cases = Manifest().Find("topk")->as_array();
    REQUIRE(cases.size() >= 30);
    size_t partial = 0;
    for (const auto& c : cases) {
      std::vector<float> s;
      for (const auto& v : c.Find("scores")->as_array())
        s.push_back(static_cast<float>(v.as_double()));
      const uint64_t k = c.Find("k")->as_uint();
      partial += k * 64 <= s.size();
      std::vector<uint32_t> want;
      for (const auto& v : c.Find("kept")->as_array())
        want.push_back(static_cast<uint32_t>(v.as_int()));
      CAPTURE(s.size());
      CAPTURE(k);
      CHECK(quench::TopExperts(s, k) == want);
    }
    CHECK(partial > 0);
    CHECK(partial < cases.size());
  }

  TEST_CASE("experts kept: max(1, E - round(F * E)), Python's round (half to even)") {
    CHECK(quench::ExpertsKept(8, 0.3125) == 6);   // round(2.5) = 2
    CHECK(quench::ExpertsKept(8, 0.1875) == 6);   // round(1.5) = 2
    CHECK(quench::ExpertsKept(4, 0.125) == 4);    // round(0.5) = 0
    CHECK(quench::ExpertsKept(4, 0.375) == 2);    // round(1.5) = 2
    CHECK(quench::ExpertsKept(8, 0.0) == 8);
    CHECK(quench::ExpertsKept(8, 1.0) == 1);      // never none
    CHECK(quench::ExpertsKept(384, 0.5) == 192);
    CHECK(quench::ExpertsKept(60, 0.25) == 45);
  }

  TEST_CASE(
      "--dry-run lists the experts kept per layer and the bytes not read; --report the scores") {
    qt::TempDir tmp;
    const fs::path src = qt::DataDir() / "golden/xprune-2d/src";
    auto r = qt::RunQuench({"convert", src.string(), (tmp / "out").string(), "--scheme", "none",
                            "--prune-experts", "0.5", "--dry-run", "--report",
                            (tmp / "r.json").string()});
    CHECK(r.exit_code == 0);
    const auto& c = Manifest().Find("cases")->as_array()[0];
    REQUIRE(c.Find("name")->as_string() == "xprune-2d/E0.5");
    for (const auto& [router, kept] : c.Find("retained")->as_object()) {
      std::string line = router + ": keeps 4 of 8 experts: ";
      for (const auto& k : kept.as_array()) line += std::to_string(k.as_int()) + ",";
      line.pop_back();
      CAPTURE(line);
      CHECK(r.out.find(line) != std::string::npos);
    }
    // 2 layers x 4 experts x 3 tensors of 128 x 128 BF16, and 4 router rows of 256 bytes each.
    CHECK(r.out.find("24 tensors and") != std::string::npos);
    // The bytes saved, as the line prints them: (24 * 128 * 128 * 2 + 2 * 4 * 256) / 1024 KiB.
    CHECK(r.out.find("24 tensors and 770.0 KiB of the source not read; config.json "
                     "num_experts = 4") != std::string::npos);
    auto report = quench::ReadJsonFile((tmp / "r.json").string());
    REQUIRE(report.ok());
    const auto* ep = report->Find("expert_pruning");
    REQUIRE(ep != nullptr);
    CHECK(ep->Find("bytes_removed")->as_uint() == 24ull * 128 * 128 * 2 + 2 * 4 * 256);
    CHECK(ep->Find("config_key")->as_string() == "num_experts");
    CHECK(ep->Find("layers")->as_array()[0].Find("scores")->as_array().size() == 8);
    CHECK(!fs::exists(tmp / "out"));
  }

  TEST_CASE("a pruned conversion neither reads nor quantizes the pruned experts") {
    // The golden source with the pruned experts' weights replaced by NaN: quantizing a NaN
    // fails the run (exit 3), so the conversion succeeding and equalling the golden output
    // shows those bytes were not planned; bytes_in counts only what is read.
    const auto& c = Manifest().Find("cases")->as_array()[2];  // xprune-2d/E0.5-FP8_DYNAMIC
    REQUIRE(c.Find("name")->as_string() == "xprune-2d/E0.5-FP8_DYNAMIC");
    qt::TempDir tmp;
    const fs::path src = tmp / "src";
    fs::copy(qt::DataDir() / c.Find("source")->as_string(), src);
    const auto* retained = c.Find("retained");
    uint64_t poisoned = 0;
    for (const auto& entry : fs::directory_iterator(src)) {
      if (entry.path().extension() != ".safetensors") continue;
      auto shard = quench::LoadShard(entry.path(), entry.path().filename().string());
      REQUIRE(shard.ok());
      std::string bytes = qt::ReadBytes(entry.path());
      for (const auto& t : shard->header.tensors) {
        const size_t at = t.name.find(".experts.");
        if (at == std::string::npos) continue;
        const std::string router = t.name.substr(0, at) + ".gate.weight";
        const int e = std::stoi(t.name.substr(at + 9));
        bool kept = false;
        for (const auto& k : retained->Find(router)->as_array()) kept |= k.as_int() == e;
        if (kept) continue;
        for (uint64_t i = 0; i < t.nbytes(); i += 2) {
          bytes[shard->header.data_start + t.begin + i] = static_cast<char>(0xc0);      // BF16
          bytes[shard->header.data_start + t.begin + i + 1] = static_cast<char>(0x7f);  // NaN
        }
        poisoned += t.nbytes();
      }
      qt::WriteBytes(entry.path(), bytes);
    }
    CHECK(poisoned == 24ull * 128 * 128 * 2);
    quench::ConvertOptions o = OptionsFor(c, tmp / "out");
    o.src = src;
    o.report = tmp / "r.json";
    auto r = quench::Convert(o);
    REQUIRE_MESSAGE(r.ok(), r.status().ToString());
    qt::CheckSameFiles(qt::DataDir() / c.Find("expected")->as_string(), o.dst);
    uint64_t source_bytes = 0;
    for (const auto& entry : fs::directory_iterator(src)) {
      if (entry.path().extension() != ".safetensors") continue;
      auto shard = quench::LoadShard(entry.path(), "x");
      for (const auto& t : shard->header.tensors) source_bytes += t.nbytes();
    }
    CHECK(r->bytes_in == source_bytes - poisoned - 2 * 4 * 256);
  }

  TEST_CASE("refusals: F out of range, the routing floor, layers that cannot be identified") {
    qt::TempDir tmp;
    const fs::path golden = qt::DataDir() / "golden/xprune-2d/src";
    // The reference refuses the same inputs (manifest "refused").
    for (const char* f : {"1.5", "-0.25", "x", "nan"}) {
      auto r = qt::RunQuench({"convert", golden.string(), (tmp / "o").string(), "--scheme",
                              "none", "--prune-experts", f});
      CHECK(r.exit_code == 2);
      CHECK(r.err.find("--prune-experts") != std::string::npos);
    }
    quench::Status s = PlanStatus(golden, 0.9);  // keeps 1 of 8; num_experts_per_tok = 2
    CHECK(s.code() == quench::ErrorCode::kUsage);
    CHECK(s.message().find("num_experts_per_tok is 2") != std::string::npos);
    auto reap = qt::RunQuench({"convert", golden.string(), (tmp / "o").string(), "--scheme",
                               "none", "--prune-experts", "0.5", "--expert-metric", "reap"});
    CHECK(reap.exit_code == 2);

    SUBCASE("no router beside the experts") {
      qt::TempDir t;
      s = PlanStatus(WriteMoe(t, {}, kConfig, 4, /*with_router=*/false), 0.5);
      CHECK(s.code() == quench::ErrorCode::kInvalidInput);
      CHECK(s.message().find("'model.layers.0.mlp.experts.0.w.weight'") != std::string::npos);
      CHECK(s.message().find("no router") != std::string::npos);
    }
    SUBCASE("an expert index beyond the router's rows") {
      qt::TempDir t;
      s = PlanStatus(WriteMoe(t, {{"model.layers.0.mlp.experts.9.w.weight", DType::kBF16, {4, 8},
                                   std::string(64, '\0')}},
                              kConfig),
                     0.5);
      CHECK(s.code() == quench::ErrorCode::kInvalidInput);
      CHECK(s.message().find("experts.9.w.weight' is expert 9") != std::string::npos);
    }
    SUBCASE("an expert stack whose first dimension is not the expert count") {
      qt::TempDir t;
      s = PlanStatus(WriteMoe(t, {{"model.layers.0.mlp.experts.down_proj", DType::kBF16, {3, 8, 4},
                                   std::string(192, '\0')}},
                              kConfig),
                     0.5);
      CHECK(s.code() == quench::ErrorCode::kInvalidInput);
      CHECK(s.message().find("'model.layers.0.mlp.experts.down_proj'") != std::string::npos);
    }
    SUBCASE("a router-module tensor of another length") {
      qt::TempDir t;
      s = PlanStatus(WriteMoe(t, {{"model.layers.0.mlp.gate.e_score_correction_bias", DType::kF32,
                                   {5}, std::string(20, '\0')}},
                              kConfig),
                     0.5);
      CHECK(s.code() == quench::ErrorCode::kInvalidInput);
      CHECK(s.message().find("e_score_correction_bias") != std::string::npos);
    }
    SUBCASE("no MoE layer at all") {
      s = PlanStatus(qt::DataDir() / "tiny-llama", 0.5);
      CHECK(s.code() == quench::ErrorCode::kInvalidInput);
      CHECK(s.message().find("found no MoE layer") != std::string::npos);
    }
    SUBCASE("no expert count in config.json") {
      qt::TempDir t;
      s = PlanStatus(WriteMoe(t, {}, R"({"num_experts_per_tok": 1})"), 0.5);
      CHECK(s.code() == quench::ErrorCode::kInvalidInput);
      CHECK(s.message().find("n_routed_experts") != std::string::npos);
    }
    SUBCASE("a NaN router weight") {
      qt::TempDir t;
      const fs::path src = WriteMoe(t, {}, kConfig, 4, false);
      auto shard = quench::LoadShard(src / "model.safetensors", "model.safetensors");
      REQUIRE(shard.ok());
      std::vector<RawTensor> all;
      const std::string bytes = qt::ReadBytes(src / "model.safetensors");
      for (const auto& ti : shard->header.tensors) {
        all.push_back({ti.name, ti.dtype, ti.shape,
                       bytes.substr(shard->header.data_start + ti.begin, ti.nbytes())});
      }
      std::vector<float> router(32, 1.0f);
      router[13] = std::numeric_limits<float>::quiet_NaN();
      all.push_back(
          {"model.layers.0.mlp.gate.weight", DType::kBF16, {4, 8}, qt::Bf16Bytes(router)});
      qt::WriteShard(src / "model.safetensors", all);
      s = PlanStatus(src, 0.5);
      CHECK(s.code() == quench::ErrorCode::kInvalidInput);
      CHECK(s.message().find("non-finite weight at row 1") != std::string::npos);
    }
    SUBCASE("a sliced router cannot be quantized") {
      s = PlanStatus(golden, 0.5, "FP8_DYNAMIC", /*default_ignore=*/false);
      CHECK(s.code() == quench::ErrorCode::kUnsupported);
      CHECK(s.message().find("mlp.gate.weight' is sliced to the kept experts") !=
            std::string::npos);
    }
    SUBCASE("nor where the kept rows are adjacent (one range)") {
      // One expert of four kept: the router's kept row is one range of the source, which was
      // once quantized while two or more scattered rows were refused, so that whether a run
      // worked depended on which experts survived (found by scripts/fuzz-convert).
      s = PlanStatus(qt::DataDir() / "golden/xprune-ct3d/FP8_BLOCK", 0.75, "MXFP8A16",
                     /*default_ignore=*/false);
      CHECK(s.code() == quench::ErrorCode::kUnsupported);
      CHECK(s.message().find("mlp.gate.weight' is sliced to the kept experts") !=
            std::string::npos);
    }
  }

  TEST_CASE("NVFP4: each kept expert's gate and up share one global scale, under its new index") {
    // vLLM runs experts.<i>.gate_proj/up_proj as one matrix with one global scale (README,
    // NVFP4 global scales); the fused sets are formed on the pruned, renumbered names.
    qt::TempDir tmp;
    auto r = qt::RunQuench({"convert", (qt::DataDir() / "golden/xprune-2d/src").string(),
                            (tmp / "out").string(), "--scheme", "NVFP4A16",
                            "--prune-experts", "0.5", "-q"});
    REQUIRE(r.exit_code == 0);
    const auto all = qt::LoadAll(tmp / "out");
    for (int layer = 0; layer < 2; ++layer) {
      for (int e = 0; e < 8; ++e) {
        const std::string p = "model.layers." + std::to_string(layer) + ".mlp.experts." +
                              std::to_string(e) + ".";
        auto [lg, g] = qt::FindTensor(all, p + "gate_proj.weight_global_scale");
        auto [lu, u] = qt::FindTensor(all, p + "up_proj.weight_global_scale");
        CAPTURE(p);
        if (e >= 4) {
          CHECK(g == nullptr);
          continue;
        }
        REQUIRE(g != nullptr);
        REQUIRE(u != nullptr);
        CHECK(std::memcmp(lg->Data(*g), lu->Data(*u), 4) == 0);
      }
    }
  }

  TEST_CASE("composes with a recipe and with --prune: the same experts, renamed alike") {
    const auto& c = Manifest().Find("cases")->as_array()[2];  // xprune-2d/E0.5-FP8_DYNAMIC
    REQUIRE(c.Find("name")->as_string() == "xprune-2d/E0.5-FP8_DYNAMIC");
    qt::TempDir tmp;
    qt::WriteBytes(tmp / "recipe.yaml",
                   "quant_stage:\n  quant_modifiers:\n    QuantizationModifier:\n"
                   "      scheme: FP8_DYNAMIC\n      targets: [Linear]\n"
                   "      ignore: [lm_head, 're:.*embed_tokens$', 're:.*mlp\\.gate$']\n");
    quench::ConvertOptions o = OptionsFor(c, tmp / "out");
    o.scheme.clear();
    o.ignore.clear();
    o.recipe = tmp / "recipe.yaml";
    auto r = quench::Convert(o);
    REQUIRE_MESSAGE(r.ok(), r.status().ToString());
    // The weights and index are the reference's; config.json names the recipe's group.
    const fs::path want = qt::DataDir() / c.Find("expected")->as_string();
    for (const char* f : {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                          "model.safetensors.index.json"}) {
      CAPTURE(f);
      CHECK(qt::ReadBytes(o.dst / f) == qt::ReadBytes(want / f));
    }
    // With 2:4 pruning too: the pruned model's tensors are the kept experts' names only.
    quench::ConvertOptions p = OptionsFor(c, tmp / "out24");
    p.prune = "2:4";
    auto r24 = quench::Convert(p);
    REQUIRE_MESSAGE(r24.ok(), r24.status().ToString());
    const auto got = qt::LoadAll(p.dst);
    for (int e = 0; e < 8; ++e) {
      const std::string n = "model.layers.0.mlp.experts." + std::to_string(e) + ".down_proj.weight";
      CHECK((qt::FindTensor(got, n).second != nullptr) == (e < 4));
    }
    CHECK(r24->pruned_tensors == 2 * 4 * 3 + 2 * 4);  // kept experts' 3 weights, q/k/v/o
  }

  TEST_CASE("[E, in, out] stacks, router bias and stack biases (gpt-oss layout) are sliced") {
    // Router rows with L1 norms 8 * (1, 5, 2, 7, 3, 6) (row e all equal to its weight), so
    // keeping half keeps experts 1, 3, 5 by construction; every stack element holds its expert
    // index, so a misplaced slice is visible.
    qt::TempDir tmp;
    const fs::path src = tmp / "src";
    fs::create_directories(src);
    const std::vector<float> weight = {1, 5, 2, 7, 3, 6};
    std::vector<float> router;
    for (float w : weight) router.insert(router.end(), 8, w);
    auto stack = [](uint64_t per) {
      std::vector<float> v;
      for (int e = 0; e < 6; ++e) v.insert(v.end(), per, static_cast<float>(e));
      return qt::Bf16Bytes(v);
    };
    const std::string p = "model.layers.0.mlp.";
    qt::WriteShard(src / "model.safetensors",
                   {{p + "router.weight", DType::kBF16, {6, 8}, qt::Bf16Bytes(router)},
                    {p + "router.bias", DType::kBF16, {6}, stack(1)},
                    {p + "experts.gate_up_proj", DType::kBF16, {6, 8, 32}, stack(256)},
                    {p + "experts.gate_up_proj_bias", DType::kBF16, {6, 32}, stack(32)},
                    {p + "experts.down_proj", DType::kBF16, {6, 16, 8}, stack(128)},
                    {p + "experts.down_proj_bias", DType::kBF16, {6, 8}, stack(8)},
                    {"model.layers.0.self_attn.q_proj.weight", DType::kBF16, {8, 8},
                     qt::Bf16Bytes(std::vector<float>(64, 0.5f))}});
    qt::WriteBytes(src / "config.json",
                   R"({"hidden_size": 8, "num_local_experts": 6, "num_experts_per_tok": 2})");
    quench::ConvertOptions o;
    o.src = src;
    o.dst = tmp / "out";
    o.scheme = "FP8_DYNAMIC";
    o.prune_experts = 0.5;
    o.chunk_bytes = 1024;
    auto r = quench::Convert(o);
    REQUIRE_MESSAGE(r.ok(), r.status().ToString());
    const auto got = qt::LoadAll(o.dst);
    const std::vector<float> kept = {1, 3, 5};
    auto check = [&](const std::string& name, uint64_t per) {
      CAPTURE(name);
      auto [l, t] = qt::FindTensor(got, name);
      REQUIRE(t != nullptr);
      REQUIRE(t->shape[0] == 3);
      for (uint64_t i = 0; i < 3 * per; ++i) {
        CHECK(qt::DecodeBF16(l->Data(*t) + 2 * i) == kept[i / per]);
      }
    };
    check(p + "router.bias", 1);
    check(p + "experts.gate_up_proj", 256);
    check(p + "experts.gate_up_proj_bias", 32);
    check(p + "experts.down_proj", 128);
    check(p + "experts.down_proj_bias", 8);
    auto [lr, rt] = qt::FindTensor(got, p + "router.weight");
    REQUIRE(rt != nullptr);
    for (uint64_t i = 0; i < 24; ++i)
      CHECK(qt::DecodeBF16(lr->Data(*rt) + 2 * i) == weight[1 + 2 * (i / 8)]);
    const std::string cfg = qt::ReadBytes(o.dst / "config.json");
    CHECK(cfg.find("\"num_local_experts\": 3") != std::string::npos);
  }

  TEST_CASE("a bias beside the router module (MiniMax) is sliced with it") {
    // WriteMoe's router row e holds 0..7 plus e: L1 norm 28 + 8e, so half keeps experts 2, 3.
    qt::TempDir tmp;
    std::string bias(16, '\0');
    for (int e = 0; e < 4; ++e) {
      const float v = 10.0f + static_cast<float>(e);
      std::memcpy(bias.data() + 4 * e, &v, 4);
    }
    const fs::path src = WriteMoe(
        tmp, {{"model.layers.0.mlp.e_score_correction_bias", DType::kF32, {4}, bias}}, kConfig);
    quench::ConvertOptions o;
    o.src = src;
    o.dst = tmp / "out";
    o.scheme = "none";
    o.prune_experts = 0.5;
    auto r = quench::Convert(o);
    REQUIRE_MESSAGE(r.ok(), r.status().ToString());
    const auto got = qt::LoadAll(o.dst);
    auto [l, t] = qt::FindTensor(got, "model.layers.0.mlp.e_score_correction_bias");
    REQUIRE(t != nullptr);
    CHECK(t->shape == std::vector<uint64_t>{2});
    CHECK(std::string(reinterpret_cast<const char*>(l->Data(*t)), 8) == bias.substr(8, 8));
    auto [l1, e1] = qt::FindTensor(got, "model.layers.0.mlp.experts.1.w.weight");
    REQUIRE(e1 != nullptr);
    CHECK(qt::DecodeBF16(l1->Data(*e1)) == 4.0);  // old expert 3 (weights 1 + e)
    CHECK(qt::FindTensor(got, "model.layers.0.mlp.experts.2.w.weight").second == nullptr);
  }

  TEST_CASE("a sliced 3-D stack 4x the memory limit is copied under the limit") {
    // [8, 2048, 8192] BF16 = 256 MiB, limit 64 MiB; router rows with L1 norms 64 x
    // (1, 5, 2, 7, 3, 6, 4, 8) keep experts 1, 3, 5, 7: four separate 32 MiB runs. Expert e's
    // elements all hold e, so each kept slice is checked at its first and last element.
    qt::TempDir tmp;
    const fs::path src = tmp / "src";
    fs::create_directories(src);
    const std::vector<float> w = {1, 5, 2, 7, 3, 6, 4, 8};
    std::vector<float> router;
    for (float v : w) router.insert(router.end(), 64, v);
    const uint64_t per = 2048ull * 8192;
    const std::string stack = "model.layers.0.mlp.experts.down_proj";
    auto layout = quench::LayOutSafetensors(
        {{"model.layers.0.mlp.gate.weight", DType::kBF16, {8, 64}, 8 * 64 * 2},
         {stack, DType::kBF16, {8, 2048, 8192}, 8 * per * 2}});
    const int fd = open((src / "model.safetensors").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    REQUIRE(fd >= 0);
    REQUIRE(pwrite(fd, layout.header.data(), layout.header.size(), 0) ==
            static_cast<ssize_t>(layout.header.size()));
    for (const auto& ti : layout.tensors) {
      const uint64_t at = layout.data_start + ti.begin;
      if (ti.name != stack) {
        const std::string b = qt::Bf16Bytes(router);
        REQUIRE(pwrite(fd, b.data(), b.size(), static_cast<off_t>(at)) ==
                static_cast<ssize_t>(b.size()));
        continue;
      }
      for (int e = 0; e < 8; ++e) {
        const std::string chunk = qt::Bf16Bytes(std::vector<float>(1 << 20, static_cast<float>(e)));
        for (uint64_t off = 0; off < per * 2; off += chunk.size()) {
          REQUIRE(
              pwrite(fd, chunk.data(), chunk.size(), static_cast<off_t>(at + e * per * 2 + off)) ==
              static_cast<ssize_t>(chunk.size()));
        }
      }
    }
    close(fd);
    qt::WriteBytes(src / "config.json", R"({"num_local_experts": 8, "num_experts_per_tok": 2})");
    auto r = qt::RunQuench({"convert", src.string(), (tmp / "out").string(), "--scheme", "none",
                            "--prune-experts", "0.5", "--memory-limit", "64M", "-q"});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    MESSAGE("sliced stack: peak RSS " << r.max_rss_kib << " KiB, limit 65536 KiB");
    CHECK(r.max_rss_kib < 64 * 1024);
    auto shard = quench::LoadShard(tmp / "out/model.safetensors", "model.safetensors");
    REQUIRE(shard.ok());
    const std::string out = qt::ReadBytes(tmp / "out/model.safetensors");
    for (const auto& t : shard->header.tensors) {
      if (t.name != stack) continue;
      CHECK(t.shape == std::vector<uint64_t>{4, 2048, 8192});
      const std::vector<float> kept = {1, 3, 5, 7};
      for (size_t j = 0; j < 4; ++j) {
        const auto* base = reinterpret_cast<const uint8_t*>(out.data()) + shard->header.data_start +
                           t.begin + j * per * 2;
        CHECK(qt::DecodeBF16(base) == kept[j]);
        CHECK(qt::DecodeBF16(base + per * 2 - 2) == kept[j]);
      }
    }
  }

  TEST_CASE("shared experts are kept whole and untouched") {
    const auto& c = Manifest().Find("cases")->as_array()[6];
    REQUIRE(c.Find("name")->as_string() == "xprune-ds/E0.5");
    qt::TempDir tmp;
    auto plan = quench::DryRun(OptionsFor(c, tmp / "out"));
    REQUIRE(plan.ok());
    size_t shared = 0;
    for (const auto& t : plan->tensors) {
      if (t.name.find("shared_experts") == std::string::npos) continue;
      ++shared;
      CHECK(t.action == quench::TensorAction::kCopy);
      CHECK(t.src_ranges.empty());
      CHECK(t.shape[0] == 128);
    }
    CHECK(shared == 3);
  }
}
