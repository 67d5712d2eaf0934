// The one entry point of the library: plan a conversion, or plan and run it.
#ifndef QUENCH_CONVERT_H_
#define QUENCH_CONVERT_H_

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "quench/plan.h"
#include "quench/status.h"

namespace quench {

inline constexpr uint64_t kDefaultMemoryLimit = 2ull << 30;  // 2 GiB

// PlanOptions (quench/plan.h) plus how the run executes.
struct ConvertOptions : PlanOptions {
  std::filesystem::path src;
  // Peak memory budget in bytes. 0: kDefaultMemoryLimit, or 3/4 of the process's cgroup
  // memory limit when that is smaller (a run in a small container is not OOM-killed); a value
  // given here is honoured as given. Convert() and DryRun() run with the value chosen.
  uint64_t memory_limit = 0;
  // Input bytes per pipeline chunk; 0: sized from memory_limit. Only ever smaller than the
  // budget's size matters: tests use it to cut small tensors into many chunks (the budget no
  // longer can, since a budget below the process's own needs is refused).
  uint64_t chunk_bytes = 0;
  int threads = 0;                     // 0: a core each (format/cgroup.h AvailableCores)
  bool direct_io = true;               // write weights with O_DIRECT where the file system allows
  bool overwrite = false;              // allow a non-empty existing DST
  bool resume = false;                 // finish an interrupted run in DST, keeping complete shards
  std::filesystem::path report;        // --report: write the run's JSON account here
  // One worker of a conversion split over machines sharing SRC and DST: this run writes
  // worker_index's share of the output shards (balanced by bytes), resuming its own earlier
  // run, then its part marker; the worker completing the last part publishes the index and
  // config.json (Finalize). workers == 0: the whole conversion in this process.
  int worker_index = 0;
  int workers = 0;
  std::string worker_source;           // what chose the slot (--worker, a launcher), in words
  bool worker_finalize = true;         // false: leave publishing to `quench finalize`
};

struct Progress {
  uint64_t bytes_done = 0;   // input bytes processed
  uint64_t bytes_total = 0;
  std::string_view current;  // tensor being written
};

struct ConvertCallbacks {
  std::function<void(std::string_view line)> note;   // informational lines and warnings
  // What a finished run could not tidy (a lock or marker file it could not remove): the
  // output is complete; printed even where notes are not (-q).
  std::function<void(std::string_view line)> leftover;
  std::function<void(const Progress&)> progress;     // called from one thread, throttled
  const std::atomic<bool>* cancel = nullptr;         // set (e.g. by SIGINT) to stop early
};

struct ConvertSummary {
  uint64_t tensors_quantized = 0;
  uint64_t tensors_copied = 0;
  uint64_t tensors_pruned_only = 0;  // --scheme none
  uint64_t tensors_decoded = 0;      // stored quantized in the source, written decoded (BF16)
  uint64_t bytes_in = 0;    // safetensors bytes read (headers excluded)
  uint64_t bytes_out = 0;   // safetensors bytes written (headers included)
  uint64_t chunk_bytes = 0; // input bytes per pipeline chunk, as sized from the memory limit
  uint64_t shards_resumed = 0;  // shards found complete by --resume and not redone
  uint64_t pruned_tensors = 0;  // tensors pruned
  uint64_t pruned_elements = 0; // elements of pruned tensors
  uint64_t zeroed = 0;          // of those, zero after pruning (achieved sparsity numerator)
  int tokens = 0;           // chunks in flight
  double seconds = 0;
  // Worker runs: the shards of this worker's share; whether DST was published by this
  // process (it completed the last part) or was already; whether the part was complete
  // before this run (a rerun: nothing redone).
  uint64_t worker_shards = 0;
  bool published = false;
  bool part_was_complete = false;
};

struct FinalizeSummary {
  int workers = 0;
  uint64_t shards = 0;
  bool published = false;  // false: another process holds the finalize lock (`holder`)
  bool already_published = false;  // published before: only a stopped finalizer's cleanup done
  std::string holder;
  std::string report_json; // each worker's summary and their totals (finalize --report)
};

// Reads headers only and builds the full plan; every user error surfaces here.
Result<Plan> MakePlan(const ConvertOptions& options);

// Plans, then streams every tensor through the pipeline and finalises DST.
Result<ConvertSummary> Convert(const ConvertOptions& options,
                               const ConvertCallbacks& callbacks = {});

// Plans without reading any weight or writing anything but `options.report` (if set); the
// plan holds every error and warning a real run would raise before reading weights.
Result<Plan> DryRun(const ConvertOptions& options);

// Publishes DST once every worker's part is present and all planned the same conversion:
// checks each part and the shards it vouches for, then writes the other files, the index and
// config.json. `workers` 0: the count the parts agree on. A missing, corrupt or mismatched part
// is kInvalidInput naming the worker that owes it; nothing is published then.
Result<FinalizeSummary> Finalize(const std::filesystem::path& dst, int workers = 0,
                                 const ConvertCallbacks& callbacks = {});

// Parses "512M", "2G", "1.5GiB", "1000000" into bytes.
Result<uint64_t> ParseByteSize(std::string_view text);

}  // namespace quench

#endif  // QUENCH_CONVERT_H_
