// `quench convert`: parses the flags into ConvertOptions (values checked here, so that a bad
// one is a usage error before anything is read), resolves the worker slot, then either prints
// the plan (--dry-run, dry_run.cc) or runs Convert() with a progress line and SIGINT/SIGTERM/
// SIGHUP as cancellation, and prints the run's summary.
#include "cli/convert_cmd.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "cli/cli.h"
#include "cli/convert_help.h"
#include "cli/dry_run.h"
#include "cli/hub_cache.h"
#include "cli/worker_env.h"
#include "plan/recipe_calib.h"
#include "quench/convert.h"

namespace quench::cli {
namespace {

bool TakeValue(const std::vector<std::string>& args, size_t& i, std::string& out,
               std::string& err) {
  const std::string& a = args[i];
  const size_t eq = a.find('=');
  if (eq != std::string::npos) {
    out = a.substr(eq + 1);
    return true;
  }
  if (i + 1 >= args.size()) {
    err = a + " needs a value";
    return false;
  }
  out = args[++i];
  return true;
}

std::string FlagName(const std::string& a) {
  const size_t eq = a.find('=');
  return eq == std::string::npos ? a : a.substr(0, eq);
}

class ProgressPrinter {
 public:
  explicit ProgressPrinter(bool quiet) : quiet_(quiet), tty_(isatty(STDERR_FILENO) == 1) {
    start_ = std::chrono::steady_clock::now();
  }
  void Update(const Progress& p) {
    if (quiet_ || p.bytes_total == 0) return;
    const auto now = std::chrono::steady_clock::now();
    const double secs = std::chrono::duration<double>(now - start_).count();
    if (!tty_ && now - last_ < std::chrono::seconds(10) && p.bytes_done != p.bytes_total) return;
    last_ = now;
    const double frac = static_cast<double>(p.bytes_done) / static_cast<double>(p.bytes_total);
    const double rate = secs > 0 ? static_cast<double>(p.bytes_done) / secs / 1e9 : 0;
    const double eta =
        rate > 0 ? static_cast<double>(p.bytes_total - p.bytes_done) / 1e9 / rate : 0;
    std::string cur(p.current.substr(0, 48));
    char eta_text[32] = "--";
    if (p.bytes_done > 0) std::snprintf(eta_text, sizeof eta_text, "%.0fs", eta);
    std::fprintf(stderr, "%s%5.1f%%  %.2f/%.2f GB  %.2f GB/s  ETA %5s  %-48s%s",
                 tty_ ? "\r" : "", 100 * frac, static_cast<double>(p.bytes_done) / 1e9,
                 static_cast<double>(p.bytes_total) / 1e9, rate, eta_text, cur.c_str(),
                 tty_ ? "" : "\n");
    drawn_ = tty_;
  }
  void Finish() {
    if (drawn_) std::fputc('\n', stderr);
    drawn_ = false;
  }

 private:
  bool quiet_, tty_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_, last_{};
};

// The flags that say what is quantized or pruned and how (scheme, recipe, targets, ignore,
// group size, symmetry, activations, KV cache, pruning, expert pruning), into `o`. nullopt
// when args[i] is none of them; 0 when taken (with its value, advancing `i`); else the exit
// code of a bad value, already reported.
std::optional<int> TakeQuantizeFlag(const std::vector<std::string>& args, size_t& i,
                                    ConvertOptions& o) {
  const std::string& a = args[i];
  const std::string flag = FlagName(a);
  std::string v, err;
  if (flag == "--scheme") {
    if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
    o.scheme = v;
  } else if (flag == "--recipe") {
    if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
    o.recipe = v;
  } else if (flag == "--targets" || flag == "--target") {
    if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
    o.targets.push_back(v);
  } else if (flag == "--ignore") {
    if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
    o.ignore.push_back(v);
  } else if (flag == "--group-size") {
    if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
    char* end = nullptr;
    long n = std::strtol(v.c_str(), &end, 10);
    if (end == v.c_str() || *end != '\0' || n < -1 || n > (1 << 20)) {
      return ReportError("--group-size needs a whole number (or -1), not '" + v + "'", 2);
    }
    o.group_size = static_cast<int>(n);
  } else if (a == "--symmetric") {
    o.symmetric = true;
  } else if (a == "--asymmetric") {
    o.symmetric = false;
  } else if (a == "--static-activations") {
    o.static_activations = true;
  } else if (a == "--asymmetric-activations") {
    o.asymmetric_activations = true;
  } else if (flag == "--kv-cache") {
    if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
    o.kv_cache = v;
  } else if (a == "--no-default-ignore") {
    o.default_ignore = false;
  } else if (flag == "--prune") {
    if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
    o.prune = v;
  } else if (flag == "--prune-granularity") {
    if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
    o.prune_granularity = v;
  } else if (flag == "--prune-experts") {
    if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
    char* end = nullptr;
    const double f = std::strtod(v.c_str(), &end);
    if (end == v.c_str() || *end != '\0' || !(f >= 0 && f <= 1)) {
      return ReportError("--prune-experts needs a fraction from 0 to 1, not '" + v + "'", 2);
    }
    o.prune_experts = f;
  } else if (flag == "--expert-metric") {
    if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
    o.expert_metric = v;
  } else {
    return std::nullopt;
  }
  return 0;
}

// The calibration flags (statistics, observer, algorithm and its settings), into `o`; returns
// as TakeQuantizeFlag does.
std::optional<int> TakeCalibrationFlag(const std::vector<std::string>& args, size_t& i,
                                       ConvertOptions& o) {
  const std::string flag = FlagName(args[i]);
  std::string v, err;
  if (flag == "--stats") {
    if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
    o.stats = v;
  } else if (flag == "--observer") {
    if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
    o.observer = v;
  } else if (flag == "--observer-arg") {
    if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
    o.observer_args.push_back(v);
  } else if (flag == "--prune-metric") {
    if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
    o.prune_metric = v;
  } else if (flag == "--algorithm") {
    if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
    o.algorithm = v;
  } else if (flag == "--gptq-block-size") {
    if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
    char* end = nullptr;
    long n = std::strtol(v.c_str(), &end, 10);
    if (end == v.c_str() || *end != '\0' || n < 1 || n > (1 << 20)) {
      return ReportError("--gptq-block-size needs a positive whole number, not '" + v + "'", 2);
    }
    o.gptq_block_size = static_cast<int>(n);
  } else if (flag == "--dampening") {
    if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
    char* end = nullptr;
    const double d = std::strtod(v.c_str(), &end);
    if (end == v.c_str() || *end != '\0' || !(d >= 0) || !std::isfinite(d)) {
      return ReportError("--dampening needs a fraction >= 0, not '" + v + "'", 2);
    }
    o.dampening = d;
  } else if (flag == "--smoothing-strength") {
    if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
    char* end = nullptr;
    const double d = std::strtod(v.c_str(), &end);
    if (end == v.c_str() || *end != '\0' || !(d >= 0 && d <= 1)) {
      return ReportError("--smoothing-strength needs a number in [0, 1], not '" + v + "'", 2);
    }
    o.smoothing_strength = d;
  } else if (flag == "--awq-duo-scaling") {
    if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
    o.awq_duo_scaling = v;
  } else if (flag == "--awq-search") {
    if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
    o.awq_search = v;
  } else if (flag == "--awq-n-grid") {
    if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
    char* end = nullptr;
    const long n = std::strtol(v.c_str(), &end, 10);
    if (end == v.c_str() || *end != '\0' || n < 2 || n > 1000) {
      return ReportError("--awq-n-grid needs a whole number from 2 to 1000, not '" + v + "'", 2);
    }
    o.awq_n_grid = static_cast<int>(n);
  } else if (flag == "--actorder") {
    if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
    o.actorder = v;
  } else {
    return std::nullopt;
  }
  return 0;
}

// What the convert command's flags set besides ConvertOptions.
struct ConvertFlags {
  bool quiet = false;
  bool dry_run = false;
  std::string worker_flag;
  int workers_flag = 0;
  std::vector<std::string> positional;
};

// Reads every flag and value into `o` and `f`: nullopt to run, else the exit code (0 after
// --help; 2, reported, for a flag or value that is wrong).
std::optional<int> ParseConvertFlags(const std::vector<std::string>& args, ConvertOptions& o,
                                     ConvertFlags& f) {
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    const std::string flag = FlagName(a);
    std::string v, err;
    if (a == "-h" || a == "--help") {
      std::fputs(ConvertHelp().c_str(), stdout);
      return 0;
    } else if (flag == "--memory-limit") {
      if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
      auto bytes = ParseByteSize(v);
      if (!bytes.ok()) return ReportError(bytes.status().message(), 2);
      if (*bytes == 0) return ReportError("--memory-limit must be more than 0", 2);
      o.memory_limit = *bytes;
    } else if (flag == "--threads") {
      if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
      char* end = nullptr;
      long n = std::strtol(v.c_str(), &end, 10);
      if (end == v.c_str() || *end != '\0' || n < 1 || n > 4096) {
        return ReportError("--threads needs a whole number from 1 to 4096, not '" + v + "'", 2);
      }
      o.threads = static_cast<int>(n);
    } else if (a == "--no-direct-io") {
      o.direct_io = false;
    } else if (a == "--dry-run") {
      f.dry_run = true;
    } else if (flag == "--report") {
      if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
      o.report = v;
    } else if (a == "--overwrite") {
      o.overwrite = true;
    } else if (a == "--resume") {
      o.resume = true;
    } else if (flag == "--worker") {
      if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
      f.worker_flag = v;
    } else if (a == "--no-finalize") {
      o.worker_finalize = false;
    } else if (flag == "--workers") {
      if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
      char* end = nullptr;
      const long n = std::strtol(v.c_str(), &end, 10);
      if (end == v.c_str() || *end != '\0' || n < 1 || n > kMaxWorkers) {
        return ReportError("--workers needs a whole number from 1 to " +
                           std::to_string(kMaxWorkers) + ", not '" + v + "'", 2);
      }
      f.workers_flag = static_cast<int>(n);
    } else if (const std::optional<int> rc = TakeQuantizeFlag(args, i, o)) {
      if (*rc != 0) return rc;
    } else if (const std::optional<int> rc = TakeCalibrationFlag(args, i, o)) {
      if (*rc != 0) return rc;
    } else if (a == "-q" || a == "--quiet") {
      f.quiet = true;
    } else if (a.starts_with("-") && a != "-") {
      return ReportError("convert: unknown option '" + a + "' (see quench convert --help)", 2);
    } else {
      f.positional.push_back(a);
    }
  }
  return std::nullopt;
}

// The run's summary on stderr: a worker's share, or what was pruned, quantized, copied and
// decoded, and the bytes and rate.
void PrintSummary(const ConvertOptions& o, const ConvertSummary& s) {
  if (o.workers > 0) {
    char did[160];
    if (s.worker_shards == 0) {
      std::snprintf(did, sizeof did, "no shards (more workers than output shards)");
    } else if (s.part_was_complete || s.shards_resumed == s.worker_shards) {
      std::snprintf(did, sizeof did, "its %llu shard(s) were already done",
                    static_cast<unsigned long long>(s.worker_shards));
    } else {
      std::snprintf(did, sizeof did, "wrote %llu of its %llu shard(s), %.3f GB read in %.2f s",
                    static_cast<unsigned long long>(s.worker_shards - s.shards_resumed),
                    static_cast<unsigned long long>(s.worker_shards),
                    static_cast<double>(s.bytes_in) / 1e9, s.seconds);
    }
    std::fprintf(stderr, "quench: worker %d/%d: %s; %s\n", o.worker_index, o.workers, did,
                 s.published ? ("published " + o.dst.string()).c_str()
                 : o.worker_finalize
                     ? "the folder is published once every worker's part is in"
                     : "publish the folder with `quench finalize` once every part is in");
    return;
  }
  if (s.pruned_tensors > 0) {
    std::fprintf(stderr,
                 "quench: pruned %llu tensors (%s): %.2f%% of their %llu weights are zero\n",
                 static_cast<unsigned long long>(s.pruned_tensors), o.prune.c_str(),
                 100.0 * static_cast<double>(s.zeroed) /
                     static_cast<double>(std::max<uint64_t>(s.pruned_elements, 1)),
                 static_cast<unsigned long long>(s.pruned_elements));
  }
  std::fprintf(stderr,
               "quench: wrote %s: %llu tensors quantized, %llu pruned only, %llu copied%s; "
               "%.3f GB read, %.3f GB written in %.2f s (%.2f GB/s)\n",
               o.dst.c_str(), static_cast<unsigned long long>(s.tensors_quantized),
               static_cast<unsigned long long>(s.tensors_pruned_only),
               static_cast<unsigned long long>(s.tensors_copied),
               s.tensors_decoded > 0
                   ? (", " + std::to_string(s.tensors_decoded) + " decoded to BF16").c_str()
                   : "",
               static_cast<double>(s.bytes_in) / 1e9, static_cast<double>(s.bytes_out) / 1e9,
               s.seconds, s.seconds > 0 ? static_cast<double>(s.bytes_in) / 1e9 / s.seconds : 0.0);
}

}  // namespace

int RunConvert(const std::vector<std::string>& args) {
  ConvertOptions o;
  ConvertFlags f;
  if (const std::optional<int> rc = ParseConvertFlags(args, o, f)) return *rc;
  const bool quiet = f.quiet;
  const std::vector<std::string>& positional = f.positional;
  if (positional.size() != 2) {
    return ReportError("convert: needs SRC and DST (see quench convert --help)", 2);
  }
  if (o.scheme.empty() && o.recipe.empty()) {
    return ReportError("convert: --scheme or --recipe is required (see quench schemes)", 2);
  }
  const HubSource hub = ResolveHubSource(positional[0]);
  if (!hub.hint.empty()) return ReportError(positional[0] + ": no such folder; " + hub.hint, 2);
  if (!hub.note.empty() && !quiet) std::fprintf(stderr, "quench: %s\n", hub.note.c_str());
  o.src = hub.path;
  o.dst = positional[1];
  auto slot = ResolveWorker(f.worker_flag, f.workers_flag,
                            [](const char* name) { return std::getenv(name); });
  if (!slot.ok()) return ReportError(slot.status().message(), 2);
  if (slot->count > 0) {
    o.worker_index = slot->index;
    o.workers = slot->count;
    o.worker_source = slot->source;
    // Workers share the report's folder too: each writes its own file (finalize --report
    // merges them), so that no two workers write the same file.
    std::string report = o.report.string();
    if (const size_t at = report.find("{worker}"); at != std::string::npos) {
      o.report = report.replace(at, 8, std::to_string(slot->index));
    } else if (!report.empty() && slot->count > 1) {
      return ReportError("--report " + report + " would be written by every worker: put {worker} "
                         "in its name (e.g. report-{worker}.json)", 2);
    }
    if (!quiet) {
      std::fprintf(stderr, "quench: worker %d/%d, from %s\n", slot->index, slot->count,
                   slot->source.c_str());
    }
  }

  // A recipe's GPTQModifier or SparseGPTModifier sets the calibration options (Convert applies
  // it too); applied here as well so that the summary lines name them.
  if (Status rc = ApplyRecipeCalibration(o); !rc.ok()) {
    return ReportStatus(rc);
  }
  if (f.dry_run) return PrintDryRun(o, quiet);
  // A signal stops the run with its complete shards kept for --resume.
  ProgressPrinter progress(quiet);
  ConvertCallbacks cb;
  cb.cancel = StopOnSignals();
  cb.note = [quiet](std::string_view line) {
    if (!quiet) std::fprintf(stderr, "quench: %.*s\n", static_cast<int>(line.size()), line.data());
  };
  cb.leftover = PrintLeftover;
  cb.progress = [&progress](const Progress& p) { progress.Update(p); };
  auto result = Convert(o, cb);
  progress.Finish();
  if (!result.ok()) {
    return ReportStatus(result.status());
  }
  if (!quiet) PrintSummary(o, *result);
  return 0;
}

}  // namespace quench::cli
