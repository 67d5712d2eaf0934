// safetensors header reading with strict validation (writing, byte-identical to the Rust
// crate's `prepare()`, is in safetensors_layout.cc; one tensor's entry in safetensors_entry.cc;
// the On-Demand walk that reads writers' headers without a DOM in safetensors_ondemand.cc).
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
#include <cstring>
#include <numeric>
#include <optional>
#include <string>

#include "format/json.h"
#include "format/name_table.h"
#include "format/parallel.h"
#include "format/safetensors_entry.h"

namespace quench {
namespace {

using safetensors_internal::HeaderError;
using safetensors_internal::OffsetsString;
using safetensors_internal::ParseHeaderDom;
using safetensors_internal::ParseHeaderOnDemand;
using safetensors_internal::ParseTensorEntry;
using safetensors_internal::Printable;
using safetensors_internal::TensorError;
using safetensors_internal::TypeName;
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

// Tiling (crate Metadata::validate): in offset order each tensor starts where the previous
// one ended, the first at 0, and the last ends at the end of the file. Returns the bytes
// covered (data_len).
Result<uint64_t> CheckTiling(std::string_view label, const SafetensorsHeader& header,
                             uint64_t data_len) {
  std::vector<size_t> order(header.tensors.size());
  std::iota(order.begin(), order.end(), size_t{0});
  const auto by_offsets = [&](size_t a, size_t b) {
    const TensorInfo& x = header.tensors[a];
    const TensorInfo& y = header.tensors[b];
    return x.begin != y.begin ? x.begin < y.begin : x.end < y.end;
  };
  // Writers list the tensors in offset order (the crate's `prepare()` does): checked in one
  // pass before anything is sorted. Only a strictly increasing order is kept as it is, the
  // one order std::sort gives whatever it does with ties.
  if (std::adjacent_find(order.begin(), order.end(), [&](size_t a, size_t b) {
        return !by_offsets(a, b);
      }) != order.end()) {
    std::sort(order.begin(), order.end(), by_offsets);
  }
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
  return covered;
}

}  // namespace

Status safetensors_internal::ParseHeaderDom(std::string_view label,
                                            const simdjson::padded_string& json,
                                            uint64_t data_len, SafetensorsHeader& header) {
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
  // A repeated name: while the names come in increasing order (as writers list them, within
  // a dtype) none can repeat, and each is compared with the one before; from the first that
  // does not, every name goes into a table (a random access per name).
  std::optional<NameTable> seen;
  std::string_view last_name;
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
    if (!seen && !header.tensors.empty() && !(last_name < name)) {
      seen.emplace(obj.size());
      // (Views of the names kept so far: `tensors` was reserved whole and does not move.)
      for (const TensorInfo& t : header.tensors) seen->Insert(t.name, 0);
    }
    if (seen && !seen->Insert(name, 0).second) {
      return TensorError(label, name, "duplicate tensor name");
    }
    last_name = name;
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
  return Status::Ok();
}

namespace {

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
  // The On-Demand walk reads the headers writers write; the DOM reader reads the rest and
  // words every message.
  if (!ParseHeaderOnDemand(json, data_len, header)) {
    header.metadata.clear();
    header.has_metadata = false;
    header.tensors = {};
    QUENCH_RETURN_IF_ERROR(ParseHeaderDom(label, json, data_len, header));
  }
  QUENCH_ASSIGN_OR_RETURN(header.data_size, CheckTiling(label, header, data_len));
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

Result<SafetensorsHeader> ReadSafetensorsHeader(const std::filesystem::path& path,
                                                HeaderBytes* keep) {
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
  AdviseHugePages(json.data(), static_cast<size_t>(n));
  QUENCH_RETURN_IF_ERROR(PreadFull(fd.get(), json.data(), static_cast<size_t>(n), 8, label));
  QUENCH_ASSIGN_OR_RETURN(SafetensorsHeader h, ParsePadded(label, json, file_size));
  if (keep != nullptr) {
    // Moved, not copied: the buffer the bytes were read into.
    auto owned = std::make_shared<const simdjson::padded_string>(std::move(json));
    keep->bytes = std::string_view(owned->data(), static_cast<size_t>(n));
    keep->owner = std::move(owned);
    return h;
  }
  h.header_hash = Fnv1a64(std::string_view(json.data(), static_cast<size_t>(n)));
  return h;
}

}  // namespace quench
