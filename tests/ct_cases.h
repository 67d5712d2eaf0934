// What the compressed-tensors source suites (tests/test_sources_ct.cc, 2-D weights;
// tests/test_sources_ct3d.cc, 3-D expert stacks) share: their golden manifests' cases (the
// reference's output tensors as dtype, shape and FNV-1a 64, and its config.json) and the
// checks of an output against them.
#ifndef QUENCH_TESTS_CT_CASES_H_
#define QUENCH_TESTS_CT_CASES_H_

#include <doctest/doctest.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "format/json.h"
#include "format/model_folder.h"
#include "format/safetensors.h"
#include "source_cases.h"
#include "test_util.h"

namespace quench::testing {

struct CtCase {
  std::string name, scheme;
  fs::path source;
  std::vector<std::string> ignore;
  const JsonValue* tensors = nullptr;  // into CtManifest(`manifest`)
  fs::path config;
};

// data/golden/`manifest`, read once (cases point into it).
inline const JsonValue& CtManifest(const std::string& manifest) {
  static std::map<std::string, JsonValue> cache;
  auto it = cache.find(manifest);
  if (it == cache.end()) {
    auto r = ReadJsonFile((DataDir() / "golden" / manifest).string());
    REQUIRE_MESSAGE(r.ok(), r.status().ToString());
    it = cache.emplace(manifest, std::move(*r)).first;
  }
  return it->second;
}

// The cases of data/golden/`manifest` with expected tensors (the ones the reference, or the
// format's definition where the reference refuses, completed).
inline std::vector<CtCase> CtCases(const std::string& manifest) {
  std::vector<CtCase> out;
  for (const JsonValue& c : CtManifest(manifest).Find("cases")->as_array()) {
    if (c.Find("expected_tensors") == nullptr) continue;
    CtCase k;
    k.name = c.Find("name")->as_string();
    k.scheme = c.Find("scheme")->as_string();
    k.source = DataDir() / c.Find("source")->as_string();
    for (const JsonValue& i : c.Find("ignore")->as_array()) k.ignore.push_back(i.as_string());
    k.tensors = c.Find("expected_tensors");
    k.config = DataDir() / c.Find("expected_config")->as_string();
    out.push_back(std::move(k));
  }
  return out;
}

// The case's conversion with half of every MoE layer's experts pruned, the reference's ignore
// list as given (the expert-pruning golden cases).
inline ConvertOptions PrunedCaseOptions(const CtCase& k, const fs::path& dst,
                                        uint64_t chunk_bytes = 0) {
  ConvertOptions o;
  o.src = k.source;
  o.dst = dst;
  o.scheme = k.scheme;
  o.ignore = k.ignore;
  o.default_ignore = false;
  o.chunk_bytes = chunk_bytes;
  o.prune_experts = 0.5;
  return o;
}

// Every expected tensor is in `got` with its dtype, shape and bytes, and there is no other.
inline void CheckTensors(const JsonValue& want, const fs::path& got) {
  const auto g = LoadAll(got);
  size_t n_got = 0;
  for (const auto& [_, l] : g) n_got += l.shard.header.tensors.size();
  CHECK(n_got == want.as_object().size());
  for (const auto& [name, w] : want.as_object()) {
    CAPTURE(name);
    auto [gl, gt] = FindTensor(g, name);
    REQUIRE(gt != nullptr);
    CHECK(DTypeName(gt->dtype) == w.Find("dtype")->as_string());
    std::vector<uint64_t> shape;
    for (const JsonValue& d : w.Find("shape")->as_array()) shape.push_back(d.as_uint());
    CHECK(gt->shape == shape);
    const std::string_view bytes(reinterpret_cast<const char*>(gl->Data(*gt)), gt->nbytes());
    char hex[17];
    std::snprintf(hex, sizeof hex, "%016llx",
                  static_cast<unsigned long long>(Fnv1a64(bytes)));
    CHECK(std::string(hex) == w.Find("fnv1a64")->as_string());
  }
}

// config.json `got` equals `want` (compact JSON, keys in their order).
inline void CheckConfig(const fs::path& want, const fs::path& got) {
  auto w = ReadJsonFile(want.string());
  auto g = ReadJsonFile(got.string());
  REQUIRE(w.ok());
  REQUIRE(g.ok());
  CHECK(DumpCompactJson(*g) == DumpCompactJson(*w));
}

// Flips bit 0 of one byte of tensor `name` in the output folder `dir`, at `offset(t)` bytes
// into the shard's data (t: the tensor's header entry; the caller may check it there).
inline void FlipTensorBit(const fs::path& dir, const std::string& name,
                          const std::function<uint64_t(const TensorInfo&)>& offset) {
  auto folder = LoadModelFolder(dir);
  REQUIRE(folder.ok());
  const Shard* s = nullptr;
  const TensorInfo* t = nullptr;
  for (const Shard& sh : folder->shards) {
    for (const TensorInfo& ti : sh.header.tensors) {
      if (ti.name == name) s = &sh, t = &ti;
    }
  }
  REQUIRE(t != nullptr);
  const uint64_t at = s->header.data_start + offset(*t);
  std::string bytes = ReadBytes(s->path);
  bytes[at] ^= 1;
  fs::remove(s->path);
  WriteBytes(s->path, bytes);
}

}  // namespace quench::testing

#endif  // QUENCH_TESTS_CT_CASES_H_
