// Command-line front end: flags to library calls, errors to exit codes.
#ifndef QUENCH_CLI_CLI_H_
#define QUENCH_CLI_CLI_H_

#include <string>
#include <vector>

namespace quench::cli {

int RunInspect(const std::vector<std::string>& args);
int RunSchemes(const std::vector<std::string>& args);
// Prints "quench: error: CATEGORY: <message>" to stderr (Status::ToString's form) and returns
// `exit_code`. A message that starts with a category (a Status's ToString, or "verify: "
// and one) is printed as it is; otherwise the category is the exit code's: usage (2),
// invalid-input (3), io (4), interrupted (130); 1's messages say "internal error" already.
int ReportError(const std::string& message, int exit_code);

}  // namespace quench::cli

#endif  // QUENCH_CLI_CLI_H_
