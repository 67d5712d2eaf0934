// Expert pruning of an FP8-block source (DeepSeek layout: FP8 E4M3 experts with
// weight_scale_inv, a BF16 router with e_score_correction_bias, FP8 shared experts), converted
// and checked with `quench verify DST SRC`.
// Expected values: the unpruned conversion of the same source (its path is golden-tested
// against the reference in test_sources_run): a pruned output's kept expert i is, byte for
// byte, the unpruned output's expert kept[i]; its router and bias are the unpruned router's
// rows kept[i]; every other tensor is the unpruned output's. The kept experts, {0, 2}, are the
// two largest router-row L1 norms by construction of the fixture; by REAP, {1, 3}, the two
// largest saliencies (sum / count) of the statistics written here.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "quench/convert.h"
#include "source_cases.h"
#include "test_util.h"
#include "verify/verify.h"

namespace qt = quench::testing;
namespace fs = std::filesystem;
using quench::DType;
using qt::RawTensor;

namespace {

constexpr uint64_t kHidden = 128, kInter = 128, kExperts = 4;  // W4A16 groups of 128
const std::vector<uint32_t> kKept = {0, 2};        // by router magnitude
const std::vector<uint32_t> kReapKept = {1, 3};    // by the saliency WriteReapStats records

// FP8 E4M3 codes (no NaN) and one F32 block scale (each weight is under one 128x128 block).
void AddFp8(std::vector<RawTensor>& t, std::mt19937& rng, const std::string& name,
            uint64_t rows, uint64_t cols) {
  std::string codes(rows * cols, '\0');
  for (char& c : codes) {
    uint8_t v = static_cast<uint8_t>(rng());
    if ((v & 0x7F) == 0x7F) v -= 1;  // 0x7F and 0xFF are E4M3's NaN
    c = static_cast<char>(v);
  }
  const float scale = std::exp2(-6.0f - static_cast<float>(rng() % 4));
  std::string s(4, '\0');
  std::memcpy(s.data(), &scale, 4);
  t.push_back({name, DType::kF8E4M3, {rows, cols}, codes});
  t.push_back({name + "_scale_inv", DType::kF32, {1, 1}, s});
}

// One DeepSeek-style MoE layer in FP8, sharded in two (experts 2 and 3 in the second file).
fs::path WriteFp8Moe(const fs::path& dir) {
  fs::create_directories(dir);
  std::mt19937 rng(21);
  std::vector<RawTensor> a, b;
  AddFp8(a, rng, "model.layers.0.self_attn.q_proj.weight", kHidden, kHidden);
  // Router rows of constant magnitude 3, 1, 4, 2: L1 norms rank experts 2 > 0 > 3 > 1.
  const float mag[kExperts] = {3, 1, 4, 2};
  std::vector<float> router(kExperts * kHidden);
  for (uint64_t i = 0; i < router.size(); ++i) {
    router[i] = (i % 2 ? -1.0f : 1.0f) * mag[i / kHidden];
  }
  a.push_back({"model.layers.0.mlp.gate.weight", DType::kBF16, {kExperts, kHidden},
               qt::Bf16Bytes(router)});
  const std::vector<float> bias = {0.5f, -0.25f, 0.125f, 1.0f};
  std::string bb(16, '\0');
  std::memcpy(bb.data(), bias.data(), 16);
  a.push_back({"model.layers.0.mlp.gate.e_score_correction_bias", DType::kF32, {kExperts}, bb});
  for (uint64_t e = 0; e < kExperts; ++e) {
    auto& t = e < 2 ? a : b;
    const std::string p = "model.layers.0.mlp.experts." + std::to_string(e) + ".";
    AddFp8(t, rng, p + "gate_proj.weight", kInter, kHidden);
    AddFp8(t, rng, p + "up_proj.weight", kInter, kHidden);
    AddFp8(t, rng, p + "down_proj.weight", kHidden, kInter);
  }
  for (const char* m : {"gate_proj", "up_proj"}) {
    AddFp8(b, rng, std::string("model.layers.0.mlp.shared_experts.") + m + ".weight", kInter,
           kHidden);
  }
  AddFp8(b, rng, "model.layers.0.mlp.shared_experts.down_proj.weight", kHidden, kInter);
  b.push_back({"model.norm.weight", DType::kBF16, {kHidden},
               qt::Bf16Bytes(std::vector<float>(kHidden, 1.0f))});
  qt::WriteShard(dir / "model-00001-of-00002.safetensors", a);
  qt::WriteShard(dir / "model-00002-of-00002.safetensors", b);
  std::string index = R"({"metadata": {}, "weight_map": {)";
  bool first = true;
  for (const auto* part : {&a, &b}) {
    const char* file = part == &a ? "model-00001-of-00002.safetensors"
                                  : "model-00002-of-00002.safetensors";
    for (const RawTensor& t : *part) {
      index += std::string(first ? "" : ", ") + "\"" + t.name + "\": \"" + file + "\"";
      first = false;
    }
  }
  qt::WriteBytes(dir / "model.safetensors.index.json", index + "}}");
  qt::WriteBytes(dir / "config.json",
                 R"({"architectures": ["DeepseekV3ForCausalLM"], "n_routed_experts": 4, )"
                 R"("n_shared_experts": 1, "num_experts_per_tok": 2, "quantization_config": )"
                 R"({"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", )"
                 R"("weight_block_size": [128, 128]}})");
  return dir;
}

// REAP statistics for WriteFp8Moe's layer (no activation sites): saliency sum / count of
// 1, 5, 2, 4 for experts 0..3, so REAP keeps experts 1 and 3 where magnitude keeps 0 and 2.
fs::path WriteReapStats(const fs::path& dir) {
  fs::create_directories(dir);
  const std::vector<double> sum = {10.0, 60.0, 30.0, 20.0};
  const std::vector<int64_t> count = {10, 12, 15, 5};
  std::string s(32, '\0'), c(32, '\0');
  std::memcpy(s.data(), sum.data(), 32);
  std::memcpy(c.data(), count.data(), 32);
  qt::WriteShard(dir / "stats-00001.safetensors",
                 {{"model.layers.0.mlp.reap_sum", DType::kF64, {kExperts}, s},
                  {"model.layers.0.mlp.reap_count", DType::kI64, {kExperts}, c}});
  qt::WriteBytes(dir / "manifest.json",
                 R"({"format": "quench-stats", "version": 1, "model": {"model_type": )"
                 R"("deepseek_v3", "weights": {}}, "collection": {"dataset": "synthetic", )"
                 R"("samples": 1, "seq_len": 42, "tokens": 42, "sequences": 1, "moe": "all", )"
                 R"("hessian": "none", "reap": true}, "files": ["stats-00001.safetensors"], )"
                 R"("sites": {}, "consumers": {}, "reap": {"model.layers.0.mlp": {"file": )"
                 R"("stats-00001.safetensors", "experts": 4, "router": )"
                 R"("model.layers.0.mlp.gate.weight"}}})");
  return dir;
}

quench::Result<quench::ConvertSummary> Run(const fs::path& src, const fs::path& dst,
                                           const std::string& scheme,
                                           std::optional<double> prune_experts,
                                           const fs::path& reap_stats = {}) {
  quench::ConvertOptions o;
  o.src = src;
  o.dst = dst;
  o.scheme = scheme;
  o.prune_experts = prune_experts;
  if (!reap_stats.empty()) {
    o.expert_metric = "reap";
    o.stats = reap_stats;
  }
  return quench::Convert(o);
}

// The source expert a pruned output's tensor comes from: "experts.<i>." -> "experts.<kept[i]>.".
std::string SourceName(const std::string& name, const std::vector<uint32_t>& kept) {
  const std::string key = "mlp.experts.";
  const size_t at = name.find(key);
  if (at == std::string::npos) return name;
  const size_t from = at + key.size(), to = name.find('.', from);
  const uint32_t i = static_cast<uint32_t>(std::stoul(name.substr(from, to - from)));
  return name.substr(0, from) + std::to_string(kept.at(i)) + name.substr(to);
}

// Every tensor of the pruned output equals the unpruned output's tensor it came from (rows
// kKept of the router and its bias), and the pruned output has exactly the kept experts.
void CheckKeptEqualUnpruned(const fs::path& pruned, const fs::path& whole,
                            const std::vector<uint32_t>& kept = kKept) {
  const auto p = qt::LoadAll(pruned), w = qt::LoadAll(whole);
  size_t np = 0, nw = 0, experts_p = 0, experts_w = 0;
  for (const auto& [_, l] : w) {
    for (const auto& t : l.shard.header.tensors) {
      ++nw;
      experts_w += t.name.find("mlp.experts.") != std::string::npos;
    }
  }
  for (const auto& [_, l] : p) {
    for (const auto& t : l.shard.header.tensors) {
      CAPTURE(t.name);
      ++np;
      experts_p += t.name.find("mlp.experts.") != std::string::npos;
      const auto [wl, wt] = qt::FindTensor(w, SourceName(t.name, kept));
      REQUIRE(wt != nullptr);
      CHECK(wt->dtype == t.dtype);
      const std::string got(reinterpret_cast<const char*>(l.Data(t)), t.nbytes());
      const std::string all(reinterpret_cast<const char*>(wl->Data(*wt)), wt->nbytes());
      if (t.name.starts_with("model.layers.0.mlp.gate.")) {
        const uint64_t row = wt->nbytes() / kExperts;
        std::string want;
        for (uint32_t k : kept) want += all.substr(k * row, row);
        CHECK(t.shape[0] == kept.size());
        CHECK(got == want);
      } else {
        CHECK(t.shape == wt->shape);
        CHECK(got == all);
      }
    }
  }
  // Each expert's tensors (weights, their scales) kept for 2 of 4 experts; nothing else lost.
  CHECK(experts_p * 2 == experts_w);
  CHECK(np == nw - experts_w / 2);
}

}  // namespace

TEST_SUITE("expert_prune_sources") {
  TEST_CASE(
      "an FP8 source pruned: kept experts equal the unpruned conversion's, and verify passes") {
    qt::TempDir tmp;
    const fs::path src = WriteFp8Moe(tmp / "src");
    for (const char* scheme : {"BF16", "FP8_DYNAMIC", "W4A16", "NVFP4A16"}) {
      const std::string scheme_name = scheme;
      CAPTURE(scheme_name);
      const fs::path pruned = tmp / (std::string("p-") + scheme);
      const fs::path whole = tmp / (std::string("w-") + scheme);
      auto rp = Run(src, pruned, scheme, 0.5);
      REQUIRE_MESSAGE(rp.ok(), rp.status().ToString());
      auto rw = Run(src, whole, scheme, std::nullopt);
      REQUIRE_MESSAGE(rw.ok(), rw.status().ToString());
      CheckKeptEqualUnpruned(pruned, whole);
      const auto r = qt::VerifyClean(pruned, src);
      // q_proj, 2 kept experts x 3 and the shared experts' 3: decoded or quantized.
      CHECK(r.tensors_decoded + r.modules_quantized == 10);
    }
  }

  TEST_CASE("verify of a pruned FP8-source output catches a changed kept expert by its new name") {
    qt::TempDir tmp;
    const fs::path src = WriteFp8Moe(tmp / "src");
    for (const char* scheme : {"BF16", "W4A16"}) {
      const std::string scheme_name = scheme;
      CAPTURE(scheme_name);
      const fs::path out = tmp / scheme;
      auto rp = Run(src, out, scheme, 0.5);
      REQUIRE_MESSAGE(rp.ok(), rp.status().ToString());
      // Expert 1 of the output is source expert 2: its down_proj one bit off.
      const std::string name = std::string("model.layers.0.mlp.experts.1.down_proj.") +
                               (std::string(scheme) == "BF16" ? "weight" : "weight_packed");
      bool changed = false;
      for (const auto& [rel, l] : qt::LoadAll(out)) {
        if (const auto* t = l.Find(name)) {
          std::string bytes = l.bytes;
          bytes[l.shard.header.data_start + t->begin + 5] ^= 0x10;
          fs::remove(out / rel);
          qt::WriteBytes(out / rel, bytes);
          changed = true;
        }
      }
      REQUIRE(changed);
      quench::VerifyOptions v;
      v.dst = out;
      v.src = src;
      auto r = quench::Verify(v);
      REQUIRE_MESSAGE(r.ok(), r.status().ToString());
      REQUIRE(!r->problems.empty());
      bool named = false;
      for (const auto& p : r->problems) {
        named |= p.tensor.starts_with("model.layers.0.mlp.experts.1.down_proj.");
      }
      CHECK(named);
    }
  }

  TEST_CASE("an FP8 source pruned with --scheme none is written decoded, and verifies") {
    qt::TempDir tmp;
    const fs::path src = WriteFp8Moe(tmp / "src");
    auto none = Run(src, tmp / "none", "none", 0.5);
    REQUIRE_MESSAGE(none.ok(), none.status().ToString());
    auto whole = Run(src, tmp / "bf16", "BF16", std::nullopt);
    REQUIRE_MESSAGE(whole.ok(), whole.status().ToString());
    CheckKeptEqualUnpruned(tmp / "none", tmp / "bf16");
    const auto r = qt::VerifyClean(tmp / "none", src);
    CHECK(r.tensors_decoded == 10);
  }

  TEST_CASE("an FP8 source pruned by REAP saliency: the saliency's survivors, and verify passes") {
    qt::TempDir tmp;
    const fs::path src = WriteFp8Moe(tmp / "src");
    const fs::path stats = WriteReapStats(tmp / "stats");
    for (const char* scheme : {"BF16", "W4A16"}) {
      const std::string scheme_name = scheme;
      CAPTURE(scheme_name);
      auto rp = Run(src, tmp / ("p-" + scheme_name), scheme, 0.5, stats);
      REQUIRE_MESSAGE(rp.ok(), rp.status().ToString());
      auto rw = Run(src, tmp / ("w-" + scheme_name), scheme, std::nullopt);
      REQUIRE_MESSAGE(rw.ok(), rw.status().ToString());
      CheckKeptEqualUnpruned(tmp / ("p-" + scheme_name), tmp / ("w-" + scheme_name), kReapKept);
      const auto r = qt::VerifyClean(tmp / ("p-" + scheme_name), src);
      CHECK(r.tensors_decoded + r.modules_quantized == 10);
    }
  }
}
