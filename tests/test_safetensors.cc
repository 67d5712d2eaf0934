// safetensors headers: the writer against files written by the real crate
// (data/safetensors_writer, from scripts/make_safetensors_writer_fixtures.py), the crate's own
// unit-test vectors, the reader on valid files and on the odd-but-valid headers the crate
// accepts, and the dtype table.
#include <doctest/doctest.h>

#include <algorithm>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "format/json.h"
#include "format/name_table.h"
#include "format/safetensors.h"
#include "format/sorted_runs.h"
#include "quench/dtype.h"
#include "tests/test_util.h"

namespace quench {
namespace {

using testing::DataDir;
using testing::ReadBytes;
using testing::TempDir;
using testing::WriteBytes;

std::string Le64(uint64_t n) {
  std::string s;
  for (int i = 0; i < 8; ++i) s.push_back(static_cast<char>((n >> (8 * i)) & 0xFF));
  return s;
}

// A file image whose header is `json` (used verbatim, no padding) and `data_len` data bytes.
std::string FileImage(std::string_view json, size_t data_len) {
  return Le64(json.size()) + std::string(json) + std::string(data_len, '\0');
}

Result<SafetensorsHeader> ParseImage(std::string_view json, size_t data_len) {
  return ParseSafetensorsHeader("test.safetensors", json, 8 + json.size() + data_len);
}

TEST_SUITE("safetensors") {
  TEST_CASE("writer matches the crate's bytes on every fixture") {
    const auto dir = DataDir() / "safetensors_writer";
    Result<JsonValue> fixtures = ReadJsonFile((dir / "fixtures.json").string());
    REQUIRE_MESSAGE(fixtures.ok(), fixtures.status().ToString());
    const JsonValue* cases = fixtures->Find("cases");
    REQUIRE(cases != nullptr);
    REQUIRE(cases->as_array().size() >= 10);
    for (const JsonValue& c : cases->as_array()) {
      const std::string file = c.Find("file")->as_string();
      CAPTURE(file);
      std::vector<TensorSpec> specs;
      for (const JsonValue& t : c.Find("tensors")->as_array()) {
        TensorSpec s;
        s.name = t.Find("name")->as_string();
        std::optional<DType> dt = ParseDType(t.Find("dtype")->as_string());
        REQUIRE(dt.has_value());
        s.dtype = *dt;
        for (const JsonValue& d : t.Find("shape")->as_array()) s.shape.push_back(d.as_uint());
        s.nbytes = t.Find("nbytes")->as_uint();
        uint64_t numel = 1;
        for (uint64_t d : s.shape) numel *= d;
        CHECK(DTypeBytes(s.dtype, numel) == s.nbytes);
        specs.push_back(std::move(s));
      }
      std::vector<std::pair<std::string, std::string>> metadata;
      if (const JsonValue* m = c.Find("metadata"); m != nullptr && m->is_object()) {
        for (const auto& [k, v] : m->as_object()) metadata.emplace_back(k, v.as_string());
      }

      const std::string bytes = ReadBytes(dir / file);
      REQUIRE(bytes.size() >= 8);
      SafetensorsLayout layout = LayOutSafetensors(specs, metadata);
      REQUIRE(layout.header.size() <= bytes.size());
      CHECK(layout.header == bytes.substr(0, layout.header.size()));
      CHECK(layout.file_size == bytes.size());
      CHECK(layout.data_start == layout.header.size());
      CHECK((layout.header.size() - 8) % 8 == 0);

      // And the reader accepts the crate's file and agrees with the layout.
      Result<SafetensorsHeader> h = ReadSafetensorsHeader(dir / file);
      REQUIRE_MESSAGE(h.ok(), h.status().ToString());
      CHECK(h->data_start == layout.data_start);
      CHECK(h->header_len == layout.header.size() - 8);
      CHECK(h->data_size == layout.file_size - layout.data_start);
      CHECK(h->has_metadata == !metadata.empty());
      CHECK(h->metadata == metadata);
      REQUIRE(h->tensors.size() == layout.tensors.size());
      for (size_t i = 0; i < h->tensors.size(); ++i) {
        CHECK(h->tensors[i].name == layout.tensors[i].name);
        CHECK(h->tensors[i].dtype == layout.tensors[i].dtype);
        CHECK(h->tensors[i].shape == layout.tensors[i].shape);
        CHECK(h->tensors[i].begin == layout.tensors[i].begin);
        CHECK(h->tensors[i].end == layout.tensors[i].end);
      }
    }
  }

  TEST_CASE("writer reproduces the crate's unit-test vectors (tensor.rs tests)") {
    // test_serialization: {"attn.0": F32 [1, 2, 3]}; the header is 64 bytes, no padding.
    SafetensorsLayout a = LayOutSafetensors({{"attn.0", DType::kF32, {1, 2, 3}, 24}});
    CHECK(a.header ==
          Le64(64) + R"({"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}})");
    // test_serialization_forced_alignement: 65 bytes of JSON padded to 72 with spaces.
    SafetensorsLayout b = LayOutSafetensors({{"attn0", DType::kF32, {1, 1, 2, 3}, 24}});
    CHECK(b.header ==
          Le64(72) + R"({"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}})" +
              std::string(7, ' '));
    // test_empty: "{}" and six spaces; with metadata 35 bytes padded to 40.
    CHECK(LayOutSafetensors({}).header == Le64(8) + "{}" + std::string(6, ' '));
    CHECK(LayOutSafetensors({}, {{"framework", "pt"}}).header ==
          Le64(40) + R"({"__metadata__":{"framework":"pt"}})" + std::string(5, ' '));
  }

  TEST_CASE("writer orders by dtype descending, then name byte-wise") {
    SafetensorsLayout l = LayOutSafetensors({
        {"b", DType::kBF16, {2}, 4},
        {"a", DType::kBF16, {2}, 4},
        {"scale", DType::kF32, {1}, 4},
        {"q", DType::kF8E4M3, {4}, 4},
        {"shape", DType::kI64, {2}, 16},
        {"B", DType::kBF16, {1}, 2},
        {"\xc3\xa9", DType::kBF16, {1}, 2},
    });
    std::vector<std::string> names;
    for (const TensorInfo& t : l.tensors) names.push_back(t.name);
    CHECK(names == std::vector<std::string>{"shape", "scale", "B", "a", "b", "\xc3\xa9", "q"});
    CHECK(l.tensors[0].begin == 0);
    CHECK(l.tensors[0].end == 16);
    CHECK(l.tensors.back().begin == 32);
    CHECK(l.tensors.back().end == 36);
    CHECK(l.file_size == l.data_start + 36);
  }

  TEST_CASE("reader: header fields") {
    const std::string json =
        R"({"__metadata__":{"format":"pt"},)"
        R"("b":{"dtype":"BF16","shape":[2,3],"data_offsets":[4,16]},)"
        R"("a":{"dtype":"F32","shape":[],"data_offsets":[0,4]}})";
    Result<SafetensorsHeader> h = ParseImage(json, 16);
    REQUIRE_MESSAGE(h.ok(), h.status().ToString());
    CHECK(h->header_len == json.size());
    CHECK(h->data_start == 8 + json.size());
    CHECK(h->data_size == 16);
    CHECK(h->has_metadata);
    CHECK(h->metadata == std::vector<std::pair<std::string, std::string>>{{"format", "pt"}});
    REQUIRE(h->tensors.size() == 2);
    CHECK(h->tensors[0].name == "b");  // header order, not sorted
    CHECK(h->tensors[0].dtype == DType::kBF16);
    CHECK(h->tensors[0].shape == std::vector<uint64_t>{2, 3});
    CHECK(h->tensors[0].begin == 4);
    CHECK(h->tensors[0].end == 16);
    CHECK(h->tensors[1].shape.empty());
    CHECK(h->tensors[1].numel() == 1);
  }

  TEST_CASE("reader: the header's bytes handed over instead of hashed") {
    // FNV-1a 64 of the header bytes, written out here.
    const auto fnv = [](std::string_view bytes) {
      uint64_t h = 14695981039346656037ull;
      for (unsigned char c : bytes) h = (h ^ c) * 1099511628211ull;
      return h;
    };
    TempDir tmp;
    const auto path = tmp / "model.safetensors";
    // A header of a few MiB (as a large checkpoint's) and one of a few bytes.
    std::string big = "{";
    for (int i = 0; i < 60000; ++i) {
      big += "\"model.layers." + std::to_string(i) + ".weight\":{\"dtype\":\"U8\",\"shape\":[1],"
             "\"data_offsets\":[" + std::to_string(i) + "," + std::to_string(i + 1) + "]},";
    }
    big.back() = '}';
    const std::string small = R"({"a":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}})";
    const std::vector<std::pair<std::string, size_t>> images = {{big, 60000}, {small, 3}};
    for (const auto& [json, data] : images) {
      WriteBytes(path, FileImage(json, data));
      Result<SafetensorsHeader> hashed = ReadSafetensorsHeader(path);
      REQUIRE_MESSAGE(hashed.ok(), hashed.status().ToString());
      CHECK(hashed->header_hash == fnv(json));
      HeaderBytes kept;
      Result<SafetensorsHeader> h = ReadSafetensorsHeader(path, &kept);
      REQUIRE_MESSAGE(h.ok(), h.status().ToString());
      CHECK(h->header_hash == 0);
      CHECK(kept.owner != nullptr);
      CHECK(kept.bytes == json);
      CHECK(h->tensors.size() == hashed->tensors.size());
      CHECK(h->data_size == hashed->data_size);
      // The bytes outlive the header and a copy of the handle shares them.
      HeaderBytes copy = kept;
      h = Result<SafetensorsHeader>(Error(ErrorCode::kInternal, "gone"));
      kept = {};
      CHECK(copy.bytes == json);
    }
    // A header that fails to parse hands nothing over.
    WriteBytes(path, FileImage(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,3]}})", 3));
    HeaderBytes none;
    CHECK_FALSE(ReadSafetensorsHeader(path, &none).ok());
    CHECK(none.owner == nullptr);
    CHECK(none.bytes.empty());
  }

  TEST_CASE("reader accepts what the crate accepts") {
    // Each of these loads with safetensors 0.8.0's safe_open.
    const std::string e = R"({"dtype":"U8","shape":[2],"data_offsets":[0,2]})";
    SUBCASE("leading and trailing whitespace") {
      CHECK(ParseImage(" \n\t{\"a\":" + e + "}\r\n  ", 2).ok());
    }
    SUBCASE("unknown fields in a tensor entry are ignored (no deny_unknown_fields)") {
      CHECK(ParseImage(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2],"foo":[1]}})", 2)
                .ok());
    }
    SUBCASE("fields in any order") {
      CHECK(ParseImage(R"({"a":{"data_offsets":[0,2],"shape":[2],"dtype":"U8"}})", 2).ok());
    }
    SUBCASE("__metadata__ null means absent") {
      Result<SafetensorsHeader> h = ParseImage(R"({"__metadata__":null,"a":)" + e + "}", 2);
      REQUIRE(h.ok());
      CHECK(!h->has_metadata);
    }
    SUBCASE("__metadata__ after the tensors, empty, or with a repeated key") {
      Result<SafetensorsHeader> h =
          ParseImage(R"({"a":)" + e + R"(,"__metadata__":{"k":"v","j":"x","k":"w"}})", 2);
      REQUIRE(h.ok());
      CHECK(h->metadata ==
            std::vector<std::pair<std::string, std::string>>{{"k", "w"}, {"j", "x"}});
      Result<SafetensorsHeader> empty = ParseImage(R"({"__metadata__":{}})", 0);
      REQUIRE(empty.ok());
      CHECK(empty->has_metadata);
      CHECK(empty->metadata.empty());
    }
    SUBCASE("zero-byte tensors anywhere on a boundary, and no tensors at all") {
      CHECK(ParseImage(R"({"z":{"dtype":"F32","shape":[0,4],"data_offsets":[2,2]},"a":)" + e +
                           R"(,"y":{"dtype":"BF16","shape":[0],"data_offsets":[0,0]}})",
                       2)
                .ok());
      CHECK(ParseImage("{}", 0).ok());
    }
    SUBCASE("escaped and empty names") {
      Result<SafetensorsHeader> h = ParseImage(R"({"a\u00e9\t":)" + e + "}", 2);
      REQUIRE(h.ok());
      CHECK(h->tensors[0].name == "a\xc3\xa9\t");
      CHECK(ParseImage(R"({"":)" + e + "}", 2).ok());
    }
    SUBCASE("sub-byte dtypes that end on a byte boundary") {
      CHECK(ParseImage(R"({"a":{"dtype":"F4","shape":[2,6],"data_offsets":[0,6]}})", 6).ok());
      CHECK(ParseImage(R"({"a":{"dtype":"F6_E2M3","shape":[4],"data_offsets":[0,3]}})", 3).ok());
    }
  }

  TEST_CASE("reader messages name file, tensor and rule") {
    TempDir tmp;
    const auto path = tmp / "model.safetensors";
    const std::string json = R"({"a.weight":{"dtype":"U8","shape":[100],"data_offsets":[0,100]}})";
    WriteBytes(path, FileImage(json, 96));
    Result<SafetensorsHeader> h = ReadSafetensorsHeader(path);
    REQUIRE(!h.ok());
    CHECK(h.status().code() == ErrorCode::kInvalidInput);
    const std::string& m = h.status().message();
    CHECK(m.find(path.string() + ": tensor 'a.weight': data_offsets [0, 100] end past the data "
                                 "section (96 bytes") == 0);
    CHECK(m.find('\n') == std::string::npos);

    Result<SafetensorsHeader> missing = ReadSafetensorsHeader(tmp / "absent.safetensors");
    REQUIRE(!missing.ok());
    CHECK(missing.status().code() == ErrorCode::kIo);

    // A control character in a name stays on one line.
    Result<SafetensorsHeader> ctl =
        ParseImage(R"({"a\nb":{"dtype":"Q8","shape":[2],"data_offsets":[0,2]}})", 2);
    REQUIRE(!ctl.ok());
    CHECK(ctl.status().message().find("tensor 'a\\x0ab': unknown dtype 'Q8'") != std::string::npos);
  }

  TEST_CASE("dtype table") {
    const char* names[] = {"BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2",
                           "F8_E4M3", "F8_E8M0", "I16", "U16", "F16", "BF16", "I32",
                           "U32", "F32", "C64", "F64", "I64", "U64"};
    for (size_t i = 0; i < std::size(names); ++i) {
      CAPTURE(names[i]);
      std::optional<DType> d = ParseDType(names[i]);
      REQUIRE(d.has_value());
      CHECK(DTypeName(*d) == names[i]);
      CHECK(DTypeSortRank(*d) == static_cast<int>(i));  // the crate's enum order
    }
    CHECK(!ParseDType("bf16").has_value());
    CHECK(!ParseDType("F8_E4M3FNUZ").has_value());
    CHECK(!ParseDType("").has_value());
    CHECK(DTypeBits(DType::kF4) == 4);
    CHECK(DTypeBits(DType::kF6E3M2) == 6);
    CHECK(DTypeBits(DType::kBF16) == 16);
    CHECK(DTypeBits(DType::kC64) == 64);
    CHECK(DTypeBytes(DType::kBF16, 6) == 12u);
    CHECK(DTypeBytes(DType::kF4, 12) == 6u);
    CHECK(!DTypeBytes(DType::kF4, 3).has_value());
    CHECK(DTypeBytes(DType::kF6E2M3, 4) == 3u);
    CHECK(!DTypeBytes(DType::kF6E2M3, 2).has_value());
    CHECK(DTypeBytes(DType::kU8, UINT64_MAX) == UINT64_MAX);
    CHECK(!DTypeBytes(DType::kI64, UINT64_MAX).has_value());
    CHECK(DTypeBytes(DType::kF4, UINT64_MAX - 1) == UINT64_MAX / 2);
    CHECK(TorchDTypeName(DType::kBF16) == "torch.bfloat16");
    CHECK(TorchDTypeName(DType::kF8E4M3) == "torch.float8_e4m3fn");
    CHECK(TorchDTypeName(DType::kU8) == "torch.uint8");
    CHECK(TorchDTypeName(DType::kI8) == "torch.int8");
    CHECK(TorchDTypeName(DType::kF32) == "torch.float32");
    CHECK(TorchDTypeName(DType::kF16) == "torch.float16");
    CHECK(TorchDTypeName(DType::kI32) == "torch.int32");
    CHECK(TorchDTypeName(DType::kI64) == "torch.int64");
    CHECK(TorchDTypeName(DType::kF8E8M0) == "torch.float8_e8m0fnu");
    // The reverse reads the same table: every torch name maps back to its dtype.
    for (int i = 0; i <= static_cast<int>(DType::kU64); ++i) {
      const DType d = static_cast<DType>(i);
      CAPTURE(DTypeName(d));
      if (TorchDTypeName(d).empty()) {
        CHECK(!ParseTorchDType(TorchDTypeName(d)).has_value());
      } else {
        CHECK(ParseTorchDType(TorchDTypeName(d)) == d);
      }
    }
    CHECK(ParseTorchDType("torch.half") == DType::kF16);
    CHECK(ParseTorchDType("torch.float") == DType::kF32);
    CHECK(!ParseTorchDType("bfloat16").has_value());
    CHECK(!ParseTorchDType("BF16").has_value());
  }
}

}  // namespace
}  // namespace quench

// The helpers behind planning checkpoints of 10^5 tensors, against the standard library's
// containers and sorts as oracles.
namespace quench {
namespace {

TEST_SUITE("safetensors") {
  TEST_CASE("SortByRuns sorts as std::stable_sort does, on runs, random and equal keys") {
    std::mt19937 rng(7);
    for (int trial = 0; trial < 300; ++trial) {
      const size_t n = rng() % 200;
      std::vector<std::pair<int, int>> v(n);  // (key, original position)
      const int mode = trial % 3;
      for (size_t i = 0; i < n; ++i) {
        // Sorted runs of random length, uniformly random keys, or few distinct keys.
        const int key = mode == 0 ? static_cast<int>(i % (1 + rng() % 40)) * 3
                        : mode == 1 ? static_cast<int>(rng() % 1000)
                                    : static_cast<int>(rng() % 4);
        v[i] = {key, static_cast<int>(i)};
      }
      auto by_key = [](const auto& a, const auto& b) { return a.first < b.first; };
      std::vector<std::pair<int, int>> want = v;
      std::stable_sort(want.begin(), want.end(), by_key);
      SortByRuns(v.begin(), v.end(), by_key);
      CHECK(v == want);
    }
  }

  TEST_CASE("SortByRuns on sorted blocks that follow, touch or overlap each other") {
    // What a merge leaves in place (the first run's elements up to the second's first, the
    // second's from the first's last on) is found by binary search: blocks whose key ranges
    // are disjoint, share a boundary key (equal keys across the runs must keep run order) or
    // overlap in part, each block sorted with repeated keys. std::stable_sort is the oracle.
    std::mt19937 rng(23);
    for (int trial = 0; trial < 2000; ++trial) {
      std::vector<std::pair<int, int>> v;  // (key, original position)
      const int blocks = 1 + static_cast<int>(rng() % 5);
      int lo = static_cast<int>(rng() % 20);
      for (int b = 0; b < blocks; ++b) {
        const int width = static_cast<int>(rng() % 12);
        const size_t len = rng() % 30;
        std::vector<int> keys(len);
        for (int& k : keys) k = lo + (width > 0 ? static_cast<int>(rng() % (width + 1)) : 0);
        std::sort(keys.begin(), keys.end());
        for (int k : keys) v.emplace_back(k, static_cast<int>(v.size()));
        // The next block starts after this one, at its last key, inside it, or anywhere.
        switch (rng() % 4) {
          case 0: lo += width + 1 + static_cast<int>(rng() % 3); break;
          case 1: lo += width; break;
          case 2: lo += static_cast<int>(rng() % (width + 1)); break;
          default: lo = static_cast<int>(rng() % 40); break;
        }
      }
      auto by_key = [](const auto& a, const auto& b) { return a.first < b.first; };
      std::vector<std::pair<int, int>> want = v;
      std::stable_sort(want.begin(), want.end(), by_key);
      SortByRuns(v.begin(), v.end(), by_key);
      CHECK(v == want);
    }
  }

  TEST_CASE("PlaceSafetensors places every spec where LayOutSafetensors lays it out") {
    // Random dtypes and names (some needing escapes, some too long for one entry's buffer):
    // the same header bytes, the order LayOutSafetensors' positions give, and each spec's
    // offset.
    std::mt19937 rng(11);
    const DType dtypes[] = {DType::kBF16, DType::kF8E4M3, DType::kF32, DType::kI64};
    for (int trial = 0; trial < 50; ++trial) {
      std::vector<TensorSpec> specs;
      const size_t n = rng() % 60;
      for (size_t i = 0; i < n; ++i) {
        std::string name = "m." + std::to_string(rng() % 1000) + "." + std::to_string(i);
        if (rng() % 8 == 0) name += "\"q\\\n";
        if (rng() % 16 == 0) name += std::string(600, 'x');
        const uint64_t rows = 1 + rng() % 5;
        specs.push_back({name, dtypes[rng() % 4], {rows, 3}, rows * 3});
      }
      const SafetensorsPlacement place = PlaceSafetensors(specs);
      const SafetensorsLayout layout = LayOutSafetensors(specs);
      CHECK(place.header == layout.header);
      CHECK(place.data_start == layout.data_start);
      CHECK(place.file_size == layout.file_size);
      REQUIRE(place.order.size() == n);
      REQUIRE(place.begin.size() == n);
      for (size_t k = 0; k < n; ++k) CHECK(layout.position[place.order[k]] == k);
      for (size_t i = 0; i < n; ++i)
        CHECK(place.begin[i] == layout.tensors[layout.position[i]].begin);
    }
  }

  TEST_CASE("a name longer than one entry's buffer is written as the crate writes it") {
    // serde_json's compact text of {NAME: {dtype, shape, data_offsets}}, padded with spaces
    // to a multiple of 8 (the format's definition).
    const std::string name(700, 'n');
    const std::string json = "{\"" + name +
                             R"(":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})";
    const std::string want = Le64(json.size() + (8 - json.size() % 8) % 8) + json +
                             std::string((8 - json.size() % 8) % 8, ' ');
    CHECK(LayOutSafetensors({{name, DType::kU8, {1}, 1}}).header == want);
  }

  TEST_CASE("reader: a repeated name is found whether the names come sorted or not") {
    const std::string e = R"(:{"dtype":"U8","shape":[1],"data_offsets":)";
    // Sorted until the repeat ...
    Result<SafetensorsHeader> sorted =
        ParseImage("{\"a\"" + e + "[0,1]},\"b\"" + e + "[1,2]},\"b\"" + e + "[2,3]}}", 3);
    REQUIRE(!sorted.ok());
    CHECK(sorted.status().message() == "test.safetensors: tensor 'b': duplicate tensor name");
    // ... and after names that stopped increasing.
    Result<SafetensorsHeader> unsorted =
        ParseImage("{\"c\"" + e + "[0,1]},\"a\"" + e + "[1,2]},\"d\"" + e + "[2,3]},\"c\"" +
                       e + "[3,4]}}",
                   4);
    REQUIRE(!unsorted.ok());
    CHECK(unsorted.status().message() == "test.safetensors: tensor 'c': duplicate tensor name");
    // Out of order without a repeat is valid; the tensors keep the header's order.
    Result<SafetensorsHeader> fine =
        ParseImage("{\"c\"" + e + "[1,2]},\"a\"" + e + "[0,1]},\"d\"" + e + "[2,3]}}", 3);
    REQUIRE_MESSAGE(fine.ok(), fine.status().ToString());
    REQUIRE(fine->tensors.size() == 3);
    CHECK(fine->tensors[0].name == "c");
    CHECK(fine->tensors[1].name == "a");
  }

  TEST_CASE("NameTable finds what an unordered_map finds, across growth") {
    std::vector<std::string> names;
    for (int i = 0; i < 5000; ++i)
      names.push_back("model.layers." + std::to_string(i % 1700) + ".w");
    names.push_back("");
    NameTable table(3);  // sized small, so it grows several times
    std::unordered_map<std::string, uint32_t> oracle;
    for (size_t i = 0; i < names.size(); ++i) {
      auto [value, inserted] = table.Insert(names[i], static_cast<uint32_t>(i));
      auto [it, want_inserted] = oracle.emplace(names[i], static_cast<uint32_t>(i));
      CHECK(inserted == want_inserted);
      CHECK(value == it->second);
    }
    CHECK(table.size() == oracle.size());
    for (const auto& [name, value] : oracle) CHECK(table.Find(name) == value);
    CHECK(!table.Find("model.layers.1700.w").has_value());
    CHECK(!table.Find("model.layers.1.").has_value());
  }
}

}  // namespace
}  // namespace quench
