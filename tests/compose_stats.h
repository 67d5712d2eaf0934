// Statistics of tiny-llama with full Hessians for the composed-calibration tests
// (tests/test_compose.cc, tests/test_recipe_compose.cc): the golden SmoothQuant statistics
// (data/golden/smoothquant/stats) plus a synthetic Hessian per site, optionally transformed into
// the smoothed model's with the reference's own scales (data/golden/compose).
#ifndef QUENCH_TESTS_COMPOSE_STATS_H_
#define QUENCH_TESTS_COMPOSE_STATS_H_

#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "format/safetensors.h"
#include "stats_folder.h"
#include "test_util.h"
#include "tiny_llama_stats.h"

namespace quench::testing {

inline const fs::path kSq = DataDir() / "golden" / "smoothquant";
inline const fs::path kScales =
    DataDir() / "golden" / "compose" / "tiny_llama_sq_scales.safetensors";

// Tensor `name` of safetensors file `file` as doubles (F32, F64 or I64).
inline std::vector<double> ReadValues(const fs::path& file, const std::string& name) {
  auto h = ReadSafetensorsHeader(file);
  REQUIRE(h.ok());
  const std::string bytes = ReadBytes(file);
  for (const auto& t : h->tensors) {
    if (t.name != name) continue;
    const char* p = bytes.data() + h->data_start + t.begin;
    const size_t esz = t.dtype == DType::kF32 ? 4 : 8;
    std::vector<double> v((t.end - t.begin) / esz);
    for (size_t i = 0; i < v.size(); ++i) {
      if (t.dtype == DType::kF32) {
        float f;
        std::memcpy(&f, p + 4 * i, 4);
        v[i] = f;
      } else if (t.dtype == DType::kF64) {
        std::memcpy(&v[i], p + 8 * i, 8);
      } else {
        int64_t k;
        std::memcpy(&k, p + 8 * i, 8);
        v[i] = double(k);
      }
    }
    return v;
  }
  FAIL("no tensor " << name << " in " << file);
  return {};
}

struct SqSite {
  std::string name;
  size_t n;
  std::vector<std::string> members;  // module names
  std::vector<uint64_t> rows;
  std::string smooth;                // the norm smoothing this site's input ("": none)
};

inline std::vector<SqSite> TinyLlamaSqSites() {
  std::vector<SqSite> s;
  for (int l = 0; l < 2; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    s.push_back({p + "self_attn.q_proj", 256,
                 {p + "self_attn.q_proj", p + "self_attn.k_proj", p + "self_attn.v_proj"},
                 {256, 128, 128}, p + "input_layernorm"});
    s.push_back({p + "self_attn.o_proj", 256, {p + "self_attn.o_proj"}, {256}, ""});
    s.push_back({p + "mlp.gate_proj", 256, {p + "mlp.gate_proj", p + "mlp.up_proj"}, {704, 704},
                 p + "post_attention_layernorm"});
    s.push_back({p + "mlp.down_proj", 704, {p + "mlp.down_proj"}, {256}, ""});
  }
  return s;
}

// Tokens summed into each synthetic Hessian here (MakeHessian of tiny_llama_stats.h, whose
// upper triangle WriteStats packs and tests/test_compose.cc's proxy loss reads).
inline constexpr size_t kComposeTokens = 320;

// A statistics directory as the collector writes it (manifest.json and the one file
// stats-00001.safetensors holding `arrays`): `weights`, `sites` and `consumers` are the JSON
// members of those objects, `hessian` the collection's Hessian kind.
inline void WriteStatsDir(const fs::path& dir, const std::string& architecture,
                          const std::string& model_type, const std::string& hessian,
                          const std::string& weights, const std::string& sites,
                          const std::string& consumers, const std::vector<RawTensor>& arrays) {
  WriteStatsFolder(dir,
                   R"("architectures": [")" + architecture + R"("], "model_type": ")" +
                       model_type + R"(", )",
                   R"("dataset": "synthetic", "samples": 4, "seq_len": 64, "tokens": 256, )"
                   R"("sequences": 4, "moe": "all", "hessian": ")" + hessian + "\"",
                   {weights, sites, consumers, arrays});
}

// data/golden/smoothquant/stats (count, sum_x2, sum_abs, min, max: what the reference's
// smoothing was computed from) with a full Hessian per site. `smoothed`: every site a norm
// smooths is the smoothed model's, from the reference's scales s: H_ij / (s_i s_j),
// sum_x2_c / s_c^2, sum_abs_c / s_c, min_c / s_c, max_c / s_c.
inline void WriteStats(const fs::path& dir, bool smoothed) {
  const fs::path golden = kSq / "stats" / "stats-00001.safetensors";
  StatsParts parts;
  uint32_t seed = 7;
  for (const SqSite& s : TinyLlamaSqSites()) {
    std::vector<double> sc(s.n, 1.0);
    if (smoothed && !s.smooth.empty()) sc = ReadValues(kScales, s.smooth + ".scales");
    const std::vector<double> h = MakeHessian(s.n, seed++, kComposeTokens);
    std::vector<double> packed;
    for (size_t i = 0; i < s.n; ++i) {
      for (size_t j = i; j < s.n; ++j) packed.push_back(h[i * s.n + j] / (sc[i] * sc[j]));
    }
    std::vector<double> x2 = ReadValues(golden, s.name + ".sum_x2");
    std::vector<double> abs = ReadValues(golden, s.name + ".sum_abs");
    std::vector<double> mn = ReadValues(golden, s.name + ".min");
    std::vector<double> mx = ReadValues(golden, s.name + ".max");
    std::vector<float> fmn(s.n), fmx(s.n);
    for (size_t c = 0; c < s.n; ++c) {
      x2[c] /= sc[c] * sc[c];
      abs[c] /= sc[c];
      fmn[c] = float(mn[c] / sc[c]);
      fmx[c] = float(mx[c] / sc[c]);
    }
    parts.AddSite(s.name, 256, x2, abs, fmn, fmx, &packed);
    for (size_t k = 0; k < s.members.size(); ++k) {
      parts.AddConsumer(s.members[k] + ".weight", s.rows[k], s.n, s.name);
    }
  }
  WriteStatsDir(dir, "LlamaForCausalLM", "llama", "full", parts.weights, parts.sites,
                parts.consumers, parts.arrays);
}

}  // namespace quench::testing

#endif  // QUENCH_TESTS_COMPOSE_STATS_H_
