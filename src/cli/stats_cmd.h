// `quench stats inspect|merge`: argument handling and presentation of calib/stats.h.
#ifndef QUENCH_CLI_STATS_CMD_H_
#define QUENCH_CLI_STATS_CMD_H_

#include <string>
#include <vector>

namespace quench::cli {

int RunStats(const std::vector<std::string>& args);

}  // namespace quench::cli

#endif  // QUENCH_CLI_STATS_CMD_H_
