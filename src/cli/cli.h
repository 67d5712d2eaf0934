// Command-line front end: flags to library calls, errors to exit codes.
#ifndef QUENCH_CLI_CLI_H_
#define QUENCH_CLI_CLI_H_

#include <string>
#include <vector>

namespace quench::cli {

int RunInspect(const std::vector<std::string>& args);
int RunSchemes(const std::vector<std::string>& args);
// Prints "quench: <message>" to stderr and returns the exit code for `status`.
int ReportError(const std::string& message, int exit_code);

}  // namespace quench::cli

#endif  // QUENCH_CLI_CLI_H_
