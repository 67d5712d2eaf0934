// compressed-tensors checkpoints as sources, end to end. Expected bytes:
//   - data/golden/ct_manifest.json (scripts/make_golden_ct.py): per case, the reference's
//     output tensors (dtype, shape, FNV-1a 64 of the bytes) and config.json:
//     CompressedTensorsDequantizer (BF16) or model_free_ptq with it as converter (a scheme),
//     from the reference's own outputs of data/tiny-llama and data/golden/qedge-bf16 in each
//     format (2- to 8-bit packed, zero points, channel, groups, W4A8, W4AFP8, MX, NVFP4), and
//     synthetic sources (mixed-precision; activation order with g_idx and quench's
//     pack-quantized W4AFP8, which the reference refuses: their expected tensors are the
//     format's definition computed by the generator, checked there against the reference).
//   - the same outputs with small chunks: a weight's scale and zero-point rows are read with
//     its rows, so chunk boundaries (inside packed zero-point words) change no byte.
#include <doctest/doctest.h>

#include <cstring>
#include <random>
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

const JsonValue& Manifest() { return CtManifest("ct_manifest.json"); }

std::vector<CtCase> Cases() { return CtCases("ct_manifest.json"); }

Result<ConvertSummary> Run(const CtCase& k, const fs::path& dst, uint64_t chunk_bytes = 0) {
  return ConvertSource(k.source, dst, k.scheme, k.ignore, chunk_bytes);
}

TEST_CASE("compressed-tensors sources: every format decodes and converts as the reference") {
  const std::vector<CtCase> cases = Cases();
  REQUIRE(cases.size() >= 34);
  for (const CtCase& k : cases) {
    CAPTURE(k.name);
    TempDir tmp;
    auto r = Run(k, tmp / "out");
    REQUIRE_MESSAGE(r.ok(), r.status().message());
    CheckTensors(*k.tensors, tmp / "out");
    CheckConfig(k.config, tmp / "out" / "config.json");
  }
}

TEST_CASE("compressed-tensors sources: small chunks change no byte") {
  for (const CtCase& k : Cases()) {
    if (k.name != "tiny-llama/W4A16_ASYM/BF16" && k.name != "tiny-llama/NVFP4A16/W4A16" &&
        k.name != "ctsrc/gidx/BF16" && k.name != "tiny-llama/FP8_BLOCK/BF16") {
      continue;
    }
    CAPTURE(k.name);
    TempDir tmp;
    // 3 decoded rows of 256 columns a chunk: boundaries fall inside the 8-row words of the
    // packed zero points and the 128-row tiles of the block scales.
    auto r = Run(k, tmp / "out", 3 * 256 * 2);
    REQUIRE_MESSAGE(r.ok(), r.status().message());
    CheckTensors(*k.tensors, tmp / "out");
  }
}

TEST_CASE("activation order: the reference refuses it, quench applies g_idx") {
  // compressed-tensors 0.19.0 removed actorder "group" from its QuantizationArgs, so its
  // dequantizer refuses such checkpoints (and would ignore weight_g_idx); the expected tensors
  // are the format's definition with g_idx applied (make_golden_ct.py), and they differ from
  // the same codes decoded without it (tiny-llama/W4A16/BF16), so g_idx is really exercised.
  const JsonValue* gidx = nullptr;
  const JsonValue* plain = nullptr;
  for (const JsonValue& c : Manifest().Find("cases")->as_array()) {
    if (c.Find("name")->as_string() == "ctsrc/gidx/BF16") gidx = &c;
    if (c.Find("name")->as_string() == "tiny-llama/W4A16/BF16") plain = &c;
  }
  REQUIRE(gidx != nullptr);
  REQUIRE(plain != nullptr);
  CHECK(gidx->Find("reference_error")->as_string().find(
            "does not match expected compressed-tensors quantization format") !=
        std::string::npos);
  const JsonValue& want = *gidx->Find("expected_tensors");
  CHECK(want.Find("model.layers.0.self_attn.q_proj.weight_g_idx") == nullptr);
  for (const char* m :
       {"model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.up_proj.weight"}) {
    CAPTURE(m);
    CHECK(DumpCompactJson(*want.Find(m)) !=
          DumpCompactJson(*plain->Find("expected_tensors")->Find(m)));
  }
}

TEST_CASE("verify DST SRC compares against the decoded compressed-tensors source") {
  for (const CtCase& k : Cases()) {
    if (k.name.find("ctsrc/gidx") != std::string::npos) continue;  // below
    CAPTURE(k.name);
    TempDir tmp;
    auto c = Run(k, tmp / "out");
    REQUIRE_MESSAGE(c.ok(), c.status().message());
    const auto r = VerifyClean(tmp / "out", k.source);
    CHECK(r.tensors_decoded + r.modules_quantized > 0);
  }
  // The g_idx source: its output verifies, and a decoded weight one bit off is caught by row.
  TempDir tmp;
  const fs::path src = DataDir() / "golden" / "ctsrc" / "gidx";
  ConvertOptions o;
  o.src = src;
  o.dst = tmp / "out";
  o.scheme = "BF16";
  REQUIRE(Convert(o).ok());
  VerifyOptions v;
  v.dst = tmp / "out";
  v.src = src;
  auto good = Verify(v);
  REQUIRE(good.ok());
  CHECK(good->ok());
  FlipTensorBit(tmp / "out", "model.layers.1.self_attn.o_proj.weight",
                [](const TensorInfo& t) { return t.begin + 2 * 256 * 7 + 3; });  // row 7
  auto r = Verify(v);
  REQUIRE(r.ok());
  REQUIRE(r->problems.size() == 1);
  CHECK(r->problems[0].rule == "changed");
  CHECK(r->problems[0].message.find("first in row 7") != std::string::npos);
}

TEST_CASE("a quantization_config under text_config (Kimi K2.5, K2.6) is the source's") {
  // Kimi K2.5 and K2.6 keep their compressed-tensors config in text_config (llm-compressor
  // reads it with quant_config_key="text_config.quantization_config"). The same source with
  // its config moved there converts to the same shard bytes, decoded and requantized, and the
  // output's one quantization_config is at the top level, none left in text_config.
  const fs::path plain = DataDir() / "golden" / "ctsrc" / "W8A16";
  TempDir tmp;
  const fs::path nested = tmp / "nested";
  fs::copy(plain, nested, fs::copy_options::recursive);
  auto cfg = ReadJsonFile((plain / "config.json").string());
  REQUIRE(cfg.ok());
  JsonValue text = JsonValue::MakeObject();
  for (const auto& [key, value] : cfg->as_object()) {
    if (key != "architectures") text.Set(key, value);
  }
  JsonValue top = JsonValue::MakeObject();
  top.Set("architectures",
          JsonValue(JsonValue::Array{JsonValue("KimiK25ForConditionalGeneration")}));
  top.Set("model_type", "kimi_k25");
  top.Set("text_config", std::move(text));
  WriteBytes(nested / "config.json", DumpCompactJson(top));
  for (const char* scheme : {"BF16", "W8A8"}) {
    CAPTURE(scheme);
    for (const auto& [src, dst] : {std::pair{plain, tmp / "from-plain"},
                                   std::pair{nested, tmp / "from-nested"}}) {
      ConvertOptions o;
      o.src = src;
      o.dst = dst;
      o.scheme = scheme;
      auto r = Convert(o);
      REQUIRE_MESSAGE(r.ok(), r.status().ToString());
    }
    CHECK(CheckSameFiles(tmp / "from-plain", tmp / "from-nested", SafetensorsOnly) > 0);
    auto out = ReadJsonFile((tmp / "from-nested" / "config.json").string());
    REQUIRE(out.ok());
    CHECK((out->Find("quantization_config") != nullptr) == (std::string(scheme) != "BF16"));
    CHECK(out->Find("text_config")->Find("quantization_config") == nullptr);
    VerifyClean(tmp / "from-nested", nested);
    fs::remove_all(tmp / "from-plain");
    fs::remove_all(tmp / "from-nested");
  }
}

TEST_CASE("inspect and --dry-run say what a compressed-tensors source is") {
  const fs::path src = DataDir() / "golden" / "tiny-llama" / "W4A16_ASYM";
  TempDir tmp;
  auto dry = RunQuench({"convert", src.string(), (tmp / "out").string(), "--scheme", "BF16",
                        "--dry-run"});
  CHECK(dry.exit_code == 0);
  CHECK(
      (dry.out + dry.err).find("compressed-tensors pack-quantized (int4, group 128, zero points") !=
      std::string::npos);
  CHECK_FALSE(fs::exists(tmp / "out"));
  auto in = RunQuench({"inspect", src.string()});
  CHECK(in.exit_code == 0);
  CHECK(in.out.find("compressed-tensors pack-quantized") != std::string::npos);
  const fs::path mixed = DataDir() / "golden" / "ctsrc" / "mixed";
  auto mi = RunQuench({"convert", mixed.string(), (tmp / "out").string(), "--scheme", "BF16",
                       "--dry-run"});
  CHECK(mi.exit_code == 0);
  CHECK((mi.out + mi.err).find("compressed-tensors mixed-precision: pack-quantized") !=
        std::string::npos);
  CHECK((mi.out + mi.err).find("float-quantized (float8, per channel") != std::string::npos);
}

// Fused 3-D FP8-block experts (gate_up_proj [E, 2I, H], down_proj [E, H, I], scales
// [E, ...]): split per expert with their scales, they decode and quantize exactly as the same
// codes and scales stored per expert (2-D) do; the per-expert layout is the one tested against
// the reference (tests/test_sources_run.cc), so this is checked against it.
TEST_CASE("fused 3-D FP8-block experts decode as the same experts stored one by one") {
  std::mt19937 rng(7);
  const uint64_t E = 2, I = 128, H = 256;
  auto codes = [&](uint64_t n) {
    std::string c(n, '\0');
    for (char& x : c) {
      uint8_t v = static_cast<uint8_t>(rng());
      if ((v & 0x7F) == 0x7F) v -= 1;  // no NaN codes
      x = static_cast<char>(v);
    }
    return c;
  };
  auto scales = [&](uint64_t n) {
    std::vector<float> v(n);
    std::uniform_real_distribution<float> e(-12.f, -4.f);
    for (float& x : v) x = std::exp2(e(rng));
    std::string b(n * 4, '\0');
    std::memcpy(b.data(), v.data(), b.size());
    return b;
  };
  const std::string gu = codes(E * 2 * I * H), dn = codes(E * H * I);
  const std::string gus = scales(E * 2 * (H / 128)), dns = scales(E * (H / 128) * 1);
  const std::string p = "model.layers.0.mlp.experts.";
  const char* cfg =
      R"({"architectures": ["Qwen3MoeForCausalLM"], "hidden_size": 256, "quantization_config": )"
      R"({"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", )"
      R"("weight_block_size": [128, 128]}})";
  TempDir tmp;
  const RawTensor norm{
      "model.norm.weight", DType::kBF16, {H}, Bf16Bytes(std::vector<float>(H, 1.f))};
  WriteBytes(tmp / "fused/config.json", cfg);
  WriteShard(tmp / "fused/model.safetensors",
             {{p + "gate_up_proj", DType::kF8E4M3, {E, 2 * I, H}, gu},
              {p + "gate_up_proj_scale_inv", DType::kF32, {E, 2, 2}, gus},
              {p + "down_proj", DType::kF8E4M3, {E, H, I}, dn},
              {p + "down_proj_scale_inv", DType::kF32, {E, 2, 1}, dns},
              norm});
  std::vector<RawTensor> split;
  for (uint64_t e = 0; e < E; ++e) {
    const std::string x = p + std::to_string(e) + ".";
    for (uint64_t h = 0; h < 2; ++h) {
      const std::string m = x + (h == 0 ? "gate_proj" : "up_proj") + ".weight";
      split.push_back({m, DType::kF8E4M3, {I, H}, gu.substr((e * 2 + h) * I * H, I * H)});
      split.push_back({m + "_scale_inv", DType::kF32, {1, 2}, gus.substr((e * 2 + h) * 2 * 4, 8)});
    }
    split.push_back({x + "down_proj.weight", DType::kF8E4M3, {H, I}, dn.substr(e * H * I, H * I)});
    split.push_back(
        {x + "down_proj.weight_scale_inv", DType::kF32, {2, 1}, dns.substr(e * 2 * 4, 8)});
  }
  split.push_back(norm);
  WriteBytes(tmp / "split/config.json", cfg);
  WriteShard(tmp / "split/model.safetensors", split);
  for (const char* scheme : {"BF16", "W4A16", "NVFP4A16"}) {
    CAPTURE(scheme);
    for (const char* which : {"fused", "split"}) {
      ConvertOptions o;
      o.src = tmp / which;
      o.dst = tmp / (std::string(which) + "-" + scheme);
      o.scheme = scheme;
      auto r = Convert(o);
      REQUIRE_MESSAGE(r.ok(), r.status().message());
    }
    const auto f = LoadAll(tmp / (std::string("fused-") + scheme));
    const auto g = LoadAll(tmp / (std::string("split-") + scheme));
    size_t n = 0;
    for (const auto& [_, l] : g) {
      for (const TensorInfo& t : l.shard.header.tensors) {
        CAPTURE(t.name);
        ++n;
        auto [fl, ft] = FindTensor(f, t.name);
        REQUIRE(ft != nullptr);
        CHECK(ft->dtype == t.dtype);
        CHECK(ft->shape == t.shape);
        CHECK(std::memcmp(fl->Data(*ft), l.Data(t), t.nbytes()) == 0);
      }
    }
    CHECK(n >= 7);
  }
  // Halves that are not whole 128-row blocks cannot be split with their scales: refused.
  WriteShard(tmp / "odd/model.safetensors",
             {{p + "gate_up_proj", DType::kF8E4M3, {1, 128, H}, codes(128 * H)},
              {p + "gate_up_proj_scale_inv", DType::kF32, {1, 1, 2}, scales(2)}});
  WriteBytes(tmp / "odd/config.json", cfg);
  auto bad = RunQuench({"convert", (tmp / "odd").string(), (tmp / "odd-out").string(),
                        "--scheme", "BF16"});
  CHECK(bad.exit_code == 3);
  CHECK(bad.err.find("must each be whole blocks of weight_block_size rows") != std::string::npos);
  CHECK_FALSE(fs::exists(tmp / "odd-out"));
}

}  // namespace
}  // namespace quench::testing
