#include "pipeline/workers.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <system_error>

#include "format/file_io.h"
#include "format/safetensors.h"
#include "pipeline/fs_lock.h"
#include "pipeline/resume.h"

namespace quench {
namespace fs = std::filesystem;

namespace {

std::string Pad(int v) {
  char b[16];
  std::snprintf(b, sizeof b, "%05d", v);
  return b;
}

std::string Hex(uint64_t v) {
  char b[17];
  std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(v));
  return b;
}

int64_t MtimeNs(const fs::path& p) {
  struct stat st {};
  if (stat(p.c_str(), &st) != 0) return -1;
  return static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
}

// A file name a part may give: a path relative to DST with no empty, "." or ".." component
// (finalize checks and publishes files by these names; a part naming "../x" would have it
// reach outside DST).
bool SafeRelativeName(std::string_view name) {
  if (name.empty() || name.front() == '/' || name.find('\0') != std::string_view::npos) {
    return false;
  }
  size_t start = 0;
  while (start <= name.size()) {
    const size_t end = std::min(name.find('/', start), name.size());
    const std::string_view part = name.substr(start, end - start);
    if (part.empty() || part == "." || part == "..") return false;
    start = end + 1;
  }
  return true;
}

// Reads the fields of a part's body; false when one is missing, of the wrong type, or a file
// name that is not SafeRelativeName.
bool ParseBody(const JsonValue& b, PartRecord* r) {
  const auto str = [&](const char* k, std::string* out) {
    const JsonValue* v = b.Find(k);
    if (v == nullptr || !v->is_string()) return false;
    *out = v->as_string();
    return true;
  };
  const JsonValue* idx = b.Find("worker");
  const JsonValue* cnt = b.Find("workers");
  const JsonValue* shards = b.Find("plan_shards");
  const JsonValue* mine = b.Find("shards");
  const JsonValue* files = b.Find("files");
  if (!idx || !idx->is_int() || !cnt || !cnt->is_int() || !shards || !shards->is_array() ||
      !mine || !mine->is_array() || !files || !files->is_array() ||
      !str("quench_version", &r->version) || !str("plan_fnv1a64", &r->fingerprint) ||
      !str("description", &r->description) || !str("launcher", &r->launcher)) {
    return false;
  }
  // (As --worker accepts them: an int read of 2^32 would have wrapped to worker 0.)
  if (idx->as_int() < 0 || cnt->as_int() < 1 || cnt->as_int() > 100000 ||
      idx->as_int() >= cnt->as_int()) {
    return false;
  }
  r->index = static_cast<int>(idx->as_int());
  r->count = static_cast<int>(cnt->as_int());
  for (const JsonValue& s : shards->as_array()) {
    const JsonValue* n = s.Find("name");
    const JsonValue* c = s.Find("cost");
    if (!n || !n->is_string() || !SafeRelativeName(n->as_string()) || !c || !c->is_int()) {
      return false;
    }
    r->plan_shards.push_back(n->as_string());
    r->plan_costs.push_back(c->as_uint());
  }
  for (const JsonValue& s : mine->as_array()) {
    const JsonValue* n = s.Find("name");
    const JsonValue* by = s.Find("bytes");
    const JsonValue* mt = s.Find("mtime_ns");
    const JsonValue* mk = s.Find("resume_marker");
    const JsonValue* hb = s.Find("header_bytes");
    const JsonValue* hh = s.Find("header_fnv1a64");
    // (header_bytes sizes finalize's read of the shard's start: no more than a safetensors
    // header can be, its 8-byte length and kMaxHeaderBytes.)
    if (!n || !n->is_string() || !SafeRelativeName(n->as_string()) || !by || !by->is_int() ||
        !mt || !mt->is_int() || !mk || !mk->is_string() || !hb || !hb->is_int() ||
        hb->as_uint() > 8 + kMaxHeaderBytes || !hh || !hh->is_string()) {
      return false;
    }
    r->shards.push_back(PartShard{n->as_string(), by->as_uint(), mt->as_int(), mk->as_string(),
                                  hb->as_uint(), hh->as_string()});
  }
  for (const JsonValue& f : files->as_array()) {
    const JsonValue* n = f.Find("name");
    const JsonValue* from = f.Find("copy_from");
    const JsonValue* c = f.Find("contents");
    if (!n || !n->is_string() || !SafeRelativeName(n->as_string()) || !from ||
        !from->is_string() || !c || !c->is_string()) {
      return false;
    }
    r->files.push_back(PlannedFile{n->as_string(), from->as_string(), c->as_string()});
  }
  if (const JsonValue* s = b.Find("summary")) r->summary = *s;
  return true;
}

}  // namespace

std::vector<int> AssignShards(const std::vector<uint64_t>& costs, int workers) {
  std::vector<size_t> order(costs.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return costs[a] > costs[b]; });
  std::vector<uint64_t> load(static_cast<size_t>(std::max(workers, 1)), 0);
  std::vector<int> owner(costs.size(), 0);
  for (size_t s : order) {
    const size_t w = static_cast<size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    owner[s] = static_cast<int>(w);
    load[w] += costs[s];
  }
  return owner;
}

std::vector<uint64_t> ShardCosts(const Plan& plan) {
  std::vector<uint64_t> cost;
  for (const PlannedShard& ps : plan.shards) cost.push_back(ps.src_size);
  return cost;
}

std::string WorkerName(int index, int count) {
  return "worker " + std::to_string(index) + "/" + std::to_string(count);
}

fs::path PartPath(const fs::path& dst, int index, int count) {
  return dst / kPartsDir / ("part-" + Pad(index) + "-of-" + Pad(count) + ".json");
}

fs::path WorkerLockPath(const fs::path& dst, int index) {
  return dst / kPartsDir / ("worker-" + Pad(index) + ".lock");
}

Result<bool> AnyWorkerRunning(const fs::path& dst, std::string* who) {
  std::error_code ec;
  auto it = fs::directory_iterator(dst / kPartsDir, ec);
  if (ec == std::errc::no_such_file_or_directory) return false;  // no worker ever ran here
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    if (ec) break;
    const std::string name = it->path().filename().string();
    if (!name.starts_with("worker-") || !name.ends_with(".lock")) continue;  // WorkerLockPath's
    std::string holder;
    if (FsLock::IsHeld(it->path(), &holder)) {
      *who = name + ": " + holder;
      return true;
    }
  }
  if (ec) {
    return Error(ErrorCode::kIo,
                 (dst / kPartsDir).string() + ": cannot list the workers' locks: " + ec.message());
  }
  return false;
}

Status WritePart(const Plan& plan, int index, int count, const std::string& description,
                 const std::string& launcher, const JsonValue& summary) {
  const std::vector<uint64_t> costs = ShardCosts(plan);
  const std::vector<int> owner = AssignShards(costs, count);
  JsonValue body = JsonValue::MakeObject();
  body.Set("quench_version", QUENCH_VERSION);
  body.Set("worker", index);
  body.Set("workers", count);
  body.Set("plan_fnv1a64", PlanFingerprint(plan));
  body.Set("description", description);
  body.Set("launcher", launcher);
  JsonValue all = JsonValue::MakeArray(), mine = JsonValue::MakeArray();
  for (size_t k = 0; k < plan.shards.size(); ++k) {
    const PlannedShard& ps = plan.shards[k];
    JsonValue s = JsonValue::MakeObject();
    s.Set("name", ps.rel_name);
    s.Set("cost", costs[k]);
    all.Push(std::move(s));
    if (owner[k] != index) continue;
    const fs::path out = plan.dst / ps.rel_name;
    QUENCH_ASSIGN_OR_RETURN(std::string marker,
                            ReadFileToString(ResumeMarkerPath(plan.dst, ps.rel_name)));
    JsonValue m = JsonValue::MakeObject();
    m.Set("name", ps.rel_name);
    m.Set("bytes", ps.file_size);
    m.Set("mtime_ns", static_cast<int64_t>(MtimeNs(out)));
    m.Set("resume_marker", marker);
    m.Set("header_bytes", static_cast<uint64_t>(ps.header.size()));
    m.Set("header_fnv1a64", Hex(Fnv1a64(ps.header)));
    mine.Push(std::move(m));
  }
  body.Set("plan_shards", std::move(all));
  body.Set("shards", std::move(mine));
  JsonValue files = JsonValue::MakeArray();
  for (const PlannedFile& f : plan.files) {
    JsonValue v = JsonValue::MakeObject();
    v.Set("name", f.rel_name);
    // Absolute: finalize may run from another folder (on a machine that mounts SRC alike).
    v.Set("copy_from", f.copy_from.empty() ? std::string()
                                           : fs::absolute(f.copy_from).lexically_normal().string());
    v.Set("contents", f.contents);
    files.Push(std::move(v));
  }
  body.Set("files", std::move(files));
  body.Set("summary", summary);
  // The body's hash guards against a part damaged after it was written (a partial copy, a
  // stray edit): finalize recomputes it from the parsed body.
  JsonValue part = JsonValue::MakeObject();
  part.Set("body_fnv1a64", Hex(Fnv1a64(DumpPythonJson(body))));
  part.Set("body", std::move(body));
  return WriteFileAtomic(PartPath(plan.dst, index, count), DumpPythonJson(part) + "\n");
}

Result<PartRecord> ReadPart(const fs::path& path) {
  QUENCH_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  auto parsed = ParseJson(path.string(), text);
  if (!parsed.ok()) return parsed.status();
  const JsonValue* body = parsed->Find("body");
  const JsonValue* hash = parsed->Find("body_fnv1a64");
  if (body == nullptr || hash == nullptr || !hash->is_string() ||
      hash->as_string() != Hex(Fnv1a64(DumpPythonJson(*body)))) {
    return Error(ErrorCode::kInvalidInput, path.string() + ": the part's checksum does not match");
  }
  PartRecord r;
  r.path = path;
  if (!ParseBody(*body, &r)) {
    return Error(ErrorCode::kInvalidInput,
                 path.string() + ": a field of the part is missing or invalid");
  }
  return r;
}

Status CheckPartShards(const fs::path& dst, const PartRecord& part) {
  for (const PartShard& s : part.shards) {
    const fs::path out = dst / s.name;
    std::error_code ec;
    const uint64_t size = fs::file_size(out, ec);
    std::string why;
    if (ec) why = "is missing";
    else if (size != s.bytes)
      why = "has " + std::to_string(size) + " bytes, not " + std::to_string(s.bytes);
    else if (MtimeNs(out) != s.mtime_ns) why = "was modified after its worker finished";
    if (why.empty()) {
      // A file that is there but cannot be read is an I/O error, not a worker's debt.
      std::string header(std::min(s.header_bytes, s.bytes), '\0');
      QUENCH_RETURN_IF_ERROR(ReadFileRange(out, 0, header.size(),
                                           reinterpret_cast<uint8_t*>(header.data())));
      const fs::path marker_path = ResumeMarkerPath(dst, s.name);
      if (Hex(Fnv1a64(header)) != s.header_fnv1a64) {
        why = "has another header";
      } else if (!fs::exists(marker_path, ec)) {
        why = "has no resume marker";
      } else {
        QUENCH_ASSIGN_OR_RETURN(const std::string marker, ReadFileToString(marker_path));
        if (marker != s.marker) why = "has no matching resume marker";
      }
    }
    if (!why.empty()) {
      return Error(ErrorCode::kInvalidInput,
                   s.name + " " + why + "; " + WorkerName(part.index, part.count) +
                       " owes it: rerun that worker");
    }
  }
  return Status::Ok();
}

}  // namespace quench
