// safetensors headers: strict parsing with validation, and byte-exact serialisation matching
// the Rust `safetensors` crate's writer (compact JSON, space padding to 8, tensors sorted by
// dtype descending then name ascending, contiguous offsets).
#ifndef QUENCH_FORMAT_SAFETENSORS_H_
#define QUENCH_FORMAT_SAFETENSORS_H_

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "quench/status.h"
#include "quench/tensor.h"

namespace quench {

struct SafetensorsHeader {
  uint64_t header_len = 0;   // N: JSON bytes incl. padding
  uint64_t data_start = 0;   // 8 + N: file offset of the data section
  uint64_t data_size = 0;    // bytes of the data section covered by tensors
  // `__metadata__` entries in file order; empty when absent.
  std::vector<std::pair<std::string, std::string>> metadata;
  bool has_metadata = false;
  // Tensors in header order (not sorted).
  std::vector<TensorInfo> tensors;
  // FNV-1a 64 of the N header bytes as read from the file (0 when parsed from memory): part
  // of the source fingerprint that --resume checks.
  uint64_t header_hash = 0;
};

// FNV-1a, 64-bit: a stable, dependency-free fingerprint hash (not cryptographic).
inline uint64_t Fnv1a64(std::string_view bytes, uint64_t h = 0xcbf29ce484222325ull) {
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

// Largest header accepted (the Rust crate's limit is 100 MB).
inline constexpr uint64_t kMaxHeaderBytes = 100'000'000;

// Longest tensor name accepted (the crate has no limit; real names are under 300 bytes). The
// planner and verify match names against `re:` patterns with std::regex, whose matcher
// recurses once per character: a name of some 50 000 bytes overflowed the stack (SIGSEGV).
inline constexpr size_t kMaxTensorNameBytes = 4096;

// Validates a header: `json` is the N header bytes (padding included); `file_size` is the
// whole file's size. Rules (each violation names file, tensor and rule in the message):
// JSON object; `__metadata__` a string->string map; each entry an object with
// dtype/shape/data_offsets (unknown extra fields are ignored, as the Rust crate does); known dtype;
// shape of non-negative integers; product * dtype size == end - begin (no overflow); begin <= end;
// offsets within the data section; tensors tile the data section with no gaps or overlaps, starting
// at 0 and ending at the file end; no duplicate names; valid UTF-8 names. `label` names the file in
// messages.
Result<SafetensorsHeader> ParseSafetensorsHeader(std::string_view label, std::string_view json,
                                                 uint64_t file_size);

// A header's N bytes as read from its file: `bytes` stays valid as long as `owner` lives.
struct HeaderBytes {
  std::shared_ptr<const void> owner;
  std::string_view bytes;
};

// Opens `path`, reads the 8-byte length and the header with pread (no data is read), checks
// the length against the file size and kMaxHeaderBytes, then ParseSafetensorsHeader.
// With `keep`, header_hash is left 0 and the header's bytes are handed over in *keep
// instead, for the caller to hash when it needs the value (Fnv1a64(keep->bytes) is
// header_hash): the hash is one serial multiply per byte, work a conversion need not do
// before its first write (bench/README.md, kimi-s37).
Result<SafetensorsHeader> ReadSafetensorsHeader(const std::filesystem::path& path,
                                                HeaderBytes* keep = nullptr);

// One tensor to be written: offsets are assigned by LayOutSafetensors.
struct TensorSpec {
  std::string name;
  DType dtype = DType::kBF16;
  std::vector<uint64_t> shape;
  uint64_t nbytes = 0;
};

struct SafetensorsLayout {
  std::string header;               // the 8-byte length prefix + padded JSON: write at offset 0
  std::vector<TensorInfo> tensors;  // sorted as the writer sorts them; begin/end relative to data
  std::vector<size_t> position;     // per TensorSpec as given: its index in `tensors`
  uint64_t data_start = 0;          // == header.size()
  uint64_t file_size = 0;
};

// Where LayOutSafetensors puts each tensor, without copying the tensors: for a caller that
// keeps its specs (the planner, with 10^5 of them).
struct SafetensorsPlacement {
  std::string header;            // as SafetensorsLayout::header
  std::vector<size_t> order;     // the specs' indices in file order
  std::vector<uint64_t> begin;   // per spec as given: its offset in the data section
  uint64_t data_start = 0;
  uint64_t file_size = 0;
};

// LayOutSafetensors' order, offsets and header for `tensors` (the same bytes).
SafetensorsPlacement PlaceSafetensors(
    const std::vector<TensorSpec>& tensors,
    const std::vector<std::pair<std::string, std::string>>& metadata = {});

// Sorts like safetensors' `prepare()` (dtype descending by DTypeSortRank, then name ascending
// byte-wise), assigns contiguous offsets, and serialises the header exactly as the crate does
// (`serde_json::to_string`: no spaces; field order dtype, shape, data_offsets; `__metadata__`
// first when non-empty; right-padded with spaces to a multiple of 8).
SafetensorsLayout LayOutSafetensors(
    std::vector<TensorSpec> tensors,
    const std::vector<std::pair<std::string, std::string>>& metadata = {});

}  // namespace quench

#endif  // QUENCH_FORMAT_SAFETENSORS_H_
