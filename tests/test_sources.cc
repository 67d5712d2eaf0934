// Quantized sources: config.json's quantization_config read and checked against the tensors
// (format/source_quant). Expected values come from the formats' definitions: DeepSeek-V3's
// FP8 layout (E4M3 weight, F32 weight_scale_inv [ceil(rows/128), ceil(cols/128)]) and OCP
// MX's E8M0 (2^(e-127), 0xFF NaN).
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include "format/json.h"
#include "format/source_quant.h"
#include "quench/convert.h"
#include "schemes/fp8.h"
#include "test_util.h"

namespace quench::testing {
namespace {

const char* kFp8Config =
    R"({"architectures": ["DeepseekV3ForCausalLM"], "quantization_config": )"
    R"({"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", )"
    R"("weight_block_size": [128, 128]}})";

RawTensor Fp8(const std::string& name, uint64_t rows, uint64_t cols) {
  return {name, DType::kF8E4M3, {rows, cols}, std::string(rows * cols, '\x38')};
}
RawTensor Scale(const std::string& name, std::vector<uint64_t> shape, DType d = DType::kF32) {
  uint64_t n = 1;
  for (uint64_t s : shape) n *= s;
  const size_t esz = d == DType::kF32 ? 4 : d == DType::kBF16 ? 2 : d == DType::kF8E8M0 ? 1 : 4;
  return {name, d, shape, std::string(n * esz, '\0')};
}

// A folder with `config` and the tensors split over two shards as given.
Result<SourceQuantization> Detect(const TempDir& dir, const std::string& config,
                                  const std::vector<RawTensor>& shard1,
                                  const std::vector<RawTensor>& shard2 = {}) {
  WriteBytes(dir / "config.json", config);
  WriteShard(dir / "model-00001-of-00002.safetensors", shard1);
  if (!shard2.empty()) WriteShard(dir / "model-00002-of-00002.safetensors", shard2);
  auto folder = LoadModelFolder(dir.path());
  REQUIRE(folder.ok());
  return DetectSourceQuantization(*folder);
}

}  // namespace

TEST_SUITE("sources") {
  TEST_CASE("a config without quantization_config is a plain source") {
    TempDir dir;
    auto q = Detect(dir, R"({"architectures": ["LlamaForCausalLM"]})",
                    {{"w.weight", DType::kBF16, {2, 2}, std::string(8, '\0')}});
    REQUIRE(q.ok());
    CHECK(q->format == SourceFormat::kPlain);
    CHECK(q->scales.empty());
  }

  TEST_CASE("DeepSeek FP8: block scales paired across shards, partial blocks counted up") {
    TempDir dir;
    auto q = Detect(dir, kFp8Config,
                    {Fp8("model.layers.0.mlp.down_proj.weight", 300, 129),
                     Scale("model.layers.0.self_attn.q_proj.weight_scale_inv", {1, 2}),
                     {"model.norm.weight", DType::kBF16, {129}, std::string(258, '\0')}},
                    {Fp8("model.layers.0.self_attn.q_proj.weight", 128, 256),
                     Scale("model.layers.0.mlp.down_proj.weight_scale_inv", {3, 2})});
    REQUIRE(q.ok());
    CHECK(q->format == SourceFormat::kFp8);
    CHECK(q->block_rows == 128);
    CHECK(q->block_cols == 128);
    CHECK(q->scale_tensors == 2);
    REQUIRE(q->scales.size() == 2);
    const SourceScale& down = q->scales.at("model.layers.0.mlp.down_proj.weight");
    CHECK(down.shard == 1);  // the scale lives in the other shard
    CHECK(down.name == "model.layers.0.mlp.down_proj.weight_scale_inv");
    CHECK(down.block_rows == 128);
    CHECK(down.nbytes == 3 * 2 * 4);
    CHECK(q->scales.at("model.layers.0.self_attn.q_proj.weight").shard == 0);
    CHECK(q->description.find("128x128") != std::string::npos);
  }

  TEST_CASE("one scale per tensor covers the whole weight; E8M0 and BF16 scales accepted") {
    TempDir dir;
    auto q = Detect(dir, kFp8Config,
                    {Fp8("a.weight", 10, 20), Scale("a.weight_scale_inv", {}),
                     Fp8("b.weight", 256, 384), Scale("b.weight_scale_inv", {2, 3}, DType::kF8E8M0),
                     Fp8("c.weight", 129, 1), Scale("c.weight_scale_inv", {2, 1}, DType::kBF16)});
    REQUIRE(q.ok());
    CHECK(q->scales.at("a.weight").block_rows == 10);
    CHECK(q->scales.at("a.weight").block_cols == 20);
    CHECK(q->scales.at("b.weight").dtype == DType::kF8E8M0);
    CHECK(q->scales.at("c.weight").dtype == DType::kBF16);
  }

  TEST_CASE("FP8 sources that contradict themselves are refused, naming the tensor") {
    struct Case {
      const char* what;
      std::vector<RawTensor> tensors;
      ErrorCode code;
      const char* message;
    };
    const Case cases[] = {
        {"weight without scale",
         {Fp8("x.weight", 4, 4)},
         ErrorCode::kInvalidInput,
         "FP8 tensor 'x.weight' has no 'x.weight_scale_inv' in any shard"},
        {"scale of the wrong shape",
         {Fp8("x.weight", 300, 129), Scale("x.weight_scale_inv", {2, 2})},
         ErrorCode::kInvalidInput,
         "'x.weight_scale_inv' has shape [2, 2]; expected [3, 2]"},
        {"scale of the wrong dtype",
         {Fp8("x.weight", 4, 4), Scale("x.weight_scale_inv", {1, 1}, DType::kI32)},
         ErrorCode::kInvalidInput,
         "has dtype I32; an FP8 weight's scale must be F32, BF16 or F8_E8M0"},
        {"scale without weight",
         {{"x.weight", DType::kBF16, {2, 2}, std::string(8, '\0')},
          Scale("x.weight_scale_inv", {1, 1})},
         ErrorCode::kInvalidInput,
         "scale 'x.weight_scale_inv' has no FP8 weight 'x.weight'"},
        {"3-D FP8 experts",
         {{"e.weight", DType::kF8E4M3, {2, 4, 4}, std::string(32, '\0')},
          Scale("e.weight_scale_inv", {2, 1, 1})},
         ErrorCode::kUnsupported,
         "only 2-D FP8 weights can be decoded so far"},
    };
    for (const Case& c : cases) {
      CAPTURE(c.what);
      TempDir dir;
      auto q = Detect(dir, kFp8Config, c.tensors);
      REQUIRE_FALSE(q.ok());
      CHECK(q.status().code() == c.code);
      CHECK(q.status().message().find(c.message) != std::string::npos);
    }
  }

  TEST_CASE("quantization methods quench cannot decode, and bad block sizes, are refused") {
    TempDir dir;
    auto q = Detect(dir, R"({"quantization_config": {"quant_method": "gptq", "bits": 4}})",
                    {{"w.weight", DType::kBF16, {2, 2}, std::string(8, '\0')}});
    REQUIRE_FALSE(q.ok());
    CHECK(q.status().code() == ErrorCode::kUnsupported);
    CHECK(q.status().message().find("quant_method 'gptq'") != std::string::npos);
    // The refusal names every method quench does read.
    for (const char* m : {"'fp8'", "'awq'", "'modelopt'", "'compressed-tensors'"}) {
      CAPTURE(m);
      CHECK(q.status().message().find(m) != std::string::npos);
    }
    TempDir dir2;
    auto b = Detect(
        dir2, R"({"quantization_config": {"quant_method": "fp8", "weight_block_size": [128]}})",
        {{"w.weight", DType::kBF16, {2, 2}, std::string(8, '\0')}});
    REQUIRE_FALSE(b.ok());
    CHECK(b.status().message().find("weight_block_size must be two positive integers") !=
          std::string::npos);
    TempDir dir3;
    auto f = Detect(dir3, R"({"quantization_config": {"quant_method": "fp8", "fmt": "e5m2"}})",
                    {{"w.weight", DType::kBF16, {2, 2}, std::string(8, '\0')}});
    REQUIRE_FALSE(f.ok());
    CHECK(f.status().code() == ErrorCode::kUnsupported);
  }

  TEST_CASE("FP8 decoding equals compressed-tensors' FP8BlockDequantizer byte for byte") {
    // data/golden/fp8src: scripts/make_golden_fp8.py, the reference's convert_checkpoint.
    const fs::path src = DataDir() / "golden" / "fp8src" / "src";
    const auto source = LoadAll(src);
    const auto expected = LoadAll(DataDir() / "golden" / "fp8src" / "BF16");
    auto folder = LoadModelFolder(src);
    REQUIRE(folder.ok());
    auto q = DetectSourceQuantization(*folder);
    REQUIRE(q.ok());
    REQUIRE(q->scales.size() == 7);
    for (const auto& [name, scale] : q->scales) {
      CAPTURE(name);
      auto [wl, wt] = FindTensor(source, name);
      auto [sl, st] = FindTensor(source, scale.name);
      auto [el, et] = FindTensor(expected, name);
      REQUIRE(wt != nullptr);
      REQUIRE(st != nullptr);
      REQUIRE(et != nullptr);
      CHECK(et->dtype == DType::kBF16);
      std::vector<float> scales(st->numel());
      for (size_t i = 0; i < scales.size(); ++i) {
        scales[i] = SourceScaleToF32(scale.dtype, sl->Data(*st) + i * 4);
      }
      fp8::SourceChunk in;
      in.codes = wl->Data(*wt);
      in.rows = wt->shape[0];
      in.cols = wt->shape[1];
      in.scales = scales.data();
      in.scale_cols = scale.shape[1];
      in.block_rows = scale.block_rows;
      in.block_cols = scale.block_cols;
      std::string out(wt->numel() * 2, '\0');
      REQUIRE(fp8::DequantizeSource(in, reinterpret_cast<uint8_t*>(out.data())));
      CHECK(out == std::string(reinterpret_cast<const char*>(el->Data(*et)), et->nbytes()));
      // And in row chunks that start inside a block, as the pipeline reads them.
      std::string chunked(out.size(), '\0');
      for (size_t r0 = 0; r0 < in.rows; r0 += 37) {
        fp8::SourceChunk c = in;
        c.first_row = r0;
        c.rows = std::min<size_t>(37, in.rows - r0);
        c.codes = in.codes + r0 * in.cols;
        c.scales = scales.data() + (r0 / 128) * in.scale_cols;
        REQUIRE(fp8::DequantizeSource(
            c, reinterpret_cast<uint8_t*>(chunked.data()) + 2 * r0 * in.cols));
      }
      CHECK(chunked == out);
    }
  }

  TEST_CASE("planning an FP8 source lays out the reference's files exactly") {
    // Every case of data/golden/fp8_manifest.json the reference completed: the planned shard
    // headers (names, dtypes, shapes, offsets), index and config.json equal its bytes, so the
    // decoded tensors' place and size, and the scales' absence, are the reference's.
    auto manifest = ReadJsonFile((DataDir() / "golden" / "fp8_manifest.json").string());
    REQUIRE(manifest.ok());
    size_t checked = 0;
    for (const JsonValue& c : manifest->Find("cases")->as_array()) {
      if (c.Find("expected") == nullptr) continue;
      const std::string name = c.Find("name")->as_string();
      CAPTURE(name);
      const fs::path want = DataDir() / c.Find("expected")->as_string();
      ConvertOptions o;
      o.src = DataDir() / c.Find("source")->as_string();
      o.dst = "/nonexistent/quench-plan-only";
      o.scheme = c.Find("scheme")->as_string();
      for (const JsonValue& i : c.Find("ignore")->as_array()) o.ignore.push_back(i.as_string());
      o.default_ignore = false;  // the reference's ignore list, as given
      auto plan = DryRun(o);
      REQUIRE_MESSAGE(plan.ok(), plan.status().ToString());
      REQUIRE(plan->errors.empty());
      CHECK(plan->source_format.starts_with("FP8 E4M3, 128x128 block scales (F32)"));
      for (const PlannedShard& ps : plan->shards) {
        CAPTURE(ps.rel_name);
        const std::string bytes = ReadBytes(want / ps.rel_name);
        CHECK(ps.file_size == bytes.size());
        CHECK(ps.header == bytes.substr(0, ps.header.size()));
      }
      for (const PlannedFile& f : plan->files) {
        CAPTURE(f.rel_name);
        REQUIRE(f.copy_from.empty());  // index and config.json are written
        CHECK(f.contents == ReadBytes(want / f.rel_name));
      }
      ++checked;
    }
    CHECK(checked == 4);
  }

  TEST_CASE("scale elements decode as their formats define them") {
    const uint8_t e8m0[] = {127, 0, 254, 1, 130, 255};
    CHECK(SourceScaleToF32(DType::kF8E8M0, &e8m0[0]) == 1.0f);
    CHECK(SourceScaleToF32(DType::kF8E8M0, &e8m0[1]) == std::ldexp(1.0f, -127));
    CHECK(SourceScaleToF32(DType::kF8E8M0, &e8m0[2]) == std::ldexp(1.0f, 127));
    CHECK(SourceScaleToF32(DType::kF8E8M0, &e8m0[3]) == std::ldexp(1.0f, -126));
    CHECK(SourceScaleToF32(DType::kF8E8M0, &e8m0[4]) == 8.0f);
    CHECK(std::isnan(SourceScaleToF32(DType::kF8E8M0, &e8m0[5])));
    const uint8_t bf16[] = {0x80, 0x3F};  // 0x3F80 = 1.0
    CHECK(SourceScaleToF32(DType::kBF16, bf16) == 1.0f);
    const float f = 0.000337f;
    CHECK(SourceScaleToF32(DType::kF32, reinterpret_cast<const uint8_t*>(&f)) == f);
  }
}

}  // namespace quench::testing
