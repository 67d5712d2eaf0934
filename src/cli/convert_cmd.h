// `quench convert SRC DST ...`: flags to ConvertOptions, the run with progress and
// cancellation, and its summary (convert_cmd.cc).
#ifndef QUENCH_CLI_CONVERT_CMD_H_
#define QUENCH_CLI_CONVERT_CMD_H_

#include <string>
#include <vector>

namespace quench::cli {

int RunConvert(const std::vector<std::string>& args);

}  // namespace quench::cli

#endif  // QUENCH_CLI_CONVERT_CMD_H_
