// Expert pruning (--prune-experts) of every other quantized source kind that holds MoE experts:
// compressed-tensors per-expert 2-D weights, AutoAWQ and ModelOpt NVFP4 per expert, and
// DeepSeek-style FP8 block with fused 3-D experts and [E, ...] block scales. (FP8 block with
// per-expert 2-D weights: tests/test_expert_prune_sources.cc; compressed-tensors 3-D stacks:
// tests/test_expert_prune_ct3d.cc.)
// Expected bytes: data/golden/prune_sources_manifest.json (scripts/make_golden_prune_sources.py):
// the reference's MagnitudeExpertPruner through convert_checkpoint on the source, then the
// kind's own converter on the pruned checkpoint (CompressedTensorsDequantizer, AutoAWQConverter,
// ModelOptNvfp4Converter; for the fused FP8 stacks, which FP8BlockDequantizer cannot decode
// 3-D, its decode of the pruned stacks split per expert, as quench and model_free_ptq split).
#include <doctest/doctest.h>

#include <map>
#include <string>
#include <vector>

#include "ct_cases.h"
#include "quench/convert.h"
#include "test_util.h"
#include "verify/verify.h"

namespace quench::testing {
namespace {

constexpr const char* kManifest = "prune_sources_manifest.json";

}  // namespace

TEST_SUITE("expert_prune_kinds") {
  TEST_CASE("every quantized source kind pruned equals the reference's prune-then-convert") {
    const std::vector<CtCase> cases = CtCases(kManifest);
    std::vector<std::string> names;
    for (const CtCase& k : cases) names.push_back(k.name);
    CHECK(names == std::vector<std::string>{"ct2d/BF16", "awq/W4A16_ASYM", "modelopt/NVFP4",
                                            "fp8fused/BF16"});
    for (const CtCase& k : cases) {
      CAPTURE(k.name);
      TempDir tmp;
      auto r = Convert(PrunedCaseOptions(k, tmp / "out"));
      REQUIRE_MESSAGE(r.ok(), r.status().ToString());
      CheckTensors(*k.tensors, tmp / "out");
      CheckConfig(k.config, tmp / "out" / "config.json");
    }
  }

  TEST_CASE("the kept experts are the reference's MagnitudeExpertPruner choice on the source") {
    for (const JsonValue& c : CtManifest(kManifest).Find("cases")->as_array()) {
      const std::string name = c.Find("name")->as_string();
      CAPTURE(name);
      CtCase k;
      k.source = DataDir() / c.Find("source")->as_string();
      k.scheme = c.Find("scheme")->as_string();
      TempDir tmp;
      auto plan = MakePlan(PrunedCaseOptions(k, tmp / "out"));
      REQUIRE_MESSAGE(plan.ok(), plan.status().ToString());
      std::map<std::string, std::vector<uint32_t>> got, want;
      for (const PlannedExpertLayer& l : plan->expert_prune->layers) got[l.router] = l.kept;
      for (const auto& [router, kept] : c.Find("retained")->as_object()) {
        for (const JsonValue& e : kept.as_array()) {
          want[router].push_back(static_cast<uint32_t>(e.as_uint()));
        }
      }
      CHECK(got == want);
    }
  }

  TEST_CASE("the fused FP8 stacks: the reference's 3-D decode fails; its 2-D decode is expected") {
    for (const JsonValue& c : CtManifest(kManifest).Find("cases")->as_array()) {
      if (c.Find("name")->as_string() != "fp8fused/BF16") continue;
      REQUIRE(c.Find("reference_error_3d") != nullptr);
      CHECK(c.Find("reference_error_3d")->as_string() ==
            "RuntimeError: shape '[0, 128, 1, 128]' is invalid for input of size 32768");
    }
  }

  // `quench verify DST SRC` (the CLI decodes an AutoAWQ or ModelOpt SRC to BF16 first and
  // holds a repack to the lossless rule): exit 0, no problem.
  void VerifyCli(const fs::path& dst, const fs::path& src) {
    const RunResult v = RunQuench({"verify", dst.string(), src.string()});
    CAPTURE(v.out);
    CAPTURE(v.err);
    CHECK(v.exit_code == 0);
    CHECK(v.out.find(", 0 problem(s)") != std::string::npos);
  }

  TEST_CASE("verify DST SRC passes on every pruned output") {
    for (const CtCase& k : CtCases(kManifest)) {
      CAPTURE(k.name);
      TempDir tmp;
      REQUIRE(Convert(PrunedCaseOptions(k, tmp / "out")).ok());
      VerifyCli(tmp / "out", k.source);
    }
  }

  TEST_CASE("pruning alone (--scheme none) writes the decoded survivors of every kind") {
    for (const CtCase& k0 : CtCases(kManifest)) {
      CtCase k = k0;
      k.scheme = "none";
      CAPTURE(k.name);
      TempDir tmp;
      auto r = Convert(PrunedCaseOptions(k, tmp / "out"));
      REQUIRE_MESSAGE(r.ok(), r.status().ToString());
      CHECK(r->tensors_decoded == 12);  // 2 layers x 2 kept experts x 3 projections
      // Where the reference's expected output is the decoded model, the same bytes (fused
      // FP8 stacks split per expert, as --scheme BF16 writes them).
      if (k0.scheme == "BF16") {
        CheckTensors(*k0.tensors, tmp / "out");
        VerifyCli(tmp / "out", k.source);
        continue;
      }
      // AutoAWQ, ModelOpt: each tensor is the unpruned decode's (--scheme BF16, golden-tested
      // in test_quant_sources) of its source expert; routers are its kept rows. verify holds
      // the pruned decode to the source decoded and pruned the same way.
      VerifyCli(tmp / "out", k.source);
      k.scheme = "BF16";
      ConvertOptions whole = PrunedCaseOptions(k, tmp / "whole");
      whole.prune_experts.reset();
      REQUIRE(Convert(whole).ok());
      std::map<std::string, std::vector<uint32_t>> kept;
      for (const JsonValue& c : CtManifest(kManifest).Find("cases")->as_array()) {
        if (c.Find("name")->as_string() != k0.name) continue;
        for (const auto& [router, ks] : c.Find("retained")->as_object()) {
          for (const JsonValue& e : ks.as_array())
            kept[router].push_back(static_cast<uint32_t>(e.as_uint()));
        }
      }
      const auto got = LoadAll(tmp / "out"), all = LoadAll(tmp / "whole");
      size_t n = 0;
      for (const auto& [_, l] : got) {
        for (const TensorInfo& t : l.shard.header.tensors) {
          CAPTURE(t.name);
          ++n;
          const std::string layer = t.name.substr(0, t.name.find(".mlp.") + 5);
          const std::vector<uint32_t>& ks = kept[layer + "gate.weight"];
          std::string src = t.name;
          const size_t at = t.name.find(".experts.");
          if (at != std::string::npos) {
            const size_t from = at + 9, to = t.name.find('.', from);
            src = t.name.substr(0, from) +
                  std::to_string(ks.at(std::stoul(t.name.substr(from, to - from)))) +
                  t.name.substr(to);
          }
          auto [wl, wt] = FindTensor(all, src);
          REQUIRE(wt != nullptr);
          const std::string a(reinterpret_cast<const char*>(l.Data(t)), t.nbytes());
          const std::string b(reinterpret_cast<const char*>(wl->Data(*wt)), wt->nbytes());
          if (t.name.ends_with(".mlp.gate.weight")) {
            const uint64_t row = wt->nbytes() / 4;
            std::string want;
            for (uint32_t e : ks) want += b.substr(e * row, row);
            CHECK(a == want);
          } else {
            CHECK(a == b);
          }
        }
      }
      CHECK(n == 17);  // 12 kept expert weights, 2 routers, embeddings, head, norm
    }
  }

  TEST_CASE("pruned with another scheme: W4A16 from every kind, and verify passes") {
    for (const CtCase& k0 : CtCases(kManifest)) {
      CtCase k = k0;
      k.scheme = "W4A16";
      k.ignore = {"lm_head", "re:.*embed_tokens$", "re:.*mlp\\.gate$"};
      CAPTURE(k.name);
      TempDir tmp;
      auto r = Convert(PrunedCaseOptions(k, tmp / "out"));
      REQUIRE_MESSAGE(r.ok(), r.status().ToString());
      // 2 layers x 2 kept experts x 3 projections, renumbered 0 and 1.
      CHECK(r->tensors_quantized == 12);
      VerifyCli(tmp / "out", k.source);
    }
  }
}

}  // namespace quench::testing
