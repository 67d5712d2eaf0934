// Thin POSIX file helpers with Status errors: read-only memory maps whose pages can be
// released after use, positioned writes into files created under temporary names, and
// atomic publication by rename. Every message names the path.
#ifndef QUENCH_FORMAT_FILE_IO_H_
#define QUENCH_FORMAT_FILE_IO_H_

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include "format/pending_runs.h"
#include "quench/status.h"

namespace quench {

// The most one read fault of a file mapping makes resident: Linux may map a whole large
// page-cache folio (up to PMD size, 2 MiB on x86-64) on one fault, not only 4 KiB pages
// (measured on 6.18: a one-byte read adds 2 MiB to RssFile; bench/README.md, memfloor).
inline constexpr uint64_t kFaultBytes = 2ull << 20;

// Direct writes of unaligned data are copied through a staging buffer of this size, one per
// output file being written: large enough that a request's fixed cost is small (larger
// requests wrote no faster on the development VM), small enough to sit in the memory
// budget's reserve (pipeline.cc counts it).
inline constexpr uint64_t kDirectStagingBytes = 4ull << 20;

// A whole file mapped read-only. Pages are faulted in on access; Release() drops them from
// this process's resident set (MADV_DONTNEED) so that streaming stays within the memory budget.
class MappedFile {
 public:
  MappedFile() = default;
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  MappedFile(MappedFile&& o) noexcept;
  MappedFile& operator=(MappedFile&& o) noexcept;

  // `keep_fd`: keep the file open for ReadInto (one descriptor per open mapping; callers that
  // map every shard at once, like verify, leave it off).
  static Result<MappedFile> Open(const std::filesystem::path& path, bool keep_fd = false);

  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  // Hints that [offset, offset+len) is needed soon (MADV_WILLNEED).
  void Prefetch(uint64_t offset, uint64_t len) const;
  // Drops the pages covering [offset, offset+len) from the resident set, rounded outwards to
  // kFaultBytes: one read fault may map a whole page-cache folio (below), so a neighbour's
  // fault can map pages of a range already released; rounding outwards drops those too, and
  // a range still in use is faulted in again from the page cache.
  void Release(uint64_t offset, uint64_t len) const;
  // The range Release(offset, len) drops: [first, second), rounded outwards to kFaultBytes
  // and clipped to the file (for callers that gather releases and merge them).
  std::pair<uint64_t, uint64_t> ReleaseRange(uint64_t offset, uint64_t len) const;
  // Copies [offset, offset+len) into `dst` with pread (Open with keep_fd): for bytes only
  // copied, this costs one copy out of the page cache, where reading the mapping costs page
  // faults and a copy.
  Status ReadInto(uint64_t offset, uint64_t len, uint8_t* dst) const;

 private:
  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
  int fd_ = -1;
  std::filesystem::path path_;  // for ReadInto's messages
};

// How an OutputFile's bytes reach the disk.
enum class WriteMode {
  // Through the page cache: pwrite, writeback started at once (sync_file_range).
  kBuffered,
  // Whole aligned blocks with O_DIRECT, straight from the caller's memory when it is aligned
  // (else through an aligned staging buffer); small writes and the unaligned ends of larger
  // ones are held and joined with their neighbours (PendingRuns), and only blocks no write
  // completes (the file's short last block) go through the page cache, at Commit. Falls back
  // to kBuffered where the file system refuses O_DIRECT (tmpfs, some network and FUSE file
  // systems).
  kDirect,
};

// The alignment kDirect needs for the file offset, length and memory address of a direct
// write: 4096 bytes or the page size, whichever is larger (a block is then never shared by a
// cached page and a direct write, which keeps the two paths coherent).
uint64_t DirectIoAlignment();

// An output file written at planned offsets. Created as `<final>.quench-tmp` (never the final
// name), published by Commit() after fsync, removed by the destructor if never committed.
// Each byte must be written at most once (the planner's offsets never overlap): WriteMode::
// kDirect relies on it to write every block one way only. WriteAt may be called from several
// threads at once (for disjoint ranges); Commit and Abandon only once the writes are done.
class OutputFile {
 public:
  OutputFile() = default;
  ~OutputFile();
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;

  static Result<std::unique_ptr<OutputFile>> Create(const std::filesystem::path& final_path,
                                                    uint64_t size,
                                                    WriteMode mode = WriteMode::kBuffered);
  // Writes all `len` bytes at `offset` (retries short writes; ENOSPC etc. -> kIo). Buffered
  // bytes have their writeback started without waiting; direct ones are on their way to the
  // disk when this returns. Either way they are durable only after Commit().
  Status WriteAt(uint64_t offset, const void* data, uint64_t len);
  // True while writes use O_DIRECT (false after a fallback).
  bool direct() const { return direct_ok_.load(std::memory_order_relaxed); }
  // Makes every byte written so far durable (the direct writes' last blocks written, fsync)
  // without publishing the file, so that a later Commit() has only the rename left. No write
  // may follow; an error is returned here and again by Commit().
  Status Sync();
  // fsync (unless Sync() did it), close, rename to the final name.
  Status Commit();
  // Removes the temporary file now.
  void Abandon();
  const std::filesystem::path& final_path() const { return final_path_; }
  // Frees the staging buffers that files have given back and no file has taken since (they
  // are kept for the next file that writes unaligned or held bytes directly; at most two).
  static void ReleaseSpareStaging();

 private:
  // Held bytes taken out to be written: [at, at + len), whole blocks.
  struct Held {
    uint64_t at = 0, len = 0;
    std::vector<HeldPiece> pieces;
  };
  // Take out the whole blocks of held runs that are ready to go to the disk: the run at
  // `offset` (holding it or ending there) once it holds kDirectRunBytes of them or can grow
  // no more (TakeReady); every run (TakeAllBlocks). Callers hold pending_mu_.
  void TakeReady(uint64_t offset, std::vector<Held>* ready);
  void TakeAllBlocks(std::vector<Held>* ready);
  Held TakeHeld(uint64_t from, uint64_t to);
  // Writes held bytes directly, through the staging buffer.
  Status WriteHeld(const Held& h);
  // `mid` (whole blocks at `offset`) with the held blocks just before and after it, as one
  // request where the memory allows.
  Status WriteJoined(const Held& before, uint64_t offset, const uint8_t* mid, uint64_t len,
                     const Held& after);
  Status FlushPartialBlocks();
  // Sync()'s work: the held and partial blocks written, the direct descriptor closed, fsync.
  Status SyncWritten();
  Status WriteBuffered(uint64_t offset, const uint8_t* p, uint64_t len);
  // Writes whole aligned blocks; `offset` and `len` are multiples of DirectIoAlignment().
  Status WriteDirect(uint64_t offset, const uint8_t* p, uint64_t len);
  // Allocates staging_ on first need; callers hold staging_mu_.
  Status EnsureStaging();
  void FreeStaging();

  int fd_ = -1;
  int dfd_ = -1;  // the same file opened with O_DIRECT, or -1
  std::atomic<bool> direct_ok_{false};  // dfd_ is open and has not refused a write
  uint64_t size_ = 0;
  std::mutex pending_mu_;  // guards the four members below
  PendingRuns pending_{DirectIoAlignment()};  // bytes not written yet (direct mode)
  // Where direct writes began and ended: a held run between two of them can grow no more.
  std::unordered_set<uint64_t> direct_starts_, direct_ends_;
  uint64_t pending_limit_ = 0;  // held bytes that make every held whole block go out
  std::mutex staging_mu_;  // guards staging_ (unaligned direct writes take turns)
  uint8_t* staging_ = nullptr;  // aligned, kDirectStagingBytes, allocated on first need
  std::filesystem::path final_path_;
  std::filesystem::path tmp_path_;
  bool committed_ = false;
  std::optional<Status> synced_;  // what Sync() returned, once it has run
};

// Reads exactly [offset, offset+len) of the open file `fd` into `dst`, going on after short
// reads and EINTR; a file that ends first is an error. `path` names the file in errors.
Status ReadAt(int fd, const std::filesystem::path& path, uint64_t offset, uint64_t len,
              uint8_t* dst);
// ReadAt on `path`, opened for the call.
Status ReadFileRange(const std::filesystem::path& path, uint64_t offset, uint64_t len,
                     uint8_t* dst);
// Writes all of `bytes` to `fd` at its offset, going on after short writes and EINTR;
// `path` names the file in the error.
Status WriteAll(int fd, const std::filesystem::path& path, std::string_view bytes);
// Writes `bytes` to `path` via a temporary file, fsync and rename.
Status WriteFileAtomic(const std::filesystem::path& path, std::string_view bytes);
// Writes `bytes` to `path` via a temporary file and rename, without fsync and without
// starting writeback: a crash may lose the file or leave it empty, so only for files whose
// loss costs time, not data (a single run's resume markers). Unlinking such a file before
// writeback frees no disk block.
Status WriteFileReplacing(const std::filesystem::path& path, std::string_view bytes);
// Copies a file byte for byte (copy_file_range) via a temporary name and rename.
Status CopyFileAtomic(const std::filesystem::path& from, const std::filesystem::path& to);
// The whole file into `*text`: 0, or the errno of the open (then `*at_open` is set, where
// given) or read that failed; for callers that tell one errno from another (a lock file that
// is gone from one that cannot be read).
int ReadWholeFile(const std::filesystem::path& path, std::string* text, bool* at_open = nullptr);
Result<std::string> ReadFileToString(const std::filesystem::path& path);
// Writes a folder whole or not at all: `write` fills a temporary folder beside `out`
// (".NAME.quench-tmp-PID"), which is renamed to `out` (replacing it where it is an empty
// folder) and its parent synced; where anything fails (the sync included: then `out` is
// removed again), the temporary folder is removed and nothing is at `out`.
Status WriteFolderAtomic(const std::filesystem::path& out,
                         const std::function<Status(const std::filesystem::path&)>& write);
// Makes `dir` and its missing parents (std::filesystem::create_directories), naming the error.
Status MakeFolders(const std::filesystem::path& dir);
// fsync a directory so that renames in it are durable.
Status SyncDirectory(const std::filesystem::path& dir);

// Lexically normalised absolute path with symlinks resolved for the part that exists.
std::filesystem::path ResolvePath(const std::filesystem::path& p);
// True when `inner` equals `outer` or lies below it (after ResolvePath).
bool IsSameOrInside(const std::filesystem::path& inner, const std::filesystem::path& outer);

// strerror's text; for EMFILE also the process's open-file limit and how to raise it.
std::string ErrnoMessage(int err);

// Raises the soft limit on open files to the hard limit (best effort). A run keeps every input
// shard open to the end (MappedFile with keep_fd: chunks are read with pread), and a
// many-shard checkpoint (hundreds of shards at 1T parameters) can pass the soft limit of
// 1024 that most systems set, which exists for select() and means nothing to quench.
void RaiseOpenFileLimit();

}  // namespace quench

#endif  // QUENCH_FORMAT_FILE_IO_H_
