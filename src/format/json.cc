// The JSON tree (json.h) and its simdjson-based parser: documents converted into JsonValue
// with error messages that name the file and position (including the first invalid UTF-8
// byte, which simdjson does not report), the JsonValue accessors, and reading a file. The
// writers are in json_write.cc.
#include "format/json.h"

#include <fcntl.h>
#include <simdjson.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <string>
#include <unordered_map>

namespace quench {
namespace {

// ---------------------------------------------------------------------------------------------
// Parsing

// Byte offset of the first invalid UTF-8 sequence in `s`, or npos. Used only to give the
// position that simdjson's UTF8_ERROR lacks.
size_t FindInvalidUtf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp;
    if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return i;
    }
    if (i + len > n) return i;
    for (size_t k = 1; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    // Overlong forms, surrogates and code points past U+10FFFF are invalid UTF-8 (RFC 3629).
    static constexpr uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    i += len;
  }
  return std::string_view::npos;
}

Status ParseError(std::string_view label, std::string_view json, simdjson::error_code err) {
  std::string msg(label);
  msg += ": not valid JSON: ";
  msg += simdjson::error_message(err);
  if (err == simdjson::UTF8_ERROR) {
    const size_t at = FindInvalidUtf8(json);
    if (at != std::string_view::npos) msg += " (invalid byte at offset " + std::to_string(at) + ")";
  } else if (err == simdjson::NUMBER_ERROR || err == simdjson::NUMBER_OUT_OF_RANGE) {
    // Python would keep an arbitrary-precision int or turn 1e400 into inf; we do not.
    msg += " (integers must fit in 64 bits and floats must be finite)";
  }
  return Error(ErrorCode::kInvalidInput, std::move(msg));
}

JsonValue Convert(simdjson::dom::element e);

JsonValue ConvertObject(simdjson::dom::object obj) {
  JsonValue::Object out;
  // Python's dict keeps the first position of a repeated key and the last value; a hash index
  // keeps that linear for objects such as an index's weight_map with 10^5 entries.
  std::unordered_map<std::string_view, size_t> index;
  const bool use_index = obj.size() > 8;
  for (simdjson::dom::key_value_pair field : obj) {
    std::string_view key = field.key;
    size_t pos = out.size();
    if (use_index) {
      auto [it, inserted] = index.try_emplace(key, pos);
      if (!inserted) pos = it->second;
    } else {
      for (size_t i = 0; i < out.size(); ++i) {
        if (out[i].first == key) {
          pos = i;
          break;
        }
      }
    }
    if (pos == out.size()) {
      out.emplace_back(std::string(key), Convert(field.value));
    } else {
      out[pos].second = Convert(field.value);
    }
  }
  return JsonValue(std::move(out));
}

JsonValue Convert(simdjson::dom::element e) {
  using simdjson::dom::element_type;
  switch (e.type()) {
    case element_type::ARRAY: {
      JsonValue::Array out;
      simdjson::dom::array arr = e.get_array().value_unsafe();
      out.reserve(arr.size());
      for (simdjson::dom::element item : arr) out.push_back(Convert(item));
      return JsonValue(std::move(out));
    }
    case element_type::OBJECT:
      return ConvertObject(e.get_object().value_unsafe());
    case element_type::INT64:
      return JsonValue(e.get_int64().value_unsafe());
    case element_type::UINT64:
      return JsonValue(e.get_uint64().value_unsafe());
    case element_type::DOUBLE:
      return JsonValue(e.get_double().value_unsafe());
    case element_type::STRING:
      return JsonValue(e.get_string().value_unsafe());
    case element_type::BOOL:
      return JsonValue(e.get_bool().value_unsafe());
    case element_type::NULL_VALUE:
      return JsonValue(nullptr);
  }
  return JsonValue(nullptr);
}

Result<JsonValue> ParsePadded(std::string_view label, const simdjson::padded_string& text) {
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  simdjson::error_code err = parser.parse(text).get(root);
  if (err) return ParseError(label, std::string_view(text.data(), text.size()), err);
  return Convert(root);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// JsonValue

int64_t JsonValue::as_int() const {
  if (const auto* u = std::get_if<uint64_t>(&v_)) {
    // Saturate rather than wrap: callers range-check with as_uint() when values may be huge.
    return *u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())
               ? std::numeric_limits<int64_t>::max()
               : static_cast<int64_t>(*u);
  }
  if (const auto* d = std::get_if<double>(&v_)) return static_cast<int64_t>(*d);
  return std::get<int64_t>(v_);
}

uint64_t JsonValue::as_uint() const {
  if (const auto* i = std::get_if<int64_t>(&v_)) return *i < 0 ? 0 : static_cast<uint64_t>(*i);
  if (const auto* d = std::get_if<double>(&v_)) return *d < 0 ? 0 : static_cast<uint64_t>(*d);
  return std::get<uint64_t>(v_);
}

double JsonValue::as_double() const {
  if (const auto* i = std::get_if<int64_t>(&v_)) return static_cast<double>(*i);
  if (const auto* u = std::get_if<uint64_t>(&v_)) return static_cast<double>(*u);
  return std::get<double>(v_);
}

const JsonValue* JsonValue::Find(std::string_view key) const {
  const Object* o = std::get_if<Object>(&v_);
  if (o == nullptr) return nullptr;
  for (const auto& kv : *o) {
    if (kv.first == key) return &kv.second;
  }
  return nullptr;
}

void JsonValue::Set(std::string key, JsonValue value) {
  if (!is_object()) v_ = Object{};
  Object& o = std::get<Object>(v_);
  for (auto& kv : o) {
    if (kv.first == key) {
      kv.second = std::move(value);
      return;
    }
  }
  o.emplace_back(std::move(key), std::move(value));
}

// ---------------------------------------------------------------------------------------------
// Entry points

Result<JsonValue> ParseJson(std::string_view label, std::string_view text) {
  simdjson::padded_string padded(text.data(), text.size());
  return ParsePadded(label, padded);
}

Result<JsonValue> ReadJsonFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return Error(ErrorCode::kIo, path + ": cannot open: " + std::strerror(errno));
  }
  std::string data;
  char buf[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      const int saved = errno;
      ::close(fd);
      return Error(ErrorCode::kIo, path + ": read failed: " + std::strerror(saved));
    }
    if (n == 0) break;
    data.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  simdjson::padded_string padded(data.data(), data.size());
  return ParsePadded(path, padded);
}

}  // namespace quench
