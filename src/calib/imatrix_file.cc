// Both importance-matrix layouts of llama.cpp's tools/imatrix/imatrix.cpp:
//  - GGUF (save_imatrix): general.type "imatrix", imatrix.datasets (strings),
//    imatrix.chunk_count and imatrix.chunk_size (u32); per weight W the F32 tensors
//    "W.in_sum2" [ne0 = columns, ne1 = matrices] (sum of x^2), "W.counts" [1, matrices]
//    (tokens per matrix, i.e. per expert) and, in newer files, "W.in_sum" (sum of x, unused).
//  - legacy .dat (save_imatrix_legacy): i32 n_entries; per entry i32 name length, the name,
//    i32 ncall, i32 nval, nval f32 = sum / count * ncall (per expert's own count); then i32
//    last chunk and i32 length + the dataset file name (both absent in old files).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>

#include "calib/imatrix.h"
#include "format/file_io.h"
#include "format/gguf.h"

namespace quench::calib {
namespace fs = std::filesystem;
namespace {

Status Bad(const fs::path& file, const std::string& what) {
  return Error(ErrorCode::kInvalidInput, file.string() + ": " + what);
}

// Sums of squares are never negative and never NaN or Inf: llama.cpp itself stops collecting
// at the first non-finite value, so one in a file is corruption.
Status CheckSums(const fs::path& file, const std::string& entry, const std::vector<double>& v) {
  for (size_t i = 0; i < v.size(); ++i) {
    if (!std::isfinite(v[i]) || v[i] < 0) {
      return Bad(file, "entry '" + entry + "': sum of squares " + std::to_string(v[i]) +
                           " at index " + std::to_string(i) +
                           " (NaN, Inf or negative: the file is corrupt)");
    }
  }
  return Status::Ok();
}

bool StripSuffix(std::string& s, std::string_view suffix) {
  if (!s.ends_with(suffix)) return false;
  s.resize(s.size() - suffix.size());
  return true;
}

Result<Imatrix> ReadGguf(const fs::path& file) {
  QUENCH_ASSIGN_OR_RETURN(GgufFile g, GgufFile::Open(file));
  Imatrix im;
  im.layout = "gguf";
  im.gguf_version = g.version();
  const auto& kv = g.metadata();
  if (auto it = kv.find("general.type"); it != kv.end()) {
    const std::string* type = std::get_if<std::string>(&it->second);
    if (type == nullptr || *type != "imatrix") {
      return Bad(file, "a GGUF file whose general.type is not \"imatrix\" (a model file?)");
    }
  }
  if (auto it = kv.find("imatrix.datasets"); it != kv.end()) {
    if (auto* d = std::get_if<std::vector<std::string>>(&it->second)) im.datasets = *d;
  }
  for (auto [key, slot] : {std::pair{"imatrix.chunk_count", &im.chunk_count},
                           std::pair{"imatrix.chunk_size", &im.chunk_size}}) {
    if (auto it = kv.find(key); it != kv.end()) {
      if (auto* v = std::get_if<uint64_t>(&it->second)) *slot = *v;
    }
  }
  struct Parts {
    const GgufTensor* sum2 = nullptr;
    const GgufTensor* counts = nullptr;
    const GgufTensor* sum = nullptr;
  };
  std::map<std::string, Parts> by_weight;
  for (const GgufTensor& t : g.tensors()) {
    std::string w = t.name;
    if (StripSuffix(w, ".in_sum2")) {
      by_weight[w].sum2 = &t;
    } else if (StripSuffix(w, ".counts")) {
      by_weight[w].counts = &t;
    } else if (StripSuffix(w, ".in_sum")) {
      by_weight[w].sum = &t;
    } else {
      return Bad(file, "tensor '" + t.name + "' is not an importance-matrix array (" +
                           "<weight>.in_sum2, .counts or .in_sum)");
    }
  }
  if (by_weight.empty()) return Bad(file, "no importance-matrix entries");
  for (const auto& [name, p] : by_weight) {
    if (p.sum2 == nullptr || p.counts == nullptr) {
      return Bad(file, "entry '" + name + "' has " + (p.sum2 ? "sums but no counts" :
                                                      "no sums (.in_sum2)"));
    }
    if (p.sum2->ne.size() > 2 || p.sum2->elements() == 0) {
      return Bad(file, "entry '" + name + "': in_sum2 must be [columns, matrices]");
    }
    ImatrixEntry e;
    e.name = name;
    e.cols = p.sum2->ne[0];
    e.mats = p.sum2->ne.size() > 1 ? p.sum2->ne[1] : 1;
    if (p.counts->elements() != e.mats) {
      return Bad(file, "entry '" + name + "': " + std::to_string(p.counts->elements()) +
                           " counts for " + std::to_string(e.mats) + " matrices of sums");
    }
    if (p.sum != nullptr && p.sum->elements() != p.sum2->elements()) {
      return Bad(file, "entry '" + name + "': in_sum and in_sum2 differ in size");
    }
    QUENCH_ASSIGN_OR_RETURN(std::vector<float> s2, g.ReadF32(*p.sum2));
    QUENCH_ASSIGN_OR_RETURN(std::vector<float> c, g.ReadF32(*p.counts));
    e.sum_x2.assign(s2.begin(), s2.end());
    QUENCH_RETURN_IF_ERROR(CheckSums(file, name, e.sum_x2));
    for (float v : c) {
      // llama.cpp stores counts as F32 and reads them back with lround.
      if (!std::isfinite(v) || v < 0 || v > 9e18f) {
        return Bad(file, "entry '" + name + "': token count " + std::to_string(v) +
                             " (NaN, Inf or negative: the file is corrupt)");
      }
      e.counts.push_back(std::llround(v));
    }
    im.entries.push_back(std::move(e));
  }
  return im;
}

// Bounds-checked reads of the legacy layout.
struct Reader {
  const uint8_t* p;
  uint64_t size, pos = 0;
  bool Has(uint64_t n) const { return size - pos >= n; }
  int32_t I32() {
    int32_t v;
    std::memcpy(&v, p + pos, 4);
    pos += 4;
    return v;
  }
};

Result<Imatrix> ReadLegacy(const fs::path& file, uint64_t chunk) {
  if (chunk == 0) return Error(ErrorCode::kUsage, "the legacy chunk size must be positive");
  QUENCH_ASSIGN_OR_RETURN(MappedFile map, MappedFile::Open(file));
  Reader r{map.data(), map.size()};
  auto truncated = [&](const std::string& what) {
    return Bad(file, "truncated or not an importance matrix: " + what + " runs past the end " +
                         "(byte " + std::to_string(r.pos) + " of " + std::to_string(r.size) + ")");
  };
  if (!r.Has(4)) return truncated("the entry count");
  const int32_t n = r.I32();
  // Each entry takes at least 16 bytes: a count the file cannot hold is not a legacy imatrix.
  if (n < 1 || static_cast<uint64_t>(n) > r.size / 16) {
    return Bad(file, "not an importance matrix (GGUF or legacy .dat): entry count " +
                         std::to_string(n));
  }
  Imatrix im;
  im.layout = "dat";
  im.assumed_chunk_size = chunk;
  std::map<std::string, bool> seen;
  for (int32_t i = 0; i < n; ++i) {
    const std::string at = "entry " + std::to_string(i + 1) + " of " + std::to_string(n);
    if (!r.Has(4)) return truncated(at);
    const int32_t len = r.I32();
    if (len < 1 || len > 4096) return Bad(file, at + ": name length " + std::to_string(len));
    if (!r.Has(static_cast<uint64_t>(len) + 8)) return truncated(at);
    ImatrixEntry e;
    e.name.assign(reinterpret_cast<const char*>(r.p + r.pos), static_cast<size_t>(len));
    r.pos += static_cast<uint64_t>(len);
    const int32_t ncall = r.I32(), nval = r.I32();
    if (ncall < 1) {
      return Bad(file, "entry '" + e.name + "': " + std::to_string(ncall) +
                           " chunks (llama.cpp writes at least 1 for an entry with data)");
    }
    if (nval < 1) return Bad(file, "entry '" + e.name + "': " + std::to_string(nval) + " values");
    if (!r.Has(4 * static_cast<uint64_t>(nval))) return truncated("entry '" + e.name + "'");
    if (seen[e.name]) return Bad(file, "entry '" + e.name + "' twice");
    seen[e.name] = true;
    e.sum_x2.resize(static_cast<size_t>(nval));
    for (int32_t j = 0; j < nval; ++j) {
      float v;
      std::memcpy(&v, r.p + r.pos + 4 * static_cast<uint64_t>(j), 4);
      // value = mean * ncall, so the sum over ncall * chunk tokens is value * chunk.
      e.sum_x2[static_cast<size_t>(j)] = static_cast<double>(v) * static_cast<double>(chunk);
    }
    r.pos += 4 * static_cast<uint64_t>(nval);
    QUENCH_RETURN_IF_ERROR(CheckSums(file, e.name, e.sum_x2));
    e.counts = {static_cast<int64_t>(ncall) * static_cast<int64_t>(chunk)};
    im.entries.push_back(std::move(e));
  }
  // The trailer: last chunk count, then the dataset's file name (newer files).
  if (r.Has(4)) {
    const int32_t last = r.I32();
    if (last >= 0) im.last_chunk = static_cast<uint64_t>(last);
    if (r.Has(4)) {
      const int32_t len = r.I32();
      if (len < 0 || !r.Has(static_cast<uint64_t>(len))) return truncated("the dataset name");
      im.datasets.emplace_back(reinterpret_cast<const char*>(r.p + r.pos),
                               static_cast<size_t>(len));
      r.pos += static_cast<uint64_t>(len);
    }
  }
  if (r.pos != r.size) {
    return Bad(file, std::to_string(r.size - r.pos) + " bytes after the last field of the " +
                         "legacy layout (truncated or not an importance matrix)");
  }
  std::sort(im.entries.begin(), im.entries.end(),
            [](const ImatrixEntry& a, const ImatrixEntry& b) { return a.name < b.name; });
  return im;
}

}  // namespace

Result<Imatrix> ReadImatrix(const fs::path& file, uint64_t legacy_chunk_size) {
  std::error_code ec;
  if (!fs::is_regular_file(file, ec)) return Bad(file, "not a file");
  // The magic read through a mapping, as both readers read the file: a read that fails is
  // then the mapping's error, not a file taken for the other layout.
  bool gguf = false;
  {
    QUENCH_ASSIGN_OR_RETURN(MappedFile map, MappedFile::Open(file));
    gguf = map.size() >= 4 && std::memcmp(map.data(), "GGUF", 4) == 0;
  }
  if (gguf) return ReadGguf(file);
  return ReadLegacy(file, legacy_chunk_size);
}

}  // namespace quench::calib
