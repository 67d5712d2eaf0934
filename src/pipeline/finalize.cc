// quench finalize: publishes a folder that several workers converted, once every part is in.
#include <algorithm>
#include <chrono>
#include <map>
#include <regex>
#include <set>
#include <system_error>
#include <thread>

#include "format/file_io.h"
#include "pipeline/fs_lock.h"
#include "pipeline/resume.h"
#include "pipeline/workers.h"

namespace quench {
namespace fs = std::filesystem;

namespace {

std::string Join(const std::vector<std::string>& v, const std::string& sep) {
  std::string s;
  for (const std::string& x : v) s += (s.empty() ? "" : sep) + x;
  return s;
}

// The part files in DST/.quench-parts: (count, index) -> path. A name no worker writes (a
// count of 0, an index not below its count) is no part: "of-00000" once made the count 0 and
// finalize published nothing with nothing checked (SIGSEGV).
Result<std::map<std::pair<int, int>, fs::path>> ListParts(const fs::path& dir) {
  static const std::regex kName(R"(part-(\d{5})-of-(\d{5})\.json)");
  std::map<std::pair<int, int>, fs::path> parts;
  std::error_code ec;
  for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::directory_iterator();
       it.increment(ec)) {
    std::smatch m;
    const std::string name = it->path().filename().string();
    if (std::regex_match(name, m, kName)) {
      const int index = std::stoi(m[1].str()), count = std::stoi(m[2].str());
      if (count >= 1 && index < count) parts[{count, index}] = it->path();
    }
  }
  if (ec) return Error(ErrorCode::kIo, dir.string() + ": cannot list the parts: " + ec.message());
  return parts;
}

// Held by whoever publishes DST, in its parts folder.
constexpr const char* kFinalizeLock = "finalize.lock";

// Whether DST is published already: its config file, which Publish writes last, is in place
// and, where parts remain to say so, holds what they would write. (A worker replacing another
// conversion removes that config file before it makes its part.) Then what is left to a
// finalizer is the cleanup a stopped one did not finish. `summaries`: the parts' own.
bool AlreadyPublished(const fs::path& dst, std::vector<JsonValue>* summaries) {
  std::vector<JsonValue> theirs;
  // Unlistable parts (an I/O error; none at all is fine): FinalizeParts lists them again
  // and reports it.
  const auto listed = ListParts(dst / kPartsDir);
  std::error_code ec;
  if (!listed.ok() && fs::exists(dst / kPartsDir, ec)) return false;
  const std::map<std::pair<int, int>, fs::path> none;
  for (const auto& [key, path] : listed.ok() ? *listed : none) {
    auto part = ReadPart(path);
    if (!part.ok() || part->files.empty()) continue;
    const PlannedFile& config = part->files.back();
    auto have = ReadFileToString(dst / config.rel_name);
    auto want = config.copy_from.empty() ? Result<std::string>(config.contents)
                                         : ReadFileToString(config.copy_from);
    if (!have.ok() || !want.ok() || *have != *want) return false;
    theirs.push_back(part->summary);
  }
  if (theirs.empty() && !fs::exists(dst / "config.json", ec) &&
      !fs::exists(dst / "params.json", ec)) {
    return false;
  }
  *summaries = std::move(theirs);
  return true;
}

// Writes the other files, the index and config.json, in the plan's order (config.json last:
// a folder without it is visibly unfinished), then removes the markers.
Status Publish(const fs::path& dst, const std::vector<PlannedFile>& files,
               const ConvertCallbacks& cb) {
  for (const PlannedFile& f : files) {
    const fs::path to = dst / f.rel_name;
    QUENCH_RETURN_IF_ERROR(MakeFolders(to.parent_path()));
    QUENCH_RETURN_IF_ERROR(f.copy_from.empty() ? WriteFileAtomic(to, f.contents)
                                               : CopyFileAtomic(f.copy_from, to));
  }
  QUENCH_RETURN_IF_ERROR(SyncDirectory(dst));
  return RemoveMarkersAndParts(dst, cb);
}

}  // namespace

namespace {

// fs::remove_all, finished even while another process removes the same tree: the last worker
// publishing and a finalizer started beside it (or a rerun) both remove the leftovers, and
// libstdc++'s remove_all stops at the first entry that vanished under it (ENOENT) or a
// folder that another process refilled (ENOTEMPTY: its lock file), though both removers want
// the same end. So it starts again until the tree is gone or another error stops it.
void RemoveTree(const fs::path& tree, std::error_code& ec) {
  for (int attempt = 0; attempt < 1000; ++attempt) {
    fs::remove_all(tree, ec);
    if (!ec) return;
    if (ec != std::errc::no_such_file_or_directory && ec != std::errc::directory_not_empty) return;
    std::this_thread::yield();
  }
}

}  // namespace

Status RemoveMarkersAndParts(const fs::path& dst, const ConvertCallbacks& cb) {
  for (const char* dir : {kResumeDir, kPartsDir}) {
    std::error_code ec;
    RemoveTree(dst / dir, ec);
    if (ec && cb.leftover) {
      cb.leftover((dst / dir).string() + " could not be removed (" + ec.message() +
                  "); the folder is complete: remove it by hand, or run the same command "
                  "again (a single run: with --resume) to remove it");
    }
  }
  return SyncDirectory(dst);
}

void ReleaseLock(std::unique_ptr<FsLock>& lock, const ConvertCallbacks& cb) {
  if (lock == nullptr) return;
  if (Status s = lock->Release(); !s.ok() && cb.leftover) {
    cb.leftover(s.message() + "; the folder is complete: remove it by hand");
  }
  lock.reset();
}

Status RemoveFinalizeLeftovers(const fs::path& dst, const ConvertCallbacks& cb) {
  std::error_code ec;
  if (!fs::is_directory(dst / kPartsDir, ec)) {
    // Markers alone: a finalizer removed the parts but not them (a failing disk; it warned).
    // No finalizer works without parts, so no lock is needed to remove them.
    if (!fs::exists(dst / kResumeDir, ec)) return Status::Ok();
    return RemoveMarkersAndParts(dst, cb);
  }
  std::string holder;
  Result<std::unique_ptr<FsLock>> lock = FsLock::TryAcquire(dst / kPartsDir / kFinalizeLock,
                                                            &holder);
  // The parts gone meanwhile (a publishing worker or another finalizer removed them): done.
  if (!lock.ok() && !fs::exists(dst / kPartsDir, ec) && !ec) return Status::Ok();
  if (!lock.ok()) return lock.status();
  if (!*lock) return Status::Ok();
  return RemoveMarkersAndParts(dst, cb);  // as Publish ends, the lock file with the parts
}

namespace {

// A signal (callbacks.cancel) stops finalize before it publishes; once it publishes (a few
// small files, config.json last) it finishes.
bool Interrupted(const ConvertCallbacks& cb) { return cb.cancel != nullptr && cb.cancel->load(); }

Status InterruptedError(const fs::path& dst) {
  return Error(ErrorCode::kInterrupted, "finalize of " + dst.string() +
                                            " interrupted; nothing was published (run quench "
                                            "finalize again)");
}

using PartFiles = std::map<std::pair<int, int>, fs::path>;  // (count, index) -> part file

// The worker count whose parts to finalize: `count`, or with 0 the one every part names
// (refused where none has finished or parts of several counts are there).
Result<int> WorkerCount(const fs::path& dst, const fs::path& dir, const PartFiles& all,
                        int count) {
  if (count != 0) return count;
  std::set<int> counts;
  for (const auto& [key, path] : all) counts.insert(key.first);
  if (counts.empty()) {
    return Error(ErrorCode::kInvalidInput,
                 dst.string() + ": no worker has finished its part yet");
  }
  if (counts.size() > 1) {
    std::vector<std::string> c;
    for (int n : counts) c.push_back(std::to_string(n));
    return Error(ErrorCode::kInvalidInput,
                 dst.string() + " holds parts of runs with different worker counts (" +
                     Join(c, ", ") + "); remove the stale ones from " + dir.string() +
                     " or pass --workers N");
  }
  return *counts.begin();
}

// Every part of `count` workers, parsed; the workers with no part in `missing`, and corrupt or
// misnamed parts in `problems`, each named with the worker owing it. An I/O error ends it.
Result<std::vector<PartRecord>> ReadParts(const fs::path& dst, const PartFiles& all, int count,
                                          std::vector<int>* missing,
                                          std::vector<std::string>* problems) {
  std::vector<PartRecord> parts;
  for (int i = 0; i < count; ++i) {
    const auto it = all.find({count, i});
    if (it == all.end()) {
      missing->push_back(i);
      continue;
    }
    auto part = ReadPart(it->second);
    if (!part.ok() && part.status().code() == ErrorCode::kIo) {
      return Error(ErrorCode::kIo, "cannot finalize " + dst.string() + ": " +
                                       part.status().message() + "; nothing was published");
    }
    if (!part.ok()) {
      problems->push_back(WorkerName(i, count) + "'s part is corrupt (" +
                          part.status().message() + "): rerun that worker");
    } else if (part->index != i || part->count != count) {
      problems->push_back(it->second.filename().string() + " says it is " +
                          WorkerName(part->index, part->count) + ": rerun " +
                          WorkerName(i, count));
    } else {
      parts.push_back(std::move(*part));
    }
  }
  return parts;
}

// The part whose plan most parts share (the conversion), or nullptr where there is none.
const PartRecord* MajorityPlan(const std::vector<PartRecord>& parts) {
  std::map<std::string, std::vector<const PartRecord*>> by_plan;
  for (const PartRecord& p : parts) by_plan[p.fingerprint].push_back(&p);
  const PartRecord* ref = nullptr;
  for (const auto& [fp, group] : by_plan) {
    if (ref == nullptr || group.size() > by_plan[ref->fingerprint].size()) ref = group.front();
  }
  return ref;
}

// Whether `p` planned the conversion `ref` did. (The same fingerprint with another shard list
// is a part no worker of this quench writes: counted as another conversion, not indexed by
// ref's list.)
bool SamePlan(const PartRecord& p, const PartRecord& ref) {
  return p.fingerprint == ref.fingerprint && p.plan_shards == ref.plan_shards &&
         p.plan_costs == ref.plan_costs;
}

// Against the plan `ref` (null where no part could be read): the parts that planned another
// conversion, the shards each missing worker owes, and each part's shards against its share
// and against the files there (CheckPartShards), into `problems`. An I/O error ends it.
Status CheckShares(const fs::path& dst, int count, const std::vector<PartRecord>& parts,
                   const PartRecord* ref, const std::vector<int>& missing,
                   std::vector<std::string>* problems) {
  if (ref == nullptr) {
    for (int i : missing) problems->push_back(WorkerName(i, count) + " has not finished its part");
    return Status::Ok();
  }
  for (const PartRecord& p : parts) {
    if (!SamePlan(p, *ref)) {
      problems->push_back(WorkerName(p.index, count) + " planned another conversion (" +
                          p.description + ", quench " + p.version + ", plan " + p.fingerprint +
                          ") than " + WorkerName(ref->index, count) + " (" + ref->description +
                          ", quench " + ref->version + ", plan " + ref->fingerprint +
                          "): rerun it with the same command");
    }
  }
  const std::vector<int> owner = AssignShards(ref->plan_costs, count);
  for (int i : missing) {
    std::vector<std::string> owed;
    for (size_t k = 0; k < owner.size(); ++k) {
      if (owner[k] == i) owed.push_back(ref->plan_shards[k]);
    }
    problems->push_back(WorkerName(i, count) + " has not finished its part (" +
                        (owed.empty() ? std::string("no shards: more workers than shards")
                                      : Join(owed, ", ")) + ")");
  }
  for (const PartRecord& p : parts) {
    if (!SamePlan(p, *ref)) continue;
    std::vector<std::string> expect;
    for (size_t k = 0; k < owner.size(); ++k) {
      if (owner[k] == p.index) expect.push_back(p.plan_shards[k]);
    }
    std::vector<std::string> wrote;
    for (const PartShard& s : p.shards) wrote.push_back(s.name);
    if (wrote != expect) {
      problems->push_back(WorkerName(p.index, count) +
                          " wrote other shards than its share: rerun it");
    } else if (Status s = CheckPartShards(dst, p); !s.ok()) {
      if (s.code() == ErrorCode::kIo) {
        return Error(ErrorCode::kIo, "cannot finalize " + dst.string() + ": " + s.message() +
                                         "; nothing was published");
      }
      problems->push_back(s.message());
    }
  }
  return Status::Ok();
}

}  // namespace

Result<FinalizeResult> FinalizeParts(const fs::path& dst, int count, const ConvertCallbacks& cb) {
  const fs::path dir = dst / kPartsDir;
  std::error_code ec;
  FinalizeResult result;
  if (AlreadyPublished(dst, &result.summaries)) {
    QUENCH_RETURN_IF_ERROR(RemoveFinalizeLeftovers(dst, cb));
    if (cb.note) cb.note(dst.string() + " is published already; nothing to do");
    result.published = result.already_published = true;
    return result;
  }
  if (!fs::is_directory(dir, ec)) {
    return Error(ErrorCode::kInvalidInput,
                 dst.string() + " holds no worker parts (" + kPartsDir + "/ is missing): it was "
                 "not written by `quench convert --worker`");
  }
  QUENCH_ASSIGN_OR_RETURN(std::unique_ptr<FsLock> lock,
                          FsLock::TryAcquire(dir / kFinalizeLock, &result.holder));
  if (!lock) return result;

  QUENCH_ASSIGN_OR_RETURN(const PartFiles all, ListParts(dir));
  QUENCH_ASSIGN_OR_RETURN(count, WorkerCount(dst, dir, all, count));
  result.workers = count;
  // Every problem found, all named with the worker owing them, before refusing.
  std::vector<std::string> problems;
  std::vector<int> missing;
  QUENCH_ASSIGN_OR_RETURN(std::vector<PartRecord> parts,
                          ReadParts(dst, all, count, &missing, &problems));
  const PartRecord* ref = MajorityPlan(parts);
  QUENCH_RETURN_IF_ERROR(CheckShares(dst, count, parts, ref, missing, &problems));
  if (!problems.empty()) {
    return Error(ErrorCode::kInvalidInput, "cannot finalize " + dst.string() + ": " +
                                               Join(problems, "; ") + "; nothing was published");
  }
  for (const PartRecord& p : parts) {
    result.shards += p.shards.size();
    result.summaries.push_back(p.summary);
  }
  if (Interrupted(cb)) return InterruptedError(dst);
  if (cb.note) {
    cb.note("finalize: all " + std::to_string(count) + " parts present, one plan (" +
            ref->fingerprint + "), " + std::to_string(result.shards) + " shards; publishing " +
            std::to_string(ref->files.size()) + " files");
  }
  QUENCH_RETURN_IF_ERROR(Publish(dst, ref->files, cb));
  result.published = true;
  return result;
}

Result<FinalizeResult> FinalizePartsWaiting(const fs::path& dst, int count,
                                            const ConvertCallbacks& cb) {
  const auto until =
      std::chrono::steady_clock::now() + std::chrono::seconds(kFinalizeWaitSeconds);
  bool said = false;
  for (;;) {
    if (Interrupted(cb)) return InterruptedError(dst);
    auto got = FinalizeParts(dst, count, cb);
    std::error_code ec;
    if (!got.ok() && !fs::exists(dst / kPartsDir, ec) && fs::exists(dst / "config.json", ec)) {
      // The holder published and removed the parts (the lock's folder with them) while this
      // call was taking the lock: the folder is published; FinalizeParts says so.
      got = FinalizeParts(dst, count, cb);
    }
    QUENCH_ASSIGN_OR_RETURN(FinalizeResult r, std::move(got));
    if (r.published || std::chrono::steady_clock::now() >= until) return r;
    if (!said && cb.note) {
      cb.note("another process is finalizing " + dst.string() + " (" + r.holder +
              "); waiting for it");
    }
    said = true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

}  // namespace quench

namespace quench {

Result<FinalizeSummary> Finalize(const fs::path& dst, int workers, const ConvertCallbacks& cb) {
  QUENCH_ASSIGN_OR_RETURN(FinalizeResult r, FinalizePartsWaiting(ResolvePath(dst), workers, cb));
  FinalizeSummary s;
  s.workers = r.workers;
  s.shards = r.shards;
  s.published = r.published;
  s.already_published = r.already_published;
  s.holder = r.holder;
  // Each worker's summary and their totals: bytes add, the slowest worker is the run's time.
  JsonValue report = JsonValue::MakeObject();
  JsonValue totals = JsonValue::MakeObject();
  uint64_t in = 0, out = 0, written = 0, resumed = 0;
  double slowest = 0;
  JsonValue each = JsonValue::MakeArray();
  for (const JsonValue& w : r.summaries) {
    const auto num = [&](const char* k) {
      const JsonValue* v = w.Find(k);
      return v != nullptr && v->is_int() ? v->as_uint() : 0;
    };
    in += num("bytes_in");
    out += num("bytes_out");
    written += num("shards_written");
    resumed += num("shards_resumed");
    if (const JsonValue* v = w.Find("seconds"); v != nullptr && (v->is_double() || v->is_int())) {
      slowest = std::max(slowest, v->as_double());
    }
    each.Push(w);
  }
  totals.Set("workers", r.workers);
  totals.Set("shards", static_cast<uint64_t>(r.shards));
  totals.Set("shards_written", written);
  totals.Set("shards_resumed", resumed);
  totals.Set("bytes_in", in);
  totals.Set("bytes_out", out);
  totals.Set("slowest_worker_seconds", slowest);
  report.Set("published", r.published);
  report.Set("already_published", r.already_published);
  report.Set("totals", std::move(totals));
  report.Set("workers", std::move(each));
  s.report_json = DumpPythonJson(report) + "\n";
  return s;
}

}  // namespace quench
