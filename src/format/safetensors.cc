// safetensors header reading (strict validation) and writing (byte-identical to the Rust
// crate's `prepare()` in safetensors/src/tensor.rs, which safetensors.torch.save_file uses).
//
// Reader rules follow the crate's `SafeTensors::read_metadata` / `Metadata::validate` and the
// serde derives behind them, checked against safetensors 0.8.0:
// - the header is UTF-8 JSON, an object; whitespace around it (the writer's space padding) is
//   allowed, anything else after it is not ("trailing characters");
// - `__metadata__` is a string->string map or null (serde `Option<HashMap<String, String>>`);
// - every other key is a tensor: an object with dtype, shape and data_offsets, each at most
//   once (serde "duplicate field"); unknown extra fields are ignored, as the crate's
//   `TensorInfo` has no `deny_unknown_fields`;
// - shape entries and offsets are unsigned integers (serde `usize`), data_offsets exactly two;
// - sorted by offsets, tensors tile the data section from 0 to the end of the file.
// The crate reports a duplicate tensor name indirectly (the later entry replaces the earlier
// one and the tiling check fails); we name it directly.
#include "format/safetensors.h"

#include <fcntl.h>
#include <simdjson.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <numeric>
#include <string>

#include "format/json.h"
#include "format/name_table.h"
#include "format/sorted_runs.h"

namespace quench {
namespace {

// Appends v in decimal (std::to_string's digits, without a temporary string).
void AppendDecimal(std::string& out, uint64_t v) {
  char buf[24];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, r.ptr);
}

// Renders a name for a one-line message: printable ASCII and UTF-8 as is, control bytes as
// \xNN, so a name holding '\n' cannot split the message.
std::string Printable(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char ch : s) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c == 0x7F) {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 0xF]);
    } else {
      out.push_back(ch);
    }
  }
  return out;
}

std::string OffsetsString(uint64_t begin, uint64_t end) {
  return "data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) + "]";
}

Status HeaderError(std::string_view label, std::string_view rule) {
  std::string msg(label);
  msg += ": ";
  msg += rule;
  return Error(ErrorCode::kInvalidInput, std::move(msg));
}

Status TensorError(std::string_view label, std::string_view name, std::string_view rule,
                   ErrorCode code = ErrorCode::kInvalidInput) {
  std::string msg(label);
  msg += ": tensor '";
  msg += Printable(name);
  msg += "': ";
  msg += rule;
  return Error(code, std::move(msg));
}

const char* TypeName(simdjson::dom::element_type t) {
  using simdjson::dom::element_type;
  switch (t) {
    case element_type::ARRAY: return "an array";
    case element_type::OBJECT: return "an object";
    case element_type::INT64:
    case element_type::UINT64: return "an integer";
    case element_type::DOUBLE: return "a float";
    case element_type::STRING: return "a string";
    case element_type::BOOL: return "a boolean";
    case element_type::NULL_VALUE: return "null";
  }
  return "unknown";
}

// Reads a non-negative integer as serde's `usize` does: floats (even 2.0), negatives, booleans
// and anything past 64 bits are rejected.
bool GetUnsigned(simdjson::dom::element e, uint64_t& out) {
  using simdjson::dom::element_type;
  if (e.type() == element_type::UINT64) {
    out = e.get_uint64().value_unsafe();
    return true;
  }
  if (e.type() == element_type::INT64) {
    const int64_t v = e.get_int64().value_unsafe();
    if (v < 0) return false;
    out = static_cast<uint64_t>(v);
    return true;
  }
  return false;
}

// Compact JSON text of a value for messages, cut short so one bad entry cannot flood the line.
std::string ElementText(simdjson::dom::element e) {
  std::string s = Printable(simdjson::to_string(e));
  if (s.size() > 64) s = s.substr(0, 60) + " ...";
  return s;
}

// Dtypes the crate knows (serde variants of safetensors 0.8.0's Dtype) that quench does not
// model: valid files, so reported as unsupported rather than malformed.
bool IsCrateOnlyDType(std::string_view name) {
  return name == "F8_E4M3FNUZ" || name == "F8_E5M2FNUZ";
}

Status ParseTensorEntry(std::string_view label, std::string_view name,
                        simdjson::dom::element value, TensorInfo& info) {
  if (value.type() != simdjson::dom::element_type::OBJECT) {
    return TensorError(label, name,
                       std::string("entry is ") + TypeName(value.type()) +
                           ", expected an object with dtype, shape and data_offsets");
  }
  bool has_dtype = false, has_shape = false, has_offsets = false;
  const simdjson::dom::object fields = value.get_object().value_unsafe();
  for (simdjson::dom::key_value_pair field : fields) {
    const std::string_view key = field.key;
    simdjson::dom::element v = field.value;
    bool* seen = key == "dtype"          ? &has_dtype
                 : key == "shape"        ? &has_shape
                 : key == "data_offsets" ? &has_offsets
                                         : nullptr;
    if (seen == nullptr) continue;  // the crate ignores unknown fields
    if (*seen) return TensorError(label, name, "duplicate field '" + std::string(key) + "'");
    *seen = true;
    if (key == "dtype") {
      std::string_view s;
      if (v.get_string().get(s)) {
        return TensorError(label, name,
                           std::string("dtype is ") + TypeName(v.type()) + ", expected a string");
      }
      std::optional<DType> dt = ParseDType(s);
      if (!dt) {
        if (IsCrateOnlyDType(s)) {
          return TensorError(label, name, "dtype '" + Printable(s) + "' is not supported",
                             ErrorCode::kUnsupported);
        }
        return TensorError(label, name, "unknown dtype '" + Printable(s) + "'");
      }
      info.dtype = *dt;
    } else if (key == "shape") {
      simdjson::dom::array arr;
      if (v.get_array().get(arr)) {
        return TensorError(label, name,
                           std::string("shape is ") + TypeName(v.type()) + ", expected an array");
      }
      info.shape.clear();
      info.shape.reserve(arr.size());
      for (simdjson::dom::element d : arr) {
        uint64_t dim;
        if (!GetUnsigned(d, dim)) {
          return TensorError(label, name,
                             "shape entry " + ElementText(d) +
                                 " is not a non-negative integer");
        }
        info.shape.push_back(dim);
      }
    } else {
      simdjson::dom::array arr;
      if (v.get_array().get(arr) || arr.size() != 2) {
        return TensorError(label, name,
                           "data_offsets " + ElementText(v) +
                               " is not a pair [begin, end] of non-negative integers");
      }
      uint64_t be[2];
      size_t i = 0;
      for (simdjson::dom::element d : arr) {
        if (!GetUnsigned(d, be[i++])) {
          return TensorError(label, name,
                             "data_offsets " + ElementText(v) +
                                 " is not a pair [begin, end] of non-negative integers");
        }
      }
      info.begin = be[0];
      info.end = be[1];
    }
  }
  if (!has_dtype) return TensorError(label, name, "missing field 'dtype'");
  if (!has_shape) return TensorError(label, name, "missing field 'shape'");
  if (!has_offsets) return TensorError(label, name, "missing field 'data_offsets'");

  // Byte count from shape and dtype, with the crate's overflow check (ValidationOverflow) and
  // its rule that sub-byte tensors end on a byte boundary.
  uint64_t numel = 1;
  for (uint64_t d : info.shape) {
    if (__builtin_mul_overflow(numel, d, &numel)) {
      return TensorError(label, name,
                         "shape " + ShapeString(info.shape) + " element count overflows 64 bits");
    }
  }
  std::optional<uint64_t> nbytes = DTypeBytes(info.dtype, numel);
  if (!nbytes) {
    if (DTypeBits(info.dtype) % 8 != 0 && (numel % 8) * DTypeBits(info.dtype) % 8 != 0) {
      return TensorError(label, name,
                         std::to_string(numel) + " elements of " +
                             std::string(DTypeName(info.dtype)) + " do not fill whole bytes");
    }
    return TensorError(label, name,
                       "shape " + ShapeString(info.shape) + " byte count overflows 64 bits");
  }
  if (info.begin > info.end) {
    return TensorError(label, name, OffsetsString(info.begin, info.end) + " begin is past end");
  }
  if (info.end - info.begin != *nbytes) {
    return TensorError(label, name,
                       "shape " + ShapeString(info.shape) + " of " +
                           std::string(DTypeName(info.dtype)) + " needs " +
                           std::to_string(*nbytes) + " bytes but " +
                           OffsetsString(info.begin, info.end) + " span " +
                           std::to_string(info.end - info.begin));
  }
  return Status::Ok();
}

Status ParseMetadata(std::string_view label, simdjson::dom::element value,
                     SafetensorsHeader& header) {
  using simdjson::dom::element_type;
  // serde reads `__metadata__: null` as None.
  if (value.type() == element_type::NULL_VALUE) return Status::Ok();
  if (value.type() != element_type::OBJECT) {
    return HeaderError(label, std::string("__metadata__ is ") + TypeName(value.type()) +
                                  ", expected an object of strings");
  }
  header.has_metadata = true;
  const simdjson::dom::object entries = value.get_object().value_unsafe();
  for (simdjson::dom::key_value_pair field : entries) {
    std::string_view s;
    if (field.value.get_string().get(s)) {
      return HeaderError(label, "__metadata__ entry '" + Printable(field.key) + "' is " +
                                    TypeName(field.value.type()) + ", expected a string");
    }
    // A repeated key replaces the earlier value (HashMap insert), keeping the first position.
    auto it = std::find_if(header.metadata.begin(), header.metadata.end(),
                           [&](const auto& kv) { return kv.first == field.key; });
    if (it != header.metadata.end()) {
      it->second = std::string(s);
    } else {
      header.metadata.emplace_back(std::string(field.key), std::string(s));
    }
  }
  return Status::Ok();
}

Result<SafetensorsHeader> ParsePadded(std::string_view label,
                                      const simdjson::padded_string& json, uint64_t file_size) {
  SafetensorsHeader header;
  header.header_len = json.size();
  header.data_start = 8 + json.size();
  if (file_size < header.data_start) {
    return HeaderError(label, "header length " + std::to_string(json.size()) +
                                  " runs past the end of the file (" +
                                  std::to_string(file_size) + " bytes)");
  }
  const uint64_t data_len = file_size - header.data_start;

  simdjson::dom::parser parser;
  simdjson::dom::element root;
  if (simdjson::error_code err = parser.parse(json).get(root)) {
    Result<JsonValue> detail = ParseJson("header", std::string_view(json.data(), json.size()));
    std::string why = detail.ok() ? simdjson::error_message(err) : detail.status().message();
    return HeaderError(label, why);
  }
  if (root.type() != simdjson::dom::element_type::OBJECT) {
    return HeaderError(label, std::string("header is ") + TypeName(root.type()) +
                                  ", expected a JSON object");
  }

  simdjson::dom::object obj = root.get_object().value_unsafe();
  header.tensors.reserve(obj.size());
  NameTable seen(obj.size());
  bool seen_metadata = false;
  for (simdjson::dom::key_value_pair field : obj) {
    const std::string_view name = field.key;
    if (name == "__metadata__") {
      if (seen_metadata) return HeaderError(label, "duplicate key '__metadata__'");
      seen_metadata = true;
      QUENCH_RETURN_IF_ERROR(ParseMetadata(label, field.value, header));
      continue;
    }
    if (name.size() > kMaxTensorNameBytes) {
      return HeaderError(label, "tensor name of " + std::to_string(name.size()) +
                                    " bytes (starting '" + Printable(name.substr(0, 48)) +
                                    "') exceeds quench's limit of " +
                                    std::to_string(kMaxTensorNameBytes) + " bytes");
    }
    if (!seen.Insert(name, 0).second) {
      return TensorError(label, name, "duplicate tensor name");
    }
    TensorInfo info;
    info.name = std::string(name);
    QUENCH_RETURN_IF_ERROR(ParseTensorEntry(label, name, field.value, info));
    if (info.end > data_len) {
      return TensorError(label, name,
                         OffsetsString(info.begin, info.end) + " end past the data section (" +
                             std::to_string(data_len) + " bytes; file truncated?)");
    }
    header.tensors.push_back(std::move(info));
  }

  // Tiling (crate Metadata::validate): in offset order each tensor starts where the previous
  // one ended, the first at 0, and the last ends at the end of the file.
  std::vector<size_t> order(header.tensors.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const TensorInfo& x = header.tensors[a];
    const TensorInfo& y = header.tensors[b];
    return x.begin != y.begin ? x.begin < y.begin : x.end < y.end;
  });
  uint64_t covered = 0;
  const TensorInfo* prev = nullptr;
  for (size_t i : order) {
    const TensorInfo& t = header.tensors[i];
    if (t.begin < covered) {
      return TensorError(label, t.name,
                         OffsetsString(t.begin, t.end) + " overlaps tensor '" +
                             Printable(prev->name) + "' (" + OffsetsString(prev->begin, prev->end) +
                             ")");
    }
    if (t.begin > covered) {
      return TensorError(label, t.name,
                         OffsetsString(t.begin, t.end) + " leaves a gap: data bytes [" +
                             std::to_string(covered) + ", " + std::to_string(t.begin) +
                             ") belong to no tensor");
    }
    covered = t.end;
    prev = &t;
  }
  if (covered != data_len) {
    return HeaderError(label, "tensors cover " + std::to_string(covered) +
                                  " bytes but the data section has " + std::to_string(data_len) +
                                  " (trailing bytes after the last tensor)");
  }
  header.data_size = covered;
  return header;
}

Status PreadFull(int fd, char* buf, size_t len, uint64_t offset, const std::string& path) {
  size_t done = 0;
  while (done < len) {
    const ssize_t n = ::pread(fd, buf + done, len - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Error(ErrorCode::kIo, path + ": read failed: " + std::strerror(errno));
    }
    if (n == 0) {
      // The file shrank after fstat; treat as truncated input.
      return Error(ErrorCode::kInvalidInput,
                   path + ": file ended while reading the header (truncated?)");
    }
    done += static_cast<size_t>(n);
  }
  return Status::Ok();
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

}  // namespace

Result<SafetensorsHeader> ParseSafetensorsHeader(std::string_view label, std::string_view json,
                                                 uint64_t file_size) {
  simdjson::padded_string padded(json.data(), json.size());
  return ParsePadded(label, padded, file_size);
}

Result<SafetensorsHeader> ReadSafetensorsHeader(const std::filesystem::path& path) {
  const std::string label = path.string();
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return Error(ErrorCode::kIo, label + ": cannot open: " + std::strerror(errno));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) {
    return Error(ErrorCode::kIo, label + ": cannot stat: " + std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) return HeaderError(label, "not a regular file");
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  // Layout (crate read_metadata): u64 little-endian N, N header bytes, then the data.
  if (file_size < 8) {
    return HeaderError(label, "file is " + std::to_string(file_size) +
                                  " bytes, too short for the 8-byte header length");
  }
  unsigned char len_bytes[8];
  QUENCH_RETURN_IF_ERROR(PreadFull(fd.get(), reinterpret_cast<char*>(len_bytes), 8, 0, label));
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | len_bytes[i];
  if (n > kMaxHeaderBytes) {
    return HeaderError(label, "header length " + std::to_string(n) + " exceeds the limit of " +
                                  std::to_string(kMaxHeaderBytes) + " bytes");
  }
  if (n > file_size - 8) {
    return HeaderError(label, "header length " + std::to_string(n) +
                                  " runs past the end of the file (" +
                                  std::to_string(file_size) + " bytes)");
  }
  // "{}" is the smallest header the crate writes; anything shorter cannot be an object.
  if (n < 2) {
    return HeaderError(label, "header length " + std::to_string(n) +
                                  " is too small to hold a JSON object");
  }
  simdjson::padded_string json(static_cast<size_t>(n));
  QUENCH_RETURN_IF_ERROR(PreadFull(fd.get(), json.data(), static_cast<size_t>(n), 8, label));
  QUENCH_ASSIGN_OR_RETURN(SafetensorsHeader h, ParsePadded(label, json, file_size));
  h.header_hash = Fnv1a64(std::string_view(json.data(), static_cast<size_t>(n)));
  return h;
}

SafetensorsLayout LayOutSafetensors(
    std::vector<TensorSpec> tensors,
    const std::vector<std::pair<std::string, std::string>>& metadata) {
  // prepare(): dtype descending in enum order, then name ascending (Rust String Ord: bytes).
  // An order of indices is sorted, so that each spec's position can be given back.
  // An order of indices is sorted, so that each spec's position can be given back: stably by
  // dtype first (a few distinct values), then each dtype's names, which planning in source
  // order mostly gives already sorted (names are unique in a valid layout, so stability does
  // not change the result).
  std::vector<size_t> order(tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t i, size_t j) {
    return DTypeSortRank(tensors[i].dtype) > DTypeSortRank(tensors[j].dtype);
  });
  for (auto run = order.begin(); run != order.end();) {
    const DType dtype = tensors[*run].dtype;
    auto end = std::find_if(run, order.end(), [&](size_t i) { return tensors[i].dtype != dtype; });
    SortByRuns(run, end, [&](size_t i, size_t j) { return tensors[i].name < tensors[j].name; });
    run = end;
  }

  SafetensorsLayout layout;
  layout.position.resize(tensors.size());
  for (size_t k = 0; k < order.size(); ++k) layout.position[order[k]] = k;
  size_t bytes = 2;  // room for the JSON: each entry's name and about 80 bytes of fields
  for (const TensorSpec& t : tensors) bytes += t.name.size() + 80;
  // The JSON is written in place after the 8 bytes of its length, which are filled in last
  // (a shard of tens of thousands of tensors has megabytes of header, not copied again).
  std::string& json = layout.header;
  json.reserve(8 + bytes);
  json.assign(8, '\0');
  json += "{";
  bool first = true;
  // `__metadata__` first; the crate serialises whatever map it is given (an empty one as {}),
  // but our callers use an empty vector for "no metadata", which model_free always passes.
  // Several keys come out in the given order; the crate's HashMap order is random per process,
  // so byte identity is only defined for zero or one key.
  if (!metadata.empty()) {
    json += "\"__metadata__\":{";
    for (size_t i = 0; i < metadata.size(); ++i) {
      if (i > 0) json.push_back(',');
      AppendJsonStringCompact(json, metadata[i].first);
      json.push_back(':');
      AppendJsonStringCompact(json, metadata[i].second);
    }
    json.push_back('}');
    first = false;
  }
  uint64_t offset = 0;
  layout.tensors.reserve(tensors.size());
  for (size_t k : order) {
    TensorSpec& t = tensors[k];
    if (!first) json.push_back(',');
    first = false;
    AppendJsonStringCompact(json, t.name);
    json += ":{\"dtype\":\"";
    json += DTypeName(t.dtype);
    json += "\",\"shape\":[";
    for (size_t i = 0; i < t.shape.size(); ++i) {
      if (i > 0) json.push_back(',');
      AppendDecimal(json, t.shape[i]);
    }
    json += "],\"data_offsets\":[";
    AppendDecimal(json, offset);
    json.push_back(',');
    AppendDecimal(json, offset + t.nbytes);
    json += "]}";

    TensorInfo info;
    info.name = std::move(t.name);
    info.dtype = t.dtype;
    info.shape = std::move(t.shape);
    info.begin = offset;
    info.end = offset + t.nbytes;
    offset = info.end;
    layout.tensors.push_back(std::move(info));
  }
  json.push_back('}');
  // "Force alignment to 8 bytes": extra = (8 - len % 8) % 8 spaces, and N counts them.
  json.append((8 - (json.size() - 8) % 8) % 8, ' ');

  const uint64_t n = json.size() - 8;
  for (int i = 0; i < 8; ++i) json[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xFF);
  layout.data_start = layout.header.size();
  layout.file_size = layout.data_start + offset;
  return layout;
}

}  // namespace quench
