// safetensors writing (LayOutSafetensors, declared in safetensors.h): the header bytes and
// offsets of an output file laid out byte-identical to the Rust crate's `prepare()` in
// safetensors/src/tensor.rs, which safetensors.torch.save_file uses.
#include <algorithm>
#include <charconv>
#include <string>
#include <vector>

#include "format/safetensors.h"
#include "format/json.h"
#include "format/sorted_runs.h"
namespace quench {
namespace {

// Appends v in decimal (std::to_string's digits, without a temporary string).
void AppendDecimal(std::string& out, uint64_t v) {
  char buf[24];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, r.ptr);
}

}  // namespace

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
