// llm-compressor recipes that chain calibrated modifiers (AWQModifier or SmoothQuantModifier,
// then SparseGPTModifier, then GPTQModifier or a QuantizationModifier) run as the
// `--algorithm` comma list that says the same (src/calib/composite.h): byte for byte the same
// shards as the flags, and the quantization_config llm-compressor 0.14.0.1's oneshot wrote for
// the very same recipe (data/golden/oneshot-smooth, scripts/make_golden_oneshot_smooth.py).
// Combinations quench does not run are refused with the reason.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "compose_stats.h"
#include "format/json.h"
#include "recipe_test_util.h"
#include "test_util.h"

namespace quench::testing {
namespace {

struct Case {
  const char* golden;              // data/golden/oneshot-smooth/NAME.yaml and NAME.json
  std::vector<std::string> flags;  // the same conversion on the command line
};

TEST_CASE("composed recipes run as the --algorithm list that says the same, and write "
          "oneshot's quantization_config") {
  TempDir tmp;
  WriteStats(tmp / "stats", false);
  const std::string stats = (tmp / "stats").string();
  const std::vector<Case> cases = {
      {"awq_gptq_w4a16_asym_g64",
       {"--scheme", "W4A16", "--group-size", "64", "--asymmetric", "--algorithm", "awq,gptq"}},
      {"smoothquant_gptq_w8a8",
       {"--scheme", "W8A8", "--algorithm", "smoothquant,gptq", "--smoothing-strength", "0.8"}},
      {"sparsegpt24_w8a8", {"--scheme", "W8A8", "--algorithm", "sparsegpt", "--prune", "2:4"}},
      {"smoothquant_sparsegpt24_w8a8",
       {"--scheme", "W8A8", "--algorithm", "smoothquant,sparsegpt", "--prune", "2:4",
        "--smoothing-strength", "0.8"}},
      {"smoothquant_sparsegpt24_gptq_w8a8",
       {"--scheme", "W8A8", "--algorithm", "smoothquant,sparsegpt,gptq", "--prune", "2:4",
        "--smoothing-strength", "0.8"}},
  };
  for (const Case& c : cases) {
    CAPTURE(c.golden);
    const fs::path recipe = kOneshot / (std::string(c.golden) + ".yaml");
    const fs::path out = tmp / c.golden;
    auto r = Quench({"convert", TinyLlama(), out.string(), "--recipe", recipe.string(),
                     "--stats", stats});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    std::vector<std::string> args = {"convert", TinyLlama(), (out.string() + "-flags"),
                                     "--ignore", "lm_head", "--stats", stats};
    args.insert(args.end(), c.flags.begin(), c.flags.end());
    auto f = Quench(args);
    REQUIRE_MESSAGE(f.exit_code == 0, f.err);
    CheckSameShards(out, out.string() + "-flags");
    CheckOneshotConfig(out, std::string(c.golden) + ".json");
    // The report and dry run name every stage the recipe composed.
    auto d = RunQuench({"convert", TinyLlama(), (tmp / "dry").string(), "--recipe",
                        recipe.string(), "--stats", stats, "--dry-run"});
    REQUIRE_MESSAGE(d.exit_code == 0, d.err);
  }
}

TEST_CASE("a composed recipe: flags may repeat its algorithms in any order, not contradict them") {
  TempDir tmp;
  WriteStats(tmp / "stats", false);
  const std::string stats = (tmp / "stats").string();
  const std::string recipe = (kOneshot / "awq_gptq_w4a16_asym_g64.yaml").string();
  for (const char* same : {"awq,gptq", "gptq,awq"}) {
    CAPTURE(same);
    auto r = RunQuench({"convert", TinyLlama(), (tmp / "o").string(), "--recipe", recipe,
                        "--stats", stats, "--algorithm", same, "--dry-run"});
    CHECK_MESSAGE(r.exit_code == 0, r.err);
  }
  for (const char* other : {"gptq", "smoothquant,gptq", "awq"}) {
    CAPTURE(other);
    auto r = Quench({"convert", TinyLlama(), (tmp / "o").string(), "--recipe", recipe,
                     "--stats", stats, "--algorithm", other});
    CHECK(r.exit_code == 2);
    CHECK_MESSAGE(r.err.find("its AWQModifier and GPTQModifier sets what --algorithm " +
                             std::string(other)) != std::string::npos, r.err);
    CHECK_FALSE(fs::exists(tmp / "o"));
  }
}

TEST_CASE("composed recipes quench does not run are refused, saying why") {
  TempDir tmp;
  WriteStats(tmp / "stats", false);
  const std::string quant = "QuantizationModifier:\n  scheme: W8A8\n  ignore: [lm_head]\n";
  struct Refused {
    const char* name;
    std::string recipe;
    const char* message;
  };
  const std::vector<Refused> cases = {
      {"two_smoothings", "AWQModifier: {}\nSmoothQuantModifier: {}\n" + quant,
       "AWQModifier with SmoothQuantModifier: one smoothing per run"},
      {"block_sizes",
       "SparseGPTModifier:\n  sparsity: 0.5\n  mask_structure: '2:4'\n  block_size: 64\n"
       "GPTQModifier:\n  scheme: W8A8\n  ignore: [lm_head]\n",
       "SparseGPTModifier and GPTQModifier use different block_size (64 and 128)"},
      {"two_quantizers", "SmoothQuantModifier: {}\nGPTQModifier:\n  scheme: W8A8\n" + quant,
       "QuantizationModifier and GPTQModifier both quantize; give one"},
  };
  for (const Refused& c : cases) {
    CAPTURE(c.name);
    const fs::path recipe = tmp / (std::string(c.name) + ".yaml");
    WriteBytes(recipe, c.recipe);
    auto r = Quench({"convert", TinyLlama(), (tmp / "o").string(), "--recipe", recipe.string(),
                     "--stats", (tmp / "stats").string()});
    CHECK(r.exit_code == 3);
    CHECK_MESSAGE(r.err.find(c.message) != std::string::npos, r.err);
    CHECK_FALSE(fs::exists(tmp / "o"));
  }
}

}  // namespace
}  // namespace quench::testing
