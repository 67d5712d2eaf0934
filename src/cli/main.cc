// quench command line: the commands' dispatch (`convert`, `inspect`, `verify`, `finalize`,
// `schemes`, `stats`), the main help and the exit code of an exception that escapes the
// library. Everything in src/cli/ is argument handling and presentation; the work is in the
// library's Convert(). Each command is in a file of its own (convert_cmd.cc, inspect.cc,
// verify_cmd.cc, finalize_cmd.cc, stats_cmd.cc).
#include <signal.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <exception>
#include <new>
#include <string>
#include <string_view>
#include <vector>

#include "cli/cli.h"
#include "cli/convert_cmd.h"
#include "cli/finalize_cmd.h"
#include "cli/stats_cmd.h"
#include "cli/verify_cmd.h"
#include "format/file_io.h"
#include "format/quant_config.h"
#include "quench/status.h"
#include "schemes/cpu_x86.h"

namespace quench::cli {
namespace {

const char kMainHelp[] =
    "quench " QUENCH_VERSION ": convert Hugging Face safetensors checkpoints into\n"
    "compressed-tensors checkpoints that vLLM loads, streaming tensor by tensor.\n"
    "\n"
    "usage: quench <command> [options]\n"
    "\n"
    "commands:\n"
    "  convert SRC DST --scheme NAME   quantize a checkpoint folder into DST (or --recipe FILE)\n"
    "  inspect PATH [--json]           list the tensors of a folder or .safetensors file\n"
    "  verify DST [SRC] [--json]       check a compressed-tensors checkpoint (against SRC)\n"
    "  finalize DST                    publish a folder converted by several workers\n"
    "  schemes                         list the quantization schemes\n"
    "  stats inspect|merge|import-imatrix ...  activation statistics for calibration\n"
    "\n"
    "  -h, --help      this help; `quench <command> --help` for a command's options\n"
    "  -V, --version   print the version\n"
    "\n"
    "exit codes: 0 success, 1 internal error, 2 usage error, 3 invalid or unsupported input\n"
    "(including NaN/Inf weights), 4 I/O failure, 130 interrupted.\n";

}  // namespace

int ReportError(const std::string& message, int exit_code) {
  // verify's messages name the command first; the category follows it.
  std::string_view m = message;
  const std::string_view command = m.starts_with("verify: ") ? "verify: " : "";
  m.remove_prefix(command.size());
  const char* category = exit_code == 2     ? "usage"
                         : exit_code == 3   ? "invalid-input"
                         : exit_code == 4   ? "io"
                         : exit_code == 130 ? "interrupted"
                                            : nullptr;
  if (category == nullptr) {
    std::fprintf(stderr, "quench: error: %s\n", message.c_str());
  } else {
    std::fprintf(stderr, "quench: error: %.*s%s: %.*s\n", static_cast<int>(command.size()),
                 command.data(), category, static_cast<int>(m.size()), m.data());
  }
  return exit_code;
}

int ReportStatus(const Status& status, std::string_view command) {
  std::fprintf(stderr, "quench: error: %.*s%s\n", static_cast<int>(command.size()),
               command.data(), status.ToString().c_str());
  return ExitCodeFor(status.code());
}

void PrintLeftover(std::string_view line) {
  std::fprintf(stderr, "quench: warning: %.*s\n", static_cast<int>(line.size()), line.data());
}

namespace {

std::atomic<bool> g_stop{false};

void OnStopSignal(int) { g_stop.store(true); }

}  // namespace

const std::atomic<bool>* StopOnSignals() {
  std::signal(SIGINT, OnStopSignal);
  std::signal(SIGTERM, OnStopSignal);
  // A terminal that goes away (an ssh session that drops) stops the command as Ctrl-C does;
  // unless SIGHUP came ignored (nohup), as it then should.
  struct sigaction hup {};
  if (sigaction(SIGHUP, nullptr, &hup) == 0 && hup.sa_handler != SIG_IGN) {
    std::signal(SIGHUP, OnStopSignal);
  }
  std::signal(SIGPIPE, SIG_IGN);
  return &g_stop;
}

}  // namespace quench::cli

namespace {

int Dispatch(const std::vector<std::string>& args) {
  using namespace quench::cli;
  if (args.empty()) {
    std::fputs(kMainHelp, stderr);
    return 2;
  }
  const std::string cmd = args[0];
  std::vector<std::string> rest(args.begin() + 1, args.end());
  if (cmd == "-h" || cmd == "--help" || cmd == "help") {
    if (cmd == "help" && !rest.empty()) {
      rest = {"--help"};
      if (args[1] == "convert") return RunConvert(rest);
      if (args[1] == "inspect") return RunInspect(rest);
      if (args[1] == "verify") return RunVerify(rest);
      if (args[1] == "finalize") return RunFinalize(rest);
      if (args[1] == "schemes") return RunSchemes(rest);
      if (args[1] == "stats") return RunStats(rest);
    }
    std::fputs(kMainHelp, stdout);
    return 0;
  }
  if (cmd == "-V" || cmd == "--version") {
    std::printf("quench %s (compressed-tensors format %s)\n", QUENCH_VERSION,
                quench::kCompressedTensorsVersion);
    // Which SIMD paths this CPU takes: benchmarks quote the line so that figures from
    // different hosts are told apart.
    std::printf("kernels: %s\n", quench::cpu::KernelPathsLine().c_str());
    return 0;
  }
  if (cmd == "convert") return RunConvert(rest);
  if (cmd == "inspect") return RunInspect(rest);
  if (cmd == "verify") return RunVerify(rest);
  if (cmd == "finalize") return RunFinalize(rest);
  if (cmd == "schemes") return RunSchemes(rest);
  if (cmd == "stats") return RunStats(rest);
  return ReportError("unknown command '" + cmd + "'\n\n" + kMainHelp, 2);
}

}  // namespace

// The last line of defence of "never crash": the library reports errors as Status, but an
// exception escaping it ends the run with a message instead of std::terminate's abort (134):
// exit 4 for std::bad_alloc (out of memory, as the pipeline reports it), 1 for anything else
// (a bug).
int main(int argc, char** argv) {
  quench::RaiseOpenFileLimit();
  try {
    return Dispatch(std::vector<std::string>(argv + 1, argv + argc));
  } catch (const std::bad_alloc&) {
    // Out of memory outside the pipeline's stages (which report it themselves): the I/O
    // class of failures, like a full disk.
    return quench::cli::ReportError(
        "out of memory: an allocation failed; free memory or lower --memory-limit", 4);
  } catch (const std::exception& e) {
    return quench::cli::ReportError(std::string("internal error: ") + e.what(), 1);
  } catch (...) {
    return quench::cli::ReportError("internal error: unknown exception", 1);
  }
}
