// Statistics for data/tiny-llama written in place (Hessians of synthetic, correlated
// activations with outlier channels, one site per distinct input, as docs/statistics-format.md
// defines; layer 1's down_proj left without statistics): shared by the float GPTQ conversion
// tests and tests/test_gptq_convert.cc.
#ifndef QUENCH_TESTS_TINY_LLAMA_STATS_H_
#define QUENCH_TESTS_TINY_LLAMA_STATS_H_

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "test_util.h"

namespace quench::testing {

template <class T>
inline std::string Bytes(const std::vector<T>& v) {
  std::string s(v.size() * sizeof(T), '\0');
  std::memcpy(s.data(), v.data(), s.size());
  return s;
}

struct Site {
  std::string name;
  size_t n;
  std::vector<std::string> consumers;
  std::vector<double> h;  // full n x n: sum over tokens of x x^T
};

// Correlated activations: a random mix of a lower-dimensional signal, channel scales over a
// decade, a few outlier channels (what makes GPTQ differ from RTN), summed over `tokens`.
inline std::vector<double> MakeHessian(size_t n, uint32_t seed, size_t tokens = 512) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> g;
  std::uniform_real_distribution<double> u(0.1, 1.0);
  const size_t k = n / 2;
  std::vector<double> mix(k * n), scale(n);
  for (double& m : mix) m = g(rng) / std::sqrt(double(k));
  for (size_t j = 0; j < n; ++j) scale[j] = u(rng) * (j % 37 == 5 ? 20.0 : 1.0);
  std::vector<double> h(n * n, 0.0), x(n), z(k);
  for (size_t t = 0; t < tokens; ++t) {
    for (double& v : z) v = g(rng);
    for (size_t j = 0; j < n; ++j) {
      double s = 0;
      for (size_t i = 0; i < k; ++i) s += z[i] * mix[i * n + j];
      x[j] = s * scale[j];
    }
    for (size_t i = 0; i < n; ++i) {
      for (size_t j = 0; j < n; ++j) h[i * n + j] += x[i] * x[j];
    }
  }
  return h;
}

// Sites of data/tiny-llama's layers 0 and 1; layer 1's down_proj is left without statistics.
inline std::vector<Site> TinyLlamaSites() {
  std::vector<Site> sites;
  uint32_t seed = 19;
  for (int l = 0; l < 2; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    sites.push_back({p + "self_attn.q_proj", 256,
                     {p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight",
                      p + "self_attn.v_proj.weight"}, MakeHessian(256, seed++)});
    sites.push_back({p + "self_attn.o_proj", 256, {p + "self_attn.o_proj.weight"},
                     MakeHessian(256, seed++)});
    sites.push_back({p + "mlp.gate_proj", 256,
                     {p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"}, MakeHessian(256, seed++)});
    if (l == 0) {
      sites.push_back({p + "mlp.down_proj", 704, {p + "mlp.down_proj.weight"},
                       MakeHessian(704, seed++)});
    }
  }
  return sites;
}

inline void WriteStats(const fs::path& dir, const std::vector<Site>& sites) {
  fs::create_directories(dir);
  auto folder = LoadModelFolder(DataDir() / "tiny-llama");
  REQUIRE(folder.ok());
  std::string weights, site_json, consumers;
  std::vector<RawTensor> arrays;
  for (const Site& s : sites) {
    for (const std::string& c : s.consumers) {
      for (const auto& sh : folder->shards) {
        for (const auto& t : sh.header.tensors) {
          if (t.name != c) continue;
          weights += std::string(weights.empty() ? "" : ", ") + "\"" + c + "\": [" +
                     std::to_string(t.shape[0]) + ", " + std::to_string(t.shape[1]) + "]";
        }
      }
      consumers += std::string(consumers.empty() ? "" : ", ") + "\"" + c + "\": {\"site\": \"" +
                   s.name + "\"}";
    }
    site_json += std::string(site_json.empty() ? "" : ", ") + "\"" + s.name +
                 "\": {\"file\": \"stats-00001.safetensors\", \"in_features\": " +
                 std::to_string(s.n) + ", \"experts\": null, \"fields\": [\"count\", \"sum_x2\", "
                 "\"sum_abs\", \"min\", \"max\", \"hessian\"]}";
    std::vector<double> packed, x2(s.n), abs(s.n);
    std::vector<float> mn(s.n, -1.f), mx(s.n, 1.f);
    for (size_t i = 0; i < s.n; ++i) {
      x2[i] = s.h[i * s.n + i];
      abs[i] = std::sqrt(x2[i]);
      for (size_t j = i; j < s.n; ++j) packed.push_back(s.h[i * s.n + j]);
    }
    arrays.push_back({s.name + ".count", DType::kI64, {}, Bytes(std::vector<int64_t>{512})});
    arrays.push_back({s.name + ".sum_x2", DType::kF64, {s.n}, Bytes(x2)});
    arrays.push_back({s.name + ".sum_abs", DType::kF64, {s.n}, Bytes(abs)});
    arrays.push_back({s.name + ".min", DType::kF32, {s.n}, Bytes(mn)});
    arrays.push_back({s.name + ".max", DType::kF32, {s.n}, Bytes(mx)});
    arrays.push_back({s.name + ".hessian", DType::kF64, {packed.size()}, Bytes(packed)});
  }
  WriteBytes(dir / "manifest.json",
             R"({"format": "quench-stats", "version": 1, "model": {"model_type": "llama", )"
             R"("weights": {)" + weights + R"(}}, "collection": {"dataset": "synthetic", )"
             R"("samples": 4, "seq_len": 128, "tokens": 512, "sequences": 4, "moe": "all", )"
             R"("hessian": "full"}, "files": ["stats-00001.safetensors"], "sites": {)" +
                 site_json + R"(}, "consumers": {)" + consumers + "}}");
  WriteShard(dir / "stats-00001.safetensors", arrays);
}

}  // namespace quench::testing

#endif  // QUENCH_TESTS_TINY_LLAMA_STATS_H_
