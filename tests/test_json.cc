// JSON parsing and the two writers. The fixtures in data/json/expected were produced by
// Python's json.dump(indent=2, sort_keys=True) (scripts/make_json_fixtures.sh), which is how
// the reference rewrites config.json and the index.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>

#include "format/json.h"
#include "format/quant_config.h"

namespace quench {
namespace {

std::filesystem::path DataDir() {
  if (const char* env = std::getenv("QUENCH_DATA_DIR"); env != nullptr && *env != '\0') {
    return env;
  }
  return std::filesystem::path(__FILE__).parent_path().parent_path() / "data";
}

std::string ReadAll(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string PyFloat(double v) { return DumpPythonJson(JsonValue(v)); }
std::string RyuFloat(double v) { return DumpCompactJson(JsonValue(v)); }

TEST_SUITE("json") {
  TEST_CASE("fixtures dump like Python's json.dump(indent=2, sort_keys=True)") {
    const auto dir = DataDir() / "json";
    int count = 0;
    for (const auto& entry : std::filesystem::directory_iterator(dir / "input")) {
      const std::string name = entry.path().filename().string();
      CAPTURE(name);
      const std::string expected = ReadAll(dir / "expected" / name);
      REQUIRE(!expected.empty());
      Result<JsonValue> parsed = ReadJsonFile(entry.path().string());
      REQUIRE_MESSAGE(parsed.ok(), parsed.status().ToString());
      CHECK(DumpPythonJson(*parsed) == expected);
      // The expected text is itself a fixed point.
      Result<JsonValue> again = ParseJson(name, expected);
      REQUIRE(again.ok());
      CHECK(DumpPythonJson(*again) == expected);
      ++count;
    }
    CHECK(count >= 6);
  }

  TEST_CASE("Python float repr") {
    CHECK(PyFloat(1e-05) == "1e-05");
    CHECK(PyFloat(1e-06) == "1e-06");
    CHECK(PyFloat(500000.0) == "500000.0");
    CHECK(PyFloat(1e16) == "1e+16");
    CHECK(PyFloat(1e15) == "1000000000000000.0");
    CHECK(PyFloat(1.5e-07) == "1.5e-07");
    CHECK(PyFloat(0.0001) == "0.0001");
    CHECK(PyFloat(0.00011) == "0.00011");
    CHECK(PyFloat(-0.0) == "-0.0");
    CHECK(PyFloat(0.0) == "0.0");
    CHECK(PyFloat(0.1) == "0.1");
    CHECK(PyFloat(0.02) == "0.02");
    CHECK(PyFloat(10000.0) == "10000.0");
    CHECK(PyFloat(-1.5) == "-1.5");
    CHECK(PyFloat(1e100) == "1e+100");
    CHECK(PyFloat(1.2345e-100) == "1.2345e-100");
    CHECK(PyFloat(123456789012345678.0) == "1.2345678901234568e+17");
    CHECK(PyFloat(0.30000000000000004) == "0.30000000000000004");
    CHECK(PyFloat(5e-324) == "5e-324");
    CHECK(PyFloat(std::numeric_limits<double>::quiet_NaN()) == "NaN");
    CHECK(PyFloat(std::numeric_limits<double>::infinity()) == "Infinity");
    CHECK(PyFloat(-std::numeric_limits<double>::infinity()) == "-Infinity");
  }

  TEST_CASE("serde_json (ryu) float format") {
    CHECK(RyuFloat(1.0) == "1.0");
    CHECK(RyuFloat(-0.0) == "-0.0");
    CHECK(RyuFloat(1e-5) == "0.00001");
    CHECK(RyuFloat(1e-6) == "1e-6");
    CHECK(RyuFloat(1.5e-7) == "1.5e-7");
    CHECK(RyuFloat(1e15) == "1000000000000000.0");
    CHECK(RyuFloat(1e16) == "1e16");
    CHECK(RyuFloat(1.25e17) == "1.25e17");
    CHECK(RyuFloat(123.456) == "123.456");
    CHECK(RyuFloat(0.001234) == "0.001234");
    CHECK(RyuFloat(std::numeric_limits<double>::quiet_NaN()) == "null");
  }

  TEST_CASE("integers") {
    CHECK(DumpPythonJson(JsonValue(int64_t{-9223372036854775807 - 1})) == "-9223372036854775808");
    CHECK(DumpPythonJson(JsonValue(uint64_t{18446744073709551615u})) == "18446744073709551615");
    CHECK(DumpCompactJson(JsonValue(0)) == "0");
    Result<JsonValue> v = ParseJson("t", "[-0, 18446744073709551615, 9223372036854775807, 1.0]");
    REQUIRE(v.ok());
    const auto& a = v->as_array();
    CHECK(a[0].is_int());
    CHECK(a[0].as_int() == 0);
    CHECK(a[1].as_uint() == 18446744073709551615u);
    CHECK(a[1].as_int() == std::numeric_limits<int64_t>::max());  // saturates
    CHECK(a[2].as_int() == 9223372036854775807);
    CHECK(a[3].is_double());
    CHECK(a[3].as_double() == 1.0);
  }

  TEST_CASE("ensure_ascii string escapes") {
    CHECK(DumpPythonJson(JsonValue("a\"b\\c\n\r\t\b\f")) == R"("a\"b\\c\n\r\t\b\f")");
    CHECK(DumpPythonJson(JsonValue(std::string("\x01\x1f\x7f", 3))) == R"("\u0001\u001f\u007f")");
    CHECK(DumpPythonJson(JsonValue(std::string("\0", 1))) == R"("\u0000")");
    CHECK(DumpPythonJson(JsonValue("caf\xc3\xa9")) == R"("caf\u00e9")");
    CHECK(DumpPythonJson(JsonValue("\xe6\x97\xa5")) == R"("\u65e5")");
    CHECK(DumpPythonJson(JsonValue("\xf0\x9f\x98\x80")) == R"("\ud83d\ude00")");
    CHECK(DumpPythonJson(JsonValue("\xf4\x8f\xbf\xbf")) == R"("\udbff\udfff")");
    CHECK(DumpPythonJson(JsonValue("/")) == R"("/")");
  }

  TEST_CASE("serde_json string escapes keep UTF-8") {
    std::string out;
    AppendJsonStringCompact(out, std::string("a\"\\\n\t\x01\x1f\x7f \xc3\xa9/", 12));
    CHECK(out == "\"a\\\"\\\\\\n\\t\\u0001\\u001f\x7f \xc3\xa9/\"");
  }

  TEST_CASE("layout of containers") {
    JsonValue o = JsonValue::MakeObject();
    o.Set("b", JsonValue::MakeArray());
    o.Set("a", JsonValue::MakeObject());
    o.Set("c", JsonValue::Array{JsonValue(1), JsonValue("x"), JsonValue(nullptr), JsonValue(true)});
    CHECK(DumpPythonJson(o) ==
          "{\n  \"a\": {},\n  \"b\": [],\n  \"c\": [\n    1,\n    \"x\",\n    null,\n"
          "    true\n  ]\n}");
    CHECK(DumpCompactJson(o) == R"({"b":[],"a":{},"c":[1,"x",null,true]})");
    CHECK(DumpPythonJson(JsonValue::MakeObject()) == "{}");
    CHECK(DumpPythonJson(JsonValue::MakeArray()) == "[]");
  }

  TEST_CASE("keys sort by code point") {
    JsonValue o = JsonValue::MakeObject();
    o.Set("\xc3\x84", 1);  // U+00C4
    o.Set("z", 2);
    o.Set("Z", 3);
    o.Set("\xef\xbf\xbf", 4);      // U+FFFF
    o.Set("\xf0\x9f\x98\x80", 5);  // U+1F600 sorts after U+FFFF by code point
    CHECK(DumpPythonJson(o) ==
          "{\n  \"Z\": 3,\n  \"z\": 2,\n  \"\\u00c4\": 1,\n  \"\\uffff\": 4,\n"
          "  \"\\ud83d\\ude00\": 5\n}");
  }

  TEST_CASE("the index is written as Python's json.dump(indent=2, sort_keys=True) writes it") {
    // Expected strings from CPython 3 json.dumps of the same dict (ensure_ascii).
    const std::vector<std::pair<std::string_view, std::string_view>> wm = {
        {"b.weight", "model-00002.safetensors"},
        {"a\xc3\xa9\"x\xf0\x9f\x98\x80", "model-00001.safetensors"},
        {"a", "s\\t"},
        {"A", "z"}};
    CHECK(quench::BuildIndexJson(wm, 123) ==
          R"({
  "metadata": {
    "total_size": 123
  },
  "weight_map": {
    "A": "z",
    "a": "s\\t",
    "a\u00e9\"x\ud83d\ude00": "model-00001.safetensors",
    "b.weight": "model-00002.safetensors"
  }
})");
    CHECK(quench::BuildIndexJson({}, 0) ==
          "{\n  \"metadata\": {\n    \"total_size\": 0\n  },\n  \"weight_map\": {}\n}");
  }

  TEST_CASE("the index: names copied as they are, and a name needing an escape after them") {
    // BuildIndexJson copies entries needing no escape straight into its text, and starts over
    // with the general writer at the first that needs one (here the last, DEL: \u007f).
    // Expected strings from CPython 3 json.dumps(indent=2, sort_keys=True) of the same dicts.
    const std::string_view s1 = "model-00001.safetensors", s2 = "model-00002.safetensors";
    CHECK(quench::BuildIndexJson({{"m.b.weight", s2}, {"m.a.weight", s1},
                                  {"m.a.weight_scale", s1}},
                                 7) ==
          "{\n  \"metadata\": {\n    \"total_size\": 7\n  },\n  \"weight_map\": {\n"
          "    \"m.a.weight\": \"model-00001.safetensors\",\n"
          "    \"m.a.weight_scale\": \"model-00001.safetensors\",\n"
          "    \"m.b.weight\": \"model-00002.safetensors\"\n  }\n}");
    CHECK(quench::BuildIndexJson({{"m.b.weight", s2}, {"m.a.weight", s1}, {"z\x7f", s1}}, 7) ==
          "{\n  \"metadata\": {\n    \"total_size\": 7\n  },\n  \"weight_map\": {\n"
          "    \"m.a.weight\": \"model-00001.safetensors\",\n"
          "    \"m.b.weight\": \"model-00002.safetensors\",\n"
          "    \"z\\u007f\": \"model-00001.safetensors\"\n  }\n}");
  }

  TEST_CASE("duplicate keys: last value, first position") {
    Result<JsonValue> v = ParseJson("t", R"({"a":1,"b":2,"a":3})");
    REQUIRE(v.ok());
    CHECK(DumpCompactJson(*v) == R"({"a":3,"b":2})");
    std::string big = "{";
    for (int i = 0; i < 20; ++i) big += "\"k" + std::to_string(i) + "\":" + std::to_string(i) + ",";
    big += "\"k3\":\"x\"}";
    Result<JsonValue> w = ParseJson("t", big);
    REQUIRE(w.ok());
    CHECK(w->as_object().size() == 20);
    CHECK(w->as_object()[3].second.as_string() == "x");
  }

  TEST_CASE("Find and Set") {
    JsonValue o = JsonValue::MakeObject();
    o.Set("x", 1);
    o.Set("y", 2);
    o.Set("x", "one");
    REQUIRE(o.Find("x") != nullptr);
    CHECK(o.Find("x")->as_string() == "one");
    CHECK(o.as_object().front().first == "x");
    CHECK(o.Find("missing") == nullptr);
    CHECK(JsonValue(1).Find("x") == nullptr);
  }

  TEST_CASE("parse errors name the file and the problem") {
    Result<JsonValue> bad = ParseJson("config.json", "{\"a\": }");
    REQUIRE(!bad.ok());
    CHECK(bad.status().code() == ErrorCode::kInvalidInput);
    CHECK(bad.status().message().find("config.json: not valid JSON") == 0);

    Result<JsonValue> big = ParseJson("config.json", "[18446744073709551616]");
    REQUIRE(!big.ok());
    CHECK(big.status().message().find("64 bits") != std::string::npos);

    Result<JsonValue> utf = ParseJson("config.json", "[\"ab\xff\"]");
    REQUIRE(!utf.ok());
    CHECK(utf.status().message().find("UTF-8") != std::string::npos);
    CHECK(utf.status().message().find("offset 4") != std::string::npos);

    Result<JsonValue> missing = ReadJsonFile("/nonexistent/quench/config.json");
    REQUIRE(!missing.ok());
    CHECK(missing.status().code() == ErrorCode::kIo);
    CHECK(missing.status().message().find("/nonexistent/quench/config.json") == 0);
  }

  TEST_CASE("round trip of parsed numbers through Python repr") {
    // Every double that Python printed must parse and print back identically.
    for (const char* s : {"1e-05", "0.02", "10000.0", "500000.0", "1e+16", "2.5e-05",
                          "1.7976931348623157e+308", "2.2250738585072014e-308", "4.9e-322",
                          "9007199254740993.0", "0.1", "123.456", "6.02214076e+23"}) {
      CAPTURE(s);
      Result<JsonValue> v = ParseJson("t", s);
      REQUIRE(v.ok());
      if (std::string(s) == "9007199254740993.0") {
        CHECK(DumpPythonJson(*v) == "9007199254740992.0");  // rounds to the nearest double
      } else {
        CHECK(DumpPythonJson(*v) == s);
      }
    }
  }
}

}  // namespace
}  // namespace quench
