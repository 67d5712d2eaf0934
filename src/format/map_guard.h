// Reading a memory-mapped file raises SIGBUS when the file has shrunk under the map or its
// storage fails to read a page (NFS, Lustre, a failing disk). GuardMappedReads turns that
// signal, raised on the calling thread while `fn` runs, into an I/O error naming the file, so
// the run stops as for any read error (and can be resumed once the file is back) instead of
// dying. Guarding costs one sigsetjmp (a signal-mask system call) per call, so callers guard
// a chunk's work, not an element's.
#ifndef QUENCH_FORMAT_MAP_GUARD_H_
#define QUENCH_FORMAT_MAP_GUARD_H_

#include <exception>
#include <string>
#include <utility>

#include "quench/status.h"

namespace quench {
namespace internal {
// Runs call(ctx); false when a SIGBUS on this thread cut it short. Destructors of objects
// created inside `call` do not run in that case: callers keep owned state outside it.
bool RunGuarded(void (*call)(void*), void* ctx);
}  // namespace internal

// Runs fn() (returning Status) with SIGBUS on this thread reported as an error for `file`.
// An exception fn throws (std::bad_alloc) is rethrown once the guard is undone.
template <class Fn>
Status GuardMappedReads(const std::string& file, Fn&& fn) {
  Status result = Status::Ok();
  std::exception_ptr thrown;
  auto call = [&]() {
    try {
      result = fn();
    } catch (...) {
      thrown = std::current_exception();
    }
  };
  using Call = decltype(call);
  const bool completed =
      internal::RunGuarded([](void* c) { (*static_cast<Call*>(c))(); }, &call);
  if (thrown) std::rethrow_exception(thrown);
  if (!completed) {
    return Error(ErrorCode::kIo,
                 file + ": reading the mapped file failed (SIGBUS): it shrank while quench "
                        "was reading it, or its storage reported an I/O error");
  }
  return result;
}

}  // namespace quench

#endif  // QUENCH_FORMAT_MAP_GUARD_H_
