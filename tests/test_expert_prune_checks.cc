// Expert pruning's MoE-specific checks (issue 21) beyond test_expert_prune.cc's: the routing
// floor read from every key and place the reference reads it (num_experts_per_tok or
// top_k_experts, top level or text_config; equal to the experts kept is allowed), the expert
// count written where it was found, shared experts (Qwen2-MoE's `shared_expert` and its
// `shared_expert_gate`) copied untouched, and the refusals that name the tensors (two
// routers, a router that is not a 2-D float matrix, layers that would keep different counts),
// and BF16 router scores on rows of every magnitude span (RouterScores' eight-lane sum).
// Expected values: from the fixtures' construction (tensor bytes written here, kept experts
// by router-row L1 norm, Python's round for the kept count); scores from RouterScores'
// definition computed here (a sequential double sum, rounded once to BF16 from its bits).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "format/json.h"
#include "plan/expert_prune.h"
#include "quench/convert.h"
#include "test_util.h"

namespace qt = quench::testing;
namespace fs = std::filesystem;
using quench::DType;
using quench::DTypeBits;
using quench::DTypeName;
using qt::RawTensor;

namespace {

// A double rounded once to the nearest BF16 (ties to even), from its bits: a BF16 keeps 7 of
// the double's 52 fraction bits (values in the float normal range, as here).
float Bf16Nearest(double d) {
  uint64_t b;
  std::memcpy(&b, &d, 8);
  const uint64_t rem = b & ((1ull << 45) - 1), half = 1ull << 44;
  b >>= 45;
  if (rem > half || (rem == half && (b & 1))) ++b;
  b <<= 45;
  std::memcpy(&d, &b, 8);
  return static_cast<float>(d);
}

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

  TEST_CASE("no config.json, or one without an expert count: refused, nothing to record it in") {
    // compressed-tensors' converter writes the kept count into the config; without a key to
    // write it under, the pruned model would claim experts it lacks.
    qt::TempDir tmp;
    const fs::path src = Write(tmp, MoeTensors({8}), R"({"num_experts_per_tok": 2})");
    quench::Status s = PlanStatus(src, 0.5);
    CHECK(s.code() == quench::ErrorCode::kInvalidInput);
    CHECK_MESSAGE(s.message().find("config.json has none of num_experts, num_local_experts, "
                                   "moe_num_experts, n_routed_experts (top level or "
                                   "text_config); expert pruning cannot record the experts "
                                   "kept") != std::string::npos,
                  s.message());
    fs::remove(src / "config.json");
    s = PlanStatus(src, 0.5);
    CHECK(s.code() == quench::ErrorCode::kInvalidInput);
    CHECK_MESSAGE(s.message().find(src.string() + ": expert pruning needs config.json to record "
                                   "the experts kept, and the folder has none") !=
                      std::string::npos,
                  s.message());
  }

  TEST_CASE("a MoE layer with two routers is refused: which one scores the experts is unclear") {
    qt::TempDir tmp;
    std::vector<RawTensor> t = MoeTensors({8});
    RawTensor second = t.front();  // model.layers.0.mlp.gate.weight
    second.name = "model.layers.0.mlp.router.weight";
    t.push_back(second);
    const quench::Status s = PlanStatus(Write(tmp, t, R"({"num_experts": 8})"), 0.5);
    CHECK(s.code() == quench::ErrorCode::kInvalidInput);
    CHECK_MESSAGE(s.message().find("MoE layer 'model.layers.0.mlp' has two routers, "
                                   "'model.layers.0.mlp.gate.weight' and "
                                   "'model.layers.0.mlp.router.weight'; expert pruning cannot "
                                   "tell which") != std::string::npos,
                  s.message());
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
      auto [l, t] =
          qt::FindTensor(out, "model.layers.0.mlp.experts." + std::to_string(e) + ".w.weight");
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
    const fs::path src = Write(
        tmp, t,
        R"({"num_experts": 8, "num_experts_per_tok": 2, "shared_expert_intermediate_size": 4})");
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
      for (const auto& ti : l.shard.header.tensors)
        experts += ti.name.find(".mlp.experts.") != std::string::npos;
    }
    CHECK(experts == 4);
  }

  TEST_CASE(
      "refusals name the tensors: two routers, a router that is not a float matrix, uneven "
      "layers") {
    const char* config = R"({"num_experts": 8, "num_experts_per_tok": 1})";
    SUBCASE("a layer with both gate.weight and router.weight") {
      qt::TempDir tmp;
      std::vector<RawTensor> t = MoeTensors({8});
      t.push_back(
          {"model.layers.0.mlp.router.weight", DType::kBF16, {8, 8}, std::string(128, '\0')});
      const quench::Status s = PlanStatus(Write(tmp, t, config), 0.5);
      CHECK(s.code() == quench::ErrorCode::kInvalidInput);
      CHECK(s.message().find(
                "'model.layers.0.mlp.gate.weight' and 'model.layers.0.mlp.router.weight'") !=
            std::string::npos);
    }
    SUBCASE("a router of integers") {
      qt::TempDir tmp;
      std::vector<RawTensor> t = MoeTensors({8});
      t.front() = {"model.layers.0.mlp.gate.weight", DType::kI32, {8, 8}, std::string(256, '\0')};
      const quench::Status s = PlanStatus(Write(tmp, t, config), 0.5);
      CHECK(s.code() == quench::ErrorCode::kInvalidInput);
      CHECK(s.message().find(
                "router 'model.layers.0.mlp.gate.weight' has shape [8, 8] and dtype I32") !=
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
      CHECK(s.message().find("router 'model.layers.0.mlp.gate.weight' has shape [8]") !=
            std::string::npos);
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
  TEST_CASE(
      "renumbered experts are planned in name order, the order their outputs are written in") {
    // 12 experts, the last 6 kept (router rows' norms grow with the index): source experts 10
    // and 11 come before 6..9 in the file (names sorted as text) but become experts 4 and 5.
    qt::TempDir tmp;
    const fs::path src =
        Write(tmp, MoeTensors({12}), R"({"num_experts": 12, "num_experts_per_tok": 1})");
    quench::ConvertOptions o;
    o.src = src;
    o.dst = tmp / "dst";
    o.scheme = "FP8_DYNAMIC";
    o.prune_experts = 0.5;
    auto plan = quench::DryRun(o);
    REQUIRE_MESSAGE(plan.ok(), plan.status().ToString());
    std::vector<std::string> names;
    for (const auto& t : plan->tensors) names.push_back(t.name);
    CHECK(std::is_sorted(names.begin(), names.end()));
    CHECK(std::count_if(names.begin(), names.end(), [](const std::string& n) {
            return n.find(".experts.") != std::string::npos;
          }) == 6);
    CHECK(std::find(names.begin(), names.end(), "model.layers.0.mlp.experts.5.w.weight") !=
          names.end());
  }

  TEST_CASE("BF16 router scores: the sequential double sum of |w| rounded once, on any span") {
    // Rows of 7,171 columns (not a multiple of the eight lanes): narrow spans (the fast sum
    // is exact), subnormals beside normal values and spans past 2^53 (the sequential way),
    // zeros, and sums each side of the 2^(L + 53) bound.
    std::mt19937 rng(21);
    const uint64_t cols = 7171;
    std::vector<std::vector<float>> rows;
    auto random_row = [&](int lo_exp, int hi_exp, double zero_share) {
      std::uniform_int_distribution<int> e(lo_exp, hi_exp), m(0, 127), sign(0, 1);
      std::uniform_real_distribution<double> u(0, 1);
      std::vector<float> r(cols);
      for (float& x : r) {
        x = u(rng) < zero_share ? 0.0f
                                : static_cast<float>((sign(rng) ? -1 : 1) *
                                                     std::ldexp(128 + m(rng), e(rng) - 7));
      }
      return r;
    };
    for (int i = 0; i < 40; ++i) rows.push_back(random_row(-12, -3, 0.0));  // typical routers
    for (int i = 0; i < 10; ++i) rows.push_back(random_row(-40, 0, 0.1));   // 40 binades
    for (int i = 0; i < 10; ++i) rows.push_back(random_row(-120, 20, 0.0)); // past 2^53
    rows.push_back(std::vector<float>(cols, 0.0f));
    std::vector<float> sub = random_row(-8, -2, 0.0);
    sub[5] = std::ldexp(3.0f, -133);  // a BF16 subnormal
    rows.push_back(sub);
    // A tie between two BF16 values (1 + 2^-8) and 7,169 weights of 2^-60: one chain of
    // additions loses each of them (the tie rounds to even, 1.0); eight chains would keep
    // ~2^-47 of them and round up. RouterScores must take this row the sequential way.
    std::vector<float> tie(cols, std::ldexp(1.0f, -60));
    tie[0] = 1.0f;
    tie[1] = std::ldexp(1.0f, -8);
    rows.push_back(tie);
    // Sums just below and at 2^(L + 53): L = -7 for 1.0 (lsb 2^-7); 2^46 is 2^53 lsbs.
    for (const double top : {std::ldexp(1.0, 45) * 1.9921875, std::ldexp(1.0, 46)}) {
      std::vector<float> r(cols, 0.0f);
      r[0] = 1.0f;
      r[1] = static_cast<float>(top);
      r[cols - 1] = 1.0f;
      rows.push_back(r);
    }
    std::string bytes;
    for (const auto& r : rows) bytes += qt::Bf16Bytes(r);
    auto got = quench::RouterScores(reinterpret_cast<const uint8_t*>(bytes.data()), DType::kBF16,
                                    rows.size(), cols, "router");
    REQUIRE(got.ok());
    for (size_t i = 0; i < rows.size(); ++i) {
      CAPTURE(i);
      double sum = 0;
      for (uint64_t c = 0; c < cols; ++c) {
        uint16_t h;
        std::memcpy(&h, bytes.data() + 2 * (i * cols + c), 2);
        uint32_t f32 = static_cast<uint32_t>(h & 0x7FFF) << 16;
        float v;
        std::memcpy(&v, &f32, 4);
        sum += v;
      }
      CHECK(got.value()[i] == Bf16Nearest(sum));
    }
    // A NaN in the tail lanes is refused, naming its row, as before.
    std::vector<float> bad = random_row(-8, -2, 0.0);
    bad[cols - 2] = std::nanf("");
    const std::string b = qt::Bf16Bytes(rows[0]) + qt::Bf16Bytes(bad);
    auto refused = quench::RouterScores(reinterpret_cast<const uint8_t*>(b.data()), DType::kBF16,
                                        2, cols, "router");
    REQUIRE_FALSE(refused.ok());
    CHECK(refused.status().message().find("non-finite weight at row 1") != std::string::npos);
  }
}
