// The text of `quench convert --help` (convert_help.cc).
#ifndef QUENCH_CLI_CONVERT_HELP_H_
#define QUENCH_CLI_CONVERT_HELP_H_

#include <string>

namespace quench::cli {

// Every convert option, with the schemes and default ignores read from their tables.
std::string ConvertHelp();

}  // namespace quench::cli

#endif  // QUENCH_CLI_CONVERT_HELP_H_
