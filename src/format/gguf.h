// A small GGUF reader (the ggml file format, versions 2 and 3, little-endian): the key-value
// metadata and the tensor table, with every length and offset checked against the file. It
// keeps what llama.cpp importance matrices use (scalar and string keys, arrays of strings,
// F32 tensors); other value types are read past and other tensor types are listed but refuse
// to be read. Layout (the gguf spec, ggml's docs/gguf.md):
//   "GGUF" u32 version, u64 n_tensors, u64 n_kv,
//   n_kv x (string key, u32 type, value), n_tensors x (string name, u32 n_dims,
//   u64 ne[n_dims], u32 ggml_type, u64 offset), padding to general.alignment (default 32),
//   then the data; a string is u64 length + bytes, an array u32 type + u64 count + values.
#ifndef QUENCH_FORMAT_GGUF_H_
#define QUENCH_FORMAT_GGUF_H_

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <variant>
#include <vector>

#include "format/file_io.h"
#include "quench/status.h"

namespace quench {

inline constexpr uint32_t kGgufTypeF32 = 0;  // ggml_type GGML_TYPE_F32

// A metadata value: integers (signed and unsigned kept apart), floats, bools, strings, arrays
// of strings; any other array is kept as its element count only.
struct GgufArrayOther {
  uint32_t type = 0;
  uint64_t count = 0;
};
using GgufValue = std::variant<int64_t, uint64_t, double, bool, std::string,
                               std::vector<std::string>, GgufArrayOther>;

struct GgufTensor {
  std::string name;
  std::vector<uint64_t> ne;  // ggml order: ne[0] is the fastest-varying dimension
  uint32_t type = 0;         // ggml_type
  uint64_t offset = 0;       // in the file (data start + the tensor's relative offset)
  uint64_t nbytes = 0;       // F32 only; 0 for other types
  uint64_t elements() const {
    uint64_t n = 1;
    for (uint64_t d : ne) n *= d;
    return n;
  }
};

class GgufFile {
 public:
  // Maps `path` and parses the header and tensor table; kInvalidInput (naming the file and
  // what is wrong) for a file that is not GGUF, a version other than 2 or 3, or any length,
  // count or offset that runs past the end of the file.
  static Result<GgufFile> Open(const std::filesystem::path& path);

  uint32_t version() const { return version_; }
  const std::map<std::string, GgufValue>& metadata() const { return kv_; }
  const std::vector<GgufTensor>& tensors() const { return tensors_; }
  // An F32 tensor's elements (kInvalidInput for another type).
  Result<std::vector<float>> ReadF32(const GgufTensor& t) const;

 private:
  std::filesystem::path path_;
  MappedFile map_;
  uint32_t version_ = 0;
  std::map<std::string, GgufValue> kv_;
  std::vector<GgufTensor> tensors_;
};


}  // namespace quench

#endif  // QUENCH_FORMAT_GGUF_H_
