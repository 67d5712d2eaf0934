// quench stats merge: statistics of one model collected in parts combine exactly.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>

#include "calib/stats.h"
#include "format/safetensors.h"

namespace quench::calib {
namespace fs = std::filesystem;
namespace {

// Collection settings that may differ between parts (they describe the part, not the
// statistics' meaning); the rest must match.
constexpr std::string_view kPartKeys[] = {"dataset", "samples", "tokens", "sequences", "device"};

bool IsPartKey(std::string_view k) {
  return std::find(std::begin(kPartKeys), std::end(kPartKeys), k) != std::end(kPartKeys);
}

std::string Canonical(const JsonValue* v) { return v == nullptr ? "null" : DumpPythonJson(*v); }

JsonValue SettingsOf(const JsonValue& manifest) {
  JsonValue out = JsonValue::MakeObject();
  if (const JsonValue* c = manifest.Find("collection"); c != nullptr && c->is_object()) {
    for (const auto& [k, v] : c->as_object()) {
      if (!IsPartKey(k)) out.Set(k, v);
    }
  }
  return out;
}

std::string SiteSignature(const StatsSite& s) {
  std::string sig = std::to_string(s.in_features) + "/" +
                    (s.experts ? std::to_string(*s.experts) : std::string("-"));
  for (const StatsField& f : s.fields) sig += "/" + f.name;
  return sig;
}

// The first difference between part `b` and part `a` that forbids merging, or "".
std::string Difference(const Statistics& a, const Statistics& b) {
  if (Canonical(a.manifest().Find("model")) != Canonical(b.manifest().Find("model"))) {
    return "they come from different models (\"model\" differs)";
  }
  if (DumpPythonJson(SettingsOf(a.manifest())) != DumpPythonJson(SettingsOf(b.manifest()))) {
    return "they were collected with different settings (\"collection\" differs beyond "
           "dataset, samples, tokens, sequences and device)";
  }
  if (a.sites().size() != b.sites().size()) return "they hold different sites";
  for (const auto& [name, site] : a.sites()) {
    auto it = b.sites().find(name);
    if (it == b.sites().end()) return "site '" + name + "' is missing from one";
    if (SiteSignature(site) != SiteSignature(it->second)) {
      return "site '" + name + "' has different features, experts or fields";
    }
  }
  if (Canonical(a.manifest().Find("consumers")) != Canonical(b.manifest().Find("consumers"))) {
    return "their consumers differ";
  }
  if (a.reap().size() != b.reap().size()) return "they hold REAP saliency for different MoE layers";
  for (const auto& [router, r] : a.reap()) {
    auto it = b.reap().find(router);
    if (it == b.reap().end() || it->second.block != r.block || it->second.experts != r.experts) {
      return "REAP block '" + r.block + "' differs or is missing from one";
    }
  }
  return "";
}

// Element i of every part, added, written to out (F64 sums).
void SumF64(const std::vector<const uint8_t*>& parts, size_t i, uint8_t* out) {
  double acc = 0;
  for (const uint8_t* p : parts) {
    double v;
    std::memcpy(&v, p + 8 * i, 8);
    acc += v;
  }
  std::memcpy(out, &acc, 8);
}

// Element i of every part's counts, added, written to out; false when a count is negative or
// the sum does not fit int64 (a token count never is or does: the parts are not statistics).
bool SumCounts(const std::vector<const uint8_t*>& parts, size_t i, uint8_t* out) {
  int64_t acc = 0;
  for (const uint8_t* p : parts) {
    int64_t v;
    std::memcpy(&v, p + 8 * i, 8);
    if (v < 0 || __builtin_add_overflow(acc, v, &acc)) return false;
  }
  std::memcpy(out, &acc, 8);
  return true;
}

// Combines n elements of one array (`name`) over the parts into out.
Status Combine(const std::string& name, const StatsField& f,
               const std::vector<const uint8_t*>& parts, size_t first, size_t n, uint8_t* out) {
  const bool is_min = f.name == "min", is_max = f.name == "max";
  for (size_t i = first; i < first + n; ++i) {
    if (f.dtype == DType::kI64) {
      if (!SumCounts(parts, i, out + 8 * (i - first))) {
        return Error(ErrorCode::kInvalidInput,
                     "cannot merge '" + name + "': element " + std::to_string(i) +
                         " is a negative count in some part, or the parts' counts add up to more "
                         "than int64 holds");
      }
    } else if (f.dtype == DType::kF32) {
      float acc = 0;
      for (size_t k = 0; k < parts.size(); ++k) {
        float v;
        std::memcpy(&v, parts[k] + 4 * i, 4);
        // A NaN stays NaN (min/max would drop it), so bad statistics stay visible.
        if (k == 0 || std::isnan(v) || std::isnan(acc)) {
          acc = k == 0 || std::isnan(v) ? v : acc;
        } else {
          acc = is_min ? std::min(acc, v) : is_max ? std::max(acc, v) : acc + v;
        }
      }
      std::memcpy(out + 4 * (i - first), &acc, 4);
    } else {
      SumF64(parts, i, out + 8 * (i - first));
    }
  }
  return Status::Ok();
}

constexpr std::string_view kOutFile = "stats-00001.safetensors";

// The merged statistics of `parts` written into the folder `out` (manifest last).
Status WriteMerged(const std::vector<Statistics>& parts, const fs::path& out) {
  const Statistics& first = parts.front();
  std::vector<TensorSpec> specs;
  for (const auto& [name, site] : first.sites()) {
    for (const StatsField& f : site.fields) {
      uint64_t count = 1;
      for (uint64_t d : f.shape) count *= d;
      specs.push_back({name + "." + f.name, f.dtype, f.shape, count * (DTypeBits(f.dtype) / 8)});
    }
  }
  // REAP: sums and counts add (the saliency, sum / count, is then the mean over every part's
  // tokens, as the reference's distributed reduce_saliency_stats sums both before dividing).
  std::map<std::string, StatsField> reap_fields;
  for (const auto& [router, r] : first.reap()) {
    for (const auto& [field, dtype] : {std::pair{"reap_sum", DType::kF64},
                                       std::pair{"reap_count", DType::kI64}}) {
      StatsField f{field, dtype, {r.experts}};
      specs.push_back({r.block + "." + field, dtype, f.shape, r.experts * 8});
      reap_fields[r.block + "." + field] = std::move(f);
    }
  }
  SafetensorsLayout layout = LayOutSafetensors(specs);
  QUENCH_ASSIGN_OR_RETURN(auto file,
                          OutputFile::Create(out / std::string(kOutFile), layout.file_size));
  QUENCH_RETURN_IF_ERROR(file->WriteAt(0, layout.header.data(), layout.header.size()));
  constexpr size_t kPiece = 1 << 20;  // elements combined at a time: bounded memory
  std::vector<uint8_t> buf;
  for (const TensorInfo& t : layout.tensors) {
    const size_t dot = t.name.rfind('.');
    const std::string site = t.name.substr(0, dot), field = t.name.substr(dot + 1);
    const StatsField* fp = nullptr;
    if (auto r = reap_fields.find(t.name); r != reap_fields.end()) {
      fp = &r->second;
    } else {
      const StatsSite& s = first.sites().at(site);
      fp = &*std::find_if(s.fields.begin(), s.fields.end(),
                          [&](const StatsField& x) { return x.name == field; });
    }
    const StatsField& f = *fp;
    std::vector<const uint8_t*> bytes;
    for (const Statistics& p : parts) {
      QUENCH_ASSIGN_OR_RETURN(auto b, p.FieldBytes(site, field));
      bytes.push_back(b.first);
    }
    const size_t esz = DTypeBits(f.dtype) / 8;
    const size_t total = t.nbytes() / esz;
    for (size_t i = 0; i < total; i += kPiece) {
      const size_t n = std::min(kPiece, total - i);
      buf.resize(n * esz);
      QUENCH_RETURN_IF_ERROR(Combine(t.name, f, bytes, i, n, buf.data()));
      QUENCH_RETURN_IF_ERROR(
          file->WriteAt(layout.data_start + t.begin + i * esz, buf.data(), n * esz));
    }
  }
  QUENCH_RETURN_IF_ERROR(file->Commit());

  // The manifest, last: a folder without it is visibly unfinished.
  JsonValue m = first.manifest();
  m.Set("files", JsonValue(JsonValue::Array{JsonValue(std::string(kOutFile))}));
  JsonValue sites = *m.Find("sites");  // Open checked it is there
  for (auto& [name, v] : sites.as_object()) v.Set("file", std::string(kOutFile));
  m.Set("sites", std::move(sites));
  if (const JsonValue* r = m.Find("reap"); r != nullptr) {
    JsonValue reap = *r;
    for (auto& [name, v] : reap.as_object()) v.Set("file", std::string(kOutFile));
    m.Set("reap", std::move(reap));
  }
  JsonValue collection = m.Find("collection") ? *m.Find("collection") : JsonValue::MakeObject();
  for (std::string_view key : {"samples", "tokens", "sequences"}) {
    uint64_t sum = 0;
    bool all = true;
    for (const Statistics& p : parts) {
      const JsonValue* c = p.manifest().Find("collection");
      const JsonValue* v = c ? c->Find(key) : nullptr;
      if (v == nullptr || !v->is_int()) all = false; else sum += v->as_uint();
    }
    if (all) collection.Set(std::string(key), sum);
  }
  JsonValue merged_from = JsonValue::MakeArray();
  for (const Statistics& p : parts) {
    const JsonValue* c = p.manifest().Find("collection");
    JsonValue part = JsonValue::MakeObject();
    for (std::string_view key : kPartKeys) {
      if (const JsonValue* v = c ? c->Find(key) : nullptr) part.Set(std::string(key), *v);
    }
    merged_from.Push(std::move(part));
  }
  collection.Set("merged_from", std::move(merged_from));
  m.Set("collection", std::move(collection));
  return WriteFileAtomic(out / "manifest.json", DumpPythonJson(m) + "\n");
}

}  // namespace

Status MergeStatistics(const std::vector<fs::path>& inputs, const fs::path& out) {
  if (inputs.size() < 2) {
    return Error(ErrorCode::kUsage, "stats merge needs at least two statistics folders");
  }
  std::vector<Statistics> parts;
  for (const fs::path& in : inputs) {
    QUENCH_ASSIGN_OR_RETURN(Statistics s, Statistics::Open(in));
    if (!parts.empty()) {
      if (std::string why = Difference(parts.front(), s); !why.empty()) {
        return Error(ErrorCode::kInvalidInput, "cannot merge " + inputs.front().string() +
                                                   " and " + in.string() + ": " + why);
      }
    }
    parts.push_back(std::move(s));
  }
  std::error_code ec;
  if (fs::exists(out, ec) && !fs::is_empty(out, ec)) {
    return Error(ErrorCode::kUsage, out.string() + " exists and is not empty");
  }
  // Built beside `out` and renamed to it once complete: a failure leaves no folder behind.
  return WriteFolderAtomic(out, [&](const fs::path& dir) { return WriteMerged(parts, dir); });
}

}  // namespace quench::calib
