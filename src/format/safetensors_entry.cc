// A safetensors header's tensor entry (safetensors_entry.h): its fields read as serde reads
// the crate's TensorInfo (each at most once, unknown ones ignored; dtype a known name, shape
// and offsets unsigned integers), then the byte count checked against the offsets with the
// crate's overflow and whole-byte rules; and the messages that name a file and tensor.
#include "format/safetensors_entry.h"

#include <optional>
#include <string>

namespace quench::safetensors_internal {

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
                   ErrorCode code) {
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

namespace {

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

// The entry's byte count: from shape and dtype, with the crate's overflow check
// (ValidationOverflow) and its rule that sub-byte tensors end on a byte boundary, equal to
// what its offsets span.
Status CheckTensorBytes(std::string_view label, std::string_view name, const TensorInfo& info) {
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

}  // namespace

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
  return CheckTensorBytes(label, name, info);
}

}  // namespace quench::safetensors_internal
