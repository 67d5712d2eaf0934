#include "format/gguf.h"

#include <cstring>

namespace quench {
namespace fs = std::filesystem;
namespace {

// gguf_type, the value types of the metadata (gguf spec).
enum : uint32_t {
  kU8 = 0, kI8, kU16, kI16, kU32, kI32, kF32, kBool, kString, kArray, kU64, kI64, kF64,
};

// Longest key or tensor name accepted: ggml's GGML_MAX_NAME is 64 for tensor names; keys have
// no limit in the spec, so 64 KiB keeps a corrupt length from reading half the file as a name.
constexpr uint64_t kMaxString = 1 << 16;
constexpr uint32_t kMaxDims = 4;  // GGML_MAX_DIMS

// Bounds-checked little-endian cursor over the mapped bytes.
class Cursor {
 public:
  Cursor(const uint8_t* p, uint64_t size, std::string label)
      : p_(p), size_(size), label_(std::move(label)) {}
  uint64_t pos() const { return pos_; }
  uint64_t left() const { return size_ - pos_; }

  Status Fail(const std::string& what) const {
    return Error(ErrorCode::kInvalidInput,
                 label_ + ": " + what + " (at byte " + std::to_string(pos_) + ")");
  }
  template <class T>
  Result<T> Get(const char* what) {
    if (left() < sizeof(T)) return Fail(std::string("truncated: ") + what + " runs past the end");
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));  // GGUF is little-endian, as this machine
    pos_ += sizeof(T);
    return v;
  }
  Result<std::string> String(const char* what) {
    QUENCH_ASSIGN_OR_RETURN(uint64_t n, Get<uint64_t>(what));
    if (n > kMaxString) return Fail(std::string(what) + " of " + std::to_string(n) + " bytes");
    if (left() < n) return Fail(std::string("truncated: ") + what + " runs past the end");
    std::string s(reinterpret_cast<const char*>(p_ + pos_), n);
    pos_ += n;
    return s;
  }
  Status Skip(uint64_t n, const char* what) {
    if (left() < n) return Fail(std::string("truncated: ") + what + " runs past the end");
    pos_ += n;
    return Status::Ok();
  }

 private:
  const uint8_t* p_;
  uint64_t size_;
  uint64_t pos_ = 0;
  std::string label_;
};

uint64_t ScalarSize(uint32_t type) {
  switch (type) {
    case kU8: case kI8: case kBool: return 1;
    case kU16: case kI16: return 2;
    case kU32: case kI32: case kF32: return 4;
    case kU64: case kI64: case kF64: return 8;
    default: return 0;
  }
}

// One number of type T read and held as GgufValue holds it (As: uint64_t, int64_t or double).
template <class T, class As>
Result<GgufValue> Number(Cursor& c) {
  QUENCH_ASSIGN_OR_RETURN(T v, c.Get<T>("value"));
  return GgufValue(As{v});
}

Result<GgufValue> Scalar(Cursor& c, uint32_t type) {
  switch (type) {
    case kU8: return Number<uint8_t, uint64_t>(c);
    case kI8: return Number<int8_t, int64_t>(c);
    case kU16: return Number<uint16_t, uint64_t>(c);
    case kI16: return Number<int16_t, int64_t>(c);
    case kU32: return Number<uint32_t, uint64_t>(c);
    case kI32: return Number<int32_t, int64_t>(c);
    case kU64: return Number<uint64_t, uint64_t>(c);
    case kI64: return Number<int64_t, int64_t>(c);
    case kF32: return Number<float, double>(c);
    case kF64: return Number<double, double>(c);
    case kBool: {
      QUENCH_ASSIGN_OR_RETURN(uint8_t v, c.Get<uint8_t>("value"));
      if (v > 1) return c.Fail("bool value " + std::to_string(v));
      return GgufValue(v == 1);
    }
    case kString: {
      QUENCH_ASSIGN_OR_RETURN(std::string s, c.String("string value"));
      return GgufValue(std::move(s));
    }
    default:
      return c.Fail("unknown value type " + std::to_string(type));
  }
}

Result<GgufValue> Value(Cursor& c, uint32_t type) {
  if (type != kArray) return Scalar(c, type);
  QUENCH_ASSIGN_OR_RETURN(uint32_t et, c.Get<uint32_t>("array type"));
  QUENCH_ASSIGN_OR_RETURN(uint64_t n, c.Get<uint64_t>("array length"));
  if (et == kString) {
    // Each string takes at least its 8-byte length: a count the file cannot hold is refused
    // before anything is allocated.
    if (n > c.left() / 8) return c.Fail("truncated: array of " + std::to_string(n) + " strings");
    std::vector<std::string> out;
    out.reserve(n);
    for (uint64_t i = 0; i < n; ++i) {
      QUENCH_ASSIGN_OR_RETURN(std::string s, c.String("array string"));
      out.push_back(std::move(s));
    }
    return GgufValue(std::move(out));
  }
  const uint64_t esz = ScalarSize(et);
  if (esz == 0) {
    // Nested arrays are allowed by the spec but unused by imatrix files.
    return c.Fail("array of value type " + std::to_string(et) + " is not supported");
  }
  if (n > c.left() / esz) return c.Fail("truncated: array of " + std::to_string(n) + " values");
  QUENCH_RETURN_IF_ERROR(c.Skip(n * esz, "array"));
  return GgufValue(GgufArrayOther{et, n});
}

}  // namespace

Result<GgufFile> GgufFile::Open(const fs::path& path) {
  GgufFile g;
  g.path_ = path;
  QUENCH_ASSIGN_OR_RETURN(g.map_, MappedFile::Open(path));
  Cursor c(g.map_.data(), g.map_.size(), path.string());
  if (g.map_.size() < 4 || std::memcmp(g.map_.data(), "GGUF", 4) != 0) {
    return c.Fail("not a GGUF file (no \"GGUF\" magic)");
  }
  QUENCH_RETURN_IF_ERROR(c.Skip(4, "magic"));
  QUENCH_ASSIGN_OR_RETURN(g.version_, c.Get<uint32_t>("version"));
  if (g.version_ != 2 && g.version_ != 3) {
    return c.Fail("GGUF version " + std::to_string(g.version_) + "; versions 2 and 3 are read");
  }
  QUENCH_ASSIGN_OR_RETURN(uint64_t n_tensors, c.Get<uint64_t>("tensor count"));
  QUENCH_ASSIGN_OR_RETURN(uint64_t n_kv, c.Get<uint64_t>("metadata count"));
  // A key-value pair takes at least 12 bytes, a tensor entry at least 24.
  if (n_kv > c.left() / 12 || n_tensors > c.left() / 24) {
    return c.Fail("truncated: " + std::to_string(n_kv) + " keys and " +
                  std::to_string(n_tensors) + " tensors cannot fit in the file");
  }
  for (uint64_t i = 0; i < n_kv; ++i) {
    QUENCH_ASSIGN_OR_RETURN(std::string key, c.String("key"));
    QUENCH_ASSIGN_OR_RETURN(uint32_t type, c.Get<uint32_t>("value type"));
    auto v = Value(c, type);
    if (!v.ok()) return Error(v.status().code(), v.status().message() + " in key '" + key + "'");
    if (!g.kv_.emplace(key, *std::move(v)).second) return c.Fail("key '" + key + "' twice");
  }
  uint64_t alignment = 32;  // GGUF_DEFAULT_ALIGNMENT
  if (auto it = g.kv_.find("general.alignment"); it != g.kv_.end()) {
    const uint64_t* a = std::get_if<uint64_t>(&it->second);
    if (a == nullptr || *a == 0 || (*a & (*a - 1)) != 0) {
      return c.Fail("general.alignment must be a power of two");
    }
    alignment = *a;
  }
  std::map<std::string, bool> seen;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensor t;
    QUENCH_ASSIGN_OR_RETURN(t.name, c.String("tensor name"));
    QUENCH_ASSIGN_OR_RETURN(uint32_t n_dims, c.Get<uint32_t>("tensor dimension count"));
    if (n_dims == 0 || n_dims > kMaxDims) {
      return c.Fail("tensor '" + t.name + "' has " + std::to_string(n_dims) + " dimensions");
    }
    for (uint32_t d = 0; d < n_dims; ++d) {
      QUENCH_ASSIGN_OR_RETURN(uint64_t ne, c.Get<uint64_t>("tensor dimension"));
      t.ne.push_back(ne);
    }
    QUENCH_ASSIGN_OR_RETURN(t.type, c.Get<uint32_t>("tensor type"));
    QUENCH_ASSIGN_OR_RETURN(t.offset, c.Get<uint64_t>("tensor offset"));
    if (seen[t.name]) return c.Fail("tensor '" + t.name + "' twice");
    seen[t.name] = true;
    g.tensors_.push_back(std::move(t));
  }
  const uint64_t data_start = (c.pos() + alignment - 1) / alignment * alignment;
  for (GgufTensor& t : g.tensors_) {
    if (t.offset % alignment != 0) {
      return c.Fail("tensor '" + t.name + "': offset " + std::to_string(t.offset) +
                    " is not a multiple of the alignment " + std::to_string(alignment));
    }
    uint64_t n = 1;
    for (uint64_t d : t.ne) {
      if (d != 0 && n > (uint64_t{1} << 40) / d)
        return c.Fail("tensor '" + t.name + "' is too large");
      n *= d;
    }
    if (t.type == kGgufTypeF32) t.nbytes = n * 4;
    // ggml's reader loads every tensor padded to the alignment, so a file must hold the
    // padding after its last tensor too.
    const uint64_t padded = (t.nbytes + alignment - 1) / alignment * alignment;
    const uint64_t size = g.map_.size();
    if (data_start > size || t.offset > size - data_start ||
        padded > size - data_start - t.offset) {
      return c.Fail("truncated: tensor '" + t.name + "' runs past the end of the file");
    }
    t.offset += data_start;
  }
  return g;
}

Result<std::vector<float>> GgufFile::ReadF32(const GgufTensor& t) const {
  if (t.type != kGgufTypeF32) {
    return Error(ErrorCode::kInvalidInput, path_.string() + ": tensor '" + t.name +
                                               "' has ggml type " + std::to_string(t.type) +
                                               "; F32 (0) expected");
  }
  std::vector<float> out(t.elements());
  if (!out.empty()) std::memcpy(out.data(), map_.data() + t.offset, t.nbytes);
  return out;
}

}  // namespace quench
