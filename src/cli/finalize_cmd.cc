// `quench finalize DST [--workers N] [--report FILE] [-q]`.
#include "cli/finalize_cmd.h"

#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "cli/cli.h"
#include "format/file_io.h"
#include "pipeline/workers.h"  // kFinalizeWaitSeconds
#include "quench/convert.h"

namespace quench::cli {
namespace {

const char kFinalizeHelp[] =
    "usage: quench finalize DST [--workers N] [--report FILE.json] [-q]\n"
    "\n"
    "Publishes DST once the workers of a split conversion (quench convert --worker I/N) have\n"
    "all written their parts: checks that every part is present, that every worker planned\n"
    "the same conversion (source headers, recipe, options, quench version) and that each\n"
    "shard is as its worker left it; then writes the copied files, the index and config.json.\n"
    "The worker that completes the last part does this itself; run it by hand when that\n"
    "worker could not (e.g. it died after its part, or NFS hid the other parts from it).\n"
    "A missing, corrupt or mismatched part is named with the worker that owes it, and\n"
    "nothing is published. On a DST published already (config.json in place: a stopped\n"
    "finalizer left only its cleanup) it finishes that cleanup.\n"
    "\n"
    "  --workers N        the worker count, when DST holds parts of runs with several counts\n"
    "  --report FILE.json each worker's summary (shards, bytes, seconds) and their totals\n"
    "  -q, --quiet        errors, and warnings naming files it could not remove\n"
    "\n"
    "Another process finalizing DST (the last worker) is waited for, up to 10 minutes.\n"
    "Ctrl-C, SIGTERM or SIGHUP (unless started under nohup) stop it before it publishes\n"
    "(nothing published; run it again); once publishing, it finishes.\n"
    "\n"
    "exit: 0 published (now or before), 2 usage (or another process still finalizing DST\n"
    "after 10 minutes), 3 a part is missing, corrupt or from another conversion, 4 I/O\n"
    "failure, 130 interrupted.\n";

}  // namespace

int RunFinalize(const std::vector<std::string>& args) {
  std::string dst, report;
  int workers = 0;
  bool quiet = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "-h" || a == "--help") {
      std::fputs(kFinalizeHelp, stdout);
      return 0;
    } else if (a == "--workers" || a == "--report") {
      if (i + 1 >= args.size()) return ReportError(a + " needs a value", 2);
      const std::string& v = args[++i];
      if (a == "--report") {
        report = v;
        continue;
      }
      char* end = nullptr;
      const long n = std::strtol(v.c_str(), &end, 10);
      if (end == v.c_str() || *end != '\0' || n < 1 || n > 100000) {
        return ReportError("--workers needs a whole number from 1 to 100000, not '" + v + "'", 2);
      }
      workers = static_cast<int>(n);
    } else if (a == "-q" || a == "--quiet") {
      quiet = true;
    } else if (a.starts_with("-")) {
      return ReportError("finalize: unknown option '" + a + "' (see quench finalize --help)", 2);
    } else if (dst.empty()) {
      dst = a;
    } else {
      return ReportError("finalize: needs one DST (see quench finalize --help)", 2);
    }
  }
  if (dst.empty()) return ReportError("finalize: needs DST (see quench finalize --help)", 2);
  // As convert: a signal stops it with exit 130 and a message, not a kill midway (the wait for
  // another finalizer can last 10 minutes).
  ConvertCallbacks cb;
  cb.cancel = StopOnSignals();
  cb.note = [quiet](std::string_view line) {
    if (!quiet) std::fprintf(stderr, "quench: %.*s\n", static_cast<int>(line.size()), line.data());
  };
  cb.leftover = PrintLeftover;
  auto r = Finalize(dst, workers, cb);
  if (!r.ok()) return ReportStatus(r.status());
  if (!r->published) {
    return ReportError("another process is still finalizing " + dst + " (" + r->holder +
                       ") after " + std::to_string(kFinalizeWaitSeconds / 60) +
                       " minutes; its lock is taken over once it is gone (60 s without a "
                       "heartbeat)", 2);
  }
  if (!report.empty()) {
    if (Status s = WriteFileAtomic(report, r->report_json); !s.ok()) {
      return ReportStatus(s);
    }
  }
  if (!quiet && !r->already_published) {  // (the note said so)
    std::fprintf(stderr, "quench: finalized %s: %d workers, %llu shards\n", dst.c_str(),
                 r->workers, static_cast<unsigned long long>(r->shards));
  }
  return 0;
}

}  // namespace quench::cli
