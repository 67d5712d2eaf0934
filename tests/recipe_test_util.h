// Helpers shared by the recipe tests that compare a `--recipe` run with the flags that say the
// same and with what llm-compressor 0.14.0.1's oneshot wrote for the recipe
// (tests/test_recipe_compose.cc, tests/test_recipe_smooth.cc;
// scripts/make_golden_oneshot_smooth.py -> data/golden/oneshot-smooth/).
#ifndef QUENCH_TESTS_RECIPE_TEST_UTIL_H_
#define QUENCH_TESTS_RECIPE_TEST_UTIL_H_

#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "format/json.h"
#include "test_util.h"

namespace quench::testing {

inline const fs::path kOneshot = DataDir() / "golden" / "oneshot-smooth";

inline std::string TinyLlama() { return (DataDir() / "tiny-llama").string(); }

inline RunResult Quench(std::vector<std::string> args) {
  args.push_back("-q");
  return RunQuench(args);
}

inline JsonValue QuantConfig(const fs::path& dir) {
  auto c = ReadJsonFile((dir / "config.json").string());
  REQUIRE(c.ok());
  REQUIRE(c->Find("quantization_config") != nullptr);
  return *c->Find("quantization_config");
}

// Every safetensors file byte for byte (headers included) and the same file set.
inline void CheckSameShards(const fs::path& a, const fs::path& b) {
  int shards = 0;
  for (const auto& e : fs::directory_iterator(b)) {
    if (e.path().extension() != ".safetensors") continue;
    CAPTURE(e.path().filename().string());
    CHECK(ReadBytes(a / e.path().filename()) == ReadBytes(e.path()));
    ++shards;
  }
  CHECK(shards > 0);
  CHECK(ListFiles(a) == ListFiles(b));
}

// Key for key, as oneshot wrote it for the same recipe (data/golden/oneshot-smooth/GOLDEN); the
// one config group compared by value where quench names it after the preset (model_free's rule).
inline void CheckOneshotConfig(const fs::path& out, const std::string& golden) {
  auto ref = ReadJsonFile((kOneshot / golden).string());
  REQUIRE(ref.ok());
  const JsonValue q = QuantConfig(out);
  for (const auto& [key, value] : ref->as_object()) {
    CAPTURE(key);
    REQUIRE(q.Find(key) != nullptr);
    if (key == "config_groups") {
      REQUIRE(q.Find(key)->as_object().size() == 1);
      REQUIRE(value.as_object().size() == 1);
      CHECK(DumpCompactJson(q.Find(key)->as_object()[0].second) ==
            DumpCompactJson(value.as_object()[0].second));
    } else if (key == "ignore") {
      // The recipe's entries, then quench's default ignore of embeddings (which oneshot,
      // matching modules, needs not name: an Embedding is not a Linear).
      std::vector<std::string> want;
      for (const JsonValue& e : value.as_array()) want.push_back(e.as_string());
      want.push_back("re:.*embed_tokens$");
      std::vector<std::string> got;
      for (const JsonValue& e : q.Find(key)->as_array()) got.push_back(e.as_string());
      CHECK(got == want);
    } else {
      CHECK(DumpCompactJson(*q.Find(key)) == DumpCompactJson(value));
    }
  }
  CHECK(q.as_object().size() == ref->as_object().size());
}

}  // namespace quench::testing

#endif  // QUENCH_TESTS_RECIPE_TEST_UTIL_H_
