#include "pipeline/resume.h"

#include <charconv>
#include <cstdio>
#include <cstring>
#include <system_error>
#include <vector>

#include "format/file_io.h"
#include "format/safetensors.h"
#include "format/source_ct.h"

namespace quench {
namespace fs = std::filesystem;

fs::path ResumeMarkerPath(const fs::path& dst, const std::string& rel) {
  return dst / kResumeDir / (rel + ".json");
}

namespace {

// Appends v in decimal to d.
void AppendNum(std::string& d, uint64_t v) {
  char buf[24];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  d.append(buf, r.ptr);
}

// A decoded weight's part: its scale, and what else its decoding reads (AutoAWQ / ModelOpt
// zero points and per-tensor scales, a compressed-tensors weight's other tensors and expert
// slice), each with the shard it lives in.
void AppendSourceScale(const Plan& plan, const PlannedTensor& t, std::string& d) {
  // A decoded weight depends on its scale, which may live in another source shard: that
  // shard's size and header are part of what this shard was made from.
  if (t.source_scale) {
    const PlannedShard& ss = plan.shards[t.source_scale->shard];
    d += "scale ";
    d += ss.rel_name;
    d += '|';
    AppendNum(d, ss.src_size);
    d += '|';
    AppendNum(d, ss.src_header_hash);
    d += '|';
    // AutoAWQ / ModelOpt: zero points (possibly in a third shard), the per-tensor scales read
    // while planning, and whether the weight was repacked or decoded.
    if (t.source_scale->packed_kind != PackedKind::kNone) {
      const auto& z = t.source_scale->zeros;
      const PlannedShard& zs = plan.shards[z ? z->first : t.source_scale->shard];
      d += "packed " + std::to_string(static_cast<int>(t.source_scale->packed_kind)) + ' ' +
           std::to_string(t.source_scale->repack) + ' ' + zs.rel_name + '|';
      AppendNum(d, zs.src_header_hash);
      uint32_t b[2];
      std::memcpy(&b[0], &t.source_scale->weight_scale_2, 4);
      std::memcpy(&b[1], &t.source_scale->input_scale, 4);
      d += '|' + std::to_string(b[0]) + '|' + std::to_string(b[1]) + '|';
    }
  }
  // A compressed-tensors weight's zero points, g_idx and global scale may live elsewhere too.
  if (t.source_scale && t.source_scale->ct) {
    const CtWeight& w = *t.source_scale->ct;
    for (const CtTensor* x : {&w.zero_point, &w.g_idx, &w.global_scale}) {
      if (!x->present) continue;
      const PlannedShard& xs = plan.shards[x->shard];
      d += "ct ";
      d += xs.rel_name;
      d += '|';
      AppendNum(d, xs.src_size);
      d += '|';
      AppendNum(d, xs.src_header_hash);
      d += '|';
    }
    // A piece of a 3-D stack: which expert's rows (its codes' range is src_offset already).
    if (w.experts > 0) {
      d += "stack ";
      AppendNum(d, w.experts);
      d += '|' + std::to_string(t.source_scale->ct_expert) + '|';
      AppendNum(d, t.source_scale->ct_row0);
      d += '|';
      for (uint32_t k : w.kept) {  // expert pruning: the source slices of scales read
        AppendNum(d, k);
        d += ',';
      }
    }
  }
}

// The pruning, Wanda's statistics, the scheme and its parameters (with `global_scale` the
// NVFP4 global scale), and the static activation scales written into the shard.
void AppendScheme(const Plan& plan, const PlannedTensor& t, bool global_scale, std::string& d) {
  if (t.prune) {
    d += "prune ";
    d += plan.prune.text;
    d += '|';
    d += std::to_string(plan.prune.per_tensor);
    d += '|';
  }
  // Wanda's selection depends on the statistics (their hash is in calib_fingerprint).
  if (t.prune_scale >= 0) {
    d += "wanda ";
    d += plan.calib_fingerprint;
    d += '|';
  }
  if (t.scheme != nullptr) {
    d += t.scheme->name;
    d += '|';
    d += std::to_string(t.params.bits);
    d += '|';
    d += std::to_string(t.params.group_size.value_or(0));
    d += '|';
    d += std::to_string(t.params.symmetric);
    d += '|';
    if (global_scale) {
      uint32_t gs;
      std::memcpy(&gs, &t.global_scale, 4);
      AppendNum(d, gs);
    }
  }
  // Static activation scales (from the statistics at planning) are written into the shard.
  for (size_t oi : t.outputs) {
    const PlannedOutput& o = plan.shards[t.shard].outputs[oi];
    if (o.source != SchemeOutput::Source::kStatic) continue;
    d += "|" + o.name + "=";
    for (unsigned char c : o.constant) {
      char hex[3];
      std::snprintf(hex, sizeof hex, "%02x", c);
      d += hex;
    }
  }
}

// The calibration the weight depends on: its statistics site and the run's settings and
// statistics (GPTQ, imatrix_mse), or the smoothing's.
void AppendCalibration(const Plan& plan, const PlannedTensor& t, std::string& d) {
  // A GPTQ (or imatrix_mse) weight depends on its statistics site and the run's settings and
  // statistics.
  const PlannedCalibration& c = t.calib.value_or_default();
  if (!c.site.empty()) {
    d += "|gptq " + c.site + "#" + (c.expert ? std::to_string(*c.expert) : std::string()) +
         "|" + plan.calib_fingerprint;
  }
  if (!c.imatrix_site.empty()) {
    d += "|imatrix " + c.imatrix_site + "#" +
         (c.imatrix_expert ? std::to_string(*c.imatrix_expert) : std::string()) + "|" +
         plan.calib_fingerprint;
  }
  // A smoothed tensor depends on the smoothing's settings and statistics.
  if (t.smoothed) {
    d += "|smoothed ";
    d += plan.calib_fingerprint;
  }
}

// One tensor's part of a fingerprint: its action, pruning and scheme parameters, and with
// `global_scale` its NVFP4 global scale (known only after the pre-pass). Written into `d`
// (cleared first), which callers reuse across a plan's tensors.
void TensorDescriptor(const Plan& plan, const PlannedTensor& t, bool global_scale,
                      std::string& d) {
  d.assign(t.name);
  d += t.action == TensorAction::kQuantize ? "|q|"
       : t.action == TensorAction::kPrune  ? "|p|"
       : t.action == TensorAction::kDecode ? "|d|"
                                           : "|c|";
  // Where the bytes come from: expert pruning can keep other experts with the same layout.
  AppendNum(d, t.src_offset);
  d += '|';
  for (const auto& [at, len] : t.src_ranges) {
    AppendNum(d, at);
    d += '+';
    AppendNum(d, len);
    d += '|';
  }
  AppendSourceScale(plan, t, d);
  AppendScheme(plan, t, global_scale, d);
  AppendCalibration(plan, t, d);
}

std::string Hex(uint64_t v) {
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(v));
  return hex;
}

// A shard's resume marker: its source, sizes and the hash `h` of what it was made from.
std::string ShardMarker(const PlannedShard& ps, uint64_t h) {
  return "{\"source\": \"" + ps.rel_name + "\", \"source_bytes\": " + std::to_string(ps.src_size) +
         ", \"source_header_fnv1a64\": \"" + Hex(ps.src_header_hash) + "\", \"output_bytes\": " +
         std::to_string(ps.file_size) + ", \"plan_fnv1a64\": \"" + Hex(h) + "\"}\n";
}

}  // namespace

// What a complete output shard depends on: the source shard (size and header bytes), the
// output layout (header bytes), each tensor's action and scheme parameters, the shard holding
// a decoded weight's scale, the NVFP4 global scales (which depend on other shards) and
// quench's version.
std::string ShardFingerprint(const Plan& plan, size_t s) {
  const PlannedShard& ps = plan.shards[s];
  uint64_t h = Fnv1a64(QUENCH_VERSION);
  h = Fnv1a64(ps.header, h);
  std::string d;
  for (const PlannedTensor& t : plan.tensors) {
    if (t.shard != s) continue;
    TensorDescriptor(plan, t, /*global_scale=*/true, d);
    h = Fnv1a64(d, h);
  }
  return ShardMarker(ps, h);
}

size_t ShardMarkerBytes(const Plan& plan, size_t s) {
  return ShardMarker(plan.shards[s], 0).size();  // the hash is 16 hex digits whatever it is
}

// Everything of the whole plan that is known from headers: what the shard fingerprints hold
// except the global scales (which need weights), plus every shard's name and source, and the
// other files the run publishes (names, where they are copied from, contents).
std::string PlanFingerprint(const Plan& plan) {
  uint64_t h = Fnv1a64(QUENCH_VERSION);
  for (const PlannedShard& ps : plan.shards) {
    h = Fnv1a64(ps.rel_name + "|" + std::to_string(ps.src_size) + "|" + Hex(ps.src_header_hash) +
                    "|" + std::to_string(ps.file_size) + "|",
                h);
    h = Fnv1a64(ps.header, h);
  }
  std::string d;
  for (const PlannedTensor& t : plan.tensors) {
    h = Fnv1a64(std::to_string(t.shard) + "|", h);
    TensorDescriptor(plan, t, /*global_scale=*/false, d);
    h = Fnv1a64(d, h);
  }
  // Copied files by name, not by where SRC is mounted: workers on other machines (or started
  // from other folders) may reach the same source by another path.
  for (const PlannedFile& f : plan.files) {
    h = Fnv1a64(f.rel_name + (f.copy_from.empty() ? "|written|" : "|copied|"), h);
    h = Fnv1a64(f.contents, h);
  }
  return Hex(h);
}

Status WriteResumeMarker(const fs::path& marker, const std::string& fingerprint, bool durable) {
  QUENCH_RETURN_IF_ERROR(MakeFolders(marker.parent_path()));
  // Without fsync (WriteFileReplacing starts no writeback either: OutputFile would, which
  // allocates the block the run's final unlink then frees).
  return durable ? WriteFileAtomic(marker, fingerprint) : WriteFileReplacing(marker, fingerprint);
}

namespace {

// The first `n` bytes of `path` (fewer when it is shorter; empty when unreadable).
std::string ReadPrefix(const fs::path& path, size_t n) {
  std::string out(n, '\0');
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return {};
  out.resize(std::fread(out.data(), 1, n, f));
  std::fclose(f);
  return out;
}

bool SameBytes(const fs::path& a, const fs::path& b) {
  std::error_code ec;
  const uintmax_t size = fs::file_size(a, ec);
  if (ec || fs::file_size(b, ec) != size || ec) return false;
  auto x = ReadFileToString(a), y = ReadFileToString(b);
  return x.ok() && y.ok() && *x == *y;
}

// A shard a finished run left: the planned size, and the planned header bytes (names, dtypes,
// shapes and offsets of every tensor, the metadata).
bool ShardAsPlanned(const Plan& plan, const PlannedShard& ps) {
  std::error_code ec;
  const fs::path out = plan.dst / ps.rel_name;
  if (fs::file_size(out, ec) != ps.file_size || ec) return false;
  return ReadPrefix(out, ps.header.size()) == ps.header;
}

}  // namespace

bool PlannedFilesInPlace(const Plan& plan) {
  for (const PlannedFile& f : plan.files) {
    const fs::path to = plan.dst / f.rel_name;
    if (f.copy_from.empty()) {
      auto held = ReadFileToString(to);
      if (!held.ok() || *held != f.contents) return false;
    } else if (!SameBytes(f.copy_from, to)) {
      return false;
    }
  }
  return true;
}

// A shard is complete when its marker (written after the shard was fsynced and renamed)
// equals the fingerprint of what this run would write and its file has the planned size and
// header bytes (ShardAsPlanned: a file of the same size whose header was changed since, or
// that another copied over, is converted again, as finalize's header check refuses it).
uint64_t MarkCompleteShards(Plan& plan, const ConvertCallbacks& callbacks, bool own_shards_only) {
  std::error_code ec;
  std::vector<fs::path> stale;
  if (own_shards_only) {
    // Other workers' temporary files in the shared folder are theirs, in use or not.
    for (const PlannedShard& ps : plan.shards) {
      if (!ps.already_done) stale.push_back(plan.dst / (ps.rel_name + ".quench-tmp"));
    }
  } else {
    for (auto it = fs::recursive_directory_iterator(plan.dst, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (it->path().string().ends_with(".quench-tmp")) stale.push_back(it->path());
    }
  }
  for (const fs::path& p : stale) fs::remove(p, ec);
  uint64_t done = 0, todo = 0;
  // A worker gets here only in an unpublished folder (StartWorker returns on a published one).
  const bool finished = !own_shards_only && PlannedFilesInPlace(plan);
  for (size_t k = 0; k < plan.shards.size(); ++k) {
    PlannedShard& ps = plan.shards[k];
    if (ps.already_done) continue;  // another worker's
    ++todo;
    const fs::path marker_path = ResumeMarkerPath(plan.dst, ps.rel_name);
    if (finished && !fs::exists(marker_path, ec) && ShardAsPlanned(plan, ps)) {
      ps.already_done = true;
      ++done;
      continue;
    }
    auto marker = ReadFileToString(marker_path);
    if (!marker.ok() || *marker != ShardFingerprint(plan, k)) continue;
    if (!ShardAsPlanned(plan, ps)) continue;
    ps.already_done = true;
    ++done;
  }
  if (callbacks.note) {
    callbacks.note(
        "resume: " + std::to_string(done) + " of " + std::to_string(todo) +
        " output shards are complete and match the source and recipe; converting the rest");
  }
  return done;
}

}  // namespace quench
