// Command-line front end: flags to library calls, errors to exit codes.
#ifndef QUENCH_CLI_CLI_H_
#define QUENCH_CLI_CLI_H_

#include <atomic>
#include <string>
#include <string_view>
#include <vector>

#include "quench/status.h"

namespace quench::cli {

int RunInspect(const std::vector<std::string>& args);
int RunSchemes(const std::vector<std::string>& args);
// Prints "quench: error: CATEGORY: <message>" to stderr (Status::ToString's form) and returns
// `exit_code`, the category the exit code's: usage (2), invalid-input (3), io (4),
// interrupted (130); 1's messages say "internal error" themselves. A message that starts
// "verify: " keeps that first, the category after it.
int ReportError(const std::string& message, int exit_code);
// Prints "quench: error: <command>" and `status` as Status::ToString writes it (its category,
// then its message) and returns ExitCodeFor its code. `status` is not OK.
int ReportStatus(const Status& status, std::string_view command = {});
// Prints "quench: warning: <line>" to stderr, with or without -q: what a finished run left
// behind (ConvertCallbacks::leftover).
void PrintLeftover(std::string_view line);
// Makes SIGINT, SIGTERM and SIGHUP (unless it comes ignored: nohup) set the returned flag
// instead of killing the process, so that a long command (convert, finalize) stops at its next
// check with exit 130 and a message; ignores SIGPIPE (a reader of stderr that ends, `2>&1 |
// head`, makes writes fail, not the command).
const std::atomic<bool>* StopOnSignals();

}  // namespace quench::cli

#endif  // QUENCH_CLI_CLI_H_
