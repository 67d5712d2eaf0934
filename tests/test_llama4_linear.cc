// Llama 4's expert stacks, stored [E, in, out], linearized into per-expert gate_proj / up_proj /
// down_proj weights and quantized (format/model_folder.h, SplitFusedExperts' `linearize`).
// Expected outputs come from the reference (scripts/make_golden_llama4_linear.py,
// data/golden/llama4_linear_manifest.json: llm-compressor's own linearize_moe
// (Llama4LinearExperts) linearizes the model, then model_free_ptq quantizes it); the
// transposed copy, the pruned experts and NVFP4's shared global scales are checked against
// their definitions written out here.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "format/json.h"
#include "schemes/stack_transpose.h"
#include "source_cases.h"
#include "test_util.h"

namespace quench::testing {
namespace {

fs::path Src() { return DataDir() / "golden" / "llama4lin" / "src"; }
fs::path Golden(const std::string& scheme) { return DataDir() / "golden" / "llama4lin" / scheme; }

constexpr uint64_t kExperts = 4, kHidden = 128, kWidth = 128;  // the generator's model
// The generator's two decoder layers, and layer 0's experts module.
const std::string kLayers[] = {"language_model.model.layers.0.", "language_model.model.layers.1."};
const std::string kLayer0 = kLayers[0] + "feed_forward.experts.";

// The conversion with the options a user gives (quench's default ignores apply: the head and
// the router, the reference's ignore list).
RunResult Convert(const fs::path& src, const fs::path& dst, std::vector<std::string> extra) {
  std::vector<std::string> args = {"convert", src.string(), dst.string(), "-q"};
  args.insert(args.end(), extra.begin(), extra.end());
  return RunQuench(args);
}

void CheckVerifies(const fs::path& dst) {
  const RunResult r = RunQuench({"verify", dst.string(), Src().string(), "-q"});
  CAPTURE(r.out);
  CAPTURE(r.err);
  CHECK(r.exit_code == 0);
}

// Piece `part` (0 gate, 1 up, 2 down) of expert e of a source stack, by the definition:
// gate_up_proj[e][:, :I].T, gate_up_proj[e][:, I:].T, down_proj[e].T; BF16 bits.
std::vector<uint16_t> DefinitionPiece(const std::map<std::string, Loaded>& src,
                                      const std::string& experts, uint64_t e, int part) {
  const std::string stack = experts + (part == 2 ? "down_proj" : "gate_up_proj");
  auto [l, t] = FindTensor(src, stack);
  REQUIRE(t != nullptr);
  const uint64_t in = t->shape[1], cols = t->shape[2];
  const uint64_t rows = part == 2 ? cols : cols / 2, col0 = part == 1 ? cols / 2 : 0;
  const std::string bytes = Bytes(*l, *t);
  std::vector<uint16_t> out(rows * in);
  for (uint64_t o = 0; o < rows; ++o) {
    for (uint64_t i = 0; i < in; ++i) {
      std::memcpy(&out[o * in + i], bytes.data() + ((e * in + i) * cols + col0 + o) * 2, 2);
    }
  }
  return out;
}

std::vector<uint16_t> Bits(const std::map<std::string, Loaded>& all, const std::string& name) {
  const std::string b = TensorBytes(all, name);
  std::vector<uint16_t> v(b.size() / 2);
  std::memcpy(v.data(), b.data(), b.size());
  return v;
}

const char* kParts[3] = {"gate_proj", "up_proj", "down_proj"};

TEST_SUITE("llama4_linear") {
  TEST_CASE("the transposed copy gives the definition's rows for any row range and column") {
    std::mt19937 rng(11);
    // Shapes smaller than a tile (128 rows by 64 inputs) and spanning several, with the 8 x 8
    // blocks' remainders on both sides.
    for (auto [in, cols] : std::vector<std::pair<uint64_t, uint64_t>>{{37, 70}, {203, 610}}) {
      CAPTURE(in);
      std::vector<uint16_t> block(in * cols);
      for (uint16_t& v : block) v = static_cast<uint16_t>(rng() & 0x3FFF);  // finite
      const uint64_t h = cols / 2;
      for (auto [col0, r0, r1] : std::vector<std::array<uint64_t, 3>>{
               {0, 0, h}, {h, 0, h}, {0, 0, cols}, {3, 5, 6}, {10, 1, h - 2}, {h, 17, h},
               {h, 8, h - 9}}) {
        CAPTURE(col0);
        CAPTURE(r0);
        CAPTURE(r1);
        std::vector<uint16_t> got((r1 - r0) * in, 0xDEAD), want((r1 - r0) * in, 0xBEEF);
        CHECK(TransposeBf16Columns(block.data(), in, cols, col0, r0, r1, got.data()) == -1);
        CHECK(TransposeBf16ColumnsScalar(block.data(), in, cols, col0, r0, r1, want.data()) == -1);
        for (uint64_t o = r0; o < r1; ++o) {
          for (uint64_t i = 0; i < in; ++i) {
            REQUIRE(want[(o - r0) * in + i] == block[i * cols + col0 + o]);
          }
        }
        CHECK(got == want);
      }
    }
    const uint64_t in = 37, cols = 70;
    std::vector<uint16_t> block(in * cols);
    for (uint16_t& v : block) v = static_cast<uint16_t>(rng() & 0x3FFF);
    // The first NaN or Inf in the output's order: row 2's at input 30 comes before row 3's
    // at input 1.
    block[30 * cols + 5 + 2] = 0x7FC0;  // NaN: output row 2 of a piece at column 5
    block[1 * cols + 5 + 3] = 0xFF80;   // -Inf: output row 3
    std::vector<uint16_t> out(10 * in);
    CHECK(TransposeBf16Columns(block.data(), in, cols, 5, 0, 10, out.data()) ==
          static_cast<int64_t>(2 * in + 30));
    CHECK(TransposeBf16ColumnsScalar(block.data(), in, cols, 5, 0, 10, out.data()) ==
          static_cast<int64_t>(2 * in + 30));
    CHECK(TransposeBf16Columns(block.data(), in, cols, 5, 3, 10, out.data()) ==
          static_cast<int64_t>(0 * in + 1));
    // Found wherever it lies: in the 8 x 8 blocks, the inputs past them (36 of 37), the rows
    // past them (9 of 10).
    block[30 * cols + 5 + 2] = block[1 * cols + 5 + 3] = 0;
    CHECK(TransposeBf16Columns(block.data(), in, cols, 5, 0, 10, out.data()) == -1);
    block[36 * cols + 5 + 4] = 0x7F80;  // +Inf: output row 4, input 36
    CHECK(TransposeBf16Columns(block.data(), in, cols, 5, 0, 10, out.data()) ==
          static_cast<int64_t>(4 * in + 36));
    block[36 * cols + 5 + 4] = 0;
    block[3 * cols + 5 + 9] = 0xFFC1;  // NaN: output row 9, input 3
    CHECK(TransposeBf16Columns(block.data(), in, cols, 5, 0, 10, out.data()) ==
          static_cast<int64_t>(9 * in + 3));
  }

  TEST_CASE("each scheme equals model_free_ptq on llm-compressor's linearized model") {
    const std::vector<GoldenCase> cases = GoldenCases("llama4_linear_manifest.json");
    REQUIRE(cases.size() == 3);
    for (const GoldenCase& c : cases) {
      CAPTURE(c.name);
      TempDir tmp;
      const RunResult r = Convert(c.source, tmp / "out", {"--scheme", c.scheme});
      REQUIRE_MESSAGE(r.exit_code == 0, r.err);
      // Every weight file and the index, byte for byte.
      CHECK(CheckSameFiles(c.expected, tmp / "out", WeightsOnly) == 3);
      CheckVerifies(tmp / "out");
      // The written quantization_config: the experts quantized, the router and head not.
      auto cfg = ReadJsonFile((tmp / "out" / "config.json").string());
      REQUIRE(cfg.ok());
      std::vector<std::string> ignore;
      for (const JsonValue& e : cfg->Find("quantization_config")->Find("ignore")->as_array()) {
        ignore.push_back(e.as_string());
      }
      for (const std::string& i : ignore) CHECK(i.find("experts") == std::string::npos);
    }
    // In chunks of one row as well (each piece's rows then each a chunk of their own).
    TempDir tmp;
    auto r = ConvertSource(cases[2].source, tmp / "out", cases[2].scheme, cases[2].ignore, 1);
    REQUIRE_MESSAGE(r.ok(), r.status().message());
    CHECK(CheckSameFiles(cases[2].expected, tmp / "out", SafetensorsOnly) == 2);
  }

  TEST_CASE("NVFP4A16: an expert's gate and up share one global scale, as vLLM fuses them") {
    TempDir tmp;
    const RunResult r = Convert(Src(), tmp / "out", {"--scheme", "NVFP4A16"});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    const auto all = LoadAll(tmp / "out"), src = LoadAll(Src());
    // compressed-tensors' generate_gparam in the weights' dtype (bf16): 1 / amax rounded, then
    // times 448 * 6 rounded; amax over the expert's whole gate_up slice (both halves), or its
    // down slice.
    auto gparam = [](float amax) {
      return RoundBF16(RoundBF16(1.0f / amax) * 2688.0f);
    };
    auto scale = [&](const std::string& name) {
      const std::string b = TensorBytes(all, name);
      REQUIRE(b.size() == 4);
      float v;
      std::memcpy(&v, b.data(), 4);
      return v;
    };
    for (const std::string& layer : kLayers) {
      const std::string experts = layer + "feed_forward.experts.";
      for (const char* stack : {"gate_up_proj", "down_proj"}) {
        auto [l, t] = FindTensor(src, experts + stack);
        REQUIRE(t != nullptr);
        const std::string bytes = Bytes(*l, *t);
        const uint64_t per = t->shape[1] * t->shape[2];
        for (uint64_t e = 0; e < kExperts; ++e) {
          CAPTURE(e);
          float amax = 0;
          for (uint64_t k = 0; k < per; ++k) {
            amax = std::max<float>(amax, std::fabs(DecodeBF16(
                reinterpret_cast<const uint8_t*>(bytes.data()) + (e * per + k) * 2)));
          }
          const std::string p = experts + std::to_string(e) + ".";
          if (std::string(stack) == "down_proj") {
            CHECK(scale(p + "down_proj.weight_global_scale") == gparam(amax));
          } else {
            CHECK(scale(p + "gate_proj.weight_global_scale") == gparam(amax));
            CHECK(scale(p + "up_proj.weight_global_scale") == gparam(amax));
          }
        }
      }
    }
    CheckVerifies(tmp / "out");
  }

  TEST_CASE("the user is told; a scheme of none keeps the stacks whole") {
    TempDir tmp;
    RunResult r = RunQuench({"convert", Src().string(), (tmp / "dry").string(), "--scheme",
                             "W4A16", "--dry-run"});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    CHECK(r.err.find("linearized 4 Llama 4 expert stack(s) stored [experts, in, out] into 24 "
                     "per-expert gate_proj / up_proj / down_proj weights") != std::string::npos);
    CHECK(r.err.find("left unquantized: ") == std::string::npos);
    // Pruning alone (--scheme none) writes no quantization_config: the stacks stay as stored.
    r = Convert(Src(), tmp / "none", {"--scheme", "none", "--prune", "2:4"});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    const auto all = LoadAll(tmp / "none"), src = LoadAll(Src());
    for (const char* stack : {"gate_up_proj", "down_proj"}) {
      CHECK(TensorBytes(all, kLayer0 + stack) == TensorBytes(src, kLayer0 + stack));
    }
    CHECK(FindTensor(all, kLayer0 + "0.gate_proj.weight").second == nullptr);
  }

  TEST_CASE("ignored experts are written linearized in BF16, each piece the definition's") {
    TempDir tmp;
    const RunResult r = Convert(Src(), tmp / "out", {"--scheme", "FP8_DYNAMIC", "--ignore",
                                                     "re:.*feed_forward\\.experts\\..*"});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    const auto all = LoadAll(tmp / "out"), src = LoadAll(Src());
    for (const std::string& layer : kLayers) {
      const std::string experts = layer + "feed_forward.experts.";
      for (uint64_t e = 0; e < kExperts; ++e) {
        for (int part = 0; part < 3; ++part) {
          const std::string name = experts + std::to_string(e) + "." + kParts[part] + ".weight";
          CAPTURE(name);
          auto [l, t] = FindTensor(all, name);
          REQUIRE(t != nullptr);
          CHECK(t->dtype == DType::kBF16);
          CHECK(t->shape == std::vector<uint64_t>{part == 2 ? kHidden : kWidth,
                                                  part == 2 ? kWidth : kHidden});
          CHECK(Bits(all, name) == DefinitionPiece(src, experts, e, part));
        }
      }
      CHECK(FindTensor(all, experts + "gate_up_proj").second == nullptr);
    }
    // The shared expert is still quantized.
    CHECK(
        FindTensor(
            all, "language_model.model.layers.0.feed_forward.shared_expert.gate_proj.weight_scale")
            .second != nullptr);
    CheckVerifies(tmp / "out");
  }

  TEST_CASE("expert pruning keeps the highest-scoring experts' pieces, renumbered") {
    // The router's L1 norms by an independent computation (compressed-tensors'
    // MagnitudeExpertPruner scores expert i by router row i's L1 norm, ties to the lower index).
    const auto src = LoadAll(Src());
    TempDir tmp;
    const RunResult r =
        Convert(Src(), tmp / "out", {"--scheme", "W4A16", "--prune-experts", "0.5"});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    const auto all = LoadAll(tmp / "out"), golden = LoadAll(Golden("W4A16"));
    for (const std::string& layer : kLayers) {
      CAPTURE(layer);
      const std::string router = layer + "feed_forward.router.weight";
      const std::string rb = TensorBytes(src, router);
      std::vector<double> norm(kExperts, 0);
      for (uint64_t e = 0; e < kExperts; ++e) {
        for (uint64_t i = 0; i < kHidden; ++i) {
          norm[e] += std::fabs(DecodeBF16(reinterpret_cast<const uint8_t*>(rb.data()) +
                                          (e * kHidden + i) * 2));
        }
      }
      std::vector<uint64_t> order(kExperts);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(),
                       [&](uint64_t a, uint64_t b) { return norm[a] > norm[b]; });
      std::vector<uint64_t> kept(order.begin(), order.begin() + 2);
      std::sort(kept.begin(), kept.end());
      const std::string experts = layer + "feed_forward.experts.";
      for (uint64_t j = 0; j < kept.size(); ++j) {
        for (const char* part : kParts) {
          for (const char* param : {".weight_packed", ".weight_scale", ".weight_shape"}) {
            const std::string got = experts + std::to_string(j) + "." + part + param;
            const std::string want = experts + std::to_string(kept[j]) + "." + part + param;
            CAPTURE(got);
            CHECK(TensorBytes(all, got) == TensorBytes(golden, want));
          }
        }
      }
      CHECK(FindTensor(all, experts + "2.gate_proj.weight_packed").second == nullptr);
    }
    auto cfg = ReadJsonFile((tmp / "out" / "config.json").string());
    REQUIRE(cfg.ok());
    CHECK(cfg->Find("text_config")->Find("num_local_experts")->as_int() == 2);
  }

  TEST_CASE("verify reads SRC as DST holds it: stacks linearized, or whole (earlier quench)") {
    // A DST with the stacks whole, as quench wrote Llama 4 before it linearized them: made here
    // from a copy of SRC whose config names no model_type (so that they are kept whole).
    TempDir tmp;
    fs::copy(Src(), tmp / "src", fs::copy_options::recursive);
    std::string text = ReadBytes(tmp / "src" / "config.json");
    for (const char* type : {"\"model_type\": \"llama4_text\"", "\"model_type\": \"llama4\""}) {
      const size_t at = text.find(type);
      REQUIRE(at != std::string::npos);
      text.replace(at, std::strlen(type), "\"model_kind\": 0");
    }
    WriteBytes(tmp / "src" / "config.json", text);
    RunResult r = Convert(tmp / "src", tmp / "whole", {"--scheme", "W4A16"});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    REQUIRE(FindTensor(LoadAll(tmp / "whole"), kLayer0 + "gate_up_proj").second != nullptr);
    CheckVerifies(tmp / "whole");
  }

  TEST_CASE("2:4 pruning prunes each piece as read; tensor-wide pruning is refused, named") {
    TempDir tmp;
    RunResult r = Convert(Src(), tmp / "out", {"--scheme", "W4A16", "--prune", "2:4"});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    // verify --prune compares every dequantized piece with SRC's piece pruned by the spec.
    r = RunQuench({"verify", (tmp / "out").string(), Src().string(), "--prune", "2:4", "-q"});
    CAPTURE(r.out);
    CHECK(r.exit_code == 0);
    r = Convert(Src(), tmp / "tensor", {"--scheme", "W4A16", "--prune", "unstructured:0.5",
                                        "--prune-granularity", "tensor"});
    CHECK(r.exit_code == 3);  // invalid or unsupported input
    CHECK(r.err.find("experts.0.down_proj.weight' is read transposed out of a Llama 4 expert "
                     "stack; --prune-granularity tensor cannot read decoded weights yet") !=
          std::string::npos);
    CHECK_FALSE(fs::exists(tmp / "tensor"));
  }

  TEST_CASE("a budget too small for the expert blocks in flight names them") {
    // One expert of Scout's hidden size / 5: gate_up_proj [1, 1024, 8192], a 16 MiB block that
    // each chunk of its pieces reads across.
    TempDir tmp;
    fs::create_directories(tmp / "src");
    WriteShard(tmp / "src" / "model.safetensors",
               {{"model.layers.0.feed_forward.experts.gate_up_proj", DType::kBF16, {1, 1024, 8192},
                 std::string(1024 * 8192 * 2, '\0')},
                {"model.layers.0.feed_forward.experts.down_proj", DType::kBF16, {1, 4096, 1024},
                 std::string(4096 * 1024 * 2, '\0')}});
    WriteBytes(tmp / "src" / "config.json",
               "{\"model_type\": \"llama4_text\", \"hidden_size\": 1024}");
    const RunResult r = Convert(tmp / "src", tmp / "out", {"--scheme", "W4A16", "--threads", "1",
                                                          "--memory-limit", "32M"});
    CHECK(r.exit_code == 2);
    CHECK(r.err.find("of it for source pages mapped beside the chunks (expert blocks that chunks "
                     "of MXFP4 or linearized Llama 4 stacks read across") != std::string::npos);
    CHECK_FALSE(fs::exists(tmp / "out"));
  }

  TEST_CASE("at the floor a refused run names, the expert blocks in flight stay within it") {
    // Four experts whose gate_up blocks (1024 x 8192 BF16, 16 MiB each) dominate the floor:
    // counted once per piece with a chunk in flight, plus the piece being read and the NVFP4
    // pre-pass's member. Refused one MiB below the figure; at the figure, converted with the
    // process's peak resident memory (mapped source pages included) under it, on 2 and 4
    // threads, with the pre-pass (NVFP4A16) and without.
    TempDir tmp;
    fs::create_directories(tmp / "src");
    {  // (scoped: the child quench processes are forked from this one, whose resident memory
       // their peak would otherwise include)
      std::string gate_up(4ull * 1024 * 8192 * 2, '\0'), down(4ull * 4096 * 1024 * 2, '\0');
      for (size_t i = 0; i < gate_up.size(); i += 2) gate_up[i + 1] = static_cast<char>(0x3C);
      for (size_t i = 0; i < down.size(); i += 2) down[i + 1] = static_cast<char>(0x3C);
      WriteShard(tmp / "src" / "model.safetensors",
                 {{"model.layers.0.feed_forward.experts.gate_up_proj", DType::kBF16,
                   {4, 1024, 8192}, gate_up},
                  {"model.layers.0.feed_forward.experts.down_proj", DType::kBF16, {4, 4096, 1024},
                   down}});
    }
    WriteBytes(tmp / "src" / "config.json",
               "{\"model_type\": \"llama4_text\", \"hidden_size\": 1024}");
    for (const std::string scheme : {"W4A16", "NVFP4A16"}) {
      for (const std::string threads : {"2", "4"}) {
        CAPTURE(scheme);
        CAPTURE(threads);
        auto run = [&](const std::string& limit) {
          return Convert(tmp / "src", tmp / "out", {"--scheme", scheme, "--threads", threads,
                                                    "--memory-limit", limit, "--overwrite"});
        };
        const uint64_t mib = CheckReportedFloor(run, scheme + " threads " + threads).mib;
        // (The blocks alone: 2 threads, 4 chunks in flight, 6 blocks of 16 MiB.)
        CHECK(mib > (threads == "2" ? 96u : 160u));
      }
    }
  }

  TEST_CASE("a NaN in a stack is refused naming its element; a non-BF16 stack is kept whole") {
    TempDir tmp;
    fs::copy(Src(), tmp / "nan", fs::copy_options::recursive);
    EditFolder(tmp / "nan", [](std::map<std::string, std::vector<RawTensor>>& shards) {
      for (auto& [_, v] : shards) {
        for (RawTensor& t : v) {
          if (t.name != "language_model.model.layers.1.feed_forward.experts.gate_up_proj") continue;
          // Expert 2, input 7, output column 130: up_proj row 2 (130 - 128).
          const uint16_t nan = 0x7FC0;
          std::memcpy(t.bytes.data() + ((2 * kHidden + 7) * 2 * kWidth + 130) * 2, &nan, 2);
        }
      }
    });
    RunResult r = Convert(tmp / "nan", tmp / "nan-out", {"--scheme", "FP8_DYNAMIC"});
    CHECK(r.exit_code != 0);
    CHECK(
        r.err.find(
            "tensor 'language_model.model.layers.1.feed_forward.experts.2.up_proj.weight' contains "
            "NaN or Inf (row 2, column 7; element [2, 7, 130] of "
            "'language_model.model.layers.1.feed_forward.experts.gate_up_proj')") !=
        std::string::npos);
    CHECK_FALSE(fs::exists(tmp / "nan-out"));

    fs::copy(Src(), tmp / "f32", fs::copy_options::recursive);
    EditFolder(tmp / "f32", [](std::map<std::string, std::vector<RawTensor>>& shards) {
      for (auto& [_, v] : shards) {
        for (RawTensor& t : v) {
          if (t.name != "language_model.model.layers.0.feed_forward.experts.down_proj") continue;
          std::string f32(t.bytes.size() * 2, '\0');
          for (size_t i = 0; i < t.bytes.size() / 2; ++i) {
            std::memcpy(f32.data() + 4 * i + 2, t.bytes.data() + 2 * i, 2);  // bf16 -> f32
          }
          t.dtype = DType::kF32;
          t.bytes = f32;
        }
      }
    });
    r = RunQuench({"convert", (tmp / "f32").string(), (tmp / "f32-out").string(), "--scheme",
                   "FP8_DYNAMIC"});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    // Layer 0's experts stay whole, both stacks (a module's experts are loaded one way);
    // layer 1's are linearized and quantized.
    CHECK(r.err.find("left whole and unquantized: 2 Llama 4 expert stack(s) of experts modules "
                     "with a stack not stored BF16") != std::string::npos);
    CHECK(r.err.find("left unquantized: ") == std::string::npos);  // told once
    const auto all = LoadAll(tmp / "f32-out");
    auto [l, t] = FindTensor(all, kLayer0 + "down_proj");
    REQUIRE(t != nullptr);
    CHECK(t->dtype == DType::kF32);
    CHECK(FindTensor(all, kLayer0 + "gate_up_proj").second != nullptr);
    CHECK(FindTensor(all, kLayer0 + "0.gate_proj.weight_scale").second == nullptr);
    CHECK(FindTensor(all,
                     "language_model.model.layers.1.feed_forward.experts.0.gate_proj.weight_scale")
              .second != nullptr);
  }
}

}  // namespace
}  // namespace quench::testing
