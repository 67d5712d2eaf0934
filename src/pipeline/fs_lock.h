// A lock held through a shared file system (NFS, Lustre, a mounted bucket), for workers on
// different machines: the lock file is made by link(2) from a file already holding who took
// it (atomic on local file systems and NFS, and never seen empty); while held, a thread refreshes
// its mtime every kHeartbeatSeconds. A lock is stale, and taken over, when its holder ran on this
// machine and is gone (same host, boot and PID namespace; the process or its start time differ), or
// when its mtime is more than kStaleSeconds behind the file system's clock (a holder elsewhere that
// died: the job engine reruns a worker on another node). Takeover renames the stale file away
// and checks it renamed the file it judged, so two contenders cannot both win.
#ifndef QUENCH_PIPELINE_FS_LOCK_H_
#define QUENCH_PIPELINE_FS_LOCK_H_

#include <pthread.h>

#include <condition_variable>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>

#include "quench/status.h"

namespace quench {

inline constexpr int kHeartbeatSeconds = 5;
inline constexpr int kStaleSeconds = 60;

class FsLock {
 public:
  ~FsLock();
  FsLock(const FsLock&) = delete;
  FsLock& operator=(const FsLock&) = delete;

  // Takes `path` (its folder must exist). Busy: returns nullptr and sets `*holder` to who
  // holds it ("host H, pid P, since T"). kIo when the file system refuses.
  static Result<std::unique_ptr<FsLock>> TryAcquire(const std::filesystem::path& path,
                                                    std::string* holder);

  // Whether someone holds `path` now (it exists and is not stale), without taking it; sets
  // `*holder` as TryAcquire does. For a check across two kinds of lock on one folder: each
  // side takes its own lock first, then checks the other's, so that of two racing at least
  // one sees the other.
  static bool IsHeld(const std::filesystem::path& path, std::string* holder);

  // Stops the heartbeat and removes the lock file (while it still holds this lock's token) and
  // any file left from taking it; kIo naming what stays where the file system refuses. The
  // destructor does the same, silently, where this was not called.
  Status Release();

 private:
  FsLock(std::filesystem::path path, std::string token);
  // Starts the heartbeat thread (a small stack: a run under an address-space limit can
  // still take its lock); false when no thread can be made.
  bool StartHeartbeat();
  void Beat();

  std::filesystem::path path_;
  std::string token_;  // the lock file's contents: who, and a nonce
  std::filesystem::path fresh_;  // the file linked to path_, where unlinking it failed
  bool released_ = false;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  pthread_t heartbeat_{};
  bool beating_ = false;
};

}  // namespace quench

#endif  // QUENCH_PIPELINE_FS_LOCK_H_
