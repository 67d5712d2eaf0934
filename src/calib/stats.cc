#include "calib/stats.h"

#include <algorithm>
#include <cstring>

#include "format/safetensors.h"

namespace quench::calib {
namespace fs = std::filesystem;
namespace {

std::string ShapeText(const std::vector<uint64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// The per-channel shape of a site: [n], or [E, n] for a per-expert site.
std::vector<uint64_t> Channels(uint64_t n, std::optional<uint64_t> experts) {
  if (experts) return {*experts, n};
  return {n};
}

Status Bad(const fs::path& dir, const std::string& what) {
  return Error(ErrorCode::kInvalidInput, (dir / "manifest.json").string() + ": " + what);
}

const std::string* StringAt(const JsonValue& obj, std::string_view key) {
  const JsonValue* v = obj.Find(key);
  return v != nullptr && v->is_string() ? &v->as_string() : nullptr;
}

}  // namespace

Result<StatsField> FieldLayout(const std::string& field, uint64_t n,
                               std::optional<uint64_t> experts) {
  StatsField f;
  f.name = field;
  if (field == "count") {
    f.dtype = DType::kI64;
    if (experts) f.shape = {*experts};
  } else if (field == "sum_x2" || field == "sum_abs") {
    f.dtype = DType::kF64;
    f.shape = Channels(n, experts);
  } else if (field == "min" || field == "max") {
    f.dtype = DType::kF32;
    f.shape = Channels(n, experts);
  } else if (field == "hessian") {
    f.dtype = DType::kF64;
    f.shape = {n * (n + 1) / 2};
  } else if (field.starts_with("hessian_blk")) {
    const std::string b = field.substr(std::strlen("hessian_blk"));
    uint64_t block = 0;
    for (char c : b) {
      if (c < '0' || c > '9' || block > (1u << 20)) {
        return Error(ErrorCode::kInvalidInput, "field '" + field + "': not hessian_blk<B>");
      }
      block = block * 10 + static_cast<uint64_t>(c - '0');
    }
    if (b.empty() || block == 0 || n % block != 0) {
      return Error(ErrorCode::kInvalidInput,
                   "field '" + field + "': the block size must divide in_features " +
                       std::to_string(n));
    }
    f.dtype = DType::kF64;
    f.shape = {n / block, block, block};
  } else {
    return Error(ErrorCode::kInvalidInput, "unknown field '" + field + "'");
  }
  // A per-expert site's Hessians carry the leading expert dimension too (each expert's down
  // input, or gate/up input under --moe routed, has its own).
  if (experts && field.starts_with("hessian")) f.shape.insert(f.shape.begin(), *experts);
  return f;
}

// Every array in the manifest's files, by name: its file and header entry; and each file's
// data start.
struct Statistics::FileArrays {
  std::map<std::string, std::pair<std::string, TensorInfo>> in_files;
  std::map<std::string, uint64_t> data_start;
};

Result<Statistics> Statistics::Open(const fs::path& dir) {
  Statistics s;
  s.dir_ = dir;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return Error(ErrorCode::kInvalidInput, dir.string() + ": not a statistics folder");
  }
  QUENCH_ASSIGN_OR_RETURN(s.manifest_, ReadJsonFile((dir / "manifest.json").string()));
  const JsonValue& m = s.manifest_;
  const std::string* format = StringAt(m, "format");
  if (!m.is_object() || format == nullptr || *format != "quench-stats") {
    return Bad(dir, "not a quench statistics manifest (\"format\": \"quench-stats\" missing)");
  }
  const JsonValue* version = m.Find("version");
  if (version == nullptr || !version->is_int()) return Bad(dir, "\"version\" missing");
  if (version->as_int() > kStatsVersion || version->as_int() < 1) {
    return Bad(dir, "version " + std::to_string(version->as_int()) + "; this quench reads " +
                        "version " + std::to_string(kStatsVersion));
  }
  FileArrays arrays;
  QUENCH_RETURN_IF_ERROR(s.ReadFiles(arrays));
  QUENCH_RETURN_IF_ERROR(s.ReadSites(arrays));
  QUENCH_RETURN_IF_ERROR(s.ReadConsumers());
  QUENCH_RETURN_IF_ERROR(s.ReadReap(arrays));
  return s;
}

Status Statistics::ReadFiles(FileArrays& arrays) {
  const fs::path& dir = dir_;
  const JsonValue* files = manifest_.Find("files");
  if (files == nullptr || !files->is_array()) return Bad(dir, "\"files\" missing");
  for (const JsonValue& f : files->as_array()) {
    if (!f.is_string() || f.as_string().find('/') != std::string::npos ||
        f.as_string().empty() || f.as_string()[0] == '.') {
      return Bad(dir, "\"files\" must list file names in the folder");
    }
    // A listed file that is not there is the folder's fault (exit 3), not the disk's.
    std::error_code exists_ec;
    if (!fs::exists(dir / f.as_string(), exists_ec) && !exists_ec) {
      return Bad(dir, "\"files\" lists " + f.as_string() + ", which is not in the folder");
    }
    QUENCH_ASSIGN_OR_RETURN(SafetensorsHeader h, ReadSafetensorsHeader(dir / f.as_string()));
    files_.push_back(f.as_string());
    arrays.data_start[f.as_string()] = h.data_start;
    for (TensorInfo& t : h.tensors) {
      const std::string name = t.name;
      if (!arrays.in_files.emplace(name, std::make_pair(f.as_string(), std::move(t))).second) {
        return Bad(dir, "array '" + name + "' is in two files");
      }
    }
  }
  return Status::Ok();
}

Status Statistics::ReadSites(const FileArrays& arrays) {
  const fs::path& dir = dir_;
  const JsonValue* sites = manifest_.Find("sites");
  if (sites == nullptr || !sites->is_object()) return Bad(dir, "\"sites\" missing");
  for (const auto& [name, v] : sites->as_object()) {
    StatsSite site;
    site.name = name;
    const std::string* file = StringAt(v, "file");
    const JsonValue* n = v.Find("in_features");
    const JsonValue* experts = v.Find("experts");
    const JsonValue* fields = v.Find("fields");
    if (file == nullptr || n == nullptr || !n->is_int() || n->as_int() <= 0 || fields == nullptr ||
        !fields->is_array() ||
        (experts != nullptr && !experts->is_null() &&
         (!experts->is_int() || experts->as_int() <= 0))) {
      return Bad(dir, "site '" + name + "' needs \"file\", \"in_features\" > 0, \"fields\" and "
                      "\"experts\" (null or > 0)");
    }
    site.file = *file;
    site.in_features = n->as_uint();
    if (experts != nullptr && !experts->is_null()) site.experts = experts->as_uint();
    bool has_count = false;
    for (const JsonValue& fv : fields->as_array()) {
      if (!fv.is_string()) return Bad(dir, "site '" + name + "': fields must be names");
      if (std::any_of(site.fields.begin(), site.fields.end(),
                      [&](const StatsField& f) { return f.name == fv.as_string(); })) {
        return Bad(dir, "site '" + name + "' lists field '" + fv.as_string() + "' twice");
      }
      auto layout = FieldLayout(fv.as_string(), site.in_features, site.experts);
      if (!layout.ok()) return Bad(dir, "site '" + name + "': " + layout.status().message());
      const std::string array = name + "." + fv.as_string();
      auto it = arrays.in_files.find(array);
      if (it == arrays.in_files.end() || it->second.first != site.file) {
        return Bad(dir, "site '" + name + "': array '" + array + "' is not in " + site.file);
      }
      const TensorInfo& t = it->second.second;
      if (t.dtype != layout->dtype || t.shape != layout->shape) {
        return Bad(dir, "site '" + name + "': array '" + array + "' is " +
                            std::string(DTypeName(t.dtype)) + " " + ShapeText(t.shape) +
                            "; the format needs " + std::string(DTypeName(layout->dtype)) +
                            " " + ShapeText(layout->shape));
      }
      arrays_[array] = {site.file, arrays.data_start.at(site.file) + t.begin, t.nbytes()};
      has_count |= fv.as_string() == "count";
      site.fields.push_back(*std::move(layout));
    }
    if (!has_count) return Bad(dir, "site '" + name + "' has no \"count\"");
    sites_.emplace(name, std::move(site));
  }
  return Status::Ok();
}

Status Statistics::ReadConsumers() {
  const fs::path& dir = dir_;
  const JsonValue* consumers = manifest_.Find("consumers");
  if (consumers == nullptr || !consumers->is_object()) return Bad(dir, "\"consumers\" missing");
  for (const auto& [weight, v] : consumers->as_object()) {
    const std::string* site = StringAt(v, "site");
    if (site == nullptr || !sites_.contains(*site)) {
      return Bad(dir, "consumer '" + weight + "' names no site of the manifest");
    }
    StatsConsumer c;
    c.site = *site;
    const JsonValue* e = v.Find("expert");
    const StatsSite& st = sites_.at(*site);
    if (e != nullptr && !e->is_null()) {
      if (!e->is_int() || e->as_int() < 0 || !st.experts || e->as_uint() >= *st.experts) {
        return Bad(dir, "consumer '" + weight + "': expert index outside site '" + *site + "'");
      }
      c.expert = e->as_uint();
    } else if (st.experts) {
      return Bad(dir, "consumer '" + weight + "' reads per-expert site '" + *site +
                          "' without an \"expert\" index");
    }
    consumers_.emplace(weight, std::move(c));
  }
  return Status::Ok();
}

// REAP saliency: optional; each block's two arrays checked like a site's.
Status Statistics::ReadReap(const FileArrays& arrays) {
  const fs::path& dir = dir_;
  const JsonValue* reap = manifest_.Find("reap");
  if (reap == nullptr) return Status::Ok();
  if (!reap->is_object()) return Bad(dir, "\"reap\" must be an object of MoE blocks");
  for (const auto& [block, v] : reap->as_object()) {
    const std::string* file = StringAt(v, "file");
    const std::string* router = StringAt(v, "router");
    const JsonValue* e = v.Find("experts");
    if (file == nullptr || router == nullptr || e == nullptr || !e->is_int() ||
        e->as_int() <= 0) {
      return Bad(dir, "reap block '" + block + "' needs \"file\", \"router\" and \"experts\" > 0");
    }
    StatsReap r{block, *router, *file, e->as_uint()};
    for (const auto& [field, dtype] :
         {std::pair{"reap_sum", DType::kF64}, std::pair{"reap_count", DType::kI64}}) {
      const std::string array = block + "." + field;
      auto it = arrays.in_files.find(array);
      if (it == arrays.in_files.end() || it->second.first != r.file) {
        return Bad(dir, "reap block '" + block + "': array '" + array + "' is not in " + r.file);
      }
      const TensorInfo& t = it->second.second;
      if (t.dtype != dtype || t.shape != std::vector<uint64_t>{r.experts}) {
        return Bad(dir, "reap block '" + block + "': array '" + array + "' is " +
                            std::string(DTypeName(t.dtype)) + " " + ShapeText(t.shape) +
                            "; the format needs " + std::string(DTypeName(dtype)) + " [" +
                            std::to_string(r.experts) + "]");
      }
      arrays_[array] = {r.file, arrays.data_start.at(r.file) + t.begin, t.nbytes()};
    }
    if (!reap_.emplace(r.router, r).second) {
      return Bad(dir, "two reap blocks name router '" + r.router + "'");
    }
  }
  return Status::Ok();
}

Result<std::vector<double>> Statistics::ReadReapSum(const StatsReap& r) const {
  QUENCH_ASSIGN_OR_RETURN(auto bytes, FieldBytes(r.block, "reap_sum"));
  std::vector<double> out(bytes.second / 8);
  std::memcpy(out.data(), bytes.first, out.size() * 8);
  return out;
}

Result<std::vector<int64_t>> Statistics::ReadReapCount(const StatsReap& r) const {
  QUENCH_ASSIGN_OR_RETURN(auto bytes, FieldBytes(r.block, "reap_count"));
  std::vector<int64_t> out(bytes.second / 8);
  std::memcpy(out.data(), bytes.first, out.size() * 8);
  return out;
}

Result<std::pair<const uint8_t*, uint64_t>> Statistics::FieldBytes(
    const std::string& site, const std::string& field) const {
  auto it = arrays_.find(site + "." + field);
  if (it == arrays_.end()) {
    return Error(ErrorCode::kInvalidInput,
                 dir_.string() + ": site '" + site + "' has no field '" + field + "'");
  }
  std::shared_ptr<MappedFile>& map = maps_[it->second.file];
  if (!map) {
    QUENCH_ASSIGN_OR_RETURN(MappedFile mf, MappedFile::Open(dir_ / it->second.file));
    map = std::make_shared<MappedFile>(std::move(mf));
  }
  return std::make_pair(map->data() + it->second.offset, it->second.nbytes);
}

Result<std::vector<double>> Statistics::ReadField(const std::string& site,
                                                  const std::string& field) const {
  QUENCH_ASSIGN_OR_RETURN(auto bytes, FieldBytes(site, field));
  const StatsSite& st = sites_.at(site);
  DType dtype = DType::kF64;
  for (const StatsField& f : st.fields) {
    if (f.name == field) dtype = f.dtype;
  }
  const size_t esz = DTypeBits(dtype) / 8;
  std::vector<double> out(bytes.second / esz);
  for (size_t i = 0; i < out.size(); ++i) {
    const uint8_t* p = bytes.first + i * esz;
    if (dtype == DType::kI64) {
      int64_t v;
      std::memcpy(&v, p, 8);
      out[i] = static_cast<double>(v);
    } else if (dtype == DType::kF32) {
      float v;
      std::memcpy(&v, p, 4);
      out[i] = v;
    } else {
      std::memcpy(&out[i], p, 8);
    }
  }
  return out;
}

std::string SequentialStatsNote(const fs::path& dir, const std::string& scheme,
                                const std::string& algorithm, const std::string& recipe) {
  auto m = ReadJsonFile((dir / "manifest.json").string());
  if (!m.ok() || !m->is_object()) return "";
  const JsonValue* c = m->Find("collection");
  const std::string* pipeline = c != nullptr ? StringAt(*c, "pipeline") : nullptr;
  const JsonValue* args = c != nullptr ? c->Find("quench_args") : nullptr;
  if (pipeline == nullptr || *pipeline != "sequential" || args == nullptr || !args->is_array()) {
    return "";
  }
  // The recorded values of the options that decide the weights the next layers saw; quench's
  // own defaults where an option was not given.
  std::map<std::string, std::string> recorded = {{"--scheme", ""}, {"--recipe", ""},
                                                 {"--algorithm", "rtn"}};
  std::string text;
  const auto& list = args->as_array();
  for (size_t i = 0; i < list.size(); ++i) {
    if (!list[i].is_string()) return "";
    const std::string& a = list[i].as_string();
    text += (i ? " " : "") + a;
    const size_t eq = a.find('=');
    const std::string key = a.substr(0, eq);
    if (!recorded.contains(key)) continue;
    if (eq != std::string::npos) {
      recorded[key] = a.substr(eq + 1);
    } else if (i + 1 < list.size() && list[i + 1].is_string()) {
      recorded[key] = list[i + 1].as_string();
    }
  }
  if (recorded["--scheme"] == scheme && recorded["--algorithm"] == algorithm &&
      fs::path(recorded["--recipe"]).filename() == fs::path(recipe).filename()) {
    return "";
  }
  return dir.string() + ": statistics collected sequentially with earlier layers quantized by "
         "quench convert " + text + "; this conversion (" +
         (recipe.empty() ? "--scheme " + scheme : "--recipe " + recipe) + " --algorithm " +
         algorithm + ") quantizes them otherwise, so later layers' statistics were measured on "
         "other weights than it writes";
}

}  // namespace quench::calib
