// An LD_PRELOAD library that makes quench's file system calls fail, come back short or be
// interrupted, one call at a time, so that scripts/fuzz-io can check every error path that
// a full disk, a failing disk, a quota or a signal takes (ground rule 6: a clear message, a
// non-zero exit, nothing that looks finished, and a rerun that completes).
//
// Every call below made on a file (not on fds 0-2) is a "point", numbered from 1 in the
// order the process makes them (threads share one atomic counter). Environment:
//   QUENCH_FAULT_MODE   fail (default): point QUENCH_FAULT_AT fails with QUENCH_FAULT_ERRNO
//                       (a number; EIO by default) and nothing happens, except close, which
//                       releases the fd first as Linux does;
//                       short: every read and write moves at most half its bytes (a multiple
//                       of 4 KiB on an O_DIRECT fd, as the kernel's own short writes are);
//                       eintr: every read, write, fsync and fallocate fails once with EINTR
//                       before it is let through;
//                       hang: as fail, but the chosen call waits instead (a test kills the
//                       process there, once the log names the call), for good or until the
//                       file QUENCH_FAULT_RELEASE exists, and then goes on unharmed;
//                       oom: the points are instead the process's anonymous mappings made
//                       through libc's mmap (quench's buffers; malloc's own are not seen) and
//                       its pthread_create calls; point QUENCH_FAULT_AT fails with ENOMEM or
//                       EAGAIN, as where memory or threads run out.
//   QUENCH_FAULT_AT     the point that fails (mode fail); 0 or unset: none.
//   QUENCH_FAULT_STICKY 1: after point AT, every later call of the same kind on the same file
//                       fails too (a disk that keeps failing, not a one-off: a retry does not
//                       get through). The write calls (write, pwrite, pwritev) count as one kind.
//   QUENCH_FAULT_CALL   instead of a number: the first call of this name (as the log names
//   QUENCH_FAULT_PATH   them: open, pwrite, mkdir, stat, ...) on a path holding this text (ending
//                       with it, where the text ends in '$') fails
//   QUENCH_FAULT_NTH    (or the NTH such call, from 1), whatever points come before it;
//   QUENCH_FAULT_TIMES  that many such calls in a row fail (1 by default; a file that fails
//                       every time: a large number).
//   QUENCH_FAULT_LOG    a file that always holds the number of points made so far and, once
//                       point AT is made, which call it was ("N\tcall path-or-fd").
// Only test code loads this; quench itself knows nothing of it.
// Both open and open64 (and their kin) are defined here: without large-file redirection the
// headers declare them as two functions, as libc exports them.
#undef _FILE_OFFSET_BITS
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

namespace {

enum class Mode { kFail, kShort, kEintr, kOom, kHang };

struct Config {
  Mode mode = Mode::kFail;
  uint64_t at = 0;
  const char* call = nullptr;  // QUENCH_FAULT_CALL
  const char* path = "";       // QUENCH_FAULT_PATH
  uint64_t nth = 1;
  uint64_t times = 1;
  bool sticky = false;
  int err = EIO;
  int log_fd = -1;
  bool ready = false;
};

Config g_config;
std::atomic<uint64_t> g_points{0};
std::atomic<uint64_t> g_eintr_turn{0};
std::atomic<uint64_t> g_matches{0};
char g_fault[240];
// Mode fail with QUENCH_FAULT_STICKY: the kind and path of the call that failed.
std::mutex g_sticky_mu;
std::string g_sticky_kind, g_sticky_path;

// Calls of one kind for QUENCH_FAULT_STICKY: a write retried by another write call is the
// same failing disk.
std::string Kind(const char* call) {
  for (const char* w : {"write", "pwrite", "pwritev", "writev"}) {
    if (strcmp(call, w) == 0) return "write";
  }
  return call;
}

template <typename F>
F Real(const char* name) {
  return reinterpret_cast<F>(dlsym(RTLD_NEXT, name));
}

using PwriteFn = ssize_t (*)(int, const void*, size_t, off_t);
using OpenFn = int (*)(const char*, int, ...);

void LoadConfig() {
  if (g_config.ready) return;
  if (const char* m = getenv("QUENCH_FAULT_MODE")) {
    if (strcmp(m, "short") == 0) g_config.mode = Mode::kShort;
    if (strcmp(m, "eintr") == 0) g_config.mode = Mode::kEintr;
    if (strcmp(m, "oom") == 0) g_config.mode = Mode::kOom;
    if (strcmp(m, "hang") == 0) g_config.mode = Mode::kHang;
  }
  if (const char* a = getenv("QUENCH_FAULT_AT")) g_config.at = strtoull(a, nullptr, 10);
  if (const char* e = getenv("QUENCH_FAULT_ERRNO")) g_config.err = atoi(e);
  g_config.call = getenv("QUENCH_FAULT_CALL");
  if (const char* p = getenv("QUENCH_FAULT_PATH")) g_config.path = p;
  if (const char* k = getenv("QUENCH_FAULT_NTH")) g_config.nth = strtoull(k, nullptr, 10);
  if (const char* t = getenv("QUENCH_FAULT_TIMES")) g_config.times = strtoull(t, nullptr, 10);
  if (const char* k = getenv("QUENCH_FAULT_STICKY")) g_config.sticky = strcmp(k, "1") == 0;
  if (const char* l = getenv("QUENCH_FAULT_LOG")) {
    static OpenFn real_open = Real<OpenFn>("open64");
    g_config.log_fd = real_open(l, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  }
  g_config.ready = true;
}

__attribute__((constructor)) void Init() { LoadConfig(); }

// Records the point in the log: its count, padded so that every write covers the last.
void Log(uint64_t n) {
  if (g_config.log_fd < 0) return;
  static PwriteFn real_pwrite = Real<PwriteFn>("pwrite64");
  char line[300];
  int len = snprintf(line, sizeof(line), "%-20llu\n%-240s\n", static_cast<unsigned long long>(n),
                     g_fault);
  real_pwrite(g_config.log_fd, line, static_cast<size_t>(len), 0);
}

// The path an fd was opened with ("fd N" where /proc cannot say).
void FdPath(int fd, char* out, size_t size) {
  char link[64];
  snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
  const ssize_t n = readlink(link, out, size - 1);
  if (n > 0) {
    out[n] = '\0';
  } else {
    snprintf(out, size, "fd %d", fd);
  }
}

// Whether `what` holds QUENCH_FAULT_PATH's text or, where that ends in '$', ends with it.
bool PathMatches(const char* what) {
  const size_t n = strlen(g_config.path);
  if (n > 0 && g_config.path[n - 1] == '$') {
    const size_t w = strlen(what);
    return w >= n - 1 && strncmp(what + w - (n - 1), g_config.path, n - 1) == 0;
  }
  return strstr(what, g_config.path) != nullptr;
}

// True when this call is the point that fails; counts it either way.
bool Fails(const char* call, const char* what, int fd = -1) {
  LoadConfig();
  if ((fd >= 0 && fd <= 2) || g_config.mode == Mode::kOom) return false;
  const uint64_t n = g_points.fetch_add(1) + 1;
  if (g_config.mode != Mode::kFail && g_config.mode != Mode::kHang) {
    Log(n);
    return false;
  }
  char path[200];
  if (what == nullptr && (g_config.call != nullptr || n == g_config.at || g_config.sticky)) {
    FdPath(fd, path, sizeof(path));
    what = path;
  }
  bool fails = n == g_config.at;
  if (g_config.sticky && what != nullptr) {
    std::lock_guard<std::mutex> lock(g_sticky_mu);
    if (fails) {
      g_sticky_kind = Kind(call);
      g_sticky_path = what;
    } else if (!g_sticky_kind.empty() && g_sticky_kind == Kind(call) && g_sticky_path == what) {
      return true;  // the same file failing again; the log keeps the first failure
    }
  }
  if (g_config.call != nullptr && strcmp(call, g_config.call) == 0 && what != nullptr &&
      PathMatches(what)) {
    const uint64_t k = g_matches.fetch_add(1) + 1;
    fails = k >= g_config.nth && k - g_config.nth < g_config.times;
  }
  if (fails) {
    snprintf(g_fault, sizeof(g_fault), "%llu\t%s %s", static_cast<unsigned long long>(n), call,
             what);
  }
  Log(n);
  // Mode hang: the call that would fail waits (the log says it was reached), so that a test
  // can kill the process at that very point, or do something else first: with
  // QUENCH_FAULT_RELEASE, until that file exists, and then the call goes on as asked.
  if (fails && g_config.mode == Mode::kHang) {
    const char* release = getenv("QUENCH_FAULT_RELEASE");
    while (release == nullptr || access(release, F_OK) != 0) usleep(10000);
    return false;
  }
  return fails;
}

// Mode oom: true when this memory or thread request is the point that fails.
bool OutOf(const char* what) {
  LoadConfig();
  if (g_config.mode != Mode::kOom) return false;
  const uint64_t n = g_points.fetch_add(1) + 1;
  const bool fails = n == g_config.at;
  if (fails) {
    snprintf(g_fault, sizeof(g_fault), "%llu\t%s", static_cast<unsigned long long>(n), what);
  }
  Log(n);
  return fails;
}

// Mode eintr: every other call of the kinds it covers fails with EINTR (a retry loop gets
// through on its next try).
bool Interrupted(int fd) {
  if (g_config.mode != Mode::kEintr || (fd >= 0 && fd <= 2)) return false;
  return g_eintr_turn.fetch_add(1) % 2 == 0;
}

// Mode short: how many of `len` bytes this call moves.
size_t ShortLen(int fd, size_t len) {
  if (g_config.mode != Mode::kShort || fd <= 2 || len < 2) return len;
  const int flags = fcntl(fd, F_GETFL);
  if (flags >= 0 && (flags & O_DIRECT) != 0) {
    const size_t half = (len / 2) & ~size_t{4095};
    return half == 0 ? len : half;
  }
  return len / 2;
}

int Failure(int err) {
  errno = err;
  return -1;
}

}  // namespace

// The mode argument open(2) takes where it creates a file.
mode_t ModeOf(int flags, va_list ap) {
  return (flags & (O_CREAT | O_TMPFILE)) != 0 ? static_cast<mode_t>(va_arg(ap, int)) : 0;
}

extern "C" {

int open64(const char* path, int flags, ...) {
  static OpenFn real = Real<OpenFn>("open64");
  va_list ap;
  va_start(ap, flags);
  const mode_t mode = ModeOf(flags, ap);
  va_end(ap);
  if (Fails("open", path)) return Failure(g_config.err);
  return real(path, flags, mode);
}

// open and open64 are one function on a 64-bit glibc: one wrapper serves both names.
int open(const char* path, int flags, ...) __attribute__((alias("open64")));

int openat(int dir, const char* path, int flags, ...) {
  static auto real = Real<int (*)(int, const char*, int, ...)>("openat");
  va_list ap;
  va_start(ap, flags);
  const mode_t mode = ModeOf(flags, ap);
  va_end(ap);
  if (Fails("openat", path)) return Failure(g_config.err);
  return real(dir, path, flags, mode);
}

FILE* fopen64(const char* path, const char* how) {
  static auto real = Real<FILE* (*)(const char*, const char*)>("fopen64");
  if (Fails("fopen", path)) {
    errno = g_config.err;
    return nullptr;
  }
  return real(path, how);
}

ssize_t read(int fd, void* buf, size_t len) {
  static auto real = Real<ssize_t (*)(int, void*, size_t)>("read");
  if (Fails("read", nullptr, fd)) return Failure(g_config.err);
  if (Interrupted(fd)) return Failure(EINTR);
  return real(fd, buf, ShortLen(fd, len));
}

ssize_t pread64(int fd, void* buf, size_t len, off_t off) {
  static auto real = Real<ssize_t (*)(int, void*, size_t, off_t)>("pread64");
  if (Fails("pread", nullptr, fd)) return Failure(g_config.err);
  if (Interrupted(fd)) return Failure(EINTR);
  return real(fd, buf, ShortLen(fd, len), off);
}

ssize_t write(int fd, const void* buf, size_t len) {
  static auto real = Real<ssize_t (*)(int, const void*, size_t)>("write");
  if (Fails("write", nullptr, fd)) return Failure(g_config.err);
  if (Interrupted(fd)) return Failure(EINTR);
  return real(fd, buf, ShortLen(fd, len));
}

ssize_t pwrite64(int fd, const void* buf, size_t len, off_t off) {
  static PwriteFn real = Real<PwriteFn>("pwrite64");
  if (Fails("pwrite", nullptr, fd)) return Failure(g_config.err);
  if (Interrupted(fd)) return Failure(EINTR);
  return real(fd, buf, ShortLen(fd, len), off);
}

// The vectored writes: mode short keeps the leading buffers that fit in half the bytes.
static ssize_t Vectored(ssize_t (*real)(int, const iovec*, int, off_t), int fd, const iovec* iov,
                        int count, off_t off) {
  size_t total = 0;
  for (int i = 0; i < count; ++i) total += iov[i].iov_len;
  const size_t keep = ShortLen(fd, total);
  if (keep == total) return real(fd, iov, count, off);
  iovec cut[64];
  int n = 0;
  size_t left = keep;
  for (int i = 0; i < count && left > 0 && n < 64; ++i, ++n) {
    cut[n] = iov[i];
    cut[n].iov_len = std::min(left, iov[i].iov_len);
    left -= cut[n].iov_len;
  }
  return real(fd, cut, n, off);
}

ssize_t pwritev64(int fd, const iovec* iov, int count, off_t off) {
  static auto real = Real<ssize_t (*)(int, const iovec*, int, off_t)>("pwritev64");
  if (Fails("pwritev", nullptr, fd)) return Failure(g_config.err);
  if (Interrupted(fd)) return Failure(EINTR);
  return Vectored(real, fd, iov, count, off);
}

ssize_t writev(int fd, const iovec* iov, int count) {
  static auto real = Real<ssize_t (*)(int, const iovec*, int)>("writev");
  if (Fails("writev", nullptr, fd)) return Failure(g_config.err);
  if (Interrupted(fd)) return Failure(EINTR);
  if (g_config.mode != Mode::kShort) return real(fd, iov, count);
  // Short: the leading buffers' first half, written as one call at the current offset.
  static auto seq = [](int f, const iovec* v, int c, off_t) {
    static auto r = Real<ssize_t (*)(int, const iovec*, int)>("writev");
    return r(f, v, c);
  };
  return Vectored(+seq, fd, iov, count, 0);
}

int fsync(int fd) {
  static auto real = Real<int (*)(int)>("fsync");
  if (Fails("fsync", nullptr, fd)) return Failure(g_config.err);
  if (Interrupted(fd)) return Failure(EINTR);
  return real(fd);
}

int fdatasync(int fd) {
  static auto real = Real<int (*)(int)>("fdatasync");
  if (Fails("fdatasync", nullptr, fd)) return Failure(g_config.err);
  if (Interrupted(fd)) return Failure(EINTR);
  return real(fd);
}

int ftruncate64(int fd, off_t len) {
  static auto real = Real<int (*)(int, off_t)>("ftruncate64");
  if (Fails("ftruncate", nullptr, fd)) return Failure(g_config.err);
  return real(fd, len);
}

// posix_fallocate reports its error as the return value, not in errno.
int posix_fallocate64(int fd, off_t off, off_t len) {
  static auto real = Real<int (*)(int, off_t, off_t)>("posix_fallocate64");
  if (Fails("posix_fallocate", nullptr, fd)) return g_config.err;
  if (Interrupted(fd)) return EINTR;
  return real(fd, off, len);
}

int sync_file_range(int fd, off_t off, off_t len, unsigned int flags) {
  static auto real = Real<int (*)(int, off_t, off_t, unsigned int)>("sync_file_range");
  if (Fails("sync_file_range", nullptr, fd)) return Failure(g_config.err);
  return real(fd, off, len, flags);
}

int close(int fd) {
  static auto real = Real<int (*)(int)>("close");
  if (Fails("close", nullptr, fd)) {
    real(fd);  // Linux releases the fd even when close reports an error
    return Failure(g_config.err);
  }
  return real(fd);
}

int rename(const char* from, const char* to) {
  static auto real = Real<int (*)(const char*, const char*)>("rename");
  if (Fails("rename", to)) return Failure(g_config.err);
  return real(from, to);
}

int link(const char* from, const char* to) {
  static auto real = Real<int (*)(const char*, const char*)>("link");
  if (Fails("link", to)) return Failure(g_config.err);
  return real(from, to);
}

int unlink(const char* path) {
  static auto real = Real<int (*)(const char*)>("unlink");
  if (Fails("unlink", path)) return Failure(g_config.err);
  return real(path);
}

int unlinkat(int dir, const char* path, int flags) {
  static auto real = Real<int (*)(int, const char*, int)>("unlinkat");
  if (Fails("unlinkat", path)) return Failure(g_config.err);
  return real(dir, path, flags);
}

int remove(const char* path) {
  static auto real = Real<int (*)(const char*)>("remove");
  if (Fails("remove", path)) return Failure(g_config.err);
  return real(path);
}

int mkdir(const char* path, mode_t mode) {
  static auto real = Real<int (*)(const char*, mode_t)>("mkdir");
  if (Fails("mkdir", path)) return Failure(g_config.err);
  return real(path, mode);
}

int rmdir(const char* path) {
  static auto real = Real<int (*)(const char*)>("rmdir");
  if (Fails("rmdir", path)) return Failure(g_config.err);
  return real(path);
}

// stat (std::filesystem's exists, is_directory, file_size) is a point only where
// QUENCH_FAULT_CALL names it: counted always, its many calls would renumber every point the
// tests and scripts/fuzz-io choose by number.
int stat(const char* path, struct stat* st) {
  static auto real = Real<int (*)(const char*, struct stat*)>("stat");
  LoadConfig();
  if (g_config.call != nullptr && strcmp(g_config.call, "stat") == 0 && Fails("stat", path)) {
    return Failure(g_config.err);
  }
  return real(path, st);
}

// Only mappings of files are points: anonymous ones are memory, not I/O.
void* mmap64(void* addr, size_t len, int prot, int flags, int fd, off_t off) {
  static auto real = Real<void* (*)(void*, size_t, int, int, int, off_t)>("mmap64");
  if (fd >= 0 && (flags & MAP_ANONYMOUS) == 0 && Fails("mmap", nullptr, fd)) {
    errno = g_config.err == EIO ? ENOMEM : g_config.err;
    return MAP_FAILED;
  }
  if ((flags & MAP_ANONYMOUS) != 0 && OutOf("mmap anonymous")) {
    errno = ENOMEM;
    return MAP_FAILED;
  }
  return real(addr, len, prot, flags, fd, off);
}

int pthread_create(pthread_t* thread, const pthread_attr_t* attr, void* (*start)(void*),
                   void* arg) {
  static auto real = Real<int (*)(pthread_t*, const pthread_attr_t*, void* (*)(void*), void*)>(
      "pthread_create");
  if (OutOf("pthread_create")) return EAGAIN;
  return real(thread, attr, start, arg);
}

ssize_t sendfile(int out, int in, off_t* off, size_t len) {
  static auto real = Real<ssize_t (*)(int, int, off_t*, size_t)>("sendfile");
  if (Fails("sendfile", nullptr, out)) return Failure(g_config.err);
  return real(out, in, off, ShortLen(out, len));
}

// quench reaches copy_file_range through syscall(2); every other number passes untouched.
long syscall(long number, ...) {
  static auto real = Real<long (*)(long, ...)>("syscall");
  va_list ap;
  va_start(ap, number);
  long a[6];
  for (long& x : a) x = va_arg(ap, long);
  va_end(ap);
  if (number == SYS_copy_file_range) {
    if (Fails("copy_file_range", nullptr, static_cast<int>(a[2]))) return Failure(g_config.err);
    if (Interrupted(static_cast<int>(a[2]))) return Failure(EINTR);
    a[4] = static_cast<long>(ShortLen(static_cast<int>(a[2]), static_cast<size_t>(a[4])));
  }
  return real(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}

}  // extern "C"
