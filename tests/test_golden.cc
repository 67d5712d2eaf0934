// Byte-for-byte parity with the pinned reference (llm-compressor model_free_ptq with
// compressed-tensors, versions in data/golden/manifest.json). scripts/make_golden.py ran the
// reference on each source folder; quench must write exactly the same files.
#include <doctest/doctest.h>

#include "format/json.h"
#include "quench/convert.h"
#include "test_util.h"

namespace qt = quench::testing;
namespace fs = std::filesystem;

TEST_SUITE("golden") {
  TEST_CASE("every golden case is reproduced byte for byte") {
    const fs::path data = qt::DataDir();
    auto manifest = quench::ReadJsonFile((data / "golden/manifest.json").string());
    REQUIRE_MESSAGE(manifest.ok(), manifest.status().ToString());
    const auto& cases = manifest->is_array() ? manifest->as_array()
                                             : manifest->Find("cases")->as_array();
    REQUIRE(cases.size() >= 4);
    size_t files_compared = 0;
    for (const auto& c : cases) {
      const std::string name = c.Find("name")->as_string();
      CAPTURE(name);
      quench::ConvertOptions o;
      o.src = data / c.Find("source")->as_string();
      o.scheme = c.Find("scheme")->as_string();
      o.default_ignore = false;  // compare with exactly what model_free_ptq selects
      for (const auto& i : c.Find("ignore")->as_array()) o.ignore.push_back(i.as_string());
      qt::TempDir tmp;
      o.dst = tmp / "out";
      // Small chunks so that parity is also checked across chunk boundaries.
      o.memory_limit = 1 << 20;
      auto r = quench::Convert(o);
      REQUIRE_MESSAGE(r.ok(), r.status().ToString());
      const fs::path expected = data / c.Find("expected")->as_string();
      const auto want = qt::ListFiles(expected);
      CHECK(qt::ListFiles(o.dst) == want);
      for (const std::string& f : want) {
        CAPTURE(f);
        const std::string a = qt::ReadBytes(o.dst / f), b = qt::ReadBytes(expected / f);
        CHECK(a.size() == b.size());
        if (a != b) {
          size_t at = 0;
          while (at < a.size() && at < b.size() && a[at] == b[at]) ++at;
          FAIL_CHECK("first difference at byte " << at);
        }
        ++files_compared;
      }
    }
    MESSAGE("files compared: " << files_compared);
  }
}
