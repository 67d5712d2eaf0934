// Expert pruning's MoE-specific checks (issue 21) beyond test_expert_prune.cc's: the routing
// floor read from every key and place the reference reads it (num_experts_per_tok or
// top_k_experts, top level or text_config; equal to the experts kept is allowed), the expert
// count written where it was found, shared experts (Qwen2-MoE's `shared_expert` and its
// `shared_expert_gate`) copied untouched, and the refusals that name the tensors (two
// routers, a router that is not a 2-D float matrix, layers that would keep different counts).
// Expected values: from the fixtures' construction (tensor bytes written here, kept experts
// by router-row L1 norm, Python's round for the kept count).
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "format/json.h"
#include "quench/convert.h"
#include "test_util.h"

namespace qt = quench::testing;
namespace fs = std::filesystem;
using quench::DType;
using quench::DTypeBits;
using quench::DTypeName;
using qt::RawTensor;

namespace {

// `layers` MoE layers, layer l with experts[l] experts: router [E, 8] BF16 whose row e has
// L1 norm 8 * (e + 1) (so the last experts are kept), experts `experts.<e>.w.weight` [4, 8].
std::vector<RawTensor> MoeTensors(const std::vector<int>& experts) {
  std::vector<RawTensor> t;
  for (size_t l = 0; l < experts.size(); ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".mlp.";
    std::vector<float> router(static_cast<size_t>(experts[l]) * 8);
    for (size_t i = 0; i < router.size(); ++i) router[i] = static_cast<float>(i / 8 + 1);
    t.push_back({p + "gate.weight", DType::kBF16, {static_cast<uint64_t>(experts[l]), 8},
                 qt::Bf16Bytes(router)});
    for (int e = 0; e < experts[l]; ++e) {
      t.push_back({p + "experts." + std::to_string(e) + ".w.weight", DType::kBF16, {4, 8},
                   qt::Bf16Bytes(std::vector<float>(32, static_cast<float>(e)))});
    }
  }
  return t;
}

fs::path Write(const qt::TempDir& tmp, const std::vector<RawTensor>& t, const std::string& config) {
  const fs::path src = tmp / "src";
  fs::create_directories(src);
  qt::WriteShard(src / "model.safetensors", t);
  qt::WriteBytes(src / "config.json", config);
  return src;
}

quench::Status PlanStatus(const fs::path& src, double fraction) {
  qt::TempDir out;
  quench::ConvertOptions o;
  o.src = src;
  o.dst = out / "dst";
  o.scheme = "none";
  o.prune_experts = fraction;
  auto plan = quench::DryRun(o);
  if (!plan.ok()) return plan.status();
  return plan->errors.empty() ? quench::Status::Ok() : plan->errors.front();
}

quench::Result<quench::ConvertSummary> Convert(const fs::path& src, const fs::path& dst,
                                               double fraction) {
  quench::ConvertOptions o;
  o.src = src;
  o.dst = dst;
  o.scheme = "none";
  o.prune_experts = fraction;
  return quench::Convert(o);
}

}  // namespace

TEST_SUITE("expert_prune_checks") {
  TEST_CASE("the routing floor: every key and place the reference reads, equality allowed") {
    struct Case {
      const char* config;
      double fraction;
      const char* refusal;  // nullptr: planned
    };
    const Case cases[] = {
        // 8 experts, 0.5 keeps 4.
        {R"({"num_experts": 8, "num_experts_per_tok": 4})", 0.5, nullptr},
        {R"({"num_experts": 8, "num_experts_per_tok": 5})", 0.5, "num_experts_per_tok is 5"},
        {R"({"num_experts": 8, "top_k_experts": 5})", 0.5, "num_experts_per_tok is 5"},
        {R"({"text_config": {"num_experts": 8, "num_experts_per_tok": 6}})", 0.5,
         "num_experts_per_tok is 6"},
        {R"({"text_config": {"num_local_experts": 8, "num_experts_per_tok": 4}})", 0.5, nullptr},
        // No routing floor recorded: nothing to check.
        {R"({"n_routed_experts": 8})", 0.875, nullptr},
        // 0.875 keeps 1 (8 - round(7.0)); 0.9 keeps max(1, 8 - 7) = 1 as well.
        {R"({"num_experts": 8, "num_experts_per_tok": 1})", 0.9, nullptr},
        {R"({"num_experts": 8, "num_experts_per_tok": 2})", 0.875, "keeps 1 expert(s)"},
    };
    for (const Case& c : cases) {
      CAPTURE(c.config);
      CAPTURE(c.fraction);
      qt::TempDir tmp;
      const quench::Status s = PlanStatus(Write(tmp, MoeTensors({8}), c.config), c.fraction);
      if (c.refusal == nullptr) {
        CHECK_MESSAGE(s.ok(), s.ToString());
      } else {
        CHECK(s.code() == quench::ErrorCode::kUsage);
        CHECK(s.message().find(c.refusal) != std::string::npos);
      }
    }
  }

  TEST_CASE("the expert count is written where config.json has it; the floor is kept") {
    qt::TempDir tmp;
    const fs::path src = Write(tmp, MoeTensors({8}),
                               R"({"model_type": "x", "text_config": {"num_local_experts": 8, )"
                               R"("num_experts_per_tok": 2, "hidden_size": 8}})");
    auto r = Convert(src, tmp / "out", 0.5);
    REQUIRE_MESSAGE(r.ok(), r.status().ToString());
    auto cfg = quench::ReadJsonFile((tmp / "out/config.json").string());
    REQUIRE(cfg.ok());
    const quench::JsonValue* text = cfg->Find("text_config");
    REQUIRE(text != nullptr);
    CHECK(text->Find("num_local_experts")->as_int() == 4);
    CHECK(text->Find("num_experts_per_tok")->as_int() == 2);
    CHECK(text->Find("hidden_size")->as_int() == 8);
    CHECK(cfg->Find("num_local_experts") == nullptr);
    // The survivors are the experts of the largest router rows, renumbered: 4..7 -> 0..3.
    const auto out = qt::LoadAll(tmp / "out");
    for (int e = 0; e < 4; ++e) {
      auto [l, t] = qt::FindTensor(out, "model.layers.0.mlp.experts." + std::to_string(e) + ".w.weight");
      REQUIRE(t != nullptr);
      CHECK(qt::DecodeBF16(l->Data(*t)) == 4 + e);
    }
    CHECK(qt::FindTensor(out, "model.layers.0.mlp.experts.4.w.weight").second == nullptr);
  }

  TEST_CASE("shared experts (Qwen2-MoE's shared_expert and shared_expert_gate) are untouched") {
    qt::TempDir tmp;
    std::vector<RawTensor> t = MoeTensors({8});
    const std::vector<RawTensor> shared = {
        {"model.layers.0.mlp.shared_expert.gate_proj.weight", DType::kBF16, {4, 8},
         qt::Bf16Bytes(std::vector<float>(32, 0.5f))},
        {"model.layers.0.mlp.shared_expert.up_proj.weight", DType::kBF16, {4, 8},
         qt::Bf16Bytes(std::vector<float>(32, 0.25f))},
        {"model.layers.0.mlp.shared_expert.down_proj.weight", DType::kBF16, {8, 4},
         qt::Bf16Bytes(std::vector<float>(32, 0.125f))},
        {"model.layers.0.mlp.shared_expert_gate.weight", DType::kBF16, {1, 8},
         qt::Bf16Bytes(std::vector<float>(8, 2.0f))},
    };
    t.insert(t.end(), shared.begin(), shared.end());
    const fs::path src =
        Write(tmp, t, R"({"num_experts": 8, "num_experts_per_tok": 2, "shared_expert_intermediate_size": 4})");
    auto r = Convert(src, tmp / "out", 0.5);
    REQUIRE_MESSAGE(r.ok(), r.status().ToString());
    const auto out = qt::LoadAll(tmp / "out");
    for (const RawTensor& s : shared) {
      CAPTURE(s.name);
      auto [l, ot] = qt::FindTensor(out, s.name);
      REQUIRE(ot != nullptr);
      CHECK(ot->shape == s.shape);
      CHECK(std::string(reinterpret_cast<const char*>(l->Data(*ot)), ot->nbytes()) == s.bytes);
    }
    size_t experts = 0;
    for (const auto& [_, l] : out) {
      for (const auto& ti : l.shard.header.tensors) experts += ti.name.find(".mlp.experts.") != std::string::npos;
    }
    CHECK(experts == 4);
  }

  TEST_CASE("refusals name the tensors: two routers, a router that is not a float matrix, uneven layers") {
    const char* config = R"({"num_experts": 8, "num_experts_per_tok": 1})";
    SUBCASE("a layer with both gate.weight and router.weight") {
      qt::TempDir tmp;
      std::vector<RawTensor> t = MoeTensors({8});
      t.push_back({"model.layers.0.mlp.router.weight", DType::kBF16, {8, 8}, std::string(128, '\0')});
      const quench::Status s = PlanStatus(Write(tmp, t, config), 0.5);
      CHECK(s.code() == quench::ErrorCode::kInvalidInput);
      CHECK(s.message().find("'model.layers.0.mlp.gate.weight' and 'model.layers.0.mlp.router.weight'") !=
            std::string::npos);
    }
    SUBCASE("a router of integers") {
      qt::TempDir tmp;
      std::vector<RawTensor> t = MoeTensors({8});
      t.front() = {"model.layers.0.mlp.gate.weight", DType::kI32, {8, 8}, std::string(256, '\0')};
      const quench::Status s = PlanStatus(Write(tmp, t, config), 0.5);
      CHECK(s.code() == quench::ErrorCode::kInvalidInput);
      CHECK(s.message().find("router 'model.layers.0.mlp.gate.weight' has shape [8, 8] and dtype I32") !=
            std::string::npos);
    }
    SUBCASE("a router stored quantized: FP8 or int8 codes, or packed words") {
      // Refused, not decoded for scoring (src/plan/expert_prune.cc QuantizedRouter): the
      // reference scores the stored tensor, so its choice is not defined for such routers.
      for (const auto& [name, dtype] :
           std::vector<std::pair<std::string, DType>>{{"gate.weight", DType::kF8E4M3},
                                                      {"gate.weight", DType::kI8},
                                                      {"gate.weight_packed", DType::kI32},
                                                      {"gate.qweight", DType::kI32}}) {
        CAPTURE(name);
        qt::TempDir tmp;
        std::vector<RawTensor> t = MoeTensors({8});
        const uint64_t bytes = DTypeBits(dtype) / 8;
        t.front() = {"model.layers.0.mlp." + name, dtype, {8, 8}, std::string(64 * bytes, '\1')};
        const quench::Status s = PlanStatus(Write(tmp, t, config), 0.5);
        CHECK(s.code() == quench::ErrorCode::kUnsupported);
        CHECK(s.message().find("router 'model.layers.0.mlp." + name) != std::string::npos);
        CHECK(s.message().find(dtype == DType::kI32 ? "is stored quantized (packed)"
                                                    : "is stored quantized (" +
                                                          std::string(DTypeName(dtype)) + ")") !=
              std::string::npos);
        CHECK(s.message().find("expert pruning scores unquantized routers only") !=
              std::string::npos);
      }
    }
    SUBCASE("a 1-D router") {
      qt::TempDir tmp;
      std::vector<RawTensor> t = MoeTensors({8});
      t.front() = {"model.layers.0.mlp.gate.weight", DType::kBF16, {8}, std::string(16, '\0')};
      const quench::Status s = PlanStatus(Write(tmp, t, config), 0.5);
      CHECK(s.code() == quench::ErrorCode::kInvalidInput);
      CHECK(s.message().find("router 'model.layers.0.mlp.gate.weight' has shape [8]") != std::string::npos);
    }
    SUBCASE("layers of 8 and 6 experts: 0.5 keeps 4 and 3") {
      qt::TempDir tmp;
      const quench::Status s = PlanStatus(Write(tmp, MoeTensors({8, 6}), config), 0.5);
      CHECK(s.code() == quench::ErrorCode::kInvalidInput);
      CHECK(s.message().find("'model.layers.0.mlp.gate.weight' 4 of 8, "
                             "'model.layers.1.mlp.gate.weight' 3 of 6") != std::string::npos);
    }
    SUBCASE("a router-module tensor of another length is named in full") {
      qt::TempDir tmp;
      std::vector<RawTensor> t = MoeTensors({8});
      t.push_back({"model.layers.0.mlp.gate.e_score_correction_bias", DType::kF32, {5},
                   std::string(20, '\0')});
      const quench::Status s = PlanStatus(Write(tmp, t, config), 0.5);
      CHECK(s.code() == quench::ErrorCode::kInvalidInput);
      CHECK(s.message().find("tensor 'model.layers.0.mlp.gate.e_score_correction_bias' of MoE "
                             "layer 'model.layers.0.mlp' has shape [5], not 8 experts") !=
            std::string::npos);
    }
  }
}
