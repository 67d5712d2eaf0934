// Recipes with AWQModifier, SmoothQuantModifier and the expert-pruning entries: each runs as the
// flags that say the same (the same output bytes), a recipe's own mappings resolve as the
// registry's and are refused at planning when they cannot apply, flags that contradict a recipe
// are refused, and the quantization_config of an AWQ and a SmoothQuant run equals, key for key,
// what llm-compressor 0.14.0.1's oneshot writes for the same recipe
// (scripts/make_golden_oneshot_smooth.py -> data/golden/oneshot-smooth/).
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "format/json.h"
#include "plan_fingerprint.h"
#include "quench/convert.h"
#include "recipe_test_util.h"
#include "test_util.h"

namespace quench::testing {
namespace {

const fs::path kSmoothStats = DataDir() / "golden" / "smoothquant" / "stats";

// quantization_config of `a` and `b` equal, the one config group compared by value (a recipe
// names it as it likes, flags after the preset).
void CheckSameConfig(const fs::path& a, const fs::path& b) {
  JsonValue qa = QuantConfig(a), qb = QuantConfig(b);
  for (const auto& [k, v] : qa.as_object()) {
    CAPTURE(k);
    REQUIRE(qb.Find(k) != nullptr);
    if (k == "config_groups") {
      REQUIRE(v.as_object().size() == 1);
      REQUIRE(qb.Find(k)->as_object().size() == 1);
      CHECK(DumpCompactJson(v.as_object()[0].second) ==
            DumpCompactJson(qb.Find(k)->as_object()[0].second));
    } else {
      CHECK(DumpCompactJson(v) == DumpCompactJson(*qb.Find(k)));
    }
  }
  CHECK(qa.as_object().size() == qb.as_object().size());
}

const char* kAwqQuant =
    "    QuantizationModifier:\n"
    "      ignore: [\"lm_head\"]\n"
    "      config_groups:\n"
    "        group_0:\n"
    "          targets: [\"Linear\"]\n"
    "          weights: {num_bits: 4, type: int, symmetric: false, strategy: group,"
    " group_size: 64}\n";

TEST_CASE("AWQModifier recipes run as the flags that say the same, byte for byte") {
  TempDir tmp;
  const std::string stats = kSmoothStats.string();
  auto flags = Quench({"convert", TinyLlama(), (tmp / "flags").string(), "--scheme", "W4A16",
                       "--group-size", "64", "--asymmetric", "--ignore", "lm_head", "--algorithm",
                       "awq", "--awq-duo-scaling", "both", "--awq-n-grid", "10", "--stats", stats});
  REQUIRE_MESSAGE(flags.exit_code == 0, flags.err);
  // AWQModifier then a QuantizationModifier (0.14.0.1's form); offload_device is ignored.
  WriteBytes(tmp / "awq.yaml", std::string("quant_stage:\n  quant_modifiers:\n"
                                           "    AWQModifier:\n      duo_scaling: both\n"
                                           "      n_grid: 10\n      offload_device: cpu\n") +
                                   kAwqQuant);
  // The deprecated shim's form: the AWQModifier carries the quantization keys itself.
  WriteBytes(tmp / "shim.yaml",
             "AWQModifier:\n  duo_scaling: both\n  n_grid: 10\n  ignore: [lm_head]\n"
             "  config_groups:\n    group_0:\n      targets: [Linear]\n"
             "      weights: {num_bits: 4, type: int, symmetric: false, group_size: 64}\n");
  // The registry's Llama mappings written out in the recipe (AWQMapping dicts).
  WriteBytes(tmp / "mapped.yaml",
             std::string("quant_stage:\n  quant_modifiers:\n    AWQModifier:\n"
                         "      duo_scaling: both\n      n_grid: 10\n      mappings:\n"
                         "        - smooth_layer: re:.*input_layernorm$\n"
                         "          balance_layers: [\"re:.*q_proj$\", \"re:.*k_proj$\", "
                         "\"re:.*v_proj$\"]\n"
                         "        - {smooth_layer: \"re:.*v_proj$\", balance_layers: "
                         "[\"re:.*o_proj$\"]}\n"
                         "        - smooth_layer: re:.*post_attention_layernorm$\n"
                         "          balance_layers: [\"re:.*gate_proj$\", \"re:.*up_proj$\"]\n"
                         "        - smooth_layer: re:.*up_proj$\n"
                         "          balance_layers: [\"re:.*down_proj$\"]\n") +
                 kAwqQuant);
  for (const char* recipe : {"awq.yaml", "shim.yaml", "mapped.yaml"}) {
    CAPTURE(recipe);
    const fs::path out = tmp / (std::string(recipe) + ".out");
    auto r = RunQuench({"convert", TinyLlama(), out.string(), "--recipe",
                        (tmp / recipe).string(), "--stats", stats, "--dry-run"});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    CHECK(r.err.find("AWQ (duo_scaling both, n_grid 10") != std::string::npos);
    CHECK((r.err.find("offload_device ignored") != std::string::npos) ==
          (std::string(recipe) == "awq.yaml"));
    auto c = Quench({"convert", TinyLlama(), out.string(), "--recipe", (tmp / recipe).string(),
                     "--stats", stats});
    REQUIRE_MESSAGE(c.exit_code == 0, c.err);
    CheckSameShards(out, tmp / "flags");
    CheckSameConfig(out, tmp / "flags");
  }
  // Flags may repeat the recipe, not contradict it.
  auto same = Quench({"convert", TinyLlama(), (tmp / "same").string(), "--recipe",
                      (tmp / "awq.yaml").string(), "--stats", stats, "--awq-n-grid", "10",
                      "--algorithm", "awq", "--dry-run"});
  CHECK_MESSAGE(same.exit_code == 0, same.err);
  for (const std::vector<std::string>& extra :
       {std::vector<std::string>{"--awq-n-grid", "5"}, {"--awq-duo-scaling", "false"},
        {"--algorithm", "gptq"}}) {
    CAPTURE(extra[0]);
    std::vector<std::string> args = {"convert", TinyLlama(), (tmp / "o").string(), "--recipe",
                                     (tmp / "awq.yaml").string(), "--stats", stats};
    args.insert(args.end(), extra.begin(), extra.end());
    fs::remove_all(tmp / "o");
    auto r = Quench(args);
    CHECK(r.exit_code == 2);
    CHECK(r.err.find("its AWQModifier sets what " + extra[0]) != std::string::npos);
    CHECK(r.err.find("give one or the other") != std::string::npos);
    CHECK_FALSE(fs::exists(tmp / "o"));
  }
}

TEST_CASE("SmoothQuantModifier recipes run as the flags that say the same, byte for byte") {
  TempDir tmp;
  const std::string stats = kSmoothStats.string();
  auto flags = Quench({"convert", TinyLlama(), (tmp / "flags").string(), "--scheme", "W8A8",
                       "--ignore", "lm_head", "--algorithm", "smoothquant",
                       "--smoothing-strength", "0.8", "--stats", stats});
  REQUIRE_MESSAGE(flags.exit_code == 0, flags.err);
  const std::string quant =
      "    QuantizationModifier:\n      scheme: W8A8\n      targets: Linear\n"
      "      ignore: [\"lm_head\"]\n";
  // The golden recipe oneshot ran; the same with the registry's mappings in SmoothQuant's
  // list form ([[balance...], smooth]).
  fs::copy_file(kOneshot / "smoothquant_w8a8.yaml", tmp / "sq.yaml");
  WriteBytes(
      tmp / "mapped.yaml",
      "quant_stage:\n  quant_modifiers:\n    SmoothQuantModifier:\n"
      "      smoothing_strength: 0.8\n      mappings:\n"
      "        - [[\"re:.*q_proj\", \"re:.*k_proj\", \"re:.*v_proj\"], "
      "\"re:.*input_layernorm\"]\n"
      "        - [[\"re:.*gate_proj\", \"re:.*up_proj\"], \"re:.*post_attention_layernorm\"]\n" +
          quant);
  for (const char* recipe : {"sq.yaml", "mapped.yaml"}) {
    CAPTURE(recipe);
    const fs::path out = tmp / (std::string(recipe) + ".out");
    auto c = Quench({"convert", TinyLlama(), out.string(), "--recipe", (tmp / recipe).string(),
                     "--stats", stats});
    REQUIRE_MESSAGE(c.exit_code == 0, c.err);
    CheckSameShards(out, tmp / "flags");
    CHECK(ReadBytes(out / "config.json") == ReadBytes(tmp / "flags" / "config.json"));
  }
  // One mapping of the recipe's own; SmoothQuant's ignore skipping a mapping whole.
  const std::string top_quant =
      "QuantizationModifier:\n  scheme: W8A8\n  targets: Linear\n  ignore: [\"lm_head\"]\n";
  WriteBytes(tmp / "one.yaml",
             "SmoothQuantModifier:\n  smoothing_strength: 0.8\n  mappings:\n"
             "    - [[\"re:.*gate_proj\", \"re:.*up_proj\"], \"re:.*post_attention_layernorm\"]\n" +
                 top_quant);
  auto one = RunQuench({"convert", TinyLlama(), (tmp / "o").string(), "--recipe",
                        (tmp / "one.yaml").string(), "--stats", stats, "--dry-run"});
  REQUIRE_MESSAGE(one.exit_code == 0, one.err);
  CHECK(one.err.find("2 mappings of LlamaForCausalLM (the recipe's), rewriting 6 tensors") !=
        std::string::npos);
  WriteBytes(tmp / "ignore.yaml",
             "SmoothQuantModifier:\n  smoothing_strength: 0.8\n"
             "  ignore: [\"re:.*layers.1.mlp.*\", \"re:.*layers.1.post_attention_layernorm\"]\n" +
                 top_quant);
  auto ig = RunQuench({"convert", TinyLlama(), (tmp / "o").string(), "--recipe",
                       (tmp / "ignore.yaml").string(), "--stats", stats, "--dry-run"});
  REQUIRE_MESSAGE(ig.exit_code == 0, ig.err);
  CHECK(ig.err.find("3 mappings of LlamaForCausalLM, rewriting 11 tensors") != std::string::npos);
  CHECK(ig.err.find("1 mapping set(s) skipped, every member in SmoothQuantModifier.ignore") !=
        std::string::npos);
  auto contra = Quench({"convert", TinyLlama(), (tmp / "o").string(), "--recipe",
                        (tmp / "sq.yaml").string(), "--stats", stats, "--smoothing-strength",
                        "0.8", "--dry-run"});
  CHECK_MESSAGE(contra.exit_code == 0, contra.err);
  auto contra2 = Quench({"convert", TinyLlama(), (tmp / "o").string(), "--recipe",
                         (tmp / "sq.yaml").string(), "--stats", stats, "--smoothing-strength",
                         "0.6"});
  CHECK(contra2.exit_code == 2);
  CHECK(contra2.err.find("its SmoothQuantModifier sets what --smoothing-strength") !=
        std::string::npos);
  CHECK_FALSE(fs::exists(tmp / "o"));
}

TEST_CASE("a recipe's mapping whose members are missing, ignored or split is refused at "
          "planning, saying why") {
  TempDir tmp;
  const std::string stats = kSmoothStats.string();
  auto awq = [](const std::string& mapping, const std::string& quant) {
    return "AWQModifier:\n  mappings:\n" + mapping + quant;
  };
  const std::string quant =
      "QuantizationModifier:\n  ignore: [lm_head]\n  config_groups:\n    g:\n"
      "      targets: [Linear]\n      weights: {num_bits: 4, type: int, group_size: 64}\n";
  struct Case {
    const char* name;
    std::string recipe;
    const char* message;
  };
  const std::vector<Case> cases = {
      {"missing",
       awq("    - {smooth_layer: \"re:.*foo_norm$\", balance_layers: [\"re:.*bar$\"]}\n", quant),
       "the recipe's mapping [re:.*bar$] <- re:.*foo_norm$ matches no module of the checkpoint"},
      {"member_missing",
       awq("    - {smooth_layer: \"re:.*input_layernorm$\", balance_layers: [\"re:.*q_proj$\", "
           "\"re:.*qq_proj$\"]}\n",
           quant),
       "has no module for re:.*qq_proj$"},
      {"ignored",
       awq("    - {smooth_layer: \"re:.*up_proj$\", balance_layers: [\"re:.*down_proj$\"]}\n",
           "QuantizationModifier:\n  ignore: [lm_head, \"re:.*layers.0.mlp.down_proj$\"]\n"
           "  config_groups:\n    g:\n      targets: [Linear]\n"
           "      weights: {num_bits: 4, type: int, group_size: 64}\n"),
       "[model.layers.0.mlp.down_proj] <- model.layers.0.mlp.up_proj: none of its balance "
       "layers is quantized"},
      {"split",
       awq("    - smooth_layer: \"re:.*post_attention_layernorm$\"\n"
           "      balance_layers: [\"re:.*mlp.gate_proj$\", \"re:.*mlp.up_proj$\", "
           "\"re:.*self_attn.o_proj$\"]\n",
           "QuantizationModifier:\n  ignore: [lm_head]\n  config_groups:\n    mlp:\n"
           "      targets: [\"re:.*mlp.*\"]\n      weights: {num_bits: 4, type: int, group_size: "
           "64}\n"
           "    attn:\n      targets: [\"re:.*self_attn.*\"]\n"
           "      weights: {num_bits: 8, type: int, strategy: channel}\n"),
       "its balance layers are split across schemes"},
      // Forms the reference refuses, or reads otherwise than written.
      {"awq_list", awq("    - [\"re:.*v_proj$\", [\"re:.*o_proj$\"]]\n", quant),
       "AWQModifier.mappings[0] must be {smooth_layer: T, balance_layers: [T, ...]}"},
      {"hook",
       awq("    - {smooth_layer: \"re:.*v_proj$\", balance_layers: [\"re:.*o_proj$\"], "
           "activation_hook_target: mlp}\n",
           quant),
       "activation_hook_target: quench reads the statistics"},
      {"sq_reversed",
       "SmoothQuantModifier:\n  mappings:\n    - [\"re:.*input_layernorm\", [\"re:.*q_proj\"]]\n"
       "QuantizationModifier:\n  scheme: W8A8\n",
       "[smooth, [balance]] reverses it"},
      {"sq_dict",
       "SmoothQuantModifier:\n  mappings:\n    - {smooth_layer: a, balance_layers: [b]}\n"
       "QuantizationModifier:\n  scheme: W8A8\n",
       "SmoothQuantModifier.mappings[0] must be [[balance layer, ...], smooth layer]"},
      {"unknown_field", "AWQModifier:\n  n_grids: 4\n" + quant,
       "AWQModifier has no field 'n_grids'"},
      {"duo", "AWQModifier:\n  duo_scaling: sometimes\n" + quant,
       "AWQModifier.duo_scaling must be true, false or \"both\""},
      // Two smoothings are refused as --algorithm awq,smoothquant is (smoothing composed with
      // SparseGPT and GPTQ: tests/test_recipe_compose.cc).
      {"awq_sq", "AWQModifier: {}\nSmoothQuantModifier: {}\nGPTQModifier:\n  scheme: W4A16\n",
       "AWQModifier with SmoothQuantModifier: one smoothing per run"},
      {"awq_alone", "AWQModifier:\n  n_grid: 4\n", "quench smooths the layers it quantizes"},
      {"awq_twice", "AWQModifier:\n  scheme: W4A16\nQuantizationModifier:\n  scheme: W4A16\n",
       "both quantize; give one"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.name);
    const fs::path recipe = tmp / (std::string(c.name) + ".yaml");
    WriteBytes(recipe, c.recipe);
    auto r = Quench({"convert", TinyLlama(), (tmp / "o").string(), "--recipe", recipe.string(),
                     "--stats", stats});
    CAPTURE(r.err);
    CHECK(r.exit_code != 0);
    CHECK(r.exit_code < 10);
    CHECK(r.err.find(c.message) != std::string::npos);
    CHECK_FALSE(fs::exists(tmp / "o"));
  }
}

TEST_CASE("AWQ's and SmoothQuant's quantization_config are llm-compressor oneshot's") {
  TempDir tmp;
  for (const char* name : {"awq_w4a16_asym_g64", "smoothquant_w8a8"}) {
    CAPTURE(name);
    const fs::path out = tmp / name;
    auto r = Quench({"convert", TinyLlama(), out.string(), "--recipe",
                     (kOneshot / (std::string(name) + ".yaml")).string(), "--stats",
                     kSmoothStats.string()});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    CheckOneshotConfig(out, std::string(name) + ".json");
  }
}

TEST_CASE("--resume does not keep a shard smoothed with other mappings or ignore entries") {
  auto fingerprint = [&](std::vector<PlanOptions::SmoothingMapping> mappings,
                         std::vector<std::string> ignore) {
    ConvertOptions o;
    o.src = DataDir() / "tiny-llama";
    o.dst = DataDir() / "unused";
    o.scheme = "W8A8";
    o.algorithm = "smoothquant";
    o.stats = kSmoothStats;
    o.smoothing_mappings = std::move(mappings);
    o.smoothing_ignore = std::move(ignore);
    return FirstShardFingerprint(o);
  };
  const PlanOptions::SmoothingMapping norm = {"re:.*input_layernorm",
                                              {"re:.*q_proj", "re:.*k_proj", "re:.*v_proj"}};
  const PlanOptions::SmoothingMapping mlp = {"re:.*post_attention_layernorm",
                                             {"re:.*gate_proj", "re:.*up_proj"}};
  const std::string registry = fingerprint({}, {});
  CHECK(fingerprint({norm, mlp}, {}) != registry);  // the same sets, told apart all the same
  CHECK(fingerprint({norm}, {}) != fingerprint({norm, mlp}, {}));
  CHECK(fingerprint({}, {"re:.*layers.1.*"}) != registry);
  CHECK(fingerprint({norm}, {}) == fingerprint({norm}, {}));
}

// Expert pruning: REAPPruningModifier (llm-compressor's) and quench's MagnitudeExpertPruner
// entry equal --prune-experts F --expert-metric reap / magnitude.
TEST_CASE("expert-pruning recipe entries run as --prune-experts with --expert-metric") {
  TempDir tmp;
  const std::string src = (DataDir() / "golden" / "xprune-2d" / "src").string();
  const std::string stats = (DataDir() / "golden" / "reap" / "xprune-2d-E0.5").string();
  struct Case {
    const char* name;
    std::string recipe;
    std::vector<std::string> flags;
  };
  const std::vector<Case> cases = {
      {"reap",
       "pruning_stage:\n  pruning_modifiers:\n    REAPPruningModifier:\n      sparsity: 0.5\n"
       "      report_path: retained.json\n"
       "quant_stage:\n  quant_modifiers:\n    QuantizationModifier:\n"
       "      scheme: FP8_DYNAMIC\n      targets: Linear\n      ignore: [lm_head]\n",
       {"--scheme", "FP8_DYNAMIC", "--ignore", "lm_head", "--prune-experts", "0.5",
        "--expert-metric", "reap", "--stats", stats}},
      {"magnitude",
       "MagnitudeExpertPruner:\n  sparsity: 0.5\n"
       "QuantizationModifier:\n  scheme: W4A16\n  targets: Linear\n  ignore: [lm_head]\n",
       {"--scheme", "W4A16", "--ignore", "lm_head", "--prune-experts", "0.5"}},
  };
  for (const Case& c : cases) {
    CAPTURE(c.name);
    const fs::path recipe = tmp / (std::string(c.name) + ".yaml");
    WriteBytes(recipe, c.recipe);
    std::vector<std::string> flags = {"convert", src,
                                      (tmp / (std::string(c.name) + ".f")).string()};
    flags.insert(flags.end(), c.flags.begin(), c.flags.end());
    auto f = Quench(flags);
    REQUIRE_MESSAGE(f.exit_code == 0, f.err);
    const fs::path out = tmp / (std::string(c.name) + ".r");
    std::vector<std::string> args = {"convert", src, out.string(), "--recipe", recipe.string()};
    if (std::string(c.name) == "reap") args.insert(args.end(), {"--stats", stats});
    auto r = Quench(args);
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    CheckSameShards(out, tmp / (std::string(c.name) + ".f"));
    CHECK(ReadBytes(out / "config.json") ==
          ReadBytes(tmp / (std::string(c.name) + ".f") / "config.json"));
    CHECK(ReadBytes(out / "model.safetensors.index.json") ==
          ReadBytes(tmp / (std::string(c.name) + ".f") / "model.safetensors.index.json"));
  }
  auto dry = RunQuench({"convert", src, (tmp / "o").string(), "--recipe",
                        (tmp / "reap.yaml").string(), "--stats", stats, "--dry-run"});
  REQUIRE_MESSAGE(dry.exit_code == 0, dry.err);
  CHECK(dry.out.find("expert pruning 0.5 by reap") != std::string::npos);
  CHECK(dry.err.find("REAPPruningModifier.report_path ignored") != std::string::npos);
  const std::string quant = "QuantizationModifier:\n  scheme: W4A16\n";
  struct Refusal {
    std::string recipe;
    std::vector<std::string> flags;
    const char* message;
  };
  const std::vector<Refusal> refusals = {
      {"REAPPruningModifier:\n  sparsity: 1.0\n" + quant, {},
       "REAPPruningModifier.sparsity must be a fraction in (0, 1)"},
      {"REAPPruningModifier:\n  sparsity: 0.5\n  ignore: [\"re:.*layers.0.*\"]\n" + quant, {},
       "REAPPruningModifier.ignore: skipping MoE layers is not built"},
      {"MagnitudeExpertPruner:\n  sparsity: 0.5\n  router_pattern: gate\n" + quant, {},
       "MagnitudeExpertPruner.router_pattern: quench finds routers"},
      {"MagnitudeExpertPruner:\n  sparsity: 0.5\nREAPPruningModifier:\n  sparsity: 0.5\n" + quant,
       {}, "both prune experts; give one"},
      {"REAPPruningModifier:\n  sparsity: 0.5\n", {},
       "--scheme none --prune-experts F --expert-metric reap --stats STATS"},
      {"MagnitudeExpertPruner:\n  sparsity: 0.5\n" + quant, {"--prune-experts", "0.25"},
       "its MagnitudeExpertPruner sets what --prune-experts says differently"},
      {"REAPPruningModifier:\n  sparsity: 0.5\n" + quant, {"--expert-metric", "magnitude"},
       "needs --stats"},  // the default metric: the recipe's reap is taken, and needs --stats
  };
  for (const Refusal& c : refusals) {
    CAPTURE(c.recipe);
    WriteBytes(tmp / "bad.yaml", c.recipe);
    std::vector<std::string> args = {"convert", src, (tmp / "o").string(), "--recipe",
                                     (tmp / "bad.yaml").string()};
    args.insert(args.end(), c.flags.begin(), c.flags.end());
    auto r = Quench(args);
    CAPTURE(r.err);
    CHECK(r.exit_code != 0);
    CHECK(r.exit_code < 10);
    CHECK(r.err.find(c.message) != std::string::npos);
    CHECK_FALSE(fs::exists(tmp / "o"));
  }
}

}  // namespace
}  // namespace quench::testing
