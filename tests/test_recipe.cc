// Recipes and mixed precision: compressed-tensors QuantizationConfig JSON and llm-compressor
// YAML recipes, vLLM's target-resolution order for overlapping targets, fused-set
// consistency, refusals, and warnings for entries that match nothing.
#include <doctest/doctest.h>

#include "format/json.h"
#include "plan/recipe.h"
#include "quench/convert.h"
#include "test_util.h"

namespace qt = quench::testing;
namespace fs = std::filesystem;
using quench::DType;

namespace {

const fs::path kTiny = qt::DataDir() / "tiny-llama";

struct Run {
  quench::Result<quench::ConvertSummary> result;
  std::map<std::string, qt::Loaded> out;
  quench::JsonValue config;
};

Run ConvertWithRecipe(const qt::TempDir& tmp, const std::string& name, const std::string& text,
                      std::vector<std::string> ignore = {}) {
  qt::WriteBytes(tmp / name, text);
  quench::ConvertOptions o;
  o.src = kTiny;
  o.dst = tmp / "out";
  o.recipe = tmp / name;
  o.ignore = std::move(ignore);
  Run r{quench::Convert(o), {}, {}};
  if (r.result.ok()) {
    r.out = qt::LoadAll(o.dst);
    auto cfg = quench::ReadJsonFile((o.dst / "config.json").string());
    REQUIRE(cfg.ok());
    r.config = *cfg->Find("quantization_config");
  }
  return r;
}

DType DtypeOf(const Run& r, const std::string& name) {
  auto [l, t] = qt::FindTensor(r.out, name);
  REQUIRE_MESSAGE(t != nullptr, name);
  return t->dtype;
}

bool Has(const Run& r, const std::string& name) {
  return qt::FindTensor(r.out, name).second != nullptr;
}

}  // namespace

TEST_SUITE("recipe") {
  TEST_CASE("QuantizationConfig JSON: FP8 block attention and int4 group-64 MLP in one run") {
    qt::TempDir tmp;
    auto r = ConvertWithRecipe(tmp, "recipe.json", R"({
      "config_groups": {
        "attention": {
          "targets": ["re:.*self_attn\\..*"],
          "weights": {"num_bits": 8, "type": "float", "strategy": "block",
                      "block_structure": [128, 128], "symmetric": true, "dynamic": false},
          "input_activations": {"num_bits": 8, "type": "float", "strategy": "group",
                                "group_size": 128, "dynamic": true}
        },
        "mlp": {
          "targets": ["re:.*mlp\\..*"],
          "weights": {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 64,
                      "symmetric": true, "dynamic": false}
        }
      },
      "ignore": ["lm_head"]
    })");
    REQUIRE_MESSAGE(r.result.ok(), r.result.status().ToString());
    for (int l = 0; l < 2; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      for (const char* m :
           {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"}) {
        CHECK(DtypeOf(r, p + m + ".weight") == DType::kF8E4M3);
      }
      for (const char* m : {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}) {
        CHECK(DtypeOf(r, p + m + ".weight_packed") == DType::kI32);
        CHECK(Has(r, p + m + ".weight_shape"));
      }
    }
    CHECK(r.config.Find("format")->as_string() == "mixed-precision");
    const auto* groups = r.config.Find("config_groups");
    CHECK(groups->Find("attention")->Find("format")->as_string() == "float-quantized");
    CHECK(groups->Find("attention")->Find("weights")->Find("strategy")->as_string() == "block");
    const auto* mlp = groups->Find("mlp");
    CHECK(mlp->Find("format")->as_string() == "pack-quantized");
    CHECK(mlp->Find("weights")->Find("group_size")->as_int() == 64);
    CHECK(mlp->Find("weights")->Find("num_bits")->as_int() == 4);
    CHECK(mlp->Find("input_activations")->is_null());
    CHECK(mlp->Find("targets")->as_array()[0].as_string() == "re:.*mlp\\..*");
  }

  TEST_CASE("llm-compressor YAML recipe with a {preset: targets} scheme map") {
    qt::TempDir tmp;
    auto r = ConvertWithRecipe(tmp, "recipe.yaml", R"(
quant_stage:
  quant_modifiers:
    QuantizationModifier:
      ignore: ["lm_head", "re:.*embed_tokens$"]
      scheme:
        NVFP4A16: ["re:.*mlp\\..*"]
        FP8_DYNAMIC: ["re:.*self_attn\\..*"]
)");
    REQUIRE_MESSAGE(r.result.ok(), r.result.status().ToString());
    CHECK(DtypeOf(r, "model.layers.0.mlp.up_proj.weight_packed") == DType::kU8);
    CHECK(Has(r, "model.layers.0.mlp.up_proj.weight_global_scale"));
    CHECK(DtypeOf(r, "model.layers.1.self_attn.v_proj.weight") == DType::kF8E4M3);
    CHECK(r.config.Find("config_groups")->Find("NVFP4A16") != nullptr);
    CHECK(r.config.Find("config_groups")->Find("FP8_DYNAMIC") != nullptr);
    std::vector<std::string> ignore;
    for (const auto& v : r.config.Find("ignore")->as_array()) ignore.push_back(v.as_string());
    CHECK(ignore == std::vector<std::string>{"lm_head", "re:.*embed_tokens$"});
  }

  TEST_CASE("overlapping targets resolve as vLLM resolves them") {
    qt::TempDir tmp;
    // vLLM: names and regexes before "Linear" whatever the group order; among those, groups
    // in config.json order (sorted keys, so "a_specific" before "z_layer0"), targets in order.
    auto r = ConvertWithRecipe(tmp, "recipe.json", R"({
      "config_groups": {
        "z_layer0": {"targets": ["re:model\\.layers\\.0\\..*"], "scheme": "W8A8"},
        "b_everything": {"targets": ["Linear"], "scheme": "FP8_DYNAMIC"},
        "a_specific": {"targets": ["re:.*o_proj$"], "scheme": "MXFP8A16"}
      }
    })");
    REQUIRE_MESSAGE(r.result.ok(), r.result.status().ToString());
    // o_proj of layer 0 matches both regexes: a_specific comes first in vLLM's order.
    CHECK(DtypeOf(r, "model.layers.0.self_attn.o_proj.weight_scale") == DType::kU8);
    // Other layer-0 modules: the layer-0 regex beats "Linear".
    CHECK(DtypeOf(r, "model.layers.0.mlp.up_proj.weight") == DType::kI8);
    // Layer 1: o_proj by its regex, the rest by "Linear".
    CHECK(DtypeOf(r, "model.layers.1.self_attn.o_proj.weight_scale") == DType::kU8);
    CHECK(DtypeOf(r, "model.layers.1.mlp.up_proj.weight") == DType::kF8E4M3);
  }

  TEST_CASE("a fused set split across schemes, or partly ignored, is refused") {
    qt::TempDir tmp;
    auto r = ConvertWithRecipe(tmp, "recipe.json", R"({
      "config_groups": {
        "q": {"targets": ["re:.*q_proj$"], "scheme": "W8A8"},
        "rest": {"targets": ["Linear"], "scheme": "FP8_DYNAMIC"}
      }
    })");
    REQUIRE_FALSE(r.result.ok());
    CHECK(r.result.status().message().find("fused set") != std::string::npos);
    CHECK(r.result.status().message().find("q_proj") != std::string::npos);
    CHECK_FALSE(fs::exists(tmp / "out"));
    auto partly = ConvertWithRecipe(
        tmp, "r2.yaml", "QuantizationModifier:\n  scheme: FP8_DYNAMIC\n", {"re:.*up_proj$"});
    REQUIRE_FALSE(partly.result.ok());
    CHECK(partly.result.status().message().find("up_proj") != std::string::npos);
    CHECK(partly.result.status().message().find("gate_proj") != std::string::npos);
  }

  TEST_CASE("recipes that need calibration or are malformed are refused with the reason") {
    struct Case {
      const char* file;
      const char* text;
      const char* message;
    };
    const Case cases[] = {
        {"kv.json",
         R"({"config_groups": {"g": "FP8_DYNAMIC"}, )"
         R"("kv_cache_scheme": {"num_bits": 8, "type": "float"}})",
         "kv_cache_scheme needs k/v scales"},
        {"logeq.yaml",
         "stage:\n  mods:\n    LogarithmicEqualizationModifier:\n      mappings: []\n",
         "LogarithmicEqualizationModifier needs calibration"},
        // SparseGPT then GPTQ compose (tests/test_recipe_compose.cc), but share one dampening.
        {"gptq_sgpt.yaml",
         "stage:\n  mods:\n    SparseGPTModifier:\n      sparsity: 0.5\n      mask_structure: "
         "'2:4'\n      dampening_frac: 0.1\n    GPTQModifier:\n      scheme: W4A16\n",
         "SparseGPTModifier and GPTQModifier use different dampening_frac (0.100000 and 0.010000)"},
        {"sgpt_alone.yaml", "SparseGPTModifier:\n  sparsity: 0.5\n  mask_structure: '2:4'\n",
         "without a QuantizationModifier"},
        {"static.json",
         R"({"config_groups": {"g": {"targets": ["Linear"], )"
         R"("weights": {"num_bits": 8, "type": "float", "strategy": "channel"}, )"
         R"("input_activations": {"num_bits": 8, "type": "float", "strategy": "tensor", )"
         R"("dynamic": false}}}})",
         "static input_activations need activation statistics"},
        {"nvfp4.yaml", "QuantizationModifier:\n  scheme: NVFP4\n",
         "cannot be applied without calibration"},
        {"unknown.yaml", "QuantizationModifier:\n  scheme: FP5\n", "unknown scheme 'FP5'"},
        {"nomatch.json",
         R"({"config_groups": {"g": {"targets": ["Linear"], )"
         R"("weights": {"num_bits": 6, "type": "float", "strategy": "channel"}}}})",
         "no data-free scheme matches"},
        {"broken.yaml", "QuantizationModifier: [unclosed\n", "not valid YAML"},
        {"empty.json", "{}", "neither a QuantizationConfig"},
    };
    for (const Case& c : cases) {
      CAPTURE(c.file);
      qt::TempDir tmp;
      auto r = ConvertWithRecipe(tmp, c.file, c.text);
      REQUIRE_FALSE(r.result.ok());
      CHECK(r.result.status().message().find(c.message) != std::string::npos);
      CHECK(r.result.status().message().find(c.file) != std::string::npos);
      CHECK_FALSE(fs::exists(tmp / "out"));
    }
  }

  TEST_CASE("CLI: --recipe excludes --scheme; entries that match nothing are warned about") {
    qt::TempDir tmp;
    qt::WriteBytes(tmp / "r.yaml",
                   "QuantizationModifier:\n  scheme: FP8_DYNAMIC\n  targets: [Linear, "
                   "re:.*nonexistent$]\n  ignore: [lm_head, re:.*typo_proj$]\n");
    auto both = qt::RunQuench({"convert", kTiny.string(), (tmp / "o").string(), "--recipe",
                               (tmp / "r.yaml").string(), "--scheme", "W8A8"});
    CHECK(both.exit_code == 2);
    auto ok = qt::RunQuench({"convert", kTiny.string(), (tmp / "o").string(), "--recipe",
                             (tmp / "r.yaml").string()});
    CHECK(ok.exit_code == 0);
    CHECK(ok.err.find("'re:.*typo_proj$' matches no") != std::string::npos);
    CHECK(ok.err.find("'re:.*nonexistent$' selects no weight") != std::string::npos);
  }

  TEST_CASE("YAML scalars are typed like YAML 1.2's core schema") {
    auto v = quench::ParseYaml("t", "a: 1\nb: 1.5\nc: true\nd: null\ne: '12'\nf: [x, 2]\n");
    REQUIRE(v.ok());
    CHECK(v->Find("a")->as_int() == 1);
    CHECK(v->Find("b")->as_double() == 1.5);
    CHECK(v->Find("c")->as_bool());
    CHECK(v->Find("d")->is_null());
    CHECK(v->Find("e")->as_string() == "12");
    CHECK(v->Find("f")->as_array()[1].as_int() == 2);
  }
}
