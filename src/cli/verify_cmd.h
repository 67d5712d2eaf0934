// `quench verify DST [SRC] [--json]`: argument handling and presentation of verify/verify.h.
#ifndef QUENCH_CLI_VERIFY_CMD_H_
#define QUENCH_CLI_VERIFY_CMD_H_

#include <string>
#include <vector>

namespace quench::cli {

// Exit codes: 0 valid, 3 problems found (or DST/SRC unreadable as checkpoints), 2 usage,
// 4 I/O failure.
int RunVerify(const std::vector<std::string>& args);

}  // namespace quench::cli

#endif  // QUENCH_CLI_VERIFY_CMD_H_
