// Expert pruning (--prune-experts) of 3-D compressed-tensors sources: fused MoE expert stacks
// stored compressed (pack-quantized with and without zero points, NVFP4 with global scales,
// FP8 block), each stack's codes and every tensor read with them sliced to the kept experts.
// Expected bytes: data/golden/prune_ct3d_manifest.json (scripts/make_golden_prune_ct3d.py):
// the reference's decode of the source to BF16, then its MagnitudeExpertPruner through
// convert_checkpoint (<SCHEME>/BF16: stacks 3-D, kept experts only), then model_free_ptq
// (<SCHEME>/W4A16: split per expert). The reference cannot prune the compressed source itself
// (its exact failures are checked below); the kept experts it chooses on the decoded model
// are the ones it chooses from the compressed source's router (the generator checks both).
#include <doctest/doctest.h>

#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "ct_cases.h"
#include "format/json.h"
#include "pipeline/resume.h"
#include "plan/expert_prune.h"
#include "quench/convert.h"
#include "quench/ct_weight.h"
#include "test_util.h"
#include "verify/verify.h"

namespace quench::testing {
namespace {

constexpr const char* kManifest = "prune_ct3d_manifest.json";

Result<ConvertSummary> Prune(const CtCase& k, const fs::path& dst, uint64_t chunk_bytes = 0) {
  return Convert(PrunedCaseOptions(k, dst, chunk_bytes));
}

}  // namespace

TEST_SUITE("expert_prune_ct3d") {
  TEST_CASE("pruned 3-D compressed sources equal the reference's decoded-then-pruned model") {
    const std::vector<CtCase> cases = CtCases(kManifest);
    REQUIRE(cases.size() == 8);  // W4A16, W4A16_ASYM, NVFP4A16, FP8_BLOCK x BF16, W4A16
    for (const CtCase& k : cases) {
      CAPTURE(k.name);
      TempDir tmp;
      auto r = Prune(k, tmp / "out");
      REQUIRE_MESSAGE(r.ok(), r.status().ToString());
      CheckTensors(*k.tensors, tmp / "out");
      CheckConfig(k.config, tmp / "out" / "config.json");
      // BF16 keeps each stack 3-D (2 of 4 experts), as convert_checkpoint writes it.
      if (k.scheme == "BF16") {
        const JsonValue* w = k.tensors->Find("model.layers.1.mlp.experts.gate_up_proj.weight");
        REQUIRE(w != nullptr);
        CHECK(w->Find("shape")->as_array()[0].as_uint() == 2);
      } else {
        CHECK(k.tensors->Find("model.layers.1.mlp.experts.1.gate_proj.weight_packed") != nullptr);
        CHECK(k.tensors->Find("model.layers.1.mlp.experts.2.gate_proj.weight_packed") == nullptr);
      }
    }
  }

  TEST_CASE("the kept experts are the reference's MagnitudeExpertPruner choice") {
    const JsonValue& m = CtManifest(kManifest);
    const std::map<std::string, std::vector<uint32_t>> want = {
        {"model.layers.0.mlp.gate.weight", {2, 3}}, {"model.layers.1.mlp.gate.weight", {0, 2}}};
    std::map<std::string, std::vector<uint32_t>> ref;
    for (const auto& [router, kept] : m.Find("retained")->as_object()) {
      for (const JsonValue& e : kept.as_array())
        ref[router].push_back(static_cast<uint32_t>(e.as_uint()));
    }
    REQUIRE(ref == want);  // layer 1 keeps experts that are not neighbours: gathered slices
    for (const CtCase& k : CtCases(kManifest)) {
      CAPTURE(k.name);
      TempDir tmp;
      auto plan = MakePlan(PrunedCaseOptions(k, tmp / "out"));
      REQUIRE_MESSAGE(plan.ok(), plan.status().ToString());
      REQUIRE(plan->expert_prune.has_value());
      std::map<std::string, std::vector<uint32_t>> got;
      for (const PlannedExpertLayer& l : plan->expert_prune->layers) got[l.router] = l.kept;
      CHECK(got == want);
    }
  }

  TEST_CASE("the reference on the compressed source itself: its exact failures") {
    // MagnitudeExpertPruner index_select's every tensor its expert pattern matches, the [3]
    // weight_shape included (IndexError), or takes a [E, 1] global scale for a 2-D layout
    // (ValueError); on FP8 block stacks (no weight_shape) it prunes, and the dequantizer then
    // fails on the 3-D result as it does on any 3-D block-scaled stack.
    const std::map<std::string, std::string> want = {
        {"W4A16", "IndexError: index out of range in self"},
        {"W4A16_ASYM", "IndexError: index out of range in self"},
        {"NVFP4A16",
         "ValueError: Expert tensor model.layers.0.mlp.experts.down_proj.weight_global_scale "
         "appears to be 2D but could not extract expert index from tensor name. Expected a "
         "numeric segment following an 'expert'-containing segment (e.g. experts.3.weight)"},
        {"FP8_BLOCK", "pruned; then RuntimeError: shape '[0, 128, 1, 128]' is invalid for input "
                      "of size 32768"},
    };
    std::map<std::string, std::string> got;
    for (const JsonValue& c : CtManifest(kManifest).Find("cases")->as_array()) {
      const std::string name = c.Find("name")->as_string();
      const std::string scheme = name.substr(0, name.find('/'));
      const JsonValue& r = *c.Find("reference_on_compressed");
      if (const JsonValue* e = r.Find("error")) {
        got[scheme] = e->as_string();
      } else if (const JsonValue* e = r.Find("dequantize_error")) {
        got[scheme] = "pruned; then " + e->as_string();
      } else {
        got[scheme] = "ok";
      }
    }
    CHECK(got == want);
  }

  TEST_CASE("small chunks, inside a kept expert and across gathered experts, change no byte") {
    for (const CtCase& k : CtCases(kManifest)) {
      if (k.name != "W4A16_ASYM/BF16" && k.name != "NVFP4A16/BF16" && k.name != "FP8_BLOCK/BF16") {
        continue;
      }
      CAPTURE(k.name);
      for (uint64_t rows : {3, 200}) {  // 128 columns; 256 rows per gate_up expert
        CAPTURE(rows);
        TempDir tmp;
        auto r = Prune(k, tmp / "out", rows * 128 * 2);
        REQUIRE_MESSAGE(r.ok(), r.status().ToString());
        CheckTensors(*k.tensors, tmp / "out");
      }
    }
  }

  TEST_CASE("--dry-run: kept experts and the bytes not read, slices of every stack tensor") {
    for (const CtCase& k : CtCases(kManifest)) {
      if (k.name != "W4A16_ASYM/BF16" && k.name != "W4A16_ASYM/W4A16") continue;
      CAPTURE(k.name);
      TempDir tmp;
      auto plan = MakePlan(PrunedCaseOptions(k, tmp / "out"));
      REQUIRE_MESSAGE(plan.ok(), plan.status().ToString());
      // Half of every expert stack tensor of both layers (codes, scales, zero points) is not
      // read, and nothing else: the routers' and the bias's pruned rows too.
      auto folder = LoadModelFolder(k.source);
      REQUIRE(folder.ok());
      uint64_t want = 0;
      for (const TensorInfo& t : folder->shards[0].header.tensors) {
        const bool stack = t.name.find(".experts.") != std::string::npos && t.shape.size() == 3;
        const bool router = t.name.find(".mlp.gate.") != std::string::npos;
        if (stack || router) want += t.nbytes() / 2;
      }
      CHECK(plan->expert_prune->bytes_removed == want);
      // Split per expert, the pruned experts' pieces (2 layers x 2 experts x 3) are gone.
      CHECK(plan->expert_prune->tensors_removed == (k.scheme == "BF16" ? 0u : 12u));
      CHECK(!fs::exists(tmp / "out"));
      const RunResult d = RunQuench({"convert", k.source.string(), (tmp / "out").string(),
                                     "--scheme", k.scheme, "--prune-experts", "0.5", "--dry-run"});
      CAPTURE(d.err);
      CHECK(d.exit_code == 0);
      CHECK(d.out.find("model.layers.0.mlp.gate.weight: keeps 2 of 4 experts: 2,3") !=
            std::string::npos);
      CHECK(d.out.find("model.layers.1.mlp.gate.weight: keeps 2 of 4 experts: 0,2") !=
            std::string::npos);
      CHECK(!fs::exists(tmp / "out"));
    }
  }

  TEST_CASE("the resume fingerprint holds the kept experts whose scale slices a stack reads") {
    for (const CtCase& k : CtCases(kManifest)) {
      if (k.name != "W4A16_ASYM/BF16") continue;
      TempDir tmp;
      ConvertOptions o;
      o.src = k.source;
      o.dst = tmp / "out";
      o.scheme = k.scheme;
      o.prune_experts = 0.5;
      auto plan = MakePlan(o);
      REQUIRE(plan.ok());
      const std::string before = ShardFingerprint(*plan, 0);
      size_t stacks = 0;
      for (PlannedTensor& t : plan->tensors) {
        if (!t.source_scale || !t.source_scale->ct || t.source_scale->ct->kept.empty()) continue;
        // Another kept set, the codes' ranges unchanged: other scales, other bytes.
        auto w = std::make_shared<CtWeight>(*t.source_scale->ct);
        w->kept = {0, 1};
        t.source_scale->ct = w;
        ++stacks;
      }
      CHECK(stacks == 4);  // two layers' gate_up and down stacks
      CHECK(ShardFingerprint(*plan, 0) != before);
    }
  }

  TEST_CASE("a stack with g_idx (activation order) pruned: each kept expert decodes as 2-D") {
    // Four 2-D pack-quantized weights with g_idx of data/golden/ctsrc/gidx (k_proj and v_proj
    // of layers 0 and 1, [128, 256]) stacked as compressed-tensors stores a 3-D weight, under a
    // router whose rows have L1 norms in the ratio 3 : 1 : 4 : 2: 0.5 keeps experts 0 and 2.
    // Expected: the kept experts' 2-D decodes (checked here against the golden manifest's).
    const fs::path gidx = DataDir() / "golden" / "ctsrc" / "gidx";
    TempDir tmp;
    REQUIRE(ConvertSource(gidx, tmp / "flat", "BF16", {}).ok());
    bool tied = false;
    for (const CtCase& k : CtCases("ct_manifest.json")) {
      if (k.name != "ctsrc/gidx/BF16") continue;
      CheckTensors(*k.tensors, tmp / "flat");
      tied = true;
    }
    REQUIRE(tied);
    const std::vector<std::string> modules = {
        "model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj",
        "model.layers.1.self_attn.k_proj", "model.layers.1.self_attn.v_proj"};
    const auto src = LoadAll(gidx);
    auto bytes = [](const std::map<std::string, Loaded>& all, const std::string& name) {
      auto [l, t] = FindTensor(all, name);
      REQUIRE(t != nullptr);
      return std::string(reinterpret_cast<const char*>(l->Data(*t)), t->nbytes());
    };
    const std::string stack = "model.layers.0.mlp.experts.down_proj";
    std::vector<RawTensor> t;
    for (const auto& [param, dtype, shape] :
         std::vector<std::tuple<std::string, DType, std::vector<uint64_t>>>{
             {"weight_packed", DType::kI32, {4, 128, 32}},
             {"weight_scale", DType::kBF16, {4, 128, 2}},
             {"weight_g_idx", DType::kI32, {4, 256}}}) {
      std::string b;
      for (const std::string& m : modules) b += bytes(src, m + "." + param);
      t.push_back({stack + "." + param, dtype, shape, b});
    }
    std::string shape(24, '\0');
    for (int i = 0; i < 3; ++i) shape[8 * i] = static_cast<char>(std::vector<int>{4, 128, 0}[i]);
    shape[16] = 0, shape[17] = 1;  // 256, little-endian
    t.push_back({stack + ".weight_shape", DType::kI64, {3}, shape});
    std::vector<float> router(4 * 128);
    const float mag[4] = {3, 1, 4, 2};
    for (size_t i = 0; i < router.size(); ++i) router[i] = (i % 2 ? -1.0f : 1.0f) * mag[i / 128];
    t.push_back({"model.layers.0.mlp.gate.weight", DType::kBF16, {4, 128}, Bf16Bytes(router)});
    fs::create_directories(tmp / "src");
    WriteShard(tmp / "src" / "model.safetensors", t);
    auto cfg = ReadJsonFile((gidx / "config.json").string());
    REQUIRE(cfg.ok());
    JsonValue q = *cfg->Find("quantization_config");
    JsonValue ignore = JsonValue::MakeArray();
    ignore.Push("re:.*mlp\\.gate$");
    q.Set("ignore", ignore);
    JsonValue c = JsonValue::MakeObject();
    c.Set("hidden_size", JsonValue(128));
    c.Set("num_experts", JsonValue(4));
    c.Set("num_experts_per_tok", JsonValue(1));
    c.Set("quantization_config", q);
    WriteBytes(tmp / "src" / "config.json", DumpCompactJson(c));
    ConvertOptions o;
    o.src = tmp / "src";
    o.dst = tmp / "out";
    o.scheme = "BF16";
    o.prune_experts = 0.5;
    o.chunk_bytes = 100 * 256 * 2;  // chunks inside and across the kept experts
    auto r = Convert(o);
    REQUIRE_MESSAGE(r.ok(), r.status().ToString());
    const auto out = LoadAll(tmp / "out");
    const auto flat = LoadAll(tmp / "flat");
    auto [ol, ot] = FindTensor(out, stack + ".weight");
    REQUIRE(ot != nullptr);
    CHECK(ot->shape == std::vector<uint64_t>{2, 128, 256});
    CHECK(bytes(out, stack + ".weight") ==
          bytes(flat, modules[0] + ".weight") + bytes(flat, modules[2] + ".weight"));
    VerifyClean(tmp / "out", tmp / "src");
    // Split per expert (W4A16): verify against the source.
    o.dst = tmp / "w4";
    o.scheme = "W4A16";
    auto w = Convert(o);
    REQUIRE_MESSAGE(w.ok(), w.status().ToString());
    CHECK(w->tensors_quantized == 2);
    VerifyClean(tmp / "w4", tmp / "src");
  }

  TEST_CASE("verify DST SRC passes on every pruned output and finds a changed kept expert") {
    for (const CtCase& k : CtCases(kManifest)) {
      CAPTURE(k.name);
      TempDir tmp;
      REQUIRE(Prune(k, tmp / "out").ok());
      const VerifyReport r = VerifyClean(tmp / "out", k.source);
      CHECK(r.tensors_decoded + r.modules_quantized > 0);
    }
    // Expert 1 of layer 1's decoded down_proj stack (source expert 2), one bit off.
    for (const CtCase& k : CtCases(kManifest)) {
      if (k.name != "NVFP4A16/BF16") continue;
      TempDir tmp;
      REQUIRE(Prune(k, tmp / "out").ok());
      FlipTensorBit(tmp / "out", "model.layers.1.mlp.experts.down_proj.weight",
                    [](const TensorInfo& t) { return t.begin + t.nbytes() / 2 + 7; });
      VerifyOptions v;
      v.dst = tmp / "out";
      v.src = k.source;
      auto r = Verify(v);
      REQUIRE(r.ok());
      REQUIRE(!r->problems.empty());
      CHECK(r->problems.front().tensor == "model.layers.1.mlp.experts.down_proj.weight");
    }
  }
}

}  // namespace quench::testing
