// Statistics folders written by the tests as docs/statistics-format.md defines them (what
// scripts/collect-stats writes): manifest.json and one file stats-00001.safetensors. The
// pieces every fixture shares: the manifest's "weights", "sites" and "consumers" members, a
// site's per-channel arrays in the collector's order, and data/tiny-llama's sites.
#ifndef QUENCH_TESTS_STATS_FOLDER_H_
#define QUENCH_TESTS_STATS_FOLDER_H_

#include <cstring>
#include <string>
#include <vector>

#include "format/model_folder.h"
#include "test_util.h"

namespace quench::testing {

template <class T>
inline std::string Bytes(const std::vector<T>& v) {
  std::string s(v.size() * sizeof(T), '\0');
  std::memcpy(s.data(), v.data(), s.size());
  return s;
}

// `w` (a consumer weight of `rows` x `n`) into the manifest's "weights" and "consumers" lists,
// consumed at `site`.
inline void AddConsumer(std::string& weights, std::string& consumers, const std::string& w,
                        size_t rows, size_t n, const std::string& site) {
  weights += std::string(weights.empty() ? "" : ", ") + "\"" + w + "\": [" +
             std::to_string(rows) + ", " + std::to_string(n) + "]";
  consumers += std::string(consumers.empty() ? "" : ", ") + "\"" + w + "\": {\"site\": \"" +
               site + "\"}";
}

// What a statistics folder holds, built site by site.
struct StatsParts {
  std::string weights, sites, consumers;  // the manifest's members, without their braces
  std::vector<RawTensor> arrays;          // stats-00001.safetensors

  void AddConsumer(const std::string& w, size_t rows, size_t n, const std::string& site) {
    quench::testing::AddConsumer(weights, consumers, w, rows, n, site);
  }

  // Consumer `w` of `site` with its shape read from `model`'s headers, `bump` added to its
  // rows (a shape that disagrees with the model). A weight the model lacks gets no "weights"
  // entry.
  void AddModelConsumer(const ModelFolder& model, const std::string& w, const std::string& site,
                        size_t bump = 0) {
    for (const auto& sh : model.shards) {
      for (const auto& t : sh.header.tensors) {
        if (t.name == w) return AddConsumer(w, t.shape[0] + bump, t.shape[1], site);
      }
    }
    consumers += std::string(consumers.empty() ? "" : ", ") + "\"" + w + "\": {\"site\": \"" +
                 site + "\"}";
  }

  // Site `name` (not per expert) with its per-channel arrays and, when given, the packed upper
  // triangle of its Hessian (then listed among its fields).
  void AddSite(const std::string& name, int64_t count, const std::vector<double>& sum_x2,
               const std::vector<double>& sum_abs, const std::vector<float>& min,
               const std::vector<float>& max, const std::vector<double>* hessian = nullptr) {
    const uint64_t n = sum_x2.size();
    sites += std::string(sites.empty() ? "" : ", ") + "\"" + name +
             "\": {\"file\": \"stats-00001.safetensors\", \"in_features\": " + std::to_string(n) +
             ", \"experts\": null, \"fields\": [\"count\", \"sum_x2\", \"sum_abs\", \"min\", "
             "\"max\"" + (hessian != nullptr ? ", \"hessian\"" : "") + "]}";
    arrays.push_back({name + ".count", DType::kI64, {}, Bytes(std::vector<int64_t>{count})});
    arrays.push_back({name + ".sum_x2", DType::kF64, {n}, Bytes(sum_x2)});
    arrays.push_back({name + ".sum_abs", DType::kF64, {n}, Bytes(sum_abs)});
    arrays.push_back({name + ".min", DType::kF32, {n}, Bytes(min)});
    arrays.push_back({name + ".max", DType::kF32, {n}, Bytes(max)});
    if (hessian != nullptr) {
      arrays.push_back({name + ".hessian", DType::kF64, {hessian->size()}, Bytes(*hessian)});
    }
  }
};

// Writes `dir`: manifest.json, whose "model" object holds `model` (members ending in ", ")
// before its weights and whose "collection" object is `collection`, and the arrays.
inline void WriteStatsFolder(const fs::path& dir, const std::string& model,
                             const std::string& collection, const StatsParts& parts) {
  fs::create_directories(dir);
  WriteBytes(dir / "manifest.json",
             R"({"format": "quench-stats", "version": 1, "model": {)" + model +
                 R"("weights": {)" + parts.weights + R"(}}, "collection": {)" + collection +
                 R"(}, "files": ["stats-00001.safetensors"], "sites": {)" + parts.sites +
                 R"(}, "consumers": {)" + parts.consumers + "}}");
  WriteShard(dir / "stats-00001.safetensors", parts.arrays);
}

// The "model" members and "collection" of the tiny-llama fixtures (4 sequences of 128 tokens);
// `hessian` is "full" or "none".
inline const std::string kTinyLlamaModel = R"("model_type": "llama", )";
inline std::string TinyLlamaCollection(const std::string& hessian) {
  return R"("dataset": "synthetic", "samples": 4, "seq_len": 128, "tokens": 512, )"
         R"("sequences": 4, "moe": "all", "hessian": ")" + hessian + "\"";
}

// One input site of data/tiny-llama and the weights that read it.
struct SiteShape {
  std::string name;
  size_t n;
  std::vector<std::string> consumers;
};

// data/tiny-llama's sites of layers 0 and 1 in the collector's order: q/k/v share one input,
// gate/up another.
inline std::vector<SiteShape> TinyLlamaSiteShapes() {
  std::vector<SiteShape> sites;
  for (int l = 0; l < 2; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    sites.push_back({p + "self_attn.q_proj", 256,
                     {p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight",
                      p + "self_attn.v_proj.weight"}});
    sites.push_back({p + "self_attn.o_proj", 256, {p + "self_attn.o_proj.weight"}});
    sites.push_back(
        {p + "mlp.gate_proj", 256, {p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"}});
    sites.push_back({p + "mlp.down_proj", 704, {p + "mlp.down_proj.weight"}});
  }
  return sites;
}

}  // namespace quench::testing

#endif  // QUENCH_TESTS_STATS_FOLDER_H_
