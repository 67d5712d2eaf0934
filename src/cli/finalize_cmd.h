// `quench finalize DST`: publishes a folder that several workers converted (--worker I/N).
#ifndef QUENCH_CLI_FINALIZE_CMD_H_
#define QUENCH_CLI_FINALIZE_CMD_H_

#include <string>
#include <vector>

namespace quench::cli {

int RunFinalize(const std::vector<std::string>& args);

}  // namespace quench::cli

#endif  // QUENCH_CLI_FINALIZE_CMD_H_
