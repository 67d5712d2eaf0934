#include "format/map_guard.h"

#include <csetjmp>
#include <csignal>
#include <mutex>

namespace quench::internal {
namespace {

// The innermost guard of this thread, or nullptr outside any guard.
thread_local sigjmp_buf* tl_guard = nullptr;

void OnSigbus(int sig, siginfo_t*, void*) {
  if (tl_guard != nullptr) siglongjmp(*tl_guard, 1);
  // Outside a guard: what the signal would have done without this handler.
  signal(sig, SIG_DFL);
  raise(sig);
}

void InstallHandler() {
  struct sigaction sa {};
  sa.sa_sigaction = OnSigbus;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGBUS, &sa, nullptr);
}

}  // namespace

bool RunGuarded(void (*call)(void*), void* ctx) {
  static std::once_flag installed;
  std::call_once(installed, InstallHandler);
  sigjmp_buf env;
  sigjmp_buf* const outer = tl_guard;
  // savemask = 1: the handler runs with SIGBUS blocked, and the jump must unblock it.
  if (sigsetjmp(env, 1) != 0) {
    tl_guard = outer;
    return false;
  }
  tl_guard = &env;
  call(ctx);
  tl_guard = outer;
  return true;
}

}  // namespace quench::internal
