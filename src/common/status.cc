#include "quench/status.h"

namespace quench {

std::string_view ErrorCodeName(ErrorCode code) {
  switch (code) {
    case ErrorCode::kOk: return "ok";
    case ErrorCode::kUsage: return "usage";
    case ErrorCode::kInvalidInput: return "invalid-input";
    case ErrorCode::kUnsupported: return "unsupported";
    case ErrorCode::kNonFinite: return "non-finite";
    case ErrorCode::kIo: return "io";
    case ErrorCode::kInterrupted: return "interrupted";
    case ErrorCode::kInternal: return "internal";
  }
  return "unknown";
}

// Exit codes: 0 success, 1 internal error, 2 usage, 3 invalid or unsupported input
// (including non-finite weights), 4 I/O failure, 130 interrupted (128 + SIGINT).
int ExitCodeFor(ErrorCode code) {
  switch (code) {
    case ErrorCode::kOk: return 0;
    case ErrorCode::kUsage: return 2;
    case ErrorCode::kInvalidInput:
    case ErrorCode::kUnsupported:
    case ErrorCode::kNonFinite: return 3;
    case ErrorCode::kIo: return 4;
    case ErrorCode::kInterrupted: return 130;
    case ErrorCode::kInternal: return 1;
  }
  return 1;
}

std::string Status::ToString() const {
  if (ok()) return "ok";
  std::string s(ErrorCodeName(code_));
  s += ": ";
  s += message_;
  return s;
}

}  // namespace quench
