// A small JSON value tree for config.json, index files and recipes, parsed with simdjson and
// written the way Python's `json.dump(obj, f, indent=2, sort_keys=True)` writes it, because
// the reference rewrites config.json and the index that way and we match its bytes. The
// tree and parser are in json.cc, the writers in json_write.cc.
#ifndef QUENCH_FORMAT_JSON_H_
#define QUENCH_FORMAT_JSON_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "quench/status.h"

namespace quench {

class JsonValue {
 public:
  using Array = std::vector<JsonValue>;
  // Insertion-ordered; a repeated key replaces the earlier value (as Python's json.load does).
  using Object = std::vector<std::pair<std::string, JsonValue>>;

  JsonValue() : v_(nullptr) {}
  JsonValue(std::nullptr_t) : v_(nullptr) {}
  JsonValue(bool b) : v_(b) {}
  JsonValue(int v) : v_(static_cast<int64_t>(v)) {}
  JsonValue(int64_t v) : v_(v) {}
  JsonValue(uint64_t v) : v_(v) {}
  JsonValue(double v) : v_(v) {}
  JsonValue(const char* s) : v_(std::string(s)) {}
  JsonValue(std::string s) : v_(std::move(s)) {}
  JsonValue(std::string_view s) : v_(std::string(s)) {}
  JsonValue(Array a) : v_(std::move(a)) {}
  JsonValue(Object o) : v_(std::move(o)) {}
  static JsonValue MakeObject() { return JsonValue(Object{}); }
  static JsonValue MakeArray() { return JsonValue(Array{}); }

  bool is_null() const { return std::holds_alternative<std::nullptr_t>(v_); }
  bool is_bool() const { return std::holds_alternative<bool>(v_); }
  bool is_int() const {
    return std::holds_alternative<int64_t>(v_) || std::holds_alternative<uint64_t>(v_);
  }
  bool is_double() const { return std::holds_alternative<double>(v_); }
  bool is_string() const { return std::holds_alternative<std::string>(v_); }
  bool is_array() const { return std::holds_alternative<Array>(v_); }
  bool is_object() const { return std::holds_alternative<Object>(v_); }

  bool as_bool() const { return std::get<bool>(v_); }
  int64_t as_int() const;  // int64 or uint64 that fits
  uint64_t as_uint() const;
  double as_double() const;  // any number
  const std::string& as_string() const { return std::get<std::string>(v_); }
  const Array& as_array() const { return std::get<Array>(v_); }
  Array& as_array() { return std::get<Array>(v_); }
  const Object& as_object() const { return std::get<Object>(v_); }
  Object& as_object() { return std::get<Object>(v_); }

  // Object access: nullptr when absent or not an object.
  const JsonValue* Find(std::string_view key) const;
  // Sets or replaces `key` (keeps the position of an existing key).
  void Set(std::string key, JsonValue value);
  // Array append.
  void Push(JsonValue value) { as_array().push_back(std::move(value)); }

 private:
  std::variant<std::nullptr_t, bool, int64_t, uint64_t, double, std::string, Array, Object> v_;
};

// Parses a JSON document. `label` names the file in error messages (kInvalidInput).
Result<JsonValue> ParseJson(std::string_view label, std::string_view text);
Result<JsonValue> ReadJsonFile(const std::string& path);

// Python `json.dumps(v, indent=2, sort_keys=True)` byte for byte: ensure_ascii escapes
// (\uXXXX, surrogate pairs), ", " / ": " separators, floats as Python repr ("1e-06",
// "500000.0", "NaN", "Infinity"), empty containers as [] and {}. No trailing newline.
std::string DumpPythonJson(const JsonValue& v);

// Compact JSON with keys in stored order, no spaces, UTF-8 kept (serde_json::to_string style).
std::string DumpCompactJson(const JsonValue& v);

// JSON string literal as Python's json writes it with ensure_ascii (DumpPythonJson's strings).
void AppendJsonStringPython(std::string& out, std::string_view s);

// JSON string literal with serde_json's escaping (", \\, control chars; UTF-8 passed through).
void AppendJsonStringCompact(std::string& out, std::string_view s);

}  // namespace quench

#endif  // QUENCH_FORMAT_JSON_H_
