// The On-Demand header walk (format/safetensors_ondemand.cc) against the DOM reader it stands
// in for: wherever the walk accepts a header, the DOM reader accepts it too and reads the same
// tensors and metadata; on the headers writers write (LayOutSafetensors' bytes) the walk does
// accept. Headers: laid out from random specs, hand-written odd cases, and random byte edits
// of both (most of which the DOM reader refuses, some it accepts).
#include <doctest/doctest.h>

#include <random>
#include <string>
#include <vector>

#include "format/safetensors.h"
#include "format/safetensors_entry.h"

namespace quench {
namespace {

using safetensors_internal::ParseHeaderDom;
using safetensors_internal::ParseHeaderOnDemand;

bool SameTensors(const SafetensorsHeader& a, const SafetensorsHeader& b) {
  if (a.tensors.size() != b.tensors.size()) return false;
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    const TensorInfo& x = a.tensors[i];
    const TensorInfo& y = b.tensors[i];
    if (x.name != y.name || x.dtype != y.dtype || x.shape != y.shape || x.begin != y.begin ||
        x.end != y.end) {
      return false;
    }
  }
  return a.metadata == b.metadata && a.has_metadata == b.has_metadata;
}

struct Outcome {
  bool fast = false;    // the walk accepted the header
  bool dom_ok = false;  // the DOM reader did
  bool same = false;    // and read the same
};

Outcome Compare(const std::string& json, uint64_t data_len) {
  const simdjson::padded_string padded(json);
  SafetensorsHeader fast, dom;
  Outcome o;
  o.fast = ParseHeaderOnDemand(padded, data_len, fast);
  o.dom_ok = ParseHeaderDom("t.safetensors", padded, data_len, dom).ok();
  o.same = o.dom_ok && SameTensors(fast, dom);
  return o;
}

// A header as writers write it (LayOutSafetensors), without its length prefix, and its data
// section's length.
std::pair<std::string, uint64_t> RandomHeader(std::mt19937& rng) {
  const DType dtypes[] = {DType::kBF16, DType::kF8E4M3, DType::kF32, DType::kI64, DType::kU8};
  std::vector<TensorSpec> specs;
  const size_t n = rng() % 40;
  uint64_t data = 0;
  for (size_t i = 0; i < n; ++i) {
    std::string name = "model.layers." + std::to_string(rng() % 100) + ".mlp.experts." +
                       std::to_string(i) + ".down_proj.weight";
    if (rng() % 16 == 0) name += "\"\\\t";  // written escaped
    std::vector<uint64_t> shape;
    const size_t rank = rng() % 4;
    uint64_t numel = 1;
    for (size_t d = 0; d < rank; ++d) {
      shape.push_back(rng() % 5);
      numel *= shape.back();
    }
    const DType dt = dtypes[rng() % 5];
    const uint64_t bytes = *DTypeBytes(dt, numel);
    specs.push_back({name, dt, shape, bytes});
    data += bytes;
  }
  std::vector<std::pair<std::string, std::string>> metadata;
  if (rng() % 2 == 0) metadata.emplace_back("format", "pt");
  const SafetensorsLayout layout = LayOutSafetensors(specs, metadata);
  return {layout.header.substr(8), data};
}

TEST_SUITE("safetensors_ondemand") {
  TEST_CASE("writers' headers are read by the walk, as the DOM reader reads them") {
    std::mt19937 rng(5);
    for (int trial = 0; trial < 300; ++trial) {
      const auto [json, data] = RandomHeader(rng);
      CAPTURE(json);
      const Outcome o = Compare(json, data);
      REQUIRE(o.dom_ok);
      if (json.find('\\') == std::string::npos) CHECK(o.fast);
      if (o.fast) CHECK(o.same);
    }
  }

  TEST_CASE("odd headers: the walk accepts only what the DOM reader reads the same") {
    const std::string e = R"({"dtype":"U8","shape":[2],"data_offsets":[0,2]})";
    const std::vector<std::string> cases = {
        "{}", " {} ", "{} x", "{}}", "{},", "[]", "\"a\"", "{\"a\":" + e + "}",
        "{\"a\":" + e + "} {}", "{\"a\":" + e + ",}", "{\"a\":" + e + ",\"a\":" + e + "}",
        "{\"b\":" + e + ",\"a\":" + e + "}",
        R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2],"foo":[1,}}})",
        R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2],"foo":tru}})",
        R"({"a":{"dtype":"U8","shape":[2.0],"data_offsets":[0,2]}})",
        R"({"a":{"dtype":"U8","shape":[2e0],"data_offsets":[0,2]}})",
        R"({"a":{"dtype":"U8","shape":[-0],"data_offsets":[0,0]}})",
        R"({"a":{"dtype":"U8","shape":[02],"data_offsets":[0,2]}})",
        R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2,3]}})",
        R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,18446744073709551616]}})",
        R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"__metadata__":null})",
        R"({"__metadata__":{"k":"v","k":"w"},"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})",
        R"({"__metadata__":{"k":1}})", R"({"__metadata__":{"k":"\q"}})",
        R"({"a":{"dtype":"B\u004616","shape":[1],"data_offsets":[0,2]}})",
        R"({"a\u0062":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})",
        R"({"a":{"dtype":"U8","shape":[1,1,1,1,1,1,1,1,1,2],"data_offsets":[0,2]}})",
        R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2]}})",
        R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2],"dtype":"U8"}})",
        R"({"a":{"dtype":"U8","shape":[3],"data_offsets":[0,2]}})",
        R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[2,0]}})",
        R"({"a":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,0]}})",
        R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]})",
        "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},\"\xff\":" + e + "}",
        "{\"a\x01\":" + e + "}",
    };
    for (const std::string& json : cases) {
      CAPTURE(json);
      const Outcome o = Compare(json, 2);
      if (o.fast) CHECK(o.same);
    }
    CHECK(Compare("{\"a\":" + e + "}", 2).fast);
    CHECK(Compare("{\"b\":" + e + ",\"a\":" + e + "}", 2).fast);  // out of order, no repeat
    CHECK(!Compare("{} x", 0).fast);
    CHECK(!Compare("{\"a\":" + e + ",\"a\":" + e + "}", 2).fast);
  }

  TEST_CASE("random edits: the walk accepts only what the DOM reader reads the same") {
    std::mt19937 rng(17);
    const std::string alphabet = "{}[]:,\"\\ 0123456789.-+eEaftrunlx\x01\x80\xff";
    size_t fast_accepted = 0, dom_accepted = 0;
    for (int trial = 0; trial < 20000; ++trial) {
      auto [json, data] = RandomHeader(rng);
      const int edits = 1 + static_cast<int>(rng() % 3);
      for (int k = 0; k < edits && !json.empty(); ++k) {
        const size_t at = rng() % json.size();
        const char c = alphabet[rng() % alphabet.size()];
        switch (rng() % 4) {
          case 0: json[at] = c; break;
          case 1: json.insert(json.begin() + static_cast<std::ptrdiff_t>(at), c); break;
          case 2: json.erase(at, 1 + rng() % 4); break;
          default: json.resize(at); break;
        }
      }
      CAPTURE(json);
      const Outcome o = Compare(json, data);
      dom_accepted += o.dom_ok;
      if (o.fast) {
        ++fast_accepted;
        REQUIRE(o.same);
      }
    }
    // Some edits keep the header valid (a digit for a digit in a name, spaces): both accept.
    CHECK(fast_accepted > 50);
    CHECK(dom_accepted >= fast_accepted);
  }
}

}  // namespace
}  // namespace quench
