// Converting FP8-block sources (DeepSeek/Kimi layout) end to end: the pipeline decodes each
// weight chunk by chunk with its scale and quantizes the decoded rows. Expected bytes:
//   - data/golden/fp8src/<SCHEME>: the pinned reference (model_free_ptq / convert_checkpoint
//     with FP8BlockDequantizer), scripts/make_golden_fp8.py;
//   - fp8src-split (down_proj's scale in the other shard; the reference fails on it, see
//     fp8_manifest.json): the same tensors as fp8src, so the reference's fp8src outputs are the
//     expected bytes (the scale's shard changes no output byte);
//   - fp8src-e8m0 (E8M0 scales; the reference cannot read F8_E8M0): decoded independently by
//     the generator in torch (decoded/; the same code reproduces the reference's fp8src/BF16,
//     which the generator asserts) and quantized by the reference from that BF16 checkpoint;
//   - synthetic tensors larger than a chunk: fp8::DequantizeSourceScalar over the whole
//     tensor at once (the definition; its equality with the reference is test_sources'), and
//     quench's output from that decoded BF16 checkpoint (the plain path, golden-tested).
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "format/json.h"
#include "pipeline/resume.h"
#include "quench/convert.h"
#include "schemes/fp8.h"
#include "source_cases.h"
#include "test_util.h"
#include "verify/verify.h"

namespace quench::testing {
namespace {

// The fp8_manifest.json cases the reference completed.
std::vector<GoldenCase> ReferenceCases() { return GoldenCases("fp8_manifest.json", true); }

// Every tensor of `want` is in `got` with the same dtype, shape and bytes, and no other.
void CheckSameTensors(const fs::path& want, const fs::path& got) {
  const auto w = LoadAll(want), g = LoadAll(got);
  size_t n_want = 0, n_got = 0;
  for (const auto& [_, l] : g) n_got += l.shard.header.tensors.size();
  for (const auto& [_, l] : w) {
    for (const TensorInfo& t : l.shard.header.tensors) {
      CAPTURE(t.name);
      ++n_want;
      auto [gl, gt] = FindTensor(g, t.name);
      REQUIRE(gt != nullptr);
      CHECK(gt->dtype == t.dtype);
      CHECK(gt->shape == t.shape);
      CHECK(std::string(reinterpret_cast<const char*>(gl->Data(*gt)), gt->nbytes()) ==
            std::string(reinterpret_cast<const char*>(l.Data(t)), t.nbytes()));
    }
  }
  CHECK(n_got == n_want);
}

const char* kFp8Config =
    R"({"architectures": ["LlamaForCausalLM"], "quantization_config": )"
    R"({"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", )"
    R"("weight_block_size": [128, 128]}})";

// A synthetic FP8 checkpoint whose weights span several pipeline chunks of kSmallChunk: q/k/v
// (a fused NVFP4 set) of 1000 x 384 random finite E4M3 codes with random F32 block scales,
// and a norm. Also writes `decoded`: the same model as BF16, each weight decoded whole by the
// scalar definition.
void WriteLargeFp8(const fs::path& dir, const fs::path& decoded) {
  std::mt19937 rng(17);
  std::vector<RawTensor> src, dec;
  const uint64_t rows = 1000, cols = 384;
  for (const char* m : {"q_proj", "k_proj", "v_proj"}) {
    const std::string name = std::string("model.layers.0.self_attn.") + m + ".weight";
    std::string codes(rows * cols, '\0');
    for (char& c : codes) {
      uint8_t v = static_cast<uint8_t>(rng());
      if ((v & 0x7F) == 0x7F) v -= 1;  // no NaN codes
      c = static_cast<char>(v);
    }
    const uint64_t sr = (rows + 127) / 128, sc = (cols + 127) / 128;
    std::vector<float> scales(sr * sc);
    std::uniform_real_distribution<float> e(-12.f, -4.f);
    for (float& s : scales) s = std::exp2(e(rng));
    std::string sbytes(scales.size() * 4, '\0');
    std::memcpy(sbytes.data(), scales.data(), sbytes.size());
    src.push_back({name, DType::kF8E4M3, {rows, cols}, codes});
    src.push_back({name + "_scale_inv", DType::kF32, {sr, sc}, sbytes});
    fp8::SourceChunk in;
    in.codes = reinterpret_cast<const uint8_t*>(codes.data());
    in.rows = rows;
    in.cols = cols;
    in.scales = scales.data();
    in.scale_cols = sc;
    std::string out(rows * cols * 2, '\0');
    REQUIRE(fp8::DequantizeSourceScalar(in, reinterpret_cast<uint8_t*>(out.data())));
    dec.push_back({name, DType::kBF16, {rows, cols}, out});
  }
  const RawTensor norm{
      "model.norm.weight", DType::kBF16, {cols}, Bf16Bytes(std::vector<float>(cols, 1.f))};
  src.push_back(norm);
  dec.push_back(norm);
  WriteBytes(dir / "config.json", kFp8Config);
  WriteShard(dir / "model.safetensors", src);
  WriteBytes(decoded / "config.json", R"({"architectures": ["LlamaForCausalLM"]})");
  WriteShard(decoded / "model.safetensors", dec);
}

constexpr uint64_t kSmallChunk = 256 * 1024;  // 341 decoded (BF16) rows of 384 per chunk

}  // namespace

TEST_SUITE("sources") {
  TEST_CASE("an FP8 source converts to the reference's bytes for every scheme") {
    const auto cases = ReferenceCases();
    REQUIRE(cases.size() == 4);  // BF16, FP8_DYNAMIC, W4A16, NVFP4A16
    for (const GoldenCase& c : cases) {
      CAPTURE(c.name);
      TempDir tmp;
      auto r = ConvertSource(c.source, tmp / "out", c.scheme, c.ignore);
      REQUIRE_MESSAGE(r.ok(), r.status().ToString());
      CHECK(r->tensors_decoded + r->tensors_quantized >= 7);
      CheckSameFiles(c.expected, tmp / "out");
    }
  }

  TEST_CASE("a scale stored in another shard than its weight: the same bytes") {
    // fp8src-split holds fp8src's tensors with down_proj's scale moved to the second shard;
    // the reference fails on it, and its fp8src outputs are the expected bytes.
    for (const GoldenCase& c : ReferenceCases()) {
      CAPTURE(c.name);
      TempDir tmp;
      auto r = ConvertSource(DataDir() / "golden/fp8src-split/src", tmp / "out", c.scheme,
                             c.ignore);
      REQUIRE_MESSAGE(r.ok(), r.status().ToString());
      CheckSameFiles(c.expected, tmp / "out");
    }
  }

  TEST_CASE("E8M0 scales: decoded and NVFP4A16 outputs equal the independent computation") {
    const fs::path dir = DataDir() / "golden/fp8src-e8m0";
    TempDir tmp;
    auto bf16 = ConvertSource(dir / "src", tmp / "bf16", "BF16", {});
    REQUIRE_MESSAGE(bf16.ok(), bf16.status().ToString());
    CHECK(bf16->tensors_decoded == 7);
    CheckSameTensors(dir / "decoded", tmp / "bf16");
    auto nv = ConvertSource(
        dir / "src", tmp / "nvfp4", "NVFP4A16",
        {"lm_head", "re:.*embed_tokens$", "re:.*mlp\\.gate$", "re:.*down_proj$"});
    REQUIRE_MESSAGE(nv.ok(), nv.status().ToString());
    CheckSameFiles(dir / "NVFP4A16", tmp / "nvfp4");
  }

  TEST_CASE("weights larger than a chunk decode in chunks that cut blocks, as one decode") {
    TempDir tmp;
    WriteLargeFp8(tmp / "src", tmp / "decoded");
    auto whole = ConvertSource(tmp / "src", tmp / "bf16", "BF16", {}, kSmallChunk);
    REQUIRE_MESSAGE(whole.ok(), whole.status().ToString());
    CHECK(whole->chunk_bytes < 1000 * 384 * 2 / 2);  // at least three chunks per weight
    CHECK((whole->chunk_bytes / (384 * 2)) % 128 != 0);  // chunks end inside a block row
    CheckSameTensors(tmp / "decoded", tmp / "bf16");
    // Quantizing: the same bytes as quantizing the decoded checkpoint (NVFP4A16: q/k/v's
    // shared global scale from decoded values in the pre-pass; W4A16; FP8_BLOCK).
    for (const char* scheme : {"NVFP4A16", "W4A16", "FP8_BLOCK"}) {
      CAPTURE(scheme);
      auto a = ConvertSource(tmp / "src", tmp / (std::string("fp8-") + scheme), scheme, {},
                             kSmallChunk);
      REQUIRE_MESSAGE(a.ok(), a.status().ToString());
      auto b = ConvertSource(tmp / "decoded", tmp / (std::string("bf16-") + scheme), scheme, {});
      REQUIRE_MESSAGE(b.ok(), b.status().ToString());
      CheckSameFiles(tmp / (std::string("bf16-") + scheme), tmp / (std::string("fp8-") + scheme),
                     SafetensorsOnly);
    }
  }

  TEST_CASE("row pruning reads decoded rows; per-tensor pruning is refused at planning") {
    TempDir tmp;
    WriteLargeFp8(tmp / "src", tmp / "decoded");
    for (const char* spec : {"2:4", "unstructured:0.5"}) {
      CAPTURE(spec);
      ConvertOptions o;
      o.src = tmp / "src";
      o.dst = tmp / (std::string("a") + spec[0]);
      o.scheme = "W4A16";
      o.prune = spec;
      o.chunk_bytes = kSmallChunk;
      auto a = Convert(o);
      REQUIRE_MESSAGE(a.ok(), a.status().ToString());
      o.src = tmp / "decoded";
      o.dst = tmp / (std::string("b") + spec[0]);
      auto b = Convert(o);
      REQUIRE_MESSAGE(b.ok(), b.status().ToString());
      CHECK(a->zeroed == b->zeroed);
      CheckSameFiles(tmp / (std::string("b") + spec[0]), tmp / (std::string("a") + spec[0]),
                     SafetensorsOnly);
    }
    ConvertOptions o;
    o.src = tmp / "src";
    o.dst = tmp / "t";
    o.scheme = "W4A16";
    o.prune = "unstructured:0.5";
    o.prune_granularity = "tensor";
    auto plan = DryRun(o);
    REQUIRE(plan.ok());
    REQUIRE(plan->errors.size() == 3);
    CHECK(plan->errors[0].message().find("--prune-granularity tensor cannot read decoded") !=
          std::string::npos);
  }

  TEST_CASE("the resume fingerprint covers the shard holding a weight's scale") {
    ConvertOptions o;
    o.dst = "/nonexistent/quench-plan-only";
    o.scheme = "BF16";
    // Split: shard 1's down_proj scale lives in shard 2, so shard 1's fingerprint changes with
    // shard 2's header.
    o.src = DataDir() / "golden/fp8src-split/src";
    auto split = DryRun(o);
    REQUIRE(split.ok());
    const std::string before = ShardFingerprint(*split, 0);
    split->shards[1].src_header_hash ^= 1;
    CHECK(ShardFingerprint(*split, 0) != before);
    // Not split: every scale is in shard 1, which then does not depend on shard 2.
    o.src = DataDir() / "golden/fp8src/src";
    auto together = DryRun(o);
    REQUIRE(together.ok());
    const std::string alone = ShardFingerprint(*together, 0);
    together->shards[1].src_header_hash ^= 1;
    CHECK(ShardFingerprint(*together, 0) == alone);
  }

  TEST_CASE("verify compares an FP8 source's conversions against the decoded source") {
    for (const GoldenCase& c : ReferenceCases()) {
      CAPTURE(c.name);
      const auto r = VerifyClean(c.expected, c.source);
      CHECK(r.tensors_decoded + r.modules_quantized == 7);
      if (c.scheme != "BF16") CHECK(r.quality.size() == r.modules_quantized);
    }
    // A decoded weight one bit off is caught, named by its row.
    TempDir tmp;
    const fs::path out = tmp / "bf16";
    fs::copy(DataDir() / "golden/fp8src/BF16", out);
    auto folder = LoadModelFolder(out);
    REQUIRE(folder.ok());
    const Shard* s = nullptr;
    const TensorInfo* t = nullptr;
    for (const Shard& sh : folder->shards) {
      for (const TensorInfo& ti : sh.header.tensors) {
        if (ti.name == "model.layers.0.mlp.up_proj.weight") s = &sh, t = &ti;
      }
    }
    REQUIRE(t != nullptr);
    std::string bytes = ReadBytes(s->path);
    bytes[s->header.data_start + t->begin + 2 * 256 * 5 + 7] ^= 1;  // row 5
    fs::remove(s->path);
    WriteBytes(s->path, bytes);
    VerifyOptions v;
    v.dst = out;
    v.src = DataDir() / "golden/fp8src/src";
    auto r = Verify(v);
    REQUIRE(r.ok());
    REQUIRE(r->problems.size() == 1);
    CHECK(r->problems[0].rule == "changed");
    CHECK(r->problems[0].message.find("first in row 5") != std::string::npos);
  }

  TEST_CASE("a NaN code or a product beyond BF16 stops the run naming where, nothing left") {
    struct Case {
      uint8_t code;
      float scale;
      const char* message;
    };
    const Case cases[] = {
        {0xFF, 1.0f, "holds a NaN E4M3 code (row 2, column 5)"},
        {0x7E, std::ldexp(1.0f, 125), "rows 0..3 decode beyond BF16's range"},  // 448 * 2^125
    };
    for (const Case& c : cases) {
      CAPTURE(c.message);
      TempDir tmp;
      std::string codes(4 * 128, '\x38');
      codes[2 * 128 + 5] = static_cast<char>(c.code);
      std::string scale(4, '\0');
      std::memcpy(scale.data(), &c.scale, 4);
      WriteBytes(tmp / "src/config.json", kFp8Config);
      WriteShard(tmp / "src/model.safetensors",
                 {{"model.layers.0.mlp.up_proj.weight", DType::kF8E4M3, {4, 128}, codes},
                  {"model.layers.0.mlp.up_proj.weight_scale_inv", DType::kF32, {1, 1}, scale}});
      const RunResult r = RunQuench({"convert", (tmp / "src").string(), (tmp / "out").string(),
                                     "--scheme", "W4A16"});
      CHECK(r.exit_code == 3);
      CHECK(r.err.find(c.message) != std::string::npos);
      CHECK_FALSE(fs::exists(tmp / "out"));
      // NVFP4A16: the global-scale search reads this block (its only one) and stops there.
      const RunResult n = RunQuench({"convert", (tmp / "src").string(), (tmp / "out").string(),
                                     "--scheme", "NVFP4A16"});
      CHECK(n.exit_code == 3);
      CHECK(n.err.find("'model.layers.0.mlp.up_proj.weight' contains NaN or Inf") !=
            std::string::npos);
      CHECK_FALSE(fs::exists(tmp / "out"));
    }
  }

  TEST_CASE(
      "NVFP4A16: a NaN code in a block the global-scale search skips stops the run at its row") {
    // 2x2 blocks, each holding 448; the NaN sits in the smallest-scale block, which the
    // search for the largest |x| never reads (fp8_source_amax.cc), so the pipeline's decode
    // finds it and names its place; nothing is left.
    TempDir tmp;
    std::string codes(256 * 256, '\x38');
    for (size_t b = 0; b < 4; ++b) codes[(b / 2 * 128 + 3) * 256 + b % 2 * 128 + 9] = '\x7E';
    codes[5 * 256 + 7] = '\xFF';
    const float s[4] = {1.f, 2.f, 3.f, 4.f};
    std::string scale(16, '\0');
    std::memcpy(scale.data(), s, 16);
    WriteBytes(tmp / "src/config.json", kFp8Config);
    WriteShard(tmp / "src/model.safetensors",
               {{"model.layers.0.mlp.up_proj.weight", DType::kF8E4M3, {256, 256}, codes},
                {"model.layers.0.mlp.up_proj.weight_scale_inv", DType::kF32, {2, 2}, scale}});
    const RunResult r = RunQuench({"convert", (tmp / "src").string(), (tmp / "out").string(),
                                   "--scheme", "NVFP4A16"});
    CHECK(r.exit_code == 3);
    CHECK(r.err.find("holds a NaN E4M3 code (row 5, column 7)") != std::string::npos);
    CHECK_FALSE(fs::exists(tmp / "out"));
  }

  TEST_CASE("inspect says what an FP8 source's weights are stored as") {
    const RunResult text = RunQuench({"inspect", (DataDir() / "golden/fp8src-e8m0/src").string()});
    CHECK(text.exit_code == 0);
    CHECK(text.out.find("source: FP8 E4M3, 128x128 block scales (F8_E8M0), 7 weights") !=
          std::string::npos);
    const RunResult json =
        RunQuench({"inspect", (DataDir() / "golden/fp8src/src").string(), "--json"});
    auto j = ParseJson("inspect", json.out);
    REQUIRE(j.ok());
    CHECK(j->Find("source_format")->as_string() ==
          "FP8 E4M3, 128x128 block scales (F32), 7 weights");
    // A converted checkpoint is a compressed-tensors source (tests/test_sources_ct.cc).
    const RunResult out =
        RunQuench({"inspect", (DataDir() / "golden/fp8src/W4A16").string(), "--json"});
    auto k = ParseJson("inspect", out.out);
    REQUIRE(k.ok());
    CHECK(k->Find("source_format")->as_string().starts_with("compressed-tensors pack-quantized"));
  }

  TEST_CASE("a plain source with --scheme BF16 is a usage error") {
    TempDir dir;
    const RunResult plain = RunQuench({"convert", (DataDir() / "tiny-llama").string(),
                                       (dir / "o2").string(), "--scheme", "BF16"});
    CHECK(plain.exit_code == 2);
    CHECK(plain.err.find("--scheme BF16 writes a quantized source decoded") != std::string::npos);
  }
}

}  // namespace quench::testing
