// gpt-oss MXFP4 sources (quant_method "mxfp4": expert stacks as P_blocks / P_scales). Expected
// values come from the reference (scripts/make_golden_mxfp4.py, data/golden/mxfp4_manifest.json:
// transformers' own Mxfp4 dequantizer, each expert decoded and transposed to [E, in, out]) and,
// for the decoder alone, from the OCP MX definition written out in tests/test_util.h.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "format/json.h"
#include "quench/convert.h"
#include "schemes/mxfp4_stack.h"
#include "source_cases.h"
#include "test_util.h"

namespace quench::testing {
namespace {

fs::path Src() { return DataDir() / "golden" / "mxfp4src" / "src"; }
fs::path Decoded() { return DataDir() / "golden" / "mxfp4src" / "BF16"; }

// An element by the definition: E2M1 value times 2^(s - 127), rounded to bf16 (exact unless
// it overflows); bits.
uint16_t DefinitionBits(uint8_t code, uint8_t s) {
  const float f = RoundBF16(DecodeE2M1(code) * std::ldexp(1.0, static_cast<int>(s) - 127));
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return static_cast<uint16_t>(bits >> 16);
}

// Every tensor of `want` is in `got` with the same dtype, shape and bytes, and `got` has no
// other; returns how many were compared.
size_t CheckSameTensors(const fs::path& want, const fs::path& got) {
  const auto w = LoadAll(want), g = LoadAll(got);
  std::set<std::string> want_names, got_names;
  for (const auto& [_, l] : g) {
    for (const TensorInfo& t : l.shard.header.tensors) got_names.insert(t.name);
  }
  for (const auto& [_, l] : w) {
    for (const TensorInfo& t : l.shard.header.tensors) {
      CAPTURE(t.name);
      want_names.insert(t.name);
      auto [gl, gt] = FindTensor(g, t.name);
      REQUIRE(gt != nullptr);
      CHECK(gt->dtype == t.dtype);
      CHECK(gt->shape == t.shape);
      CHECK(Bytes(*gl, *gt) == Bytes(l, t));
    }
  }
  CHECK(got_names == want_names);
  return want_names.size();
}

// `quench verify DST SRC` (which decodes an MXFP4 SRC to compare against) finds no problem.
void CheckVerifies(const fs::path& dst) {
  const RunResult r = RunQuench({"verify", dst.string(), Src().string(), "-q"});
  CAPTURE(r.out);
  CAPTURE(r.err);
  CHECK(r.exit_code == 0);
}

JsonValue Config(const fs::path& dir) {
  auto c = ReadJsonFile((dir / "config.json").string());
  REQUIRE(c.ok());
  return *c;
}

// Copies the source to `dir` with `edit` applied to its tensors.
void PlantFault(const fs::path& dir,
                const std::function<void(std::map<std::string, std::vector<RawTensor>>&)>& edit) {
  fs::copy(Src(), dir, fs::copy_options::recursive);
  EditFolder(dir, edit);
}

RawTensor* Find(std::map<std::string, std::vector<RawTensor>>& shards, const std::string& name) {
  for (auto& [_, v] : shards) {
    for (RawTensor& t : v) {
      if (t.name == name) return &t;
    }
  }
  FAIL("no tensor " << name);
  return nullptr;
}

void Erase(std::map<std::string, std::vector<RawTensor>>& shards, const std::string& name) {
  for (auto& [_, v] : shards) {
    std::erase_if(v, [&](const RawTensor& t) { return t.name == name; });
  }
}

constexpr const char* kGateUp = "model.layers.0.mlp.experts.gate_up_proj";

TEST_SUITE("source_mxfp4") {
  TEST_CASE("the decoder gives the definition's element, transposed, for any run of inputs") {
    std::mt19937 rng(7);
    const uint64_t rows = 40, cols = 96;  // rows not a multiple of the 16-row tile
    std::vector<uint8_t> blocks(rows * cols / 2), scales(rows * cols / 32);
    for (uint8_t& b : blocks) b = static_cast<uint8_t>(rng());
    for (size_t i = 0; i < scales.size(); ++i) scales[i] = static_cast<uint8_t>(i * 7 % 253);
    scales[0] = 0;  // 2^-127: subnormal results
    scales[1] = 252;
    const Mxfp4Expert x{blocks.data(), scales.data(), rows, cols};
    for (uint64_t o = 0; o < rows; ++o) {
      for (uint64_t i = 0; i < cols; ++i) {
        const uint8_t byte = blocks[(o * cols + i) / 2];
        const uint8_t code = i % 2 == 0 ? byte & 0xF : byte >> 4;  // the low nibble first
        REQUIRE(Mxfp4ElementScalar(x, o, i) == DefinitionBits(code, scales[o * 3 + i / 32]));
      }
    }
    for (auto [c0, c1] : {std::pair<uint64_t, uint64_t>{0, 96}, {0, 1}, {5, 6}, {31, 33},
                          {17, 70}, {64, 96}, {1, 95}}) {
      CAPTURE(c0);
      CAPTURE(c1);
      std::vector<uint16_t> out((c1 - c0) * rows, 0xDEAD);
      bool finite = true;
      CHECK(DecodeMxfp4Transposed(x, c0, c1, out.data(), &finite) == -1);
      CHECK(finite);
      for (uint64_t i = c0; i < c1; ++i) {
        for (uint64_t o = 0; o < rows; ++o) {
          REQUIRE(out[(i - c0) * rows + o] == Mxfp4ElementScalar(x, o, i));
        }
      }
    }
    // Subnormal and signed-zero results as bits: 0.5 * 2^-127 = 2^-128; code 8 is -0.
    CHECK(DefinitionBits(1, 0) == 0x0020);
    CHECK(DefinitionBits(9, 0) == 0x8020);
    CHECK(DefinitionBits(8, 200) == 0x8000);
    CHECK(DefinitionBits(7, 252) == 0x7F40);  // 6 * 2^125 = 1.5 * 2^127, the largest used
  }

  TEST_CASE("the decoder reports E8M0's NaN and values that overflow bf16") {
    std::vector<uint8_t> blocks(16 * 64 / 2, 0x77), scales(16 * 2, 127);  // code 7: 6.0
    const Mxfp4Expert x{blocks.data(), scales.data(), 16, 64};
    std::vector<uint16_t> out(16 * 64);
    bool finite = true;
    scales[2 * 5 + 1] = 0xFF;  // row 5, inputs 32..63
    CHECK(DecodeMxfp4Transposed(x, 0, 32, out.data(), &finite) == -1);
    CHECK(DecodeMxfp4Transposed(x, 0, 64, out.data(), &finite) == 11);
    scales[11] = 253;  // 6 * 2^126 = 1.5 * 2^128: Inf
    CHECK(DecodeMxfp4Transposed(x, 0, 64, out.data(), &finite) == -1);
    CHECK_FALSE(finite);
  }

  TEST_CASE("--scheme BF16 equals transformers' Mxfp4 dequantizer, in any chunks") {
    const std::vector<GoldenCase> cases = GoldenCases("mxfp4_manifest.json");
    REQUIRE(cases.size() == 1);
    // The default chunks, and chunks of one row (an input of one expert: every group split).
    for (uint64_t chunk : {uint64_t{0}, uint64_t{1}}) {
      CAPTURE(chunk);
      TempDir tmp;
      auto r = ConvertSource(cases[0].source, tmp / "out", "BF16", {}, chunk);
      REQUIRE_MESSAGE(r.ok(), r.status().message());
      CHECK(CheckSameTensors(cases[0].expected, tmp / "out") == 37);
      const JsonValue c = Config(tmp / "out");
      CHECK(c.Find("quantization_config") == nullptr);
      CHECK(c.Find("num_local_experts")->as_int() == 4);
      CheckVerifies(tmp / "out");
    }
  }

  TEST_CASE("another scheme quantizes the BF16 layers as from the decoded model, stacks kept") {
    TempDir tmp;
    for (const auto& [from, to] : {std::pair{Src(), tmp / "a"}, std::pair{Decoded(), tmp / "b"}}) {
      const RunResult r = RunQuench({"convert", from.string(), to.string(), "--scheme",
                                     "FP8_DYNAMIC", "-q"});
      REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    }
    CHECK(CheckSameTensors(tmp / "b", tmp / "a") > 37);
    const JsonValue q = *Config(tmp / "a").Find("quantization_config");
    CHECK(q.Find("quant_method")->as_string() == "compressed-tensors");
    std::vector<std::string> ignore;
    for (const JsonValue& e : q.Find("ignore")->as_array()) ignore.push_back(e.as_string());
    CHECK(std::find(ignore.begin(), ignore.end(),
                    "re:model\\.layers\\.[0-9]+\\.mlp\\.experts(\\..*)?$") != ignore.end());
    const auto out = LoadAll(tmp / "a");
    CHECK(FindTensor(out, "model.layers.0.self_attn.q_proj.weight_scale").second != nullptr);
    const TensorInfo* stack = FindTensor(out, std::string(kGateUp)).second;
    REQUIRE(stack != nullptr);
    CHECK(stack->dtype == DType::kBF16);
    CheckVerifies(tmp / "a");
    // The user hears that the experts stay BF16 (4x the source's bytes), except when decoding
    // is what was asked for.
    for (const char* scheme : {"FP8_DYNAMIC", "BF16"}) {
      CAPTURE(scheme);
      const RunResult r = RunQuench({"convert", Src().string(), (tmp / "dry").string(),
                                     "--scheme", scheme, "--dry-run"});
      REQUIRE_MESSAGE(r.exit_code == 0, r.err);
      const bool told =
          r.err.find("left unquantized: 4 MXFP4 expert stack(s)") != std::string::npos &&
          r.err.find("take 4x the source's bytes") != std::string::npos;
      CHECK(told == (std::string(scheme) != "BF16"));
      CHECK(r.err.find("they are copied") == std::string::npos);
    }
  }

  TEST_CASE("expert pruning reads and decodes the kept experts' codes and scales") {
    TempDir tmp;
    const RunResult r = RunQuench({"convert", Src().string(), (tmp / "out").string(), "--scheme",
                                   "none", "--prune-experts", "0.5", "-q"});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    const auto want = LoadAll(Decoded()), got = LoadAll(tmp / "out");
    bool gathered = false;  // a layer whose kept experts are not adjacent (read in two runs)
    for (int layer : {0, 1}) {
      const std::string p = "model.layers." + std::to_string(layer) + ".mlp.";
      auto [rl, router] = FindTensor(got, p + "router.weight");
      auto [wl, full] = FindTensor(want, p + "router.weight");
      REQUIRE(router != nullptr);
      REQUIRE(router->shape == std::vector<uint64_t>{2, 64});
      // The kept experts, told by their router rows.
      std::vector<uint64_t> kept;
      const uint64_t row = 64 * 2;
      for (uint64_t j = 0; j < 2; ++j) {
        for (uint64_t e = 0; e < 4; ++e) {
          if (std::memcmp(rl->Data(*router) + j * row, wl->Data(*full) + e * row, row) == 0) {
            kept.push_back(e);
          }
        }
      }
      REQUIRE(kept.size() == 2);
      gathered |= kept[1] != kept[0] + 1;
      for (const char* stack : {"experts.gate_up_proj", "experts.down_proj"}) {
        CAPTURE(stack);
        auto [ol, o] = FindTensor(got, p + stack);
        auto [sl, s] = FindTensor(want, p + stack);
        REQUIRE(o != nullptr);
        const uint64_t per = s->nbytes() / 4;
        CHECK(o->shape[0] == 2);
        for (uint64_t j = 0; j < 2; ++j) {
          CHECK(std::memcmp(ol->Data(*o) + j * per, sl->Data(*s) + kept[j] * per, per) == 0);
        }
      }
    }
    CHECK(gathered);
    CHECK(Config(tmp / "out").Find("num_local_experts")->as_int() == 2);
    CheckVerifies(tmp / "out");
  }

  TEST_CASE("malformed MXFP4 tensors are refused before anything is written") {
    struct Case {
      const char* what;
      std::function<void(std::map<std::string, std::vector<RawTensor>>&)> edit;
      const char* message;
    };
    const std::string blocks = std::string(kGateUp) + "_blocks";
    const std::string scales = std::string(kGateUp) + "_scales";
    const std::vector<Case> cases = {
        {"scales missing", [&](auto& s) { Erase(s, scales); },
         "has no 'model.layers.0.mlp.experts.gate_up_proj_scales' in any shard"},
        {"scales of another shape",
         [&](auto& s) {
           RawTensor* t = Find(s, scales);
           t->shape = {4, 64, 4};
         },
         "has shape [4, 64, 4]; expected [4, 128, 2]"},
        {"scales of another dtype",
         [&](auto& s) { Find(s, scales)->dtype = DType::kI8; },  // the same bytes
         "'model.layers.0.mlp.experts.gate_up_proj_scales' has dtype I8; MXFP4 scales are U8 "
         "(E8M0 exponents)"},
        {"blocks not 4-D U8",
         [&](auto& s) {
           RawTensor* t = Find(s, blocks);
           t->shape = {4, 128, 32};
         },
         "an MXFP4 _blocks tensor is U8 [experts, out_features, in_features / 32, 16]"},
        {"scales without blocks", [&](auto& s) { Erase(s, blocks); },
         "has no 'model.layers.0.mlp.experts.gate_up_proj_blocks' beside it"},
        {"a decoded name already taken",
         [&](auto& s) {
           RawTensor copy = *Find(s, "model.layers.0.mlp.experts.gate_up_proj_bias");
           copy.name = kGateUp;
           s.begin()->second.push_back(copy);
         },
         "decodes to 'model.layers.0.mlp.experts.gate_up_proj', which the checkpoint also holds"},
    };
    for (const Case& c : cases) {
      CAPTURE(c.what);
      TempDir tmp;
      PlantFault(tmp / "src", c.edit);
      for (const char* dry : {"--dry-run", "-q"}) {
        const RunResult r = RunQuench({"convert", (tmp / "src").string(),
                                       (tmp / "out").string(), "--scheme", "BF16", dry});
        CAPTURE(r.err);
        CHECK(r.exit_code == 3);
        CHECK(r.err.find(c.message) != std::string::npos);
        CHECK_FALSE(fs::exists(tmp / "out"));
      }
    }
  }

  TEST_CASE("a NaN scale or a value beyond bf16 fails the run, naming the element") {
    struct Case {
      uint8_t scale;
      uint8_t code_byte;
      const char* message;
    };
    // Expert 1, row 3, group 1 of layer 0's gate_up_proj (2 groups a row).
    const uint64_t at = (1 * 128 + 3) * 2 + 1;
    for (const Case& c : {Case{0xFF, 0x00, "holds the E8M0 NaN 0xFF at [1, 3, 1]"},
                          Case{253, 0x77, "non-finite"}}) {
      CAPTURE(c.message);
      TempDir tmp;
      PlantFault(tmp / "src", [&](auto& s) {
        Find(s, std::string(kGateUp) + "_scales")->bytes[at] = static_cast<char>(c.scale);
        std::string& b = Find(s, std::string(kGateUp) + "_blocks")->bytes;
        for (uint64_t k = 0; k < 16; ++k) b[at * 16 + k] = static_cast<char>(c.code_byte);
      });
      const RunResult r = RunQuench({"convert", (tmp / "src").string(), (tmp / "out").string(),
                                     "--scheme", "BF16", "-q"});
      CAPTURE(r.err);
      CHECK(r.exit_code == 3);
      CHECK(r.err.find(c.message) != std::string::npos);
      CHECK(r.err.find(kGateUp) != std::string::npos);
      CHECK_FALSE(fs::exists(tmp / "out" / "config.json"));
    }
    // With expert pruning the element is named in the source's expert numbering: layer 0
    // keeps experts 0 and 3 (see the pruning case), so source expert 3 is the second kept one.
    TempDir tmp;
    PlantFault(tmp / "src", [&](auto& s) {
      Find(s, std::string(kGateUp) + "_scales")->bytes[(3 * 128 + 5) * 2] = static_cast<char>(0xFF);
    });
    const RunResult r = RunQuench({"convert", (tmp / "src").string(), (tmp / "out").string(),
                                   "--scheme", "BF16", "--prune-experts", "0.5", "-q"});
    CAPTURE(r.err);
    CHECK(r.exit_code == 3);
    CHECK(r.err.find("holds the E8M0 NaN 0xFF at [3, 5, 0]") != std::string::npos);
  }
}

}  // namespace
}  // namespace quench::testing
