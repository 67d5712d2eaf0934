// FP8 KV cache with smoothing (src/calib/kv_cache.h): a mapping that smooths the value
// projection into the output projection (v_proj -> o_proj) divides the cached values' channels
// by its scales, so v_scale must be the smoothed values' range: max_c max(|min_c|, |max_c|) / s_c
// over the v_cache site's per-channel ranges, / 448. The test reads s back from the checkpoint
// quench wrote (the smoothed v_proj, kept unquantized, row c divided by s_c), so it checks that
// v_scale is the range of the values the written model computes; keys stay as they were.
// A smoothing of what the cache holds that is not a per-channel division is refused.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "compose_stats.h"
#include "format/json.h"
#include "test_util.h"

namespace quench::testing {
namespace {

constexpr size_t kHidden = 64, kInter = 128, kVocab = 32;

std::vector<float> Random(size_t n, std::mt19937& rng, float scale) {
  std::normal_distribution<float> g;
  std::vector<float> v(n);
  for (float& x : v) x = scale * (0.2f + std::fabs(g(rng)));  // no near-zero entries
  for (size_t i = 0; i < n; i += 3) v[i] = -v[i];
  return v;
}

// A one-layer Llama without grouped-query attention (4 heads, 4 KV heads), F32, so that the
// v_proj -> o_proj mapping applies (v_proj's outputs are o_proj's inputs, 64 = 64).
void WriteModel(const fs::path& dir) {
  fs::create_directories(dir);
  std::mt19937 rng(5);
  const std::string p = "model.layers.0.";
  std::vector<RawTensor> t;
  auto add = [&](const std::string& name, std::vector<uint64_t> shape, float scale) {
    size_t n = 1;
    for (uint64_t d : shape) n *= d;
    t.push_back({name, DType::kF32, shape, Bytes(Random(n, rng, scale))});
  };
  add("model.embed_tokens.weight", {kVocab, kHidden}, 0.05f);
  add(p + "input_layernorm.weight", {kHidden}, 1.f);
  for (const char* m : {"q_proj", "k_proj", "v_proj", "o_proj"}) {
    add(p + "self_attn." + m + ".weight", {kHidden, kHidden}, 0.05f);
  }
  add(p + "post_attention_layernorm.weight", {kHidden}, 1.f);
  add(p + "mlp.gate_proj.weight", {kInter, kHidden}, 0.05f);
  add(p + "mlp.up_proj.weight", {kInter, kHidden}, 0.05f);
  add(p + "mlp.down_proj.weight", {kHidden, kInter}, 0.05f);
  add("model.norm.weight", {kHidden}, 1.f);
  add("lm_head.weight", {kVocab, kHidden}, 0.05f);
  WriteShard(dir / "model.safetensors", t);
  WriteBytes(dir / "config.json",
             R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama", )"
             R"("hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, )"
             R"("num_key_value_heads": 4, "num_hidden_layers": 1, "vocab_size": 32, )"
             R"("torch_dtype": "float32"})");
}

struct Ranges {
  std::vector<float> min, max;
};

// Statistics of that model: the four input sites (AWQ's and SmoothQuant's fields, outlier
// channels every 9th) and the k_cache / v_cache output sites (ranges per channel).
Ranges WriteStats(const fs::path& dir) {
  fs::create_directories(dir);
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(0.2f, 2.f);
  const std::string p = "model.layers.0.";
  struct Site {
    std::string name;
    size_t n;
    std::vector<std::string> consumers;
  };
  const std::vector<Site> sites = {
      {p + "self_attn.q_proj", kHidden, {"q_proj", "k_proj", "v_proj"}},
      {p + "self_attn.o_proj", kHidden, {"o_proj"}},
      {p + "mlp.gate_proj", kHidden, {"gate_proj", "up_proj"}},
      {p + "mlp.down_proj", kInter, {"down_proj"}},
      {p + "self_attn.k_cache", kHidden, {}},
      {p + "self_attn.v_cache", kHidden, {}}};
  std::vector<RawTensor> arrays;
  std::string site_json, consumers, weights;
  Ranges v;
  for (const Site& s : sites) {
    std::vector<float> mn(s.n), mx(s.n);
    std::vector<double> abs(s.n), x2(s.n);
    for (size_t c = 0; c < s.n; ++c) {
      const float big = c % 9 == 4 ? 12.f : 1.f;
      mn[c] = -u(rng) * big;
      mx[c] = u(rng) * big;
      abs[c] = 256.0 * 0.4 * (mx[c] - mn[c]);
      x2[c] = 256.0 * 0.3 * (mx[c] * mx[c] + mn[c] * mn[c]);
    }
    if (s.name.ends_with("v_cache")) v = {mn, mx};
    arrays.push_back({s.name + ".count", DType::kI64, {}, Bytes(std::vector<int64_t>{256})});
    arrays.push_back({s.name + ".sum_x2", DType::kF64, {s.n}, Bytes(x2)});
    arrays.push_back({s.name + ".sum_abs", DType::kF64, {s.n}, Bytes(abs)});
    arrays.push_back({s.name + ".min", DType::kF32, {s.n}, Bytes(mn)});
    arrays.push_back({s.name + ".max", DType::kF32, {s.n}, Bytes(mx)});
    site_json += std::string(site_json.empty() ? "" : ", ") + "\"" + s.name +
                 "\": {\"file\": \"stats-00001.safetensors\", \"in_features\": " +
                 std::to_string(s.n) + ", \"experts\": null, \"fields\": [\"count\", "
                 "\"sum_x2\", \"sum_abs\", \"min\", \"max\"]}";
    const std::string module = s.name.substr(0, s.name.rfind('.') + 1);
    for (const std::string& c : s.consumers) {
      const std::string w = module + c + ".weight";
      const size_t rows = c == "gate_proj" || c == "up_proj" ? kInter : kHidden;
      AddConsumer(weights, consumers, w, rows, s.n, s.name);
    }
  }
  WriteStatsDir(dir, "LlamaForCausalLM", "llama", "none", weights, site_json, consumers, arrays);
  return v;
}

std::vector<float> F32Tensor(const std::map<std::string, Loaded>& out, const std::string& name) {
  auto [l, t] = FindTensor(out, name);
  REQUIRE(t != nullptr);
  REQUIRE(t->dtype == DType::kF32);
  std::vector<float> v((t->end - t->begin) / 4);
  std::memcpy(v.data(), l->Data(*t), v.size() * 4);
  return v;
}

float Scalar(const std::map<std::string, Loaded>& out, const std::string& name) {
  const std::vector<float> v = F32Tensor(out, name);
  REQUIRE(v.size() == 1);
  return v[0];
}

const char* kKvScheme =
    "  kv_cache_scheme: {num_bits: 8, type: float, strategy: tensor, dynamic: false, "
    "symmetric: true}\n";

TEST_CASE("FP8 KV cache after smoothing v_proj -> o_proj: v_scale is the smoothed values' "
          "range, k_scale the keys' as recorded") {
  TempDir tmp;
  WriteModel(tmp / "m");
  const Ranges v = WriteStats(tmp / "stats");
  const std::string src = (tmp / "m").string(), stats = (tmp / "stats").string();
  const std::string attn = "model.layers.0.self_attn.";
  // Without smoothing: both scales from the recorded ranges.
  auto plain = RunQuench({"convert", src, (tmp / "plain").string(), "--scheme", "W8A8",
                          "--ignore", "lm_head", "--kv-cache", "fp8", "--stats", stats, "-q"});
  REQUIRE_MESSAGE(plain.exit_code == 0, plain.err);
  const auto p = LoadAll(tmp / "plain");
  float vmax = 0;
  for (size_t c = 0; c < kHidden; ++c) vmax = std::max({vmax, -v.min[c], v.max[c]});
  CHECK(Scalar(p, attn + "v_scale") == vmax / 448.f);
  // SmoothQuant's mapping [[o_proj], v_proj] and AWQ's {v_proj -> o_proj} from recipes; q/k/v
  // (one fused set) are left unquantized so that v_proj's smoothed rows can be read back.
  const std::string quant =
      "  ignore: [lm_head, \"re:.*[qkv]_proj$\"]\n" + std::string(kKvScheme);
  WriteBytes(tmp / "sq.yaml",
             "SmoothQuantModifier:\n  smoothing_strength: 0.5\n  mappings:\n"
             "    - [[\"re:.*o_proj$\"], \"re:.*v_proj$\"]\n"
             "QuantizationModifier:\n  scheme: W8A8\n" + quant);
  WriteBytes(tmp / "awq.yaml",
             "AWQModifier:\n  mappings:\n"
             "    - {smooth_layer: \"re:.*v_proj$\", balance_layers: [\"re:.*o_proj$\"]}\n"
             "QuantizationModifier:\n  config_groups:\n    g:\n      targets: [Linear]\n"
             "      weights: {num_bits: 4, type: int, strategy: group, group_size: 32}\n" +
                 quant);
  struct Run {
    const char* name;
    std::vector<std::string> args;
  };
  const std::vector<Run> runs = {{"sq", {"--recipe", (tmp / "sq.yaml").string()}},
                                 {"awq", {"--recipe", (tmp / "awq.yaml").string()}}};
  for (const Run& r : runs) {
    CAPTURE(r.name);
    std::vector<std::string> args = {"convert", src, (tmp / r.name).string(), "--stats", stats};
    args.insert(args.end(), r.args.begin(), r.args.end());
    auto d = RunQuench([&] { auto a = args; a.push_back("--dry-run"); return a; }());
    REQUIRE_MESSAGE(d.exit_code == 0, d.err);
    CHECK(d.err.find("v_scale of 1 smoothed value projection(s) from the ranges divided by the "
                     "smoothing scales") != std::string::npos);
    args.push_back("-q");
    auto c = RunQuench(args);
    REQUIRE_MESSAGE(c.exit_code == 0, c.err);
    const auto out = LoadAll(tmp / r.name);
    // s_c from the written v_proj: source row c over smoothed row c (F32 quotients; the row
    // sums of |w| make it one number per row).
    const std::vector<float> w0 = F32Tensor(LoadAll(tmp / "m"), attn + "v_proj.weight");
    const std::vector<float> w1 = F32Tensor(out, attn + "v_proj.weight");
    double smoothed = 0;
    bool changed = false;
    for (size_t c = 0; c < kHidden; ++c) {
      double a0 = 0, a1 = 0;
      for (size_t k = 0; k < kHidden; ++k) {
        a0 += std::fabs(w0[c * kHidden + k]);
        a1 += std::fabs(w1[c * kHidden + k]);
      }
      const double s = a0 / a1;
      changed |= std::fabs(s - 1) > 1e-3;
      smoothed = std::max({smoothed, -double(v.min[c]) / s, double(v.max[c]) / s});
    }
    if (std::string(r.name) == "sq") CHECK(changed);  // SmoothQuant's s is never all ones
    // The f32 rounding of the smoothed weights leaves s within a few ulps of the one used.
    const float got = Scalar(out, attn + "v_scale");
    CHECK(std::fabs(got / (smoothed / 448.0) - 1) < 1e-6);
    if (changed) CHECK(std::fabs(got / Scalar(p, attn + "v_scale") - 1) > 1e-3);
    CHECK(Scalar(out, attn + "k_scale") == Scalar(p, attn + "k_scale"));
  }
}

TEST_CASE("FP8 KV cache with a smoothing that rescales keys or a fused projection is refused") {
  TempDir tmp;
  WriteModel(tmp / "m");
  WriteStats(tmp / "stats");
  WriteBytes(tmp / "k.yaml",
             std::string("SmoothQuantModifier:\n  mappings:\n"
                         "    - [[\"re:.*q_proj$\"], \"re:.*k_proj$\"]\n"
                         "QuantizationModifier:\n  scheme: W8A8\n  ignore: [lm_head]\n") +
                 kKvScheme);
  auto r = RunQuench({"convert", (tmp / "m").string(), (tmp / "o").string(), "--recipe",
                      (tmp / "k.yaml").string(), "--stats", (tmp / "stats").string()});
  CHECK(r.exit_code == 3);
  CHECK_MESSAGE(r.err.find("makes the keys, which pass through rotary embedding") !=
                    std::string::npos, r.err);
  CHECK_FALSE(fs::exists(tmp / "o"));
}

}  // namespace
}  // namespace quench::testing
