// Error codes and Result<T>, modelled on simdjson: a code plus a context string that names
// the file, tensor and rule. Library modules return these at their boundaries; only the CLI
// turns them into messages and exit codes.
#ifndef QUENCH_STATUS_H_
#define QUENCH_STATUS_H_

#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace quench {

enum class ErrorCode : int {
  kOk = 0,
  kUsage,          // bad flags or arguments
  kInvalidInput,   // malformed or inconsistent checkpoint, recipe or statistics
  kUnsupported,    // valid input that the chosen scheme cannot handle (shape, dtype)
  kNonFinite,      // NaN or Inf in a tensor that is to be quantized
  kIo,             // open/read/write/rename/sync failed, disk full, unwritable folder
  kInterrupted,    // SIGINT / SIGTERM
  kInternal,       // a bug in quench
};

// Short stable name, e.g. "invalid-input"; used in messages and the JSON report.
std::string_view ErrorCodeName(ErrorCode code);

// Process exit code for an error (documented in the README's CLI reference).
int ExitCodeFor(ErrorCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(ErrorCode code, std::string message) : code_(code), message_(std::move(message)) {}
  static Status Ok() { return Status(); }

  bool ok() const { return code_ == ErrorCode::kOk; }
  ErrorCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "invalid-input: model.safetensors: tensor 'x': offsets out of range"
  std::string ToString() const;

 private:
  ErrorCode code_ = ErrorCode::kOk;
  std::string message_;
};

inline Status Error(ErrorCode code, std::string message) {
  return Status(code, std::move(message));
}

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}          // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {}   // NOLINT: must not be Ok

  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOkStatus;
    return ok() ? kOkStatus : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace quench

// Propagate an error Status from an expression returning Status.
#define QUENCH_RETURN_IF_ERROR(expr)              \
  do {                                            \
    ::quench::Status quench_status_ = (expr);     \
    if (!quench_status_.ok()) return quench_status_; \
  } while (0)

#define QUENCH_CONCAT_INNER_(a, b) a##b
#define QUENCH_CONCAT_(a, b) QUENCH_CONCAT_INNER_(a, b)
// `QUENCH_ASSIGN_OR_RETURN(auto x, MakeX());`
#define QUENCH_ASSIGN_OR_RETURN(lhs, expr)                          \
  auto QUENCH_CONCAT_(quench_result_, __LINE__) = (expr);          \
  if (!QUENCH_CONCAT_(quench_result_, __LINE__).ok())              \
    return QUENCH_CONCAT_(quench_result_, __LINE__).status();      \
  lhs = std::move(QUENCH_CONCAT_(quench_result_, __LINE__)).value()

#endif  // QUENCH_STATUS_H_
