#include "format/file_io.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <system_error>

namespace quench {
namespace fs = std::filesystem;

std::string ErrnoMessage(int err) { return std::strerror(err); }

namespace {

const uint64_t kPage = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));

Status IoError(const fs::path& path, std::string_view what, int err) {
  return Error(ErrorCode::kIo,
               path.string() + ": " + std::string(what) + ": " + ErrnoMessage(err));
}

fs::path TmpName(const fs::path& final_path) {
  fs::path tmp = final_path;
  tmp += ".quench-tmp";
  return tmp;
}

}  // namespace

MappedFile::~MappedFile() {
  if (data_ != nullptr) munmap(data_, size_);
}

MappedFile::MappedFile(MappedFile&& o) noexcept : data_(o.data_), size_(o.size_) {
  o.data_ = nullptr;
  o.size_ = 0;
}

MappedFile& MappedFile::operator=(MappedFile&& o) noexcept {
  if (this != &o) {
    if (data_ != nullptr) munmap(data_, size_);
    data_ = o.data_;
    size_ = o.size_;
    o.data_ = nullptr;
    o.size_ = 0;
  }
  return *this;
}

Result<MappedFile> MappedFile::Open(const fs::path& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return IoError(path, "cannot open for reading", errno);
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    int err = errno;
    close(fd);
    return IoError(path, "cannot stat", err);
  }
  MappedFile m;
  m.size_ = static_cast<uint64_t>(st.st_size);
  if (m.size_ > 0) {
    void* p = mmap(nullptr, m.size_, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      close(fd);
      return IoError(path, "cannot memory-map", err);
    }
    m.data_ = static_cast<uint8_t*>(p);
    // Streaming access: aggressive readahead, pages not worth keeping in this process.
    madvise(m.data_, m.size_, MADV_SEQUENTIAL);
  }
  close(fd);  // the mapping keeps the file open
  return m;
}

void MappedFile::Prefetch(uint64_t offset, uint64_t len) const {
  if (data_ == nullptr || len == 0) return;
  const uint64_t begin = offset / kPage * kPage;
  const uint64_t end = std::min(size_, offset + len);
  madvise(data_ + begin, end - begin, MADV_WILLNEED);
}

void MappedFile::Release(uint64_t offset, uint64_t len) const {
  if (data_ == nullptr || len == 0) return;
  // Round outwards: a page shared with a neighbouring chunk that is still in flight is simply
  // faulted in again from the page cache if touched, which is correct, only slower.
  const uint64_t begin = offset / kPage * kPage;
  const uint64_t end = std::min(size_, (offset + len + kPage - 1) / kPage * kPage);
  if (end > begin) madvise(data_ + begin, end - begin, MADV_DONTNEED);
}

OutputFile::~OutputFile() { Abandon(); }

Result<std::unique_ptr<OutputFile>> OutputFile::Create(const fs::path& final_path,
                                                       uint64_t size) {
  auto f = std::make_unique<OutputFile>();
  f->final_path_ = final_path;
  f->tmp_path_ = TmpName(final_path);
  f->fd_ = open(f->tmp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (f->fd_ < 0) return IoError(f->tmp_path_, "cannot create", errno);
  // Reserve the space up front so that a full disk fails now, not half-way through.
  if (size > 0) {
    int rc = posix_fallocate(f->fd_, 0, static_cast<off_t>(size));
    if (rc == EOPNOTSUPP || rc == EINVAL) {
      if (ftruncate(f->fd_, static_cast<off_t>(size)) != 0) {
        return IoError(f->tmp_path_, "cannot size", errno);
      }
    } else if (rc != 0) {
      return IoError(f->tmp_path_, "cannot reserve " + std::to_string(size) + " bytes", rc);
    }
  }
  return f;
}

Status OutputFile::WriteAt(uint64_t offset, const void* data, uint64_t len) {
  const auto* p = static_cast<const uint8_t*>(data);
  const uint64_t start = offset, total = len;
  while (len > 0) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(len, 1u << 30));
    ssize_t w = pwrite(fd_, p, n, static_cast<off_t>(offset));
    if (w < 0) {
      if (errno == EINTR) continue;
      return IoError(tmp_path_, "write failed", errno);
    }
    if (w == 0) return IoError(tmp_path_, "write failed", ENOSPC);
    p += w;
    offset += static_cast<uint64_t>(w);
    len -= static_cast<uint64_t>(w);
  }
  // Start writeback of these pages now (no waiting), so the fsync in Commit(), which nothing
  // can overlap, has little left to do. A hint: errors surface at fsync.
  if (total > 0) {
    sync_file_range(fd_, static_cast<off_t>(start), static_cast<off_t>(total),
                    SYNC_FILE_RANGE_WRITE);
  }
  return Status::Ok();
}

Status OutputFile::Commit() {
  if (fsync(fd_) != 0) return IoError(tmp_path_, "fsync failed", errno);
  if (close(fd_) != 0) {
    fd_ = -1;
    return IoError(tmp_path_, "close failed", errno);
  }
  fd_ = -1;
  if (rename(tmp_path_.c_str(), final_path_.c_str()) != 0) {
    return IoError(final_path_, "cannot rename from " + tmp_path_.filename().string(), errno);
  }
  committed_ = true;
  return Status::Ok();
}

void OutputFile::Abandon() {
  if (fd_ >= 0) {
    close(fd_);
    fd_ = -1;
  }
  if (!committed_ && !tmp_path_.empty()) {
    unlink(tmp_path_.c_str());
    tmp_path_.clear();
  }
}

Status WriteFileAtomic(const fs::path& path, std::string_view bytes) {
  QUENCH_ASSIGN_OR_RETURN(auto f, OutputFile::Create(path, bytes.size()));
  QUENCH_RETURN_IF_ERROR(f->WriteAt(0, bytes.data(), bytes.size()));
  return f->Commit();
}

Status CopyFileAtomic(const fs::path& from, const fs::path& to) {
  int in = open(from.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) return IoError(from, "cannot open for reading", errno);
  struct stat st {};
  if (fstat(in, &st) != 0) {
    int err = errno;
    close(in);
    return IoError(from, "cannot stat", err);
  }
  auto created = OutputFile::Create(to, static_cast<uint64_t>(st.st_size));
  if (!created.ok()) {
    close(in);
    return created.status();
  }
  auto& out = *created;
  std::unique_ptr<uint8_t[]> buf(new uint8_t[1 << 20]);
  uint64_t off = 0;
  for (;;) {
    ssize_t r = pread(in, buf.get(), 1 << 20, static_cast<off_t>(off));
    if (r < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      close(in);
      return IoError(from, "read failed", err);
    }
    if (r == 0) break;
    Status s = out->WriteAt(off, buf.get(), static_cast<uint64_t>(r));
    if (!s.ok()) {
      close(in);
      return s;
    }
    off += static_cast<uint64_t>(r);
  }
  close(in);
  return out->Commit();
}

Result<std::string> ReadFileToString(const fs::path& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return IoError(path, "cannot open for reading", errno);
  std::string s;
  char buf[65536];
  for (;;) {
    ssize_t r = read(fd, buf, sizeof buf);
    if (r < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      close(fd);
      return IoError(path, "read failed", err);
    }
    if (r == 0) break;
    s.append(buf, static_cast<size_t>(r));
  }
  close(fd);
  return s;
}

Status SyncDirectory(const fs::path& dir) {
  int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return IoError(dir, "cannot open folder", errno);
  int rc = fsync(fd);
  int err = errno;
  close(fd);
  if (rc != 0 && err != EINVAL) return IoError(dir, "fsync of folder failed", err);
  return Status::Ok();
}

fs::path ResolvePath(const fs::path& p) {
  std::error_code ec;
  fs::path abs = fs::absolute(p, ec);
  if (ec) abs = p;
  // weakly_canonical resolves symlinks in the existing prefix and normalises the rest.
  fs::path canon = fs::weakly_canonical(abs, ec);
  if (ec) return abs.lexically_normal();
  return canon;
}

bool IsSameOrInside(const fs::path& inner, const fs::path& outer) {
  const fs::path a = ResolvePath(inner), b = ResolvePath(outer);
  auto ai = a.begin(), bi = b.begin();
  for (; bi != b.end(); ++ai, ++bi) {
    if (bi->empty()) continue;  // trailing separator
    if (ai == a.end() || *ai != *bi) return false;
  }
  return true;
}

}  // namespace quench
