// A golden safetensors file written by a scripts/make_golden_*.py generator (metadata strings
// and tensors read back as written), and the proxy loss tr(dW H dW^T) the GPTQ-family golden
// tests compare with the reference's: shared by the golden suites (GPTQ, SparseGPT, imatrix,
// AWQ, SmoothQuant).
#ifndef QUENCH_TESTS_GOLDEN_FILE_H_
#define QUENCH_TESTS_GOLDEN_FILE_H_

#include <doctest/doctest.h>

#include <cstring>
#include <string>
#include <vector>

#include "format/json.h"
#include "format/safetensors.h"
#include "test_util.h"

namespace quench::testing {

struct GoldenFile {
  SafetensorsHeader header;
  std::string bytes;
  bool HasMeta(const std::string& key) const {
    for (const auto& [k, v] : header.metadata) {
      if (k == key) return true;
    }
    return false;
  }
  std::string Meta(const std::string& key) const {
    for (const auto& [k, v] : header.metadata) {
      if (k == key) return v;
    }
    FAIL("no metadata key " << key);
    return "";
  }
  const TensorInfo* Find(const std::string& name) const {
    for (const auto& t : header.tensors) {
      if (t.name == name) return &t;
    }
    return nullptr;
  }
  const TensorInfo& Info(const std::string& name) const {
    const TensorInfo* t = Find(name);
    REQUIRE_MESSAGE(t != nullptr, "no tensor " << name);
    return *t;
  }
  // The tensor's stored bytes, as written.
  std::string Raw(const std::string& name) const {
    const TensorInfo& t = Info(name);
    return bytes.substr(header.data_start + t.begin, t.end - t.begin);
  }
  std::vector<float> F32(const std::string& name) const { return Tensor<float>(name); }
  bool Has(const std::string& name) const {
    for (const auto& t : header.tensors) {
      if (t.name == name) return true;
    }
    return false;
  }
  template <class T = float>
  std::vector<T> Tensor(const std::string& name) const {
    for (const auto& t : header.tensors) {
      if (t.name != name) continue;
      std::vector<T> v((t.end - t.begin) / sizeof(T));
      std::memcpy(v.data(), bytes.data() + header.data_start + t.begin, t.end - t.begin);
      return v;
    }
    FAIL("no tensor " << name);
    return {};
  }
  std::vector<uint64_t> Shape(const std::string& name) const {
    for (const auto& t : header.tensors) {
      if (t.name == name) return t.shape;
    }
    return {};
  }
};

inline GoldenFile LoadGolden(const fs::path& p) {
  GoldenFile f;
  auto h = ReadSafetensorsHeader(p);
  REQUIRE_MESSAGE(h.ok(), h.status().ToString());
  f.header = *h;
  f.bytes = ReadBytes(p);
  return f;
}

// The "cases" of golden folder `dir`'s manifest.json.
inline JsonValue::Array ManifestCases(const fs::path& dir) {
  auto manifest = ReadJsonFile((dir / "manifest.json").string());
  REQUIRE(manifest.ok());
  return manifest->Find("cases")->as_array();
}

// A weight's bytes from its values as a generator stores them: f32, or bf16 values (exact in
// f32).
inline std::string WeightBytes(const std::vector<float>& w, DType dtype) {
  return dtype == DType::kF32
             ? std::string(reinterpret_cast<const char*>(w.data()), w.size() * 4)
             : Bf16Bytes(w);
}

// tr(dW H dW^T) in f64, dW = W - dequantized (or pruned) weights; W is rows x n, H is n x n.
inline double ProxyLoss(const std::vector<float>& w, const std::vector<float>& q,
                        const std::vector<float>& h, size_t rows, size_t n) {
  double total = 0;
  std::vector<double> d(n);
  for (size_t r = 0; r < rows; ++r) {
    for (size_t j = 0; j < n; ++j) d[j] = double(w[r * n + j]) - double(q[r * n + j]);
    for (size_t i = 0; i < n; ++i) {
      double s = 0;
      for (size_t j = 0; j < n; ++j) s += double(h[i * n + j]) * d[j];
      total += d[i] * s;
    }
  }
  return total;
}

}  // namespace quench::testing

#endif  // QUENCH_TESTS_GOLDEN_FILE_H_
