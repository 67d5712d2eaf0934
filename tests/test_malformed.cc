// Must-fail fixtures (data/malformed, from scripts/make_malformed.py): every file is rejected by
// ReadSafetensorsHeader with the expected error code and a one-line message that names the file
// and contains the expected rule text. The CLI-level checks live elsewhere.
#include <doctest/doctest.h>

#include <filesystem>
#include <random>
#include <set>
#include <string>

#include "format/json.h"
#include "format/model_folder.h"
#include "format/safetensors.h"
#include "tests/test_util.h"

namespace quench {
namespace {

TEST_SUITE("malformed") {
  TEST_CASE("every malformed file is rejected with its expected code and message") {
    const auto dir = testing::DataDir() / "malformed";
    Result<JsonValue> expected = ReadJsonFile((dir / "expected.json").string());
    REQUIRE_MESSAGE(expected.ok(), expected.status().ToString());
    REQUIRE(expected->is_object());
    REQUIRE(expected->as_object().size() >= 30);

    std::set<std::string> listed;
    for (const auto& [file, want] : expected->as_object()) {
      CAPTURE(file);
      listed.insert(file);
      const JsonValue* code = want.Find("code");
      const JsonValue* contains = want.Find("message_contains");
      REQUIRE(code != nullptr);
      REQUIRE(contains != nullptr);

      const auto path = dir / file;
      Result<SafetensorsHeader> h = ReadSafetensorsHeader(path);
      REQUIRE_MESSAGE(!h.ok(), "accepted: " << file);
      const std::string& msg = h.status().message();
      CAPTURE(msg);
      CHECK(std::string(ErrorCodeName(h.status().code())) == code->as_string());
      CHECK(msg.find(contains->as_string()) != std::string::npos);
      CHECK(msg.find(path.string()) == 0);          // names the file first
      CHECK(msg.find('\n') == std::string::npos);   // one line
    }

    // Every file in the folder is listed, so a new fixture cannot go unchecked.
    for (const auto& entry : std::filesystem::directory_iterator(dir)) {
      const std::string name = entry.path().filename().string();
      if (name == "expected.json") continue;
      CHECK_MESSAGE(listed.count(name) == 1, "not in expected.json: " << name);
    }
  }

  TEST_CASE("mutated headers never crash and only fail as invalid or unsupported input") {
    // Byte flips, insertions and truncations of a real crate-written header; each mutant must
    // parse or be rejected cleanly (run under ASan/UBSan to catch memory errors).
    const std::string file = testing::ReadBytes(testing::DataDir() / "safetensors_writer" /
                                                "quantized_shard.safetensors");
    REQUIRE(file.size() > 16);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(file[i]);
    const std::string header = file.substr(8, n);
    const uint64_t data_len = file.size() - 8 - n;
    std::mt19937_64 rng(42);
    int accepted = 0;
    for (int iter = 0; iter < 3000; ++iter) {
      std::string h = header;
      const int edits = 1 + static_cast<int>(rng() % 3);
      for (int e = 0; e < edits; ++e) {
        const size_t pos = rng() % h.size();
        switch (rng() % 4) {
          case 0: h[pos] = static_cast<char>(rng()); break;
          case 1: h[pos] = "{}[]\",:0123456789-.e \\"[rng() % 22]; break;
          case 2: h.insert(pos, 1, static_cast<char>(rng())); break;
          default: h.resize(pos + 1); break;
        }
      }
      const uint64_t file_size = 8 + h.size() + data_len - (rng() % 2) * (rng() % 4);
      Result<SafetensorsHeader> r = ParseSafetensorsHeader("fuzz.safetensors", h, file_size);
      if (r.ok()) {
        ++accepted;
        continue;
      }
      const ErrorCode c = r.status().code();
      CHECK((c == ErrorCode::kInvalidInput || c == ErrorCode::kUnsupported));
      CHECK(r.status().message().find("fuzz.safetensors: ") == 0);
      CHECK(r.status().message().find('\n') == std::string::npos);
    }
    CHECK(accepted < 3000);
  }
}

}  // namespace
}  // namespace quench

namespace quench {
namespace {

// The folder-level checks LoadModelFolder makes of a sharded checkpoint: a tensor in two
// shards, and an index naming a shard that does not exist or does not hold the tensor. The
// expected outcomes follow from the index's definition (weight_map: tensor -> the file holding
// it) and Python's json, where a repeated key keeps its last value.
TEST_SUITE("malformed") {
  TEST_CASE("folder checks: duplicate tensors across shards and a wrong index") {
    testing::TempDir dir;
    const std::string two(4, '\0');
    testing::WriteShard(dir / "a.safetensors", {{"x.weight", DType::kBF16, {2}, two},
                                                {"y.weight", DType::kBF16, {2}, two}});
    testing::WriteShard(dir / "b.safetensors", {{"z.weight", DType::kBF16, {2}, two}});
    auto load_with_index = [&](const std::string& weight_map) {
      testing::WriteBytes(dir / "model.safetensors.index.json",
                          "{\"metadata\": {}, \"weight_map\": {" + weight_map + "}}");
      return LoadModelFolder(dir.path());
    };
    CHECK(load_with_index(R"("x.weight": "a.safetensors", "y.weight": "a.safetensors",
                             "z.weight": "b.safetensors")")
              .ok());
    // A repeated key: the last value counts, wherever the key first stood.
    CHECK(load_with_index(R"("z.weight": "a.safetensors", "x.weight": "a.safetensors",
                             "z.weight": "b.safetensors")")
              .ok());
    Result<ModelFolder> r = load_with_index(R"("x.weight": "a.safetensors",
                                               "z.weight": "b.safetensors",
                                               "x.weight": "b.safetensors")");
    REQUIRE(!r.ok());
    CHECK(r.status().code() == ErrorCode::kInvalidInput);
    CHECK(r.status().message() == "model.safetensors.index.json: tensor 'x.weight' is mapped "
                                  "to 'b.safetensors', which does not hold it");
    r = load_with_index(R"("x.weight": "a.safetensors", "y.weight": "c.safetensors")");
    REQUIRE(!r.ok());
    CHECK(r.status().message() == "model.safetensors.index.json: tensor 'y.weight' is mapped "
                                  "to 'c.safetensors', which does not exist");
    r = load_with_index(R"("x.weight": 3)");
    REQUIRE(!r.ok());
    CHECK(r.status().message() ==
          "model.safetensors.index.json: tensor 'x.weight': shard name is not a string");
    testing::WriteBytes(dir / "model.safetensors.index.json", "{\"weight_map\": [1]}");
    r = LoadModelFolder(dir.path());
    REQUIRE(!r.ok());
    CHECK(r.status().message() == "model.safetensors.index.json: no \"weight_map\" object");
    testing::WriteBytes(dir / "model.safetensors.index.json", "{\"weight_map\": {");
    r = LoadModelFolder(dir.path());
    REQUIRE(!r.ok());
    CHECK(r.status().code() == ErrorCode::kInvalidInput);
    CHECK(r.status().message().find("not valid JSON") != std::string::npos);

    // An index in name order is checked in one walk beside the shards' sorted names; one in
    // any other order (valid all the same) by the name table, with the same outcomes.
    CHECK(load_with_index(R"("z.weight": "b.safetensors", "y.weight": "a.safetensors",
                             "x.weight": "a.safetensors")")
              .ok());
    r = load_with_index(R"("x.weight": "a.safetensors", "y.weight": "a.safetensors",
                           "z.weight": "a.safetensors")");
    REQUIRE(!r.ok());
    CHECK(r.status().message() == "model.safetensors.index.json: tensor 'z.weight' is mapped "
                                  "to 'a.safetensors', which does not hold it");
    r = load_with_index(R"("w.weight": "a.safetensors", "x.weight": "a.safetensors")");
    REQUIRE(!r.ok());
    CHECK(r.status().message() == "model.safetensors.index.json: tensor 'w.weight' is mapped "
                                  "to 'a.safetensors', which does not hold it");

    testing::WriteShard(dir / "c.safetensors", {{"y.weight", DType::kBF16, {2}, two}});
    // A tensor in two shards is named whether or not the index (in name order) maps it.
    r = load_with_index(R"("x.weight": "a.safetensors", "y.weight": "a.safetensors",
                           "z.weight": "b.safetensors")");
    REQUIRE(!r.ok());
    CHECK(r.status().message() == "tensor 'y.weight' appears in both a.safetensors and "
                                  "c.safetensors");
    std::filesystem::remove(dir / "model.safetensors.index.json");
    r = LoadModelFolder(dir.path());
    REQUIRE(!r.ok());
    CHECK(r.status().message() == "tensor 'y.weight' appears in both a.safetensors and "
                                  "c.safetensors");
  }

  TEST_CASE("folder checks: a shard listing its names by dtype, then name") {
    // The writer lists F32 before BF16, so the shard's names are not in name order.
    testing::TempDir dir;
    testing::WriteShard(dir / "m-1.safetensors", {{"b.w", DType::kF32, {1}, std::string(4, '\0')},
                                                  {"a.w", DType::kBF16, {1}, std::string(2, '\0')},
                                                  {"c.w", DType::kF32, {1}, std::string(4, '\0')}});
    testing::WriteShard(dir / "m-2.safetensors",
                        {{"d.w", DType::kBF16, {1}, std::string(2, '\0')}});
    auto load_with_index = [&](const std::string& weight_map) {
      testing::WriteBytes(dir / "model.safetensors.index.json",
                          "{\"weight_map\": {" + weight_map + "}}");
      return LoadModelFolder(dir.path());
    };
    CHECK(load_with_index(R"("a.w": "m-1.safetensors", "b.w": "m-1.safetensors",
                             "c.w": "m-1.safetensors", "d.w": "m-2.safetensors")")
              .ok());
    Result<ModelFolder> r =
        load_with_index(R"("a.w": "m-1.safetensors", "b.w": "m-3.safetensors")");
    REQUIRE(!r.ok());
    CHECK(r.status().message() == "model.safetensors.index.json: tensor 'b.w' is mapped to "
                                  "'m-3.safetensors', which does not exist");
  }
}

}  // namespace
}  // namespace quench
