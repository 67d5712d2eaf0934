// Thin POSIX file helpers with Status errors: read-only memory maps whose pages can be
// released after use, positioned writes into files created under temporary names, and
// atomic publication by rename. Every message names the path.
#ifndef QUENCH_FORMAT_FILE_IO_H_
#define QUENCH_FORMAT_FILE_IO_H_

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include "quench/status.h"

namespace quench {

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

  static Result<MappedFile> Open(const std::filesystem::path& path);

  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  // Hints that [offset, offset+len) is needed soon (MADV_WILLNEED).
  void Prefetch(uint64_t offset, uint64_t len) const;
  // Drops the pages covering [offset, offset+len) from the resident set.
  void Release(uint64_t offset, uint64_t len) const;

 private:
  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

// An output file written at planned offsets. Created as `<final>.quench-tmp` (never the final
// name), published by Commit() after fsync, removed by the destructor if never committed.
class OutputFile {
 public:
  OutputFile() = default;
  ~OutputFile();
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;

  static Result<std::unique_ptr<OutputFile>> Create(const std::filesystem::path& final_path,
                                                    uint64_t size);
  // pwrite of all `len` bytes at `offset` (retries short writes; ENOSPC etc. -> kIo), then
  // starts writeback of that range without waiting.
  Status WriteAt(uint64_t offset, const void* data, uint64_t len);
  // fsync, close, rename to the final name.
  Status Commit();
  // Removes the temporary file now.
  void Abandon();
  const std::filesystem::path& final_path() const { return final_path_; }

 private:
  int fd_ = -1;
  std::filesystem::path final_path_;
  std::filesystem::path tmp_path_;
  bool committed_ = false;
};

// Writes `bytes` to `path` via a temporary file, fsync and rename.
Status WriteFileAtomic(const std::filesystem::path& path, std::string_view bytes);
// Copies a file byte for byte (copy_file_range) via a temporary name and rename.
Status CopyFileAtomic(const std::filesystem::path& from, const std::filesystem::path& to);
Result<std::string> ReadFileToString(const std::filesystem::path& path);
// fsync a directory so that renames in it are durable.
Status SyncDirectory(const std::filesystem::path& dir);

// Lexically normalised absolute path with symlinks resolved for the part that exists.
std::filesystem::path ResolvePath(const std::filesystem::path& p);
// True when `inner` equals `outer` or lies below it (after ResolvePath).
bool IsSameOrInside(const std::filesystem::path& inner, const std::filesystem::path& outer);

std::string ErrnoMessage(int err);

}  // namespace quench

#endif  // QUENCH_FORMAT_FILE_IO_H_
