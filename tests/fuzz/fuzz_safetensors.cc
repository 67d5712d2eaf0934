// The safetensors header reader (length prefix, size checks, strict validation) on whole
// files, and the header writer. Properties: reading never crashes; an accepted header's
// tensors tile the data section exactly; laid out again by LayOutSafetensors, the same tensors
// give a header that the reader accepts with the same names, dtypes and shapes; where the
// On-Demand walk accepts a header, the DOM reader accepts it and reads the same.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "format/safetensors.h"
#include "format/safetensors_entry.h"
#include "fuzz_util.h"

namespace {

// One in-memory file, reopened by path as the reader opens files.
int MemFd() {
  static const int fd = memfd_create("fuzz.safetensors", MFD_CLOEXEC);
  return fd;
}

// The On-Demand walk against the DOM reader on the file's header bytes.
void CompareReaders(const uint8_t* data, size_t size) {
  using quench::fuzz::Require;
  namespace st = quench::safetensors_internal;
  if (size < 8) return;
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];
  if (n > size - 8 || n > quench::kMaxHeaderBytes) return;
  const simdjson::padded_string json(reinterpret_cast<const char*>(data) + 8, n);
  const uint64_t data_len = size - 8 - n;
  quench::SafetensorsHeader fast, dom;
  if (!st::ParseHeaderOnDemand(json, data_len, fast)) return;
  Require(st::ParseHeaderDom("fuzz", json, data_len, dom).ok(),
          "the On-Demand walk accepted a header the DOM reader refuses");
  Require(fast.tensors.size() == dom.tensors.size() && fast.metadata == dom.metadata &&
              fast.has_metadata == dom.has_metadata,
          "the readers differ in tensors or metadata");
  for (size_t i = 0; i < fast.tensors.size(); ++i) {
    const quench::TensorInfo& a = fast.tensors[i];
    const quench::TensorInfo& b = dom.tensors[i];
    Require(a.name == b.name && a.dtype == b.dtype && a.shape == b.shape &&
                a.begin == b.begin && a.end == b.end,
            "the readers read a tensor differently");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using quench::fuzz::Require;
  CompareReaders(data, size);
  const int fd = MemFd();
  if (fd < 0 || ftruncate(fd, 0) != 0) return 0;
  if (size > 0 && pwrite(fd, data, size, 0) != static_cast<ssize_t>(size)) return 0;
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  auto h = quench::ReadSafetensorsHeader(path);
  if (!h.ok()) {
    Require(!h.status().message().empty(), "an error without a message");
    return 0;
  }
  // Accepted: the tensors tile [0, file size - data start) with no gap or overlap.
  Require(h->data_start <= size, "data starts past the end of the file");
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  std::vector<quench::TensorSpec> specs;
  std::map<std::string, const quench::TensorInfo*> by_name;
  for (const quench::TensorInfo& t : h->tensors) {
    Require(t.begin <= t.end, "begin after end");
    ranges.emplace_back(t.begin, t.end);
    specs.push_back({t.name, t.dtype, t.shape, t.nbytes()});
    Require(by_name.emplace(t.name, &t).second, "a duplicate name was accepted");
  }
  std::sort(ranges.begin(), ranges.end());
  uint64_t at = 0;
  for (const auto& [b, e] : ranges) {
    Require(b == at, "a gap or an overlap was accepted");
    at = e;
  }
  Require(at == size - h->data_start, "the tensors do not end at the end of the file");
  // The writer: the same tensors laid out afresh, read back.
  const quench::SafetensorsLayout layout = quench::LayOutSafetensors(specs);
  Require(layout.header.size() >= 8 && layout.header.size() % 8 == 0, "header not padded to 8");
  auto back = quench::ParseSafetensorsHeader(
      "layout", std::string_view(layout.header).substr(8), layout.file_size);
  Require(back.ok(), "LayOutSafetensors wrote a header its reader refuses");
  Require(back->tensors.size() == h->tensors.size(), "tensor count changed");
  for (const quench::TensorInfo& t : back->tensors) {
    auto it = by_name.find(t.name);
    Require(it != by_name.end(), "a name changed on the way through the writer");
    Require(it->second->dtype == t.dtype && it->second->shape == t.shape,
            "a dtype or shape changed on the way through the writer");
  }
  return 0;
}
