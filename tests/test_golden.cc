// Byte-for-byte parity with the pinned reference (llm-compressor model_free_ptq with
// compressed-tensors, versions in data/golden/manifest.json). scripts/make_golden.py ran the
// reference on each source folder; quench must write exactly the same files, except where
// data/golden/deliberate_differences.json records a deliberate difference, which is then
// checked in its own form (same tensors in other shards, or same output as another case).
#include <doctest/doctest.h>

#include <map>

#include "format/json.h"
#include "format/model_folder.h"
#include "quench/convert.h"
#include "test_util.h"

namespace qt = quench::testing;
namespace fs = std::filesystem;

namespace {

// name -> (dtype, shape, bytes) over every shard of a folder.
std::map<std::string, std::string> TensorContents(const fs::path& dir) {
  std::map<std::string, std::string> out;
  auto folder = quench::LoadModelFolder(dir);
  REQUIRE_MESSAGE(folder.ok(), folder.status().ToString());
  for (const auto& s : folder->shards) {
    const std::string bytes = qt::ReadBytes(s.path);
    for (const auto& t : s.header.tensors) {
      std::string key = std::string(quench::DTypeName(t.dtype)) + "[";
      for (uint64_t d : t.shape) key += std::to_string(d) + ",";
      key += "]";
      out[t.name] = key + bytes.substr(s.header.data_start + t.begin, t.nbytes());
    }
  }
  return out;
}

}  // namespace

TEST_SUITE("golden") {
  TEST_CASE("every golden case is reproduced byte for byte") {
    const fs::path data = qt::DataDir();
    auto manifest = quench::ReadJsonFile((data / "golden/manifest.json").string());
    REQUIRE_MESSAGE(manifest.ok(), manifest.status().ToString());
    auto differs = quench::ReadJsonFile((data / "golden/deliberate_differences.json").string());
    REQUIRE(differs.ok());
    const auto& cases = manifest->is_array() ? manifest->as_array()
                                             : manifest->Find("cases")->as_array();
    REQUIRE(cases.size() >= 60);
    std::map<std::string, const quench::JsonValue*> by_name;
    for (const auto& c : cases) by_name[c.Find("name")->as_string()] = &c;
    size_t files_compared = 0, by_tensor = 0, same_as = 0;
    for (const auto& c : cases) {
      const std::string name = c.Find("name")->as_string();
      CAPTURE(name);
      quench::ConvertOptions o;
      o.src = data / c.Find("source")->as_string();
      o.scheme = c.Find("scheme")->as_string();
      o.default_ignore = false;  // compare with exactly what model_free_ptq selects
      for (const auto& i : c.Find("ignore")->as_array()) o.ignore.push_back(i.as_string());
      if (const auto* ov = c.Find("overrides"); ov != nullptr && ov->is_object()) {
        if (const auto* g = ov->Find("group_size")) o.group_size = static_cast<int>(g->as_int());
        if (const auto* sym = ov->Find("symmetric")) o.symmetric = sym->as_bool();
      }
      qt::TempDir tmp;
      o.dst = tmp / "out";
      // Small chunks so that parity is also checked across chunk boundaries.
      o.chunk_bytes = 256 * 1024;
      auto r = quench::Convert(o);
      REQUIRE_MESSAGE(r.ok(), r.status().ToString());
      fs::path expected = data / c.Find("expected")->as_string();
      const quench::JsonValue* diff = differs->Find(name);
      if (diff != nullptr && diff->Find("same_as") != nullptr) {
        const auto* other = by_name.at(diff->Find("same_as")->as_string());
        expected = data / other->Find("expected")->as_string();
        ++same_as;
      }
      if (diff != nullptr && diff->Find("compare") != nullptr) {
        CHECK(diff->Find("compare")->as_string() == "tensors");
        CHECK(TensorContents(o.dst) == TensorContents(expected));
        CHECK(qt::ReadBytes(o.dst / "config.json") == qt::ReadBytes(expected / "config.json"));
        ++by_tensor;
        continue;
      }
      files_compared += qt::CheckSameFiles(expected, o.dst);
    }
    MESSAGE("files compared: " << files_compared << "; cases compared by tensor: " << by_tensor
                               << "; cases matching another case: " << same_as);
    CHECK(by_tensor + same_as == differs->as_object().size());
  }
}
