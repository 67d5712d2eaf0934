// safetensors writing (LayOutSafetensors and PlaceSafetensors, declared in safetensors.h): the
// header bytes and offsets of an output file laid out byte-identical to the Rust crate's
// `prepare()` in safetensors/src/tensor.rs, which safetensors.torch.save_file uses.
#include <algorithm>
#include <array>
#include <charconv>
#include <cstring>
#include <string>
#include <vector>

#include "format/json.h"
#include "format/parallel.h"
#include "format/safetensors.h"
#include "format/sorted_runs.h"
namespace quench {
namespace {

// Appends v in decimal (std::to_string's digits, without a temporary string).
void AppendDecimal(std::string& out, uint64_t v) {
  char buf[24];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, r.ptr);
}

// Whether serde_json writes `s` as it is between its quotes (AppendJsonStringCompact's rule:
// no '"', '\\' or control character below 0x20).
// Every byte is tested, without an early exit, so that the loop runs on vectors.
bool NeedsNoEscape(std::string_view s) {
  unsigned bad = 0;
  for (char ch : s) {
    const unsigned char c = static_cast<unsigned char>(ch);
    bad |= static_cast<unsigned>(c < 0x20) | static_cast<unsigned>(c == '"') |
           static_cast<unsigned>(c == '\\');
  }
  return bad == 0;
}

// Copies `s` to `p`, returning the end.
char* Put(char* p, std::string_view s) {
  std::memcpy(p, s.data(), s.size());
  return p + s.size();
}

char* PutDecimal(char* p, uint64_t v) { return std::to_chars(p, p + 20, v).ptr; }

// One tensor's entry, `"name":{"dtype":"..","shape":[..],"data_offsets":[b,e]}`, as the
// crate writes it. An entry whose name needs no escape and whose text fits a small buffer is
// made there and appended at once (a header of 10^5 entries was a million small appends);
// any other piece by piece. Both give the same bytes.
void AppendEntry(std::string& json, const TensorSpec& t, uint64_t begin) {
  const std::string_view dtype = DTypeName(t.dtype);
  // 20 digits per number, the fixed text, the name and its quotes.
  constexpr size_t kFixed = 48;
  const size_t most = t.name.size() + dtype.size() + 21 * (t.shape.size() + 2) + kFixed;
  std::array<char, 512> buf;
  if (most <= buf.size() && NeedsNoEscape(t.name)) {
    char* p = buf.data();
    *p++ = '"';
    p = Put(p, t.name);
    p = Put(p, "\":{\"dtype\":\"");
    p = Put(p, dtype);
    p = Put(p, "\",\"shape\":[");
    for (size_t i = 0; i < t.shape.size(); ++i) {
      if (i > 0) *p++ = ',';
      p = PutDecimal(p, t.shape[i]);
    }
    p = Put(p, "],\"data_offsets\":[");
    p = PutDecimal(p, begin);
    *p++ = ',';
    p = PutDecimal(p, begin + t.nbytes);
    p = Put(p, "]}");
    json.append(buf.data(), p);
    return;
  }
  AppendJsonStringCompact(json, t.name);
  json += ":{\"dtype\":\"";
  json += dtype;
  json += "\",\"shape\":[";
  for (size_t i = 0; i < t.shape.size(); ++i) {
    if (i > 0) json.push_back(',');
    AppendDecimal(json, t.shape[i]);
  }
  json += "],\"data_offsets\":[";
  AppendDecimal(json, begin);
  json.push_back(',');
  AppendDecimal(json, begin + t.nbytes);
  json += "]}";
}

}  // namespace

SafetensorsPlacement PlaceSafetensors(
    const std::vector<TensorSpec>& tensors,
    const std::vector<std::pair<std::string, std::string>>& metadata) {
  // prepare(): dtype descending in enum order, then name ascending (Rust String Ord: bytes).
  // An order of indices is sorted, so that each spec's position can be given back: stably by
  // dtype first (a few distinct values: one counting pass), then each dtype's names, which
  // planning in source order mostly gives already sorted (names are unique in a valid
  // layout, so stability does not change the result).
  constexpr size_t kRanks = 256;  // DTypeSortRank of a uint8_t enum
  std::array<size_t, kRanks + 1> start{};
  for (const TensorSpec& t : tensors)
    ++start[kRanks - 1 - static_cast<size_t>(DTypeSortRank(t.dtype))];
  size_t sum = 0;
  for (size_t& s : start) {
    const size_t count = s;
    s = sum;
    sum += count;
  }
  SafetensorsPlacement place;
  std::vector<size_t>& order = place.order;
  order.resize(tensors.size());
  {
    std::array<size_t, kRanks + 1> next = start;
    for (size_t i = 0; i < tensors.size(); ++i) {
      order[next[kRanks - 1 - static_cast<size_t>(DTypeSortRank(tensors[i].dtype))]++] = i;
    }
  }
  for (size_t r = 0; r < kRanks; ++r) {
    if (start[r + 1] - start[r] < 2) continue;
    SortByRuns(order.begin() + static_cast<std::ptrdiff_t>(start[r]),
               order.begin() + static_cast<std::ptrdiff_t>(start[r + 1]),
               [&](size_t i, size_t j) { return tensors[i].name < tensors[j].name; });
  }

  size_t bytes = 2;  // room for the JSON: each entry's name and about 80 bytes of fields
  for (const TensorSpec& t : tensors) bytes += t.name.size() + 80;
  // The JSON is written in place after the 8 bytes of its length, which are filled in last
  // (a shard of tens of thousands of tensors has megabytes of header, not copied again).
  std::string& json = place.header;
  json.reserve(8 + bytes);
  AdviseHugePages(json.data(), 8 + bytes);
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
  place.begin.resize(tensors.size());
  for (size_t k : order) {
    const TensorSpec& t = tensors[k];
    if (!first) json.push_back(',');
    first = false;
    AppendEntry(json, t, offset);
    place.begin[k] = offset;
    offset += t.nbytes;
  }
  json.push_back('}');
  // "Force alignment to 8 bytes": extra = (8 - len % 8) % 8 spaces, and N counts them.
  json.append((8 - (json.size() - 8) % 8) % 8, ' ');

  const uint64_t n = json.size() - 8;
  for (int i = 0; i < 8; ++i)
    json[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xFF);
  place.data_start = json.size();
  place.file_size = place.data_start + offset;
  return place;
}

SafetensorsLayout LayOutSafetensors(
    std::vector<TensorSpec> tensors,
    const std::vector<std::pair<std::string, std::string>>& metadata) {
  SafetensorsPlacement place = PlaceSafetensors(tensors, metadata);
  SafetensorsLayout layout;
  layout.position.resize(tensors.size());
  layout.tensors.reserve(tensors.size());
  for (size_t k = 0; k < place.order.size(); ++k) {
    const size_t i = place.order[k];
    layout.position[i] = k;
    TensorSpec& t = tensors[i];
    TensorInfo info;
    info.name = std::move(t.name);
    info.dtype = t.dtype;
    info.shape = std::move(t.shape);
    info.begin = place.begin[i];
    info.end = info.begin + t.nbytes;
    layout.tensors.push_back(std::move(info));
  }
  layout.header = std::move(place.header);
  layout.data_start = place.data_start;
  layout.file_size = place.file_size;
  return layout;
}

}  // namespace quench
