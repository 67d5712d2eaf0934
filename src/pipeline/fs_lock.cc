#include "pipeline/fs_lock.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>
#include <vector>

#include "format/file_io.h"

namespace quench {
namespace fs = std::filesystem;

namespace {

std::string FirstLine(const fs::path& p) {
  std::ifstream f(p);
  std::string s;
  std::getline(f, s);
  return s;
}

// A lock file's token (its first line); nullopt with `*err` set where it cannot be read
// (ENOENT: there is none).
std::optional<std::string> ReadToken(const fs::path& p, int* err) {
  std::string text;
  if ((*err = ReadWholeFile(p, &text)) != 0) return std::nullopt;
  return text.substr(0, text.find('\n'));
}

// The process's start time in clock ticks since boot (/proc/PID/stat field 22): with the PID,
// it names one process even after the PID is reused. Empty when the process does not exist
// (also when it exits while its stat is read); nullopt when /proc could not be read (then
// nobody can tell whether it lives; `*err` says why, where given).
std::optional<std::string> StartTime(long pid, int* err = nullptr) {
  std::string stat;
  const int e = ReadWholeFile("/proc/" + std::to_string(pid) + "/stat", &stat);
  if (e == ENOENT || e == ESRCH) return std::string();
  if (e != 0) {
    if (err != nullptr) *err = e;
    return std::nullopt;
  }
  const size_t paren = stat.rfind(')');  // the command name may hold spaces
  if (paren == std::string::npos) return std::string();
  std::istringstream rest(stat.substr(paren + 2));
  std::string field;
  for (int i = 3; i <= 22 && rest >> field; ++i) {
  }
  return field;
}

// Where PIDs mean the same process: host name, boot, PID namespace.
std::string Machine() {
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  std::error_code ec;
  const std::string pidns = fs::read_symlink("/proc/self/ns/pid", ec).string();
  return std::string(host) + "/" + FirstLine("/proc/sys/kernel/random/boot_id") + "/" + pidns;
}

std::string Field(const std::string& token, const std::string& key) {
  const size_t at = token.find(key + "=");
  if (at == std::string::npos) return "";
  const size_t from = at + key.size() + 1;
  return token.substr(from, token.find(' ', from) - from);
}

// Whether the lock described by `token` (with `st` its stat) may be taken over.
bool IsStale(const fs::path& path, const std::string& token, const struct stat& st,
             const std::string& nonce) {
  // A lock file without its holder (an earlier quench killed between creating and writing
  // it; TryAcquire now links it whole) names nobody who could still hold it.
  if (Field(token, "machine").empty()) return true;
  if (Field(token, "machine") == Machine()) {
    const long pid = std::atol(Field(token, "pid").c_str());
    if (pid <= 0) return true;
    const std::optional<std::string> start = StartTime(pid);
    return start.has_value() && *start != Field(token, "start");  // unreadable: held
  }
  // The file system's clock, read from a file written now beside the lock: the holder's
  // heartbeat and this check then use the same clock, whatever the hosts' clocks say.
  const fs::path probe = path.parent_path() / (".probe-" + nonce);
  if (!WriteFileAtomic(probe, "").ok()) return false;
  struct stat now {};
  const bool ok = stat(probe.c_str(), &now) == 0;
  std::error_code ec;
  fs::remove(probe, ec);
  return ok && now.st_mtim.tv_sec - st.st_mtim.tv_sec > kStaleSeconds;
}

// The files a taker of `path` left beside it when killed: `.new-*` (written, never linked)
// and `.stale-*` (a stale lock moved aside, never unlinked). Each holds the token of the
// process that made it (or of the stale holder), so one is removed once that process is
// gone, as a stale lock is; a contender still at work keeps its file.
void RemoveLeftovers(const fs::path& path) {
  const std::string base = path.filename().string();
  std::error_code ec;
  for (auto it = fs::directory_iterator(path.parent_path(), ec);
       !ec && it != fs::directory_iterator(); it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (!name.starts_with(base + ".new-") && !name.starts_with(base + ".stale-")) continue;
    if (std::string holder; !FsLock::IsHeld(it->path(), &holder)) unlink(it->path().c_str());
  }
}

// 16 hex digits naming one attempt: in a lock's token, its probe and its aside file.
std::string Nonce() {
  std::random_device rd;
  char nonce[17];
  std::snprintf(nonce, sizeof nonce, "%08x%08x", rd(), rd());
  return nonce;
}

// Who holds a lock, in words, from its token: "host H, pid P, since T".
std::string HolderOf(const std::string& token) {
  const std::string machine = Field(token, "machine");
  return "host " + machine.substr(0, machine.find('/')) + ", pid " + Field(token, "pid") +
         ", since " + Field(token, "since");
}

}  // namespace

bool FsLock::IsHeld(const fs::path& path, std::string* holder) {
  struct stat st {};
  int err = 0;
  const std::optional<std::string> token = ReadToken(path, &err);
  if (stat(path.c_str(), &st) != 0) return false;
  if (!token.has_value()) {
    // A lock that cannot be read cannot be judged stale: held, by whoever made it.
    *holder = "unknown: " + path.string() + " cannot be read (" + ErrnoMessage(err) + ")";
    return true;
  }
  if (IsStale(path, *token, st, Nonce())) return false;
  *holder = HolderOf(*token);
  return true;
}

FsLock::FsLock(fs::path path, std::string token)
    : path_(std::move(path)), token_(std::move(token)) {}

bool FsLock::StartHeartbeat() {
  pthread_attr_t attr;
  if (pthread_attr_init(&attr) != 0) return false;
  pthread_attr_setstacksize(&attr, 256 * 1024);  // a utimensat call in a loop
  const auto run = [](void* self) -> void* {
    static_cast<FsLock*>(self)->Beat();
    return nullptr;
  };
  beating_ = pthread_create(&heartbeat_, &attr, run, this) == 0;
  pthread_attr_destroy(&attr);
  return beating_;
}

FsLock::~FsLock() { (void)Release(); }

Status FsLock::Release() {
  if (released_) return Status::Ok();
  released_ = true;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (beating_) pthread_join(heartbeat_, nullptr);
  std::vector<std::string> left;
  if (!fresh_.empty() && unlink(fresh_.c_str()) != 0 && errno != ENOENT) {
    left.push_back(fresh_.string() + " (" + ErrnoMessage(errno) + ")");
  }
  // Only a file that still names this holder: a contender that judged it stale owns it now.
  int err = 0;
  const std::optional<std::string> token = ReadToken(path_, &err);
  if (!token.has_value() && err != ENOENT) {
    left.push_back(path_.string() + " (cannot read it: " + ErrnoMessage(err) + ")");
  } else if (token == token_ && unlink(path_.c_str()) != 0 && errno != ENOENT) {
    left.push_back(path_.string() + " (" + ErrnoMessage(errno) + ")");
  }
  if (left.empty()) return Status::Ok();
  std::string what;
  for (const std::string& l : left) what += (what.empty() ? "" : ", ") + l;
  return Error(ErrorCode::kIo, "cannot remove the lock file " + what);
}

void FsLock::Beat() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!cv_.wait_for(lock, std::chrono::seconds(kHeartbeatSeconds), [this] { return stop_; })) {
    utimensat(AT_FDCWD, path_.c_str(), nullptr, 0);  // mtime = the file system's now
  }
}

Result<std::unique_ptr<FsLock>> FsLock::TryAcquire(const fs::path& path, std::string* holder) {
  const std::string nonce = Nonce();
  const long pid = static_cast<long>(getpid());
  char since[32];
  const std::time_t t = std::time(nullptr);
  std::strftime(since, sizeof since, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  // A /proc that fails to read (rather than one that is not mounted: then every start time
  // reads empty, as before) would put a start time in the token that others cannot match.
  int err = 0;
  const std::optional<std::string> start = StartTime(pid, &err);
  if (!start.has_value()) {
    return Error(ErrorCode::kIo, path.string() + ": cannot take the lock: /proc/" +
                                     std::to_string(pid) + "/stat: " + ErrnoMessage(err));
  }
  const std::string token = "machine=" + Machine() + " pid=" + std::to_string(pid) +
                            " start=" + *start + " since=" + since + " nonce=" + nonce;
  // The lock appears with its contents or not at all: they are written to a file of their
  // own, which is then linked to `path` (link fails with EEXIST where the lock exists; atomic
  // on local file systems and NFS). A process killed while taking the lock leaves no empty
  // lock file, which would read as held by nobody known until it went stale.
  const fs::path fresh = fs::path(path.string() + ".new-" + nonce);
  {
    const int fd = open(fresh.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
      return Error(ErrorCode::kIo,
                   path.string() + ": cannot create the lock file: " + ErrnoMessage(errno));
    }
    // Not fsynced (a disk flush on every run's way to its first write): after a power loss its
    // holder is gone, and a lock left empty is stale at once, one cut short once a minute old.
    Status written = WriteAll(fd, fresh, token + "\n");
    if (close(fd) != 0 && written.ok()) {
      written = Error(ErrorCode::kIo, fresh.string() + ": close failed: " + ErrnoMessage(errno));
    }
    if (!written.ok()) {
      unlink(fresh.c_str());
      return written;
    }
  }
  for (int attempt = 0; attempt < 2; ++attempt) {
    const int linked = link(fresh.c_str(), path.c_str());
    const int link_errno = errno;
    // NFS can report a link that was made as failed (a lost reply to a retried call): the
    // file's link count tells.
    struct stat mine {};
    if (linked == 0 || (stat(fresh.c_str(), &mine) == 0 && mine.st_nlink == 2)) {
      const bool unlinked = unlink(fresh.c_str()) == 0;
      std::unique_ptr<FsLock> lock(new FsLock(path, token));
      if (!unlinked) lock->fresh_ = fresh;  // tried again at Release
      if (!lock->StartHeartbeat()) {
        lock.reset();  // releases the file
        return Error(ErrorCode::kIo, path.string() + ": cannot start the lock's heartbeat thread "
                                     "(out of memory or threads)");
      }
      RemoveLeftovers(path);
      return lock;
    }
    // ENOENT: the file to link was removed, as a killed taker's, by the holder (RemoveLeftovers).
    if (link_errno != EEXIST && link_errno != ENOENT) {
      unlink(fresh.c_str());
      return Error(ErrorCode::kIo, path.string() + ": cannot create the lock file: " +
                                       ErrnoMessage(link_errno));
    }
    struct stat st {};
    int read_err = 0;
    const std::optional<std::string> read = ReadToken(path, &read_err);
    if (!read.has_value() && read_err != ENOENT) {
      unlink(fresh.c_str());
      return Error(ErrorCode::kIo, path.string() + ": cannot read the lock file: " +
                                       ErrnoMessage(read_err));
    }
    const std::string theirs = read.value_or("");
    if (stat(path.c_str(), &st) != 0) continue;  // released meanwhile: try again
    *holder = HolderOf(theirs);
    if (attempt > 0 || !IsStale(path, theirs, st, nonce)) break;
    // Take the stale lock over: move it aside, and check that what moved is the file judged
    // stale (another contender may have replaced it meanwhile; then it goes back).
    const fs::path aside = fs::path(path.string() + ".stale-" + nonce);
    if (rename(path.c_str(), aside.c_str()) != 0) {
      if (errno == ENOENT) continue;  // released or taken over meanwhile: try again
      const int err = errno;
      unlink(fresh.c_str());
      return Error(ErrorCode::kIo, path.string() + ": cannot move the stale lock file (" +
                                       HolderOf(theirs) + ") aside: " + ErrnoMessage(err));
    }
    struct stat moved {};
    const bool same = stat(aside.c_str(), &moved) == 0 && moved.st_ino == st.st_ino &&
                      moved.st_dev == st.st_dev;
    if (!same) {
      [[maybe_unused]] const int restored = link(aside.c_str(), path.c_str());
      unlink(aside.c_str());
      break;
    }
    unlink(aside.c_str());
  }
  unlink(fresh.c_str());
  return std::unique_ptr<FsLock>();
}

}  // namespace quench
