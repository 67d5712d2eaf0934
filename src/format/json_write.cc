// The JSON writers declared in json.h, byte for byte as the reference's libraries write:
// Python's `json.dumps(indent=2, sort_keys=True)` (config.json and the index, which the
// reference rewrites that way: ensure_ascii escapes, float repr) and serde_json's compact
// form (its string escaping writes the safetensors headers; the whole writer prints values on
// one line, as `quench stats inspect` does). Numbers use the shortest round-trip digits.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <string>

#include "format/json.h"

namespace quench {
namespace {

// ---------------------------------------------------------------------------------------------
// Number formatting

// Shortest round-trip digits of a finite, non-zero |v| and its decimal exponent x, so that
// v = d.ddd * 10^x. std::to_chars gives the shortest representation that round-trips, the same
// digits as Python's repr (David Gay's dtoa, mode 0) and Rust's ryu.
void ShortestDigits(double v, std::string& digits, int& exp10) {
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), std::fabs(v), std::chars_format::scientific);
  std::string_view s(buf, static_cast<size_t>(res.ptr - buf));
  const size_t e = s.find('e');
  digits.clear();
  for (char c : s.substr(0, e)) {
    if (c != '.') digits.push_back(c);
  }
  exp10 = 0;
  std::from_chars(s.data() + e + 1 + (s[e + 1] == '+' ? 1 : 0), s.data() + s.size(), exp10);
}

// Python's float.__repr__ ('r' format, float_repr_style 'short'): scientific notation when the
// exponent is < -4 or >= 16 (Python/pystrtod.c format_float_short), with a sign and at least
// two exponent digits; otherwise fixed notation that always shows a fractional part.
void AppendPythonFloat(std::string& out, double v) {
  // json.dumps(allow_nan=True) writes these JavaScript names (json/encoder.py floatstr).
  if (std::isnan(v)) {
    out += "NaN";
    return;
  }
  if (std::isinf(v)) {
    out += v > 0 ? "Infinity" : "-Infinity";
    return;
  }
  if (std::signbit(v)) out.push_back('-');
  if (v == 0) {
    out += "0.0";
    return;
  }
  std::string d;
  int x;
  ShortestDigits(v, d, x);
  const int n = static_cast<int>(d.size());
  if (x < -4 || x >= 16) {
    out.push_back(d[0]);
    if (n > 1) {
      out.push_back('.');
      out.append(d, 1);
    }
    out.push_back('e');
    out.push_back(x < 0 ? '-' : '+');
    const int ax = x < 0 ? -x : x;
    if (ax < 10) out.push_back('0');
    out += std::to_string(ax);
  } else if (x >= 0) {
    if (n <= x + 1) {
      out += d;
      out.append(static_cast<size_t>(x + 1 - n), '0');
      out += ".0";
    } else {
      out.append(d, 0, static_cast<size_t>(x + 1));
      out.push_back('.');
      out.append(d, static_cast<size_t>(x + 1));
    }
  } else {
    out += "0.";
    out.append(static_cast<size_t>(-x - 1), '0');
    out += d;
  }
}

// serde_json's float format, which is ryu's `format64` (ryu/src/pretty/mod.rs): with
// kk = exponent + 1, fixed notation for -5 < kk <= 16, else "1e30" / "1.5e-7" (no '+', no
// padding). serde_json writes non-finite floats as null.
void AppendRyuFloat(std::string& out, double v) {
  if (!std::isfinite(v)) {
    out += "null";
    return;
  }
  if (std::signbit(v)) out.push_back('-');
  if (v == 0) {
    out += "0.0";
    return;
  }
  std::string d;
  int x;
  ShortestDigits(v, d, x);
  const int length = static_cast<int>(d.size());
  const int kk = x + 1;
  const int k = kk - length;
  if (k >= 0 && kk <= 16) {
    out += d;
    out.append(static_cast<size_t>(k), '0');
    out += ".0";
  } else if (kk > 0 && kk <= 16) {
    out.append(d, 0, static_cast<size_t>(kk));
    out.push_back('.');
    out.append(d, static_cast<size_t>(kk));
  } else if (kk > -5 && kk <= 0) {
    out += "0.";
    out.append(static_cast<size_t>(-kk), '0');
    out += d;
  } else {
    out.push_back(d[0]);
    if (length > 1) {
      out.push_back('.');
      out.append(d, 1);
    }
    out.push_back('e');
    out += std::to_string(kk - 1);
  }
}

template <typename T>
void AppendInt(std::string& out, T v) {
  char buf[24];
  auto res = std::to_chars(buf, buf + sizeof(buf), v);
  out.append(buf, res.ptr);
}

// ---------------------------------------------------------------------------------------------
// Strings

constexpr char kHex[] = "0123456789abcdef";  // both Python and serde_json use lowercase

void AppendU4(std::string& out, uint32_t u) {
  out += "\\u";
  out.push_back(kHex[(u >> 12) & 0xF]);
  out.push_back(kHex[(u >> 8) & 0xF]);
  out.push_back(kHex[(u >> 4) & 0xF]);
  out.push_back(kHex[u & 0xF]);
}

// Short escapes shared by Python (json/encoder.py ESCAPE_DCT) and serde_json; 0 if none.
char ShortEscape(unsigned char c) {
  switch (c) {
    case '"': return '"';
    case '\\': return '\\';
    case '\n': return 'n';
    case '\r': return 'r';
    case '\t': return 't';
    case '\b': return 'b';
    case '\f': return 'f';
    default: return 0;
  }
}

// Decodes one code point at s[i]; on invalid UTF-8 (only possible for strings built in code,
// since the parser validates) takes the single byte as a Latin-1 code point.
uint32_t DecodeUtf8(std::string_view s, size_t& i) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const unsigned char c = p[i];
  const size_t len = (c & 0xE0) == 0xC0   ? 2
                     : (c & 0xF0) == 0xE0 ? 3
                     : (c & 0xF8) == 0xF0 ? 4
                                          : 1;  // ASCII or a stray byte
  if (len == 1 || i + len > s.size()) {
    ++i;
    return c;
  }
  uint32_t cp = c & (0x7F >> len);
  for (size_t k = 1; k < len; ++k) {
    if ((p[i + k] & 0xC0) != 0x80) {
      ++i;
      return c;
    }
    cp = (cp << 6) | (p[i + k] & 0x3F);
  }
  i += len;
  return cp;
}

// Python's ensure_ascii encoder (json/encoder.py py_encode_basestring_ascii): everything
// outside ' '..'~' is escaped, non-BMP code points as a UTF-16 surrogate pair.
void AppendJsonStringAscii(std::string& out, std::string_view s) {
  out.push_back('"');
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (char e = ShortEscape(c)) {
      out.push_back('\\');
      out.push_back(e);
      ++i;
    } else if (c >= 0x20 && c < 0x7F) {
      // A run of printable ASCII goes out as it is, in one append.
      size_t j = i + 1;
      while (j < s.size()) {
        const unsigned char d = static_cast<unsigned char>(s[j]);
        if (d < 0x20 || d >= 0x7F || d == '"' || d == '\\') break;
        ++j;
      }
      out.append(s, i, j - i);
      i = j;
    } else {
      uint32_t cp = DecodeUtf8(s, i);
      if (cp >= 0x10000) {
        cp -= 0x10000;
        AppendU4(out, 0xD800 | (cp >> 10));
        AppendU4(out, 0xDC00 | (cp & 0x3FF));
      } else {
        AppendU4(out, cp);
      }
    }
  }
  out.push_back('"');
}

// ---------------------------------------------------------------------------------------------
// Writers

void AppendIndent(std::string& out, int level) { out.append(static_cast<size_t>(level) * 2, ' '); }

// Python's json encoder with indent=2, sort_keys=True: item separator "," at line ends,
// key separator ": ", empty containers "[]" / "{}" (json/encoder.py _iterencode_list/_dict).
void DumpPython(std::string& out, const JsonValue& v, int level) {
  if (v.is_null()) {
    out += "null";
  } else if (v.is_bool()) {
    out += v.as_bool() ? "true" : "false";
  } else if (v.is_double()) {
    AppendPythonFloat(out, v.as_double());
  } else if (v.is_int()) {
    if (v.as_int() < 0) {
      AppendInt(out, v.as_int());
    } else {
      AppendInt(out, v.as_uint());
    }
  } else if (v.is_string()) {
    AppendJsonStringAscii(out, v.as_string());
  } else if (v.is_array()) {
    const JsonValue::Array& a = v.as_array();
    if (a.empty()) {
      out += "[]";
      return;
    }
    out += "[\n";
    for (size_t i = 0; i < a.size(); ++i) {
      if (i > 0) out += ",\n";
      AppendIndent(out, level + 1);
      DumpPython(out, a[i], level + 1);
    }
    out.push_back('\n');
    AppendIndent(out, level);
    out.push_back(']');
  } else {
    const JsonValue::Object& o = v.as_object();
    if (o.empty()) {
      out += "{}";
      return;
    }
    // Python sorts str keys by code point; for valid UTF-8 that is unsigned byte order, which
    // is what std::string's comparison does.
    std::vector<const std::pair<std::string, JsonValue>*> items;
    items.reserve(o.size());
    for (const auto& kv : o) items.push_back(&kv);
    std::sort(items.begin(), items.end(),
              [](const auto* a, const auto* b) { return a->first < b->first; });
    out += "{\n";
    for (size_t i = 0; i < items.size(); ++i) {
      if (i > 0) out += ",\n";
      AppendIndent(out, level + 1);
      AppendJsonStringAscii(out, items[i]->first);
      out += ": ";
      DumpPython(out, items[i]->second, level + 1);
    }
    out.push_back('\n');
    AppendIndent(out, level);
    out.push_back('}');
  }
}

void DumpCompact(std::string& out, const JsonValue& v) {
  if (v.is_null()) {
    out += "null";
  } else if (v.is_bool()) {
    out += v.as_bool() ? "true" : "false";
  } else if (v.is_double()) {
    AppendRyuFloat(out, v.as_double());
  } else if (v.is_int()) {
    if (v.as_int() < 0) {
      AppendInt(out, v.as_int());
    } else {
      AppendInt(out, v.as_uint());
    }
  } else if (v.is_string()) {
    AppendJsonStringCompact(out, v.as_string());
  } else if (v.is_array()) {
    out.push_back('[');
    bool first = true;
    for (const JsonValue& item : v.as_array()) {
      if (!first) out.push_back(',');
      first = false;
      DumpCompact(out, item);
    }
    out.push_back(']');
  } else {
    out.push_back('{');
    bool first = true;
    for (const auto& [key, value] : v.as_object()) {
      if (!first) out.push_back(',');
      first = false;
      AppendJsonStringCompact(out, key);
      out.push_back(':');
      DumpCompact(out, value);
    }
    out.push_back('}');
  }
}

}  // namespace

void AppendJsonStringPython(std::string& out, std::string_view s) { AppendJsonStringAscii(out, s); }

std::string DumpPythonJson(const JsonValue& v) {
  std::string out;
  DumpPython(out, v, 0);
  return out;
}

std::string DumpCompactJson(const JsonValue& v) {
  std::string out;
  DumpCompact(out, v);
  return out;
}

// serde_json's escaping (serde_json/src/ser.rs ESCAPE table): '"', '\\', \b \t \n \f \r, other
// control characters as \u00XX; everything else, including DEL and non-ASCII, passes through.
void AppendJsonStringCompact(std::string& out, std::string_view s) {
  out.push_back('"');
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (char e = ShortEscape(c)) {
      out.push_back('\\');
      out.push_back(e);
      ++i;
    } else if (c < 0x20) {
      AppendU4(out, c);
      ++i;
    } else {
      // A run that needs no escape goes out as it is, in one append.
      size_t j = i + 1;
      while (j < s.size() && static_cast<unsigned char>(s[j]) >= 0x20 && s[j] != '"' &&
             s[j] != '\\') {
        ++j;
      }
      out.append(s, i, j - i);
      i = j;
    }
  }
  out.push_back('"');
}

}  // namespace quench
