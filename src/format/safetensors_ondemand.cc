// A safetensors header read with simdjson's On-Demand front end (safetensors_entry.h): no DOM
// tape and no copies of the keys, which for a header of 10^5 tensors are most of the parse's
// fresh memory. It accepts only headers that the DOM reader (safetensors.cc) accepts and reads
// them into the same SafetensorsHeader; anything it is not sure of (a parse error, a value of
// an unexpected type, an escape in a key, an unknown field, a duplicate, a failed check) makes
// it give up, and the DOM reader then reads the header and words the message, as before.
//
// Why giving up on every doubt is enough for equal results: stage 1 validates UTF-8 and the
// string boundaries of the whole text for both front ends, and every value the walk below
// meets is read to its end (keys without a backslash compared as written, strings unescaped,
// numbers parsed), so a header the walk completes, with nothing after the root object, is
// well-formed JSON with the values read.
#include <simdjson.h>

#include <algorithm>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "format/name_table.h"
#include "format/safetensors_entry.h"

namespace quench::safetensors_internal {
namespace {

namespace od = simdjson::ondemand;

// The key as written between its quotes, when it holds no escape (a name with one is left to
// the DOM reader).
bool PlainKey(od::field& field, std::string_view& out) {
  const char* begin = field.key().raw();
  const char* end = begin;
  while (*end != '"') {
    if (*end == '\\') return false;
    ++end;
  }
  out = std::string_view(begin, static_cast<size_t>(end - begin));
  return true;
}

// Unsigned integers of an array into `out` (at most `capacity`), as GetUnsigned accepts them.
bool ReadUnsigned(od::value& v, uint64_t* out, size_t capacity, size_t& count) {
  od::array arr;
  if (v.get_array().get(arr)) return false;
  count = 0;
  for (auto element : arr) {
    od::value e;
    uint64_t n;
    if (element.get(e) || e.get_uint64().get(n) || count == capacity) return false;
    out[count++] = n;
  }
  return true;
}

// One tensor's entry: dtype, shape and data_offsets, each once, nothing else; the byte count
// and the end checked as ParseTensorEntry and the reader check them.
bool ReadEntry(od::value& value, uint64_t data_len, TensorInfo& info) {
  od::object fields;
  if (value.get_object().get(fields)) return false;
  bool has_dtype = false, has_shape = false, has_offsets = false;
  // Ranks above this are left to the DOM reader (real weights have at most 5).
  constexpr size_t kMaxRank = 8;
  uint64_t dims[kMaxRank];
  size_t rank = 0;
  for (auto f : fields) {
    od::field field;
    std::string_view key;
    if (std::move(f).get(field) || !PlainKey(field, key)) return false;
    od::value& v = field.value();
    if (key == "dtype") {
      std::string_view s;
      if (has_dtype || v.get_string().get(s)) return false;
      const std::optional<DType> dt = ParseDType(s);
      if (!dt) return false;
      info.dtype = *dt;
      has_dtype = true;
    } else if (key == "shape") {
      if (has_shape || !ReadUnsigned(v, dims, kMaxRank, rank)) return false;
      has_shape = true;
    } else if (key == "data_offsets") {
      uint64_t be[2];
      size_t n = 0;
      if (has_offsets || !ReadUnsigned(v, be, 2, n) || n != 2) return false;
      info.begin = be[0];
      info.end = be[1];
      has_offsets = true;
    } else {
      return false;  // an unknown field: its value is not read here
    }
  }
  if (!has_dtype || !has_shape || !has_offsets) return false;
  info.shape.assign(dims, dims + rank);
  uint64_t numel = 1;
  for (size_t i = 0; i < rank; ++i) {
    if (__builtin_mul_overflow(numel, dims[i], &numel)) return false;
  }
  const std::optional<uint64_t> nbytes = DTypeBytes(info.dtype, numel);
  return nbytes && info.begin <= info.end && info.end - info.begin == *nbytes &&
         info.end <= data_len;
}

// `__metadata__` as an object of strings (null and anything else: the DOM reader).
bool ReadMetadata(od::value& value, SafetensorsHeader& header) {
  od::object entries;
  if (value.get_object().get(entries)) return false;
  header.has_metadata = true;
  for (auto f : entries) {
    od::field field;
    std::string_view key, s;
    if (std::move(f).get(field) || !PlainKey(field, key) || field.value().get_string().get(s))
      return false;
    // A repeated key replaces the earlier value, keeping the first position (as ParseMetadata).
    auto it = std::find_if(header.metadata.begin(), header.metadata.end(),
                           [&](const auto& kv) { return kv.first == key; });
    if (it != header.metadata.end()) {
      it->second = std::string(s);
    } else {
      header.metadata.emplace_back(std::string(key), std::string(s));
    }
  }
  return true;
}

}  // namespace

bool ParseHeaderOnDemand(const simdjson::padded_string& json, uint64_t data_len,
                         SafetensorsHeader& header) {
  od::parser parser;
  od::document doc;
  od::object root;
  if (parser.iterate(json).get(doc) || doc.get_object().get(root)) return false;
  // Tensors are counted as they come (an On-Demand object has no size without a second
  // pass): room for an entry per 64 bytes of text, more than real entries take, so that the
  // vector does not grow (pages reserved past the end are never touched).
  header.tensors.reserve(json.size() / 64 + 1);
  bool seen_metadata = false;
  // The names as they stand in the text (which outlives the walk, unlike the tensors' own
  // strings while the vector grows), for the table of names.
  std::vector<std::string_view> names;
  names.reserve(header.tensors.capacity());
  std::optional<NameTable> seen;  // as the DOM reader: from the first name out of order
  for (auto f : root) {
    od::field field;
    std::string_view name;
    if (std::move(f).get(field) || !PlainKey(field, name)) return false;
    if (name == "__metadata__") {
      if (seen_metadata || !ReadMetadata(field.value(), header)) return false;
      seen_metadata = true;
      continue;
    }
    if (name.size() > kMaxTensorNameBytes) return false;
    if (!seen && !names.empty() && !(names.back() < name)) {
      seen.emplace(names.size());
      for (std::string_view n : names) seen->Insert(n, 0);
    }
    if (seen && !seen->Insert(name, 0).second) return false;
    names.push_back(name);
    TensorInfo& info = header.tensors.emplace_back();
    info.name = std::string(name);
    if (!ReadEntry(field.value(), data_len, info)) return false;
  }
  // Nothing but whitespace after the root object: the location past the end is out of bounds.
  const char* after = nullptr;
  return doc.current_location().get(after) == simdjson::OUT_OF_BOUNDS;
}

}  // namespace quench::safetensors_internal
