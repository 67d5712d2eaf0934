#include "pipeline/resume.h"

#include <cstdio>
#include <cstring>
#include <system_error>
#include <vector>

#include "format/file_io.h"
#include "format/safetensors.h"

namespace quench {
namespace fs = std::filesystem;

fs::path ResumeMarkerPath(const fs::path& dst, const std::string& rel) {
  return dst / kResumeDir / (rel + ".json");
}

// What a complete output shard depends on: the source shard (size and header bytes), the
// output layout (header bytes), each tensor's action and scheme parameters, the NVFP4 global
// scales (which depend on other shards) and quench's version.
std::string ShardFingerprint(const Plan& plan, size_t s) {
  const PlannedShard& ps = plan.shards[s];
  uint64_t h = Fnv1a64(QUENCH_VERSION);
  h = Fnv1a64(ps.header, h);
  for (const PlannedTensor& t : plan.tensors) {
    if (t.shard != s) continue;
    std::string d = t.name + (t.action == TensorAction::kQuantize ? "|q|"
                              : t.action == TensorAction::kPrune  ? "|p|"
                                                                  : "|c|");
    if (t.prune) d += "prune " + plan.prune.text + "|" + std::to_string(plan.prune.per_tensor) + "|";
    if (t.scheme != nullptr) {
      d += std::string(t.scheme->name) + "|" + std::to_string(t.params.bits) + "|" +
           std::to_string(t.params.group_size.value_or(0)) + "|" +
           std::to_string(t.params.symmetric) + "|";
      uint32_t gs;
      std::memcpy(&gs, &t.global_scale, 4);
      d += std::to_string(gs);
    }
    if (!t.calib_site.empty()) {
      d += "|gptq " + t.calib_site + "#" +
           (t.calib_expert ? std::to_string(*t.calib_expert) : std::string()) + "|" +
           plan.calib_fingerprint;
    }
    h = Fnv1a64(d, h);
  }
  char hex[17];
  auto hexed = [&](uint64_t v) {
    std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(v));
    return std::string(hex);
  };
  return "{\"source\": \"" + ps.rel_name + "\", \"source_bytes\": " + std::to_string(ps.src_size) +
         ", \"source_header_fnv1a64\": \"" + hexed(ps.src_header_hash) + "\", \"output_bytes\": " +
         std::to_string(ps.file_size) + ", \"plan_fnv1a64\": \"" + hexed(h) + "\"}\n";
}

Status WriteResumeMarker(const fs::path& marker, const std::string& fingerprint) {
  std::error_code ec;
  fs::create_directories(marker.parent_path(), ec);
  return WriteFileAtomic(marker, fingerprint);
}

// A shard is complete when its file has the planned size and its marker (written after the
// shard was fsynced and renamed) equals the fingerprint of what this run would write.
uint64_t MarkCompleteShards(Plan& plan, const ConvertCallbacks& callbacks) {
  std::error_code ec;
  std::vector<fs::path> stale;
  for (auto it = fs::recursive_directory_iterator(plan.dst, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (it->path().string().ends_with(".quench-tmp")) stale.push_back(it->path());
  }
  for (const fs::path& p : stale) fs::remove(p, ec);
  uint64_t done = 0;
  for (size_t k = 0; k < plan.shards.size(); ++k) {
    PlannedShard& ps = plan.shards[k];
    const fs::path out = plan.dst / ps.rel_name;
    auto marker = ReadFileToString(ResumeMarkerPath(plan.dst, ps.rel_name));
    if (!marker.ok() || *marker != ShardFingerprint(plan, k)) continue;
    if (fs::file_size(out, ec) != ps.file_size || ec) continue;
    ps.already_done = true;
    ++done;
  }
  if (callbacks.note) {
    callbacks.note("resume: " + std::to_string(done) + " of " + std::to_string(plan.shards.size()) +
                   " output shards are complete and match the source and recipe; converting the rest");
  }
  return done;
}

}  // namespace quench
