// Expert pruning by REAP saliency (--expert-metric reap --stats): the kept experts equal
// llm-compressor 0.14.0.1's REAPPruningModifier choice given the same saliency sums and counts
// (its on_initialize drop count and refusals, and REAPSaliencyTracker.compute_retained_experts,
// ties and group-limited routers included), and the converted output, once the experts are
// chosen, equals the magnitude golden output that keeps the same experts, byte for byte.
// Expected values: data/golden/reap_manifest.json and data/golden/reap/*, written by
// scripts/make_golden_reap.py running the reference's code; data/golden/xprune-* (the
// reference's MagnitudeExpertPruner outputs, scripts/make_golden_expert_prune.py).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>

#include "calib/reap.h"
#include "calib/stats.h"
#include "format/json.h"
#include "format/safetensors.h"
#include "pipeline/resume.h"
#include "quench/convert.h"
#include "test_util.h"
#include "verify/verify.h"

namespace qt = quench::testing;
namespace fs = std::filesystem;

namespace {

const quench::JsonValue& Load(const char* rel) {
  static std::map<std::string, quench::JsonValue> cache;
  auto it = cache.find(rel);
  if (it == cache.end()) {
    auto r = quench::ReadJsonFile((qt::DataDir() / rel).string());
    REQUIRE_MESSAGE(r.ok(), r.status().ToString());
    it = cache.emplace(rel, *r).first;
  }
  return it->second;
}
const quench::JsonValue& Reap() { return Load("golden/reap_manifest.json"); }

const quench::JsonValue& MagnitudeCase(const std::string& name) {
  for (const auto& c : Load("golden/expert_prune_manifest.json").Find("cases")->as_array()) {
    if (c.Find("name")->as_string() == name) return c;
  }
  FAIL("no magnitude golden case " << name);
  throw 0;
}

std::optional<uint64_t> OptUint(const quench::JsonValue* v) {
  if (v == nullptr || v->is_null()) return std::nullopt;
  return v->as_uint();
}

quench::ConvertOptions ReapOptions(const quench::JsonValue& reap_case, const fs::path& dst) {
  const auto& m = MagnitudeCase(reap_case.Find("name")->as_string());
  quench::ConvertOptions o;
  o.src = qt::DataDir() / m.Find("source")->as_string();
  o.dst = dst;
  o.scheme = m.Find("scheme")->as_string();
  o.prune_experts = m.Find("prune_experts")->as_double();
  o.expert_metric = "reap";
  o.stats = qt::DataDir() / reap_case.Find("statistics")->as_string();
  o.default_ignore = false;
  for (const auto& i : m.Find("ignore")->as_array()) o.ignore.push_back(i.as_string());
  return o;
}

// A copy of statistics folder `from` with its manifest edited by `edit`.
fs::path EditedStats(const qt::TempDir& tmp, const fs::path& from,
                     const std::function<void(quench::JsonValue&)>& edit) {
  const fs::path to = tmp / "stats";
  fs::copy(from, to);
  auto m = quench::ReadJsonFile((to / "manifest.json").string());
  REQUIRE(m.ok());
  edit(*m);
  qt::WriteBytes(to / "manifest.json", quench::DumpPythonJson(*m));
  return to;
}

quench::Status PlanStatus(const quench::ConvertOptions& o) {
  auto plan = quench::DryRun(o);
  if (!plan.ok()) return plan.status();
  return plan->errors.empty() ? quench::Status::Ok() : plan->errors.front();
}

}  // namespace

TEST_SUITE("reap") {
  TEST_CASE("kept experts equal the reference's choice for every saliency case") {
    const auto& cases = Reap().Find("select")->as_array();
    REQUIRE(cases.size() == 26);
    size_t refused = 0;
    for (const auto& c : cases) {
      const uint64_t e = c.Find("experts")->as_uint();
      const double f = c.Find("sparsity")->as_double();
      CAPTURE(e);
      CAPTURE(f);
      quench::calib::ReapRouting routing;
      routing.top_k = c.Find("top_k")->as_uint();
      routing.n_group = OptUint(c.Find("n_group"));
      routing.topk_group = OptUint(c.Find("topk_group"));
      auto drop = quench::calib::ReapDropCount(e, f, routing);
      if (!c.Find("retained")->is_null()) {
        REQUIRE_MESSAGE(drop.ok(), drop.status().ToString());
        std::vector<double> sums;
        std::vector<int64_t> counts;
        for (const auto& v : c.Find("sums")->as_array()) sums.push_back(v.as_double());
        for (const auto& v : c.Find("counts")->as_array()) counts.push_back(v.as_int());
        std::vector<uint32_t> want;
        for (const auto& v : c.Find("retained")->as_array())
          want.push_back(static_cast<uint32_t>(v.as_uint()));
        CHECK(quench::calib::ReapKept(quench::calib::ReapSaliency(sums, counts), *drop, routing) ==
              want);
      } else {
        // The reference refuses: 0 experts to drop (in all or per group), F outside (0, 1),
        // fewer experts left reachable than top_k.
        CAPTURE(c.Find("error")->as_string());
        CHECK(!drop.ok());
        CHECK(drop.status().code() == quench::ErrorCode::kUsage);
        ++refused;
      }
    }
    CHECK(refused == 6);
  }

  TEST_CASE(
      "torch.topk(largest=False) order among ties, on both sides of its partial_sort switch") {
    // 128 equal values: k * 64 <= 128 sorts partially, else nth_element; the set is whatever
    // those leave, cross-checked by the golden cases above (128 x drop 1 and 2, 384 x 192).
    std::vector<double> v(10, 1.0);
    v[3] = 0.5;
    v[7] = std::nan("");  // NaN counts as the largest: never among the smallest
    CHECK(quench::calib::SmallestExperts(v, 1) == std::vector<uint32_t>{3});
    CHECK(quench::calib::SmallestExperts(v, 10).size() == 10);
    const auto nine = quench::calib::SmallestExperts(v, 9);
    CHECK(std::find(nine.begin(), nine.end(), 7u) == nine.end());
  }

  TEST_CASE("converted output equals the reference's pruned model for the same kept experts") {
    const auto& cases = Reap().Find("convert")->as_array();
    REQUIRE(cases.size() == 8);
    for (const auto& c : cases) {
      CAPTURE(c.Find("name")->as_string());
      qt::TempDir tmp;
      quench::ConvertOptions o = ReapOptions(c, tmp / "out");
      o.report = tmp / "report.json";
      o.chunk_bytes = 1024;
      auto r = quench::Convert(o);
      REQUIRE_MESSAGE(r.ok(), r.status().ToString());
      qt::CheckSameFiles(
          qt::DataDir() / MagnitudeCase(c.Find("name")->as_string()).Find("expected")->as_string(),
          o.dst);
      auto report = quench::ReadJsonFile(o.report.string());
      REQUIRE(report.ok());
      const auto* ep = report->Find("expert_pruning");
      REQUIRE(ep != nullptr);
      CHECK(ep->Find("metric")->as_string() == "reap");
      for (const auto& l : ep->Find("layers")->as_array()) {
        const std::string router = l.Find("router")->as_string();
        CAPTURE(router);
        CHECK(quench::DumpPythonJson(*l.Find("kept")) ==
              quench::DumpPythonJson(*c.Find("retained")->Find(router)));
      }
    }
  }

  TEST_CASE("--dry-run and --report show each expert's saliency and tokens") {
    const auto& c = Reap().Find("convert")->as_array()[0];
    REQUIRE(c.Find("name")->as_string() == "xprune-2d/E0.5");
    qt::TempDir tmp;
    const fs::path stats = qt::DataDir() / c.Find("statistics")->as_string();
    auto r = qt::RunQuench({"convert", (qt::DataDir() / "golden/xprune-2d/src").string(),
                            (tmp / "out").string(), "--scheme", "none", "--prune-experts", "0.5",
                            "--expert-metric", "reap", "--stats", stats.string(), "--dry-run",
                            "--report", (tmp / "r.json").string()});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    CHECK(r.out.find("expert pruning 0.5 by reap") != std::string::npos);
    CHECK(r.out.find("model.layers.1.mlp.gate.weight: keeps 4 of 8 experts: 0,4,6,7") !=
          std::string::npos);
    CHECK(r.out.find("saliency/tokens: 0:") != std::string::npos);
    // The statistics' own numbers: saliency = sum / count, tokens = count.
    auto st = quench::calib::Statistics::Open(stats);
    REQUIRE(st.ok());
    auto report = quench::ReadJsonFile((tmp / "r.json").string());
    REQUIRE(report.ok());
    for (const auto& l : report->Find("expert_pruning")->Find("layers")->as_array()) {
      const auto& block = st->reap().at(l.Find("router")->as_string());
      auto sum = st->ReadReapSum(block);
      auto count = st->ReadReapCount(block);
      REQUIRE(sum.ok());
      REQUIRE(count.ok());
      const auto& scores = l.Find("scores")->as_array();
      const auto& tokens = l.Find("tokens")->as_array();
      REQUIRE(scores.size() == 8);
      for (size_t e = 0; e < 8; ++e) {
        CHECK(scores[e].as_double() == (*sum)[e] / static_cast<double>((*count)[e]));
        CHECK(tokens[e].as_int() == (*count)[e]);
      }
    }
    CHECK(!fs::exists(tmp / "out"));
  }

  TEST_CASE("refusals: no statistics, a layer without saliency, another expert count") {
    const auto& c = Reap().Find("convert")->as_array()[0];
    const fs::path stats = qt::DataDir() / c.Find("statistics")->as_string();
    {
      qt::TempDir tmp;
      auto r = qt::RunQuench({"convert", (qt::DataDir() / "golden/xprune-2d/src").string(),
                              (tmp / "out").string(), "--scheme", "none", "--prune-experts",
                              "0.5", "--expert-metric", "reap"});
      CHECK(r.exit_code == 2);
      CHECK(r.err.find("--expert-metric reap needs --stats") != std::string::npos);
    }
    {  // layer 0's block removed from the manifest: the layer is named
      qt::TempDir tmp;
      quench::ConvertOptions o = ReapOptions(c, tmp / "out");
      o.stats = EditedStats(tmp, stats, [](quench::JsonValue& m) {
        quench::JsonValue reap = *m.Find("reap");
        quench::JsonValue kept = quench::JsonValue::MakeObject();
        for (const auto& [k, v] : reap.as_object()) {
          if (k != "model.layers.0.mlp") kept.Set(k, v);
        }
        m.Set("reap", std::move(kept));
      });
      const auto s = PlanStatus(o);
      CHECK(s.code() == quench::ErrorCode::kInvalidInput);
      CHECK(s.message().find("no REAP saliency for MoE layer 'model.layers.0.mlp' (router "
                             "'model.layers.0.mlp.gate.weight')") != std::string::npos);
    }
    {  // statistics without any REAP block
      qt::TempDir tmp;
      quench::ConvertOptions o = ReapOptions(c, tmp / "out");
      o.stats = EditedStats(
          tmp, stats, [](quench::JsonValue& m) { m.Set("reap", quench::JsonValue::MakeObject()); });
      const auto s = PlanStatus(o);
      CHECK(s.code() == quench::ErrorCode::kInvalidInput);
      CHECK(s.message().find("holds no REAP saliency") != std::string::npos);
    }
    {  // a block whose arrays do not match its expert count is refused on opening
      qt::TempDir tmp;
      quench::ConvertOptions o = ReapOptions(c, tmp / "out");
      o.stats = EditedStats(tmp, stats, [](quench::JsonValue& m) {
        quench::JsonValue reap = *m.Find("reap");
        quench::JsonValue b = *reap.Find("model.layers.1.mlp");
        b.Set("experts", quench::JsonValue(uint64_t{6}));
        reap.Set("model.layers.1.mlp", b);
        m.Set("reap", std::move(reap));
      });
      const auto s = PlanStatus(o);
      CHECK(s.code() == quench::ErrorCode::kInvalidInput);
      CHECK(s.message().find("the format needs F64 [6]") != std::string::npos);
    }
    {  // config.json without the routing REAP needs (top-k; both group keys or neither)
      qt::TempDir tmp;
      quench::ConvertOptions o = ReapOptions(c, tmp / "out");
      fs::copy(o.src, tmp / "src");
      o.src = tmp / "src";
      auto edit_config = [&](const std::function<void(quench::JsonValue&)>& edit) {
        auto cfg =
            quench::ReadJsonFile((qt::DataDir() / "golden/xprune-2d/src/config.json").string());
        REQUIRE(cfg.ok());
        edit(*cfg);
        qt::WriteBytes(tmp / "src/config.json", quench::DumpPythonJson(*cfg));
      };
      const std::string where = (tmp / "src/config.json").string();
      edit_config([](quench::JsonValue& m) {
        quench::JsonValue kept = quench::JsonValue::MakeObject();
        for (const auto& [k, v] : m.as_object()) {
          if (k != "num_experts_per_tok") kept.Set(k, v);
        }
        m = std::move(kept);
      });
      auto s = PlanStatus(o);
      CHECK(s.code() == quench::ErrorCode::kInvalidInput);
      CHECK_MESSAGE(
          s.message().find(where + " has none of num_experts_per_tok, top_k, moe_top_k; REAP "
                                   "(as llm-compressor) needs the experts each token is "
                                   "routed to") != std::string::npos,
          s.message());
      edit_config([](quench::JsonValue& m) { m.Set("num_experts_per_tok", quench::JsonValue(0)); });
      s = PlanStatus(o);
      CHECK(s.code() == quench::ErrorCode::kInvalidInput);
      CHECK_MESSAGE(s.message().find(where + ": num_experts_per_tok must be a positive integer") !=
                        std::string::npos,
                    s.message());
      edit_config([](quench::JsonValue& m) { m.Set("n_group", quench::JsonValue(2)); });
      s = PlanStatus(o);
      CHECK(s.code() == quench::ErrorCode::kInvalidInput);
      CHECK_MESSAGE(
          s.message().find(where + " sets n_group without topk_group; a group-limited router "
                                   "needs both") != std::string::npos,
          s.message());
    }
    {  // F the reference refuses
      qt::TempDir tmp;
      quench::ConvertOptions o = ReapOptions(c, tmp / "out");
      o.prune_experts = 0.1;  // int(0.8) = 0 experts
      CHECK(PlanStatus(o).code() == quench::ErrorCode::kUsage);
      o.prune_experts = 1.0;
      CHECK(PlanStatus(o).code() == quench::ErrorCode::kUsage);
    }
  }

  TEST_CASE("stats merge adds REAP sums and counts; parts with other REAP blocks are refused") {
    const fs::path a =
        qt::DataDir() / Reap().Find("convert")->as_array()[0].Find("statistics")->as_string();
    const fs::path b =
        qt::DataDir() / Reap().Find("convert")->as_array()[1].Find("statistics")->as_string();
    qt::TempDir tmp;
    REQUIRE(quench::calib::MergeStatistics({a, b}, tmp / "m").ok());
    auto sa = quench::calib::Statistics::Open(a), sb = quench::calib::Statistics::Open(b),
         sm = quench::calib::Statistics::Open(tmp / "m");
    REQUIRE(sa.ok());
    REQUIRE(sb.ok());
    REQUIRE(sm.ok());
    REQUIRE(sm->reap().size() == 2);
    for (const auto& [router, block] : sm->reap()) {
      CAPTURE(router);
      auto s1 = sa->ReadReapSum(sa->reap().at(router)), s2 = sb->ReadReapSum(sb->reap().at(router)),
           s = sm->ReadReapSum(block);
      auto c1 = sa->ReadReapCount(sa->reap().at(router)),
           c2 = sb->ReadReapCount(sb->reap().at(router)), c = sm->ReadReapCount(block);
      REQUIRE((s.ok() && s1.ok() && s2.ok() && c.ok() && c1.ok() && c2.ok()));
      for (size_t e = 0; e < s->size(); ++e) {
        CHECK((*s)[e] == (*s1)[e] + (*s2)[e]);
        CHECK((*c)[e] == (*c1)[e] + (*c2)[e]);
      }
    }
    // One block fewer in the second part: refused, nothing looks finished.
    const fs::path fewer = EditedStats(tmp, b, [](quench::JsonValue& m) {
      quench::JsonValue reap = quench::JsonValue::MakeObject();
      reap.Set("model.layers.1.mlp", *m.Find("reap")->Find("model.layers.1.mlp"));
      m.Set("reap", std::move(reap));
    });
    const auto st = quench::calib::MergeStatistics({a, fewer}, tmp / "n");
    CHECK(st.code() == quench::ErrorCode::kInvalidInput);
    CHECK(st.message().find("REAP") != std::string::npos);
    CHECK(!fs::exists(tmp / "n" / "manifest.json"));
  }

  TEST_CASE("verify DST SRC on expert-pruned outputs: each survivor against its source expert") {
    // Golden pruned outputs (the reference's, which quench equals) of both layouts, with and
    // without fused 3-D stacks, DeepSeek's sliced bias, Mixtral's NVFP4 fused gate/up; and
    // quench's REAP output of the same sets.
    for (const char* name : {"xprune-2d/E0.5-FP8_DYNAMIC", "xprune-2d/E0.5-W4A16",
                             "xprune-3d/E0.25-FP8_DYNAMIC", "xprune-ds/E0.5-FP8_DYNAMIC",
                             "xprune-mixtral/E0.5-NVFP4A16"}) {
      CAPTURE(name);
      const auto& m = MagnitudeCase(name);
      quench::VerifyOptions o;
      o.dst = qt::DataDir() / m.Find("expected")->as_string();
      o.src = qt::DataDir() / m.Find("source")->as_string();
      auto r = quench::Verify(o);
      REQUIRE_MESSAGE(r.ok(), r.status().ToString());
      for (const auto& p : r->problems) CAPTURE(p.ToString());
      CHECK(r->problems.empty());
      CHECK(!r->quality.empty());
    }
    // A router row that is no source row: the problem names the router.
    qt::TempDir tmp;
    const auto& m = MagnitudeCase("xprune-2d/E0.5-FP8_DYNAMIC");
    fs::copy(qt::DataDir() / m.Find("expected")->as_string(), tmp / "dst");
    auto shard = quench::LoadShard(tmp / "dst" / "model-00001-of-00002.safetensors",
                                   "model-00001-of-00002.safetensors");
    REQUIRE(shard.ok());
    const quench::TensorInfo* router = nullptr;
    for (const auto& t : shard->header.tensors) {
      if (t.name == "model.layers.1.mlp.gate.weight") router = &t;
    }
    REQUIRE(router != nullptr);
    {
      std::string bytes = qt::ReadBytes(tmp / "dst" / "model-00001-of-00002.safetensors");
      bytes[shard->header.data_start + router->begin + 3] ^= 0x40;
      qt::WriteBytes(tmp / "dst" / "model-00001-of-00002.safetensors", bytes);
    }
    quench::VerifyOptions o;
    o.dst = tmp / "dst";
    o.src = qt::DataDir() / m.Find("source")->as_string();
    auto r = quench::Verify(o);
    REQUIRE(r.ok());
    REQUIRE(!r->problems.empty());
    CHECK(r->problems.front().tensor == "model.layers.1.mlp.gate.weight");
    CHECK(r->problems.front().message.find("router row 0 is none of the source router's rows") !=
          std::string::npos);
  }

  TEST_CASE("--resume redoes the shards that other statistics made") {
    // A run with statistics whose saliency rises with the expert index (keeps 4..7), killed
    // after its shards were complete (their resume markers written) and before config.json was
    // published; then --resume with the golden statistics (other kept experts): the markers'
    // fingerprints differ, so every shard is redone and the result equals a fresh run. With
    // markers of the golden statistics' own plan, the same shards are kept.
    const auto& c = Reap().Find("convert")->as_array()[2];  // xprune-2d/E0.5-FP8_DYNAMIC
    REQUIRE(c.Find("name")->as_string() == "xprune-2d/E0.5-FP8_DYNAMIC");
    qt::TempDir tmp;
    const fs::path golden_stats = qt::DataDir() / c.Find("statistics")->as_string();
    const fs::path rising = EditedStats(tmp, golden_stats, [](quench::JsonValue&) {});
    {
      const fs::path file = rising / "stats-00001.safetensors";
      auto h = quench::ReadSafetensorsHeader(file);
      REQUIRE(h.ok());
      std::string bytes = qt::ReadBytes(file);
      for (const auto& t : h->tensors) {
        if (!t.name.ends_with(".reap_sum")) continue;
        for (uint64_t e = 0; e < t.shape[0]; ++e) {
          const double v = static_cast<double>(e + 1) * 1000.0;  // counts are below 1000
          std::memcpy(bytes.data() + h->data_start + t.begin + 8 * e, &v, 8);
        }
      }
      qt::WriteBytes(file, bytes);
    }
    auto killed_run = [&](const fs::path& stats) {
      quench::ConvertOptions o = ReapOptions(c, tmp / "out");
      o.stats = stats;
      o.overwrite = true;
      REQUIRE(quench::Convert(o).ok());
      fs::remove(tmp / "out" / "config.json");
      auto plan = quench::MakePlan(o);
      REQUIRE(plan.ok());
      for (size_t k = 0; k < plan->shards.size(); ++k) {
        REQUIRE(quench::WriteResumeMarker(
                    quench::ResumeMarkerPath(tmp / "out", plan->shards[k].rel_name),
                    quench::ShardFingerprint(*plan, k))
                    .ok());
      }
    };
    const fs::path want = qt::DataDir() / MagnitudeCase(c.Find("name")->as_string())
                                              .Find("expected")->as_string();
    killed_run(rising);
    quench::ConvertOptions again = ReapOptions(c, tmp / "out");
    again.resume = true;
    auto r = quench::Convert(again);
    REQUIRE_MESSAGE(r.ok(), r.status().ToString());
    CHECK(r->shards_resumed == 0);  // both shards hold layer 1's experts or a router
    qt::CheckSameFiles(want, tmp / "out");
    killed_run(golden_stats);
    auto r2 = quench::Convert(again);
    REQUIRE(r2.ok());
    CHECK(r2->shards_resumed == 2);
    qt::CheckSameFiles(want, tmp / "out");
  }

  TEST_CASE("SourceExpertName: a survivor's name maps back to the source expert it was") {
    quench::PlannedExpertPrune e;
    quench::PlannedExpertLayer l;
    l.prefix = "model.layers.3.mlp";
    l.kept = {1, 4, 6};
    e.layers.push_back(l);
    CHECK(quench::SourceExpertName(e, "model.layers.3.mlp.experts.2.down_proj.weight") ==
          "model.layers.3.mlp.experts.6.down_proj.weight");
    CHECK(quench::SourceExpertName(e, "model.layers.3.mlp.experts.0.w1.weight") ==
          "model.layers.3.mlp.experts.1.w1.weight");
    // Not a renumbered expert: itself.
    CHECK(quench::SourceExpertName(e, "model.layers.3.mlp.shared_experts.down_proj.weight") ==
          "model.layers.3.mlp.shared_experts.down_proj.weight");
    CHECK(quench::SourceExpertName(e, "model.layers.30.mlp.experts.2.down_proj.weight") ==
          "model.layers.30.mlp.experts.2.down_proj.weight");
    CHECK(quench::SourceExpertName(e, "model.layers.3.mlp.experts.gate_up_proj") ==
          "model.layers.3.mlp.experts.gate_up_proj");
  }
}
