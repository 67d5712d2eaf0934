// 3-D compressed-tensors weights (fused MoE expert stacks) as sources, end to end. Expected
// bytes: data/golden/ct3d_manifest.json (scripts/make_golden_ct3d.py): per case, the
// reference's output tensors (dtype, shape, FNV-1a 64) and config.json, for a source in each
// compressed format quench writes (float-quantized channel and block, int-quantized, pack-
// quantized with and without zero points, NVFP4, MXFP4, MXFP8) whose expert stacks
// `experts.gate_up_proj` [E, 2I, H] / `experts.down_proj` [E, H, I] are stored 3-D:
//   <SCHEME>/BF16  CompressedTensorsDequantizer via convert_checkpoint: stacks decoded whole,
//                  3-D (checked by the generator to equal the reference's decode of the same
//                  codes stored per expert, 2-D);
//   <SCHEME>/<T>   model_free_ptq with the dequantizer as converter: decoded, split per expert,
//                  quantized to T.
#include <doctest/doctest.h>

#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "ct_cases.h"
#include "format/json.h"
#include "format/model_folder.h"
#include "format/safetensors.h"
#include "quench/convert.h"
#include "test_util.h"
#include "verify/verify.h"

namespace quench::testing {
namespace {

const JsonValue& Manifest() { return CtManifest("ct3d_manifest.json"); }

std::vector<CtCase> Cases() { return CtCases("ct3d_manifest.json"); }

// Every tensor of `a` is in `b` with the same dtype, shape and bytes, and no other.
void CheckSameTensors(const fs::path& a, const fs::path& b) {
  const auto ga = LoadAll(a);
  const auto gb = LoadAll(b);
  size_t na = 0, nb = 0;
  for (const auto& [_, l] : ga) na += l.shard.header.tensors.size();
  for (const auto& [_, l] : gb) nb += l.shard.header.tensors.size();
  CHECK(na == nb);
  for (const auto& [_, la] : ga) {
    for (const TensorInfo& ta : la.shard.header.tensors) {
      CAPTURE(ta.name);
      auto [lb, tb] = FindTensor(gb, ta.name);
      REQUIRE(tb != nullptr);
      CHECK(ta.dtype == tb->dtype);
      CHECK(ta.shape == tb->shape);
      REQUIRE(ta.nbytes() == tb->nbytes());
      CHECK(std::memcmp(la.Data(ta), lb->Data(*tb), ta.nbytes()) == 0);
    }
  }
}

TEST_CASE("3-D compressed-tensors sources: every format decodes and converts as the reference") {
  const std::vector<CtCase> cases = Cases();
  REQUIRE(cases.size() >= 11);
  size_t stacks = 0;
  for (const CtCase& k : cases) {
    CAPTURE(k.name);
    TempDir tmp;
    auto r = ConvertSource(k.source, tmp / "out", k.scheme, k.ignore);
    REQUIRE_MESSAGE(r.ok(), r.status().message());
    CheckTensors(*k.tensors, tmp / "out");
    CheckConfig(k.config, tmp / "out" / "config.json");
    // BF16 keeps each stack whole and 3-D, as convert_checkpoint writes it.
    if (const JsonValue* w = k.tensors->Find("model.layers.0.mlp.experts.gate_up_proj.weight")) {
      CHECK(w->Find("shape")->as_array().size() == 3);
      ++stacks;
    }
  }
  CHECK(stacks >= 8);  // one BF16 case per source format
}

TEST_CASE(
    "3-D compressed-tensors sources: small chunks, inside and across experts, change no byte") {
  for (const CtCase& k : Cases()) {
    if (k.name != "W4A16_ASYM/BF16" && k.name != "FP8_BLOCK/BF16" && k.name != "NVFP4A16/BF16" &&
        k.name != "W4A16/MXFP4A16" && k.name != "MXFP4A16/BF16") {
      continue;
    }
    CAPTURE(k.name);
    for (uint64_t rows : {3, 200}) {  // 128 columns: boundaries inside and across experts
      CAPTURE(rows);
      TempDir tmp;
      auto r = ConvertSource(k.source, tmp / "out", k.scheme, k.ignore, rows * 128 * 2);
      REQUIRE_MESSAGE(r.ok(), r.status().message());
      CheckTensors(*k.tensors, tmp / "out");
    }
  }
}

TEST_CASE("3-D compressed-tensors sources: where the reference fails, its exact failure") {
  // CompressedTensorsDequantizer cannot decode block-scaled, NVFP4 or MXFP4 stacks (its
  // decompressors reshape as if the weight were 2-D); for those the expected BF16 tensors are
  // its decode of the same codes stored per expert (2-D), stacked, and quench must match that.
  const std::map<std::string, std::string> want = {
      {"FP8_BLOCK/BF16",
       "RuntimeError: shape '[0, 128, 1, 128]' is invalid for input of size 65536"},
      {"NVFP4A16/BF16", "ValueError: too many values to unpack (expected 2)"},
      {"NVFP4A16/FP8_DYNAMIC", "ValueError: too many values to unpack (expected 2)"},
      {"MXFP4A16/BF16", "ValueError: too many values to unpack (expected 2)"},
  };
  std::map<std::string, std::string> got;
  for (const JsonValue& c : Manifest().Find("cases")->as_array()) {
    const JsonValue* err = c.Find("reference_error");
    if (err == nullptr) continue;
    const std::string name = c.Find("name")->as_string();
    got[name] = err->as_string();
    if (c.Find("scheme")->as_string() == "BF16") {
      CAPTURE(name);
      CHECK(c.Find("via") != nullptr);
      CHECK(c.Find("expected_tensors") != nullptr);
    }
  }
  CHECK(got == want);
}

TEST_CASE("verify DST SRC compares against the decoded 3-D source") {
  for (const CtCase& k : Cases()) {
    CAPTURE(k.name);
    TempDir tmp;
    auto c = ConvertSource(k.source, tmp / "out", k.scheme, k.ignore);
    REQUIRE_MESSAGE(c.ok(), c.status().message());
    const VerifyReport r = VerifyClean(tmp / "out", k.source);
    CHECK(r.tensors_decoded + r.modules_quantized > 0);
  }
  // A decoded stack one bit off in its last expert is caught.
  TempDir tmp;
  const fs::path src = DataDir() / "golden" / "ct3dsrc" / "W4A16";
  REQUIRE(ConvertSource(src, tmp / "out", "BF16", {}).ok());
  FlipTensorBit(tmp / "out", "model.layers.0.mlp.experts.down_proj.weight",
                [](const TensorInfo& t) {
                  REQUIRE(t.shape.size() == 3);
                  return t.end - 7;  // expert 3's last row
                });
  VerifyOptions v;
  v.dst = tmp / "out";
  v.src = src;
  auto bad = Verify(v);
  REQUIRE(bad.ok());
  CHECK_FALSE(bad->ok());
}

TEST_CASE("3-D compressed-tensors sources: one pass equals decoding to BF16 and then quantizing") {
  // CT3D -> T in one pass (decoded chunk by chunk, split per expert, quantized) writes the
  // bytes of CT3D -> BF16 (stacks kept 3-D) -> T (split per expert, quantized).
  for (const auto& [source, target] : std::vector<std::pair<std::string, std::string>>{
           {"W4A16_ASYM", "NVFP4A16"}, {"FP8_BLOCK", "W4A16"}, {"NVFP4A16", "W8A8"},
           {"MXFP8A16", "FP8_DYNAMIC"}, {"W8A8", "MXFP4A16"}, {"MXFP4A16", "W4A16"}}) {
    CAPTURE(source);
    const fs::path src = DataDir() / "golden" / "ct3dsrc" / source;
    const std::vector<std::string> ignore = {"lm_head", "re:.*embed_tokens$", "re:.*mlp\\.gate$"};
    TempDir tmp;
    auto one = ConvertSource(src, tmp / "one", target, ignore);
    REQUIRE_MESSAGE(one.ok(), one.status().message());
    REQUIRE(ConvertSource(src, tmp / "bf16", "BF16", {}).ok());
    auto two = ConvertSource(tmp / "bf16", tmp / "two", target, ignore);
    REQUIRE_MESSAGE(two.ok(), two.status().message());
    CheckSameTensors(tmp / "one", tmp / "two");
    // And back: the one-pass output decodes as the two-pass output does.
    REQUIRE(ConvertSource(tmp / "one", tmp / "one-bf16", "BF16", {}).ok());
    REQUIRE(ConvertSource(tmp / "two", tmp / "two-bf16", "BF16", {}).ok());
    CheckSameTensors(tmp / "one-bf16", tmp / "two-bf16");
  }
}

TEST_CASE("inspect and --dry-run say the source holds 3-D stacks and how they are treated") {
  const fs::path src = DataDir() / "golden" / "ct3dsrc" / "NVFP4A16";
  TempDir tmp;
  for (const char* scheme : {"BF16", "W4A16"}) {
    CAPTURE(scheme);
    auto dry = RunQuench({"convert", src.string(), (tmp / "out").string(), "--scheme", scheme,
                          "--dry-run"});
    CHECK(dry.exit_code == 0);
    CHECK((dry.out + dry.err).find("compressed-tensors nvfp4-pack-quantized (float4, group 16 + "
                                   "global") != std::string::npos);
    CHECK((dry.out + dry.err).find("4 of them 3-D expert stacks, decoded per expert") !=
          std::string::npos);
    CHECK_FALSE(fs::exists(tmp / "out"));
  }
  auto in = RunQuench({"inspect", src.string()});
  CHECK(in.exit_code == 0);
  CHECK(in.out.find("3-D expert stacks, decoded per expert") != std::string::npos);
}

TEST_CASE("a 3-D stack model_free_ptq does not split decodes whole; targeted, it is refused") {
  // x: 2 experts of [4, 64] int4 in groups of 32 (W4A16's pack-quantized layout). Every code
  // word 0x11111111 (each nibble 1: code 1 - 8 = -7); expert 0's scales 0.5, expert 1's 2: by
  // the format's definition x decodes to -3.5 (expert 0) and -14 (expert 1).
  TempDir tmp;
  const fs::path src = tmp / "src";
  fs::create_directories(src);
  std::string shape(24, '\0');
  for (int i = 0; i < 3; ++i) {
    const int64_t v[3] = {2, 4, 64};
    std::memcpy(&shape[8 * i], &v[i], 8);
  }
  std::vector<float> scales(16, 0.5f);
  for (int i = 8; i < 16; ++i) scales[i] = 2.f;
  WriteShard(src / "model.safetensors",
             {{"x.weight_packed", DType::kI32, {2, 4, 8}, std::string(256, '\x11')},
              {"x.weight_shape", DType::kI64, {3}, shape},
              {"x.weight_scale", DType::kBF16, {2, 4, 2}, Bf16Bytes(scales)}});
  WriteBytes(src / "config.json", R"({"quantization_config": {"quant_method": "compressed-tensors",
    "format": "pack-quantized", "ignore": [], "config_groups": {"group_0": {"targets": ["Linear"],
    "weights": {"num_bits": 4, "type": "int", "symmetric": true, "strategy": "group",
    "group_size": 32}}}}})");
  auto r = ConvertSource(src, tmp / "out", "BF16", {});
  REQUIRE_MESSAGE(r.ok(), r.status().message());
  const auto g = LoadAll(tmp / "out");
  auto [gl, gt] = FindTensor(g, "x.weight");
  REQUIRE(gt != nullptr);
  CHECK(gt->shape == std::vector<uint64_t>{2, 4, 64});
  REQUIRE(gt->dtype == DType::kBF16);
  for (uint64_t i = 0; i < 512; ++i) {
    CAPTURE(i);
    CHECK(DecodeBF16(gl->Data(*gt) + 2 * i) == (i < 256 ? -3.5 : -14.0));
  }
  auto q = ConvertSource(src, tmp / "q", "W4A16", {});
  REQUIRE_FALSE(q.ok());
  CHECK(q.status().message().find("'x.weight' is targeted for W4A16 but has shape [2, 4, 64]") !=
        std::string::npos);
  CHECK_FALSE(fs::exists(tmp / "q"));
  auto ig = ConvertSource(src, tmp / "ig", "W4A16", {"x"});
  REQUIRE_MESSAGE(ig.ok(), ig.status().message());
  CheckSameTensors(tmp / "out", tmp / "ig");
}

TEST_CASE("a square packed stack is split per expert, its weight_shape in another shard") {
  // gate_up_proj [2 experts, 64 rows, 64 columns] with hidden_size 64: told from the [E, in,
  // out] layout by the decoded columns, which only weight_shape holds (the codes are packed);
  // weight_shape lives in the first shard, the codes in the second.
  TempDir tmp;
  const fs::path src = tmp / "src";
  fs::create_directories(src);
  const std::string m = "model.layers.0.mlp.experts.gate_up_proj";
  std::string shape(24, '\0');
  const int64_t dims[3] = {2, 64, 64};
  std::memcpy(shape.data(), dims, 24);
  WriteShard(
      src / "model-00001-of-00002.safetensors",
      {{m + ".weight_shape", DType::kI64, {3}, shape},
       {m + ".weight_scale", DType::kBF16, {2, 64, 2}, Bf16Bytes(std::vector<float>(256, 0.5f))}});
  WriteShard(src / "model-00002-of-00002.safetensors",
             {{m + ".weight_packed", DType::kI32, {2, 64, 8}, std::string(4096, '\x11')}});
  WriteBytes(src / "model.safetensors.index.json",
             R"({"metadata": {}, "weight_map": {")" + m +
                 R"(.weight_shape": "model-00001-of-00002.safetensors", ")" + m +
                 R"(.weight_scale": "model-00001-of-00002.safetensors", ")" + m +
                 R"(.weight_packed": "model-00002-of-00002.safetensors"}})");
  WriteBytes(src / "config.json",
             R"({"hidden_size": 64, "quantization_config": {"quant_method": "compressed-tensors",
    "format": "pack-quantized", "ignore": [], "config_groups": {"group_0": {"targets": ["Linear"],
    "weights": {"num_bits": 4, "type": "int", "symmetric": true, "strategy": "group",
    "group_size": 32}}}}})");
  auto r = ConvertSource(src, tmp / "out", "FP8_DYNAMIC", {});
  REQUIRE_MESSAGE(r.ok(), r.status().message());
  const auto g = LoadAll(tmp / "out");
  for (const char* piece : {"0.gate_proj", "0.up_proj", "1.gate_proj", "1.up_proj"}) {
    CAPTURE(piece);
    auto [gl, gt] = FindTensor(g, "model.layers.0.mlp.experts." + std::string(piece) + ".weight");
    REQUIRE(gt != nullptr);
    CHECK(gt->shape == std::vector<uint64_t>{32, 64});
    CHECK(gt->dtype == DType::kF8E4M3);
  }
}

}  // namespace
}  // namespace quench::testing
