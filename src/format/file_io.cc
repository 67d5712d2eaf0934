#include "format/file_io.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <system_error>
#include <utility>
#include <vector>

#include "format/page_cache.h"

namespace quench {
namespace fs = std::filesystem;

std::string ErrnoMessage(int err) {
  std::string m = std::strerror(err);
  struct rlimit rl {};
  if (err == EMFILE && getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
    // RaiseOpenFileLimit has taken the soft limit as far as it could: the hard one is left.
    m += " (the limit is " + std::to_string(rl.rlim_cur) +
         " open files and quench keeps every input shard open; raise the hard limit: "
         "`ulimit -Hn` as root, `prlimit --nofile`, or the service's LimitNOFILE)";
  }
  return m;
}

void RaiseOpenFileLimit() {
  struct rlimit rl {};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= rl.rlim_max) return;
  rl.rlim_cur = rl.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &rl) == 0) return;
  // Linux refuses a soft limit above fs.nr_open (an unlimited hard limit, say): its default.
  rl.rlim_cur = std::min<rlim_t>(rl.rlim_max, rlim_t{1} << 20);
  setrlimit(RLIMIT_NOFILE, &rl);
}

namespace {

const uint64_t kPage = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
// A direct write with fewer whole blocks than kHoldBelowBytes is held (PendingRuns) and joined
// with its neighbours in the file, and held runs go out once they have kDirectRunBytes of
// whole blocks: every request costs the disk a fixed time beyond its bytes, so the hundreds
// of writes of a few kilobytes that a checkpoint of many small tensors gives cost more disk
// time than their bytes (bench/README.md "Small writes joined"). Larger writes go out at
// once, as they come (a pipeline's chunk outputs).
constexpr uint64_t kHoldBelowBytes = 256ull << 10;
constexpr uint64_t kDirectRunBytes = 1ull << 20;
// Held bytes beyond which every held run's whole blocks go out as they are: what a file may
// hold (the pipeline's memory reserve counts it, pipeline.cc kReserve). Once only partial
// blocks are left above half of it, the bound doubles, so that a file of scattered pieces is
// not scanned again on every write.
constexpr uint64_t kPendingLimitBytes = 4ull << 20;

// fsync(2), again where a signal interrupted it (FUSE and network file systems return EINTR).
int FsyncRetrying(int fd) {
  int rc;
  do {
    rc = fsync(fd);
  } while (rc != 0 && errno == EINTR);
  return rc;
}

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
  if (fd_ >= 0) close(fd_);
}

MappedFile::MappedFile(MappedFile&& o) noexcept
    : data_(o.data_), size_(o.size_), fd_(o.fd_), path_(std::move(o.path_)) {
  o.data_ = nullptr;
  o.size_ = 0;
  o.fd_ = -1;
}

MappedFile& MappedFile::operator=(MappedFile&& o) noexcept {
  if (this != &o) {
    if (data_ != nullptr) munmap(data_, size_);
    if (fd_ >= 0) close(fd_);
    data_ = o.data_;
    size_ = o.size_;
    fd_ = o.fd_;
    path_ = std::move(o.path_);
    o.data_ = nullptr;
    o.size_ = 0;
    o.fd_ = -1;
  }
  return *this;
}

Result<MappedFile> MappedFile::Open(const fs::path& path, bool keep_fd) {
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
  if (keep_fd) {
    m.fd_ = fd;
    m.path_ = path;
  } else {
    close(fd);  // the mapping keeps the file open
  }
  return m;
}

Status MappedFile::ReadInto(uint64_t offset, uint64_t len, uint8_t* dst) const {
  if (fd_ < 0) return Error(ErrorCode::kInternal, "ReadInto on a mapping opened without keep_fd");
  return ReadAt(fd_, path_, offset, len, dst);
}

Status ReadAt(int fd, const fs::path& path, uint64_t offset, uint64_t len, uint8_t* dst) {
  while (len > 0) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(len, 1u << 30));
    ssize_t r = pread(fd, dst, n, static_cast<off_t>(offset));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return IoError(path, "read failed", errno);
    if (r == 0) {
      return Error(ErrorCode::kIo,
                   path.string() + ": read failed: the file is shorter than its header says");
    }
    dst += r;
    offset += static_cast<uint64_t>(r);
    len -= static_cast<uint64_t>(r);
  }
  return Status::Ok();
}

Status ReadFileRange(const fs::path& path, uint64_t offset, uint64_t len, uint8_t* dst) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return IoError(path, "cannot open for reading", errno);
  Status s = ReadAt(fd, path, offset, len, dst);
  close(fd);
  return s;
}

void MappedFile::Prefetch(uint64_t offset, uint64_t len) const {
  if (data_ == nullptr || len == 0) return;
  const uint64_t begin = offset / kPage * kPage;
  const uint64_t end = std::min(size_, offset + len);
  // Asking for pages that are already cached is not free: MADV_WILLNEED looks up every page
  // of the range (up to the device's read-ahead size per call), where cachestat walks its
  // folios (bench/README.md, "Start, input hints and the AVX2 int4 kernel"). A warm run
  // asks for nothing; a range with any page missing is asked for as before.
  if (RangeCached(fd_, begin, end - begin)) return;
  madvise(data_ + begin, end - begin, MADV_WILLNEED);
}

std::pair<uint64_t, uint64_t> MappedFile::ReleaseRange(uint64_t offset, uint64_t len) const {
  // Round outwards to whole folios: a page shared with a neighbouring chunk that is still in
  // flight is simply faulted in again from the page cache if touched, which is correct, only
  // slower.
  const uint64_t begin = offset / kFaultBytes * kFaultBytes;
  const uint64_t end =
      std::min(size_, (offset + len + kFaultBytes - 1) / kFaultBytes * kFaultBytes);
  return {begin, end};
}

void MappedFile::Release(uint64_t offset, uint64_t len) const {
  if (data_ == nullptr || len == 0) return;
  const auto [begin, end] = ReleaseRange(offset, len);
  if (end > begin) madvise(data_ + begin, end - begin, MADV_DONTNEED);
}

uint64_t DirectIoAlignment() { return std::max<uint64_t>(4096, kPage); }

OutputFile::~OutputFile() { Abandon(); }

Result<std::unique_ptr<OutputFile>> OutputFile::Create(const fs::path& final_path,
                                                       uint64_t size, WriteMode mode) {
  auto f = std::make_unique<OutputFile>();
  f->final_path_ = final_path;
  f->tmp_path_ = TmpName(final_path);
  f->size_ = size;
  f->pending_limit_ = kPendingLimitBytes;
  f->fd_ = open(f->tmp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (f->fd_ < 0) return IoError(f->tmp_path_, "cannot create", errno);
  if (mode == WriteMode::kDirect) {
    // A second descriptor: O_DIRECT applies per open file description. Where the file system
    // refuses it (EINVAL), every write is buffered.
    f->dfd_ = open(f->tmp_path_.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC);
    f->direct_ok_.store(f->dfd_ >= 0);
  }
  // Reserve the space up front so that a full disk fails now, not half-way through.
  if (size > 0) {
    int rc;
    do {
      rc = posix_fallocate(f->fd_, 0, static_cast<off_t>(size));
    } while (rc == EINTR);  // a signal handled meanwhile (Ctrl-C is seen at the next chunk)
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
  if (!direct()) return WriteBuffered(offset, p, len);
  if (len == 0) return Status::Ok();
  // Whole aligned blocks go to the disk now when there are enough of them; the rest of the
  // write (its unaligned ends, or all of a small write) is held until its neighbours arrive,
  // and then goes out with them: with the direct part of a neighbour's write (one request of
  // both), or as a run of held bytes.
  const uint64_t a = DirectIoAlignment();
  const uint64_t end = offset + len;
  const uint64_t mid_begin = std::min(end, (offset + a - 1) / a * a);
  const uint64_t mid_end = std::max(mid_begin, end / a * a);
  const bool direct_now = mid_end - mid_begin >= kHoldBelowBytes;
  std::vector<Held> ready;
  Held before, after;
  {
    std::lock_guard<std::mutex> lock(pending_mu_);
    const bool held = direct_now ? pending_.Add(offset, p, mid_begin - offset) &&
                                       pending_.Add(mid_end, p + (mid_end - offset), end - mid_end)
                                 : pending_.Add(offset, p, len);
    if (!held) {
      return Error(ErrorCode::kInternal, tmp_path_.string() + ": bytes at " +
                                             std::to_string(offset) + " written twice");
    }
    if (direct_now) {
      const auto [b0, b1] = pending_.RunAt(mid_begin);  // held bytes ending where it starts
      if (b1 == mid_begin && b0 < b1) before = TakeHeld(pending_.AlignUp(b0), mid_begin);
      const auto [a0, a1] = pending_.RunAt(mid_end);  // and starting where it ends
      if (a0 == mid_end && a0 < a1) after = TakeHeld(mid_end, pending_.AlignDown(a1));
      const uint64_t lo = before.len > 0 ? before.at : mid_begin;
      const uint64_t hi = after.len > 0 ? after.at + after.len : mid_end;
      direct_starts_.insert(lo);
      direct_ends_.insert(hi);
      // What is held beside it may now have direct writes on both sides.
      TakeReady(lo, &ready);
      TakeReady(hi, &ready);
    } else {
      TakeReady(offset, &ready);
    }
    if (pending_.bytes() > pending_limit_) TakeAllBlocks(&ready);
  }
  for (const Held& h : ready) QUENCH_RETURN_IF_ERROR(WriteHeld(h));
  if (!direct_now) return Status::Ok();
  return WriteJoined(before, mid_begin, p + (mid_begin - offset), mid_end - mid_begin, after);
}

OutputFile::Held OutputFile::TakeHeld(uint64_t from, uint64_t to) {
  Held h;
  h.pieces = pending_.Take(from, to);
  if (h.pieces.empty()) return h;
  h.at = from;
  h.len = to - from;
  direct_starts_.insert(from);
  direct_ends_.insert(to);
  return h;
}

void OutputFile::TakeReady(uint64_t offset, std::vector<Held>* ready) {
  const auto [s, e] = pending_.RunAt(offset);
  const uint64_t lo = pending_.AlignUp(s), hi = pending_.AlignDown(e);
  if (hi <= lo) return;
  // A run can grow no more where a direct write (or the file) begins or ends next to it.
  const bool closed = (s == 0 || direct_ends_.count(s) > 0) &&
                      (e == size_ || direct_starts_.count(e) > 0);
  if (hi - lo < kDirectRunBytes && !closed) return;
  Held h = TakeHeld(lo, hi);
  if (h.len > 0) ready->push_back(std::move(h));
}

void OutputFile::TakeAllBlocks(std::vector<Held>* ready) {
  for (const auto& [s, e] : pending_.Runs()) {
    const uint64_t lo = pending_.AlignUp(s), hi = pending_.AlignDown(e);
    if (hi <= lo) continue;
    Held h = TakeHeld(lo, hi);
    if (h.len > 0) ready->push_back(std::move(h));
  }
  if (pending_.bytes() > pending_limit_ / 2) pending_limit_ = 2 * pending_.bytes();
}

Status OutputFile::WriteHeld(const Held& h) {
  std::lock_guard<std::mutex> lock(staging_mu_);
  QUENCH_RETURN_IF_ERROR(EnsureStaging());
  // The pieces, back to back, a staging buffer at a time (a held run is rarely longer).
  uint64_t at = h.at, filled = 0;
  for (const HeldPiece& q : h.pieces) {
    for (uint64_t done = 0; done < q.bytes.size();) {
      const uint64_t n = std::min<uint64_t>(q.bytes.size() - done, kDirectStagingBytes - filled);
      std::memcpy(staging_ + filled, q.bytes.data() + done, n);
      filled += n;
      done += n;
      if (filled == kDirectStagingBytes) {
        QUENCH_RETURN_IF_ERROR(WriteDirect(at, staging_, filled));  // aligned: no lock taken
        at += filled;
        filled = 0;
      }
    }
  }
  return filled > 0 ? WriteDirect(at, staging_, filled) : Status::Ok();
}

Status OutputFile::WriteJoined(const Held& before, uint64_t offset, const uint8_t* mid,
                               uint64_t len, const Held& after) {
  const uint64_t a = DirectIoAlignment();
  using Bytes = std::unique_ptr<uint8_t, decltype(&std::free)>;
  const auto copy = [a](const Held& h) {
    void* mem = nullptr;
    if (h.len == 0 || posix_memalign(&mem, a, h.len) != 0) return Bytes(nullptr, &std::free);
    CopyPieces(h.pieces, static_cast<uint8_t*>(mem));
    return Bytes(static_cast<uint8_t*>(mem), &std::free);
  };
  const Bytes b = copy(before), e = copy(after);
  const bool joined = (before.len > 0 || after.len > 0) && (before.len == 0 || b) &&
                      (after.len == 0 || e) && reinterpret_cast<uintptr_t>(mid) % a == 0;
  if (!joined) {
    if (before.len > 0) QUENCH_RETURN_IF_ERROR(WriteHeld(before));
    QUENCH_RETURN_IF_ERROR(WriteDirect(offset, mid, len));
    return after.len > 0 ? WriteHeld(after) : Status::Ok();
  }
  iovec iov[3];
  int n = 0;
  if (b) iov[n++] = {b.get(), before.len};
  iov[n++] = {const_cast<uint8_t*>(mid), len};
  if (e) iov[n++] = {e.get(), after.len};
  const uint64_t start = b ? before.at : offset;
  const uint64_t total = before.len + len + after.len;
  ssize_t w;
  do {
    w = pwritev(dfd_, iov, n, static_cast<off_t>(start));
  } while (w < 0 && errno == EINTR);
  if (w >= 0 && static_cast<uint64_t>(w) == total) return Status::Ok();
  // Short, refused or failed: each part's unwritten bytes once more on their own, where a
  // short write is retried and a refusal falls back to buffered writes (WriteDirect).
  uint64_t done = w > 0 ? static_cast<uint64_t>(w) : 0;
  const auto rest = [&](uint64_t at, const uint8_t* p, uint64_t n_bytes) -> Status {
    const uint64_t skip = std::min(done, n_bytes);
    done -= skip;
    return skip < n_bytes ? WriteDirect(at + skip, p + skip, n_bytes - skip) : Status::Ok();
  };
  if (b) QUENCH_RETURN_IF_ERROR(rest(before.at, b.get(), before.len));
  QUENCH_RETURN_IF_ERROR(rest(offset, mid, len));
  return e ? rest(after.at, e.get(), after.len) : Status::Ok();
}

// Writes what is held through the page cache (exactly the bytes given, no padding): at
// Commit, the file's short last block and any block with bytes no write covered; and when
// direct writes stop, so that later buffered writes of the same blocks mix with them safely.
Status OutputFile::FlushPartialBlocks() {
  std::vector<HeldPiece> held;
  {
    std::lock_guard<std::mutex> lock(pending_mu_);
    held = pending_.TakeAll();
  }
  for (const HeldPiece& q : held) {
    QUENCH_RETURN_IF_ERROR(
        WriteBuffered(q.at, reinterpret_cast<const uint8_t*>(q.bytes.data()), q.bytes.size()));
  }
  return Status::Ok();
}

Status OutputFile::WriteDirect(uint64_t offset, const uint8_t* p, uint64_t len) {
  const uint64_t a = DirectIoAlignment();
  const bool aligned = reinterpret_cast<uintptr_t>(p) % a == 0;
  std::unique_lock<std::mutex> staging_lock(staging_mu_, std::defer_lock);
  if (!aligned) {
    staging_lock.lock();
    QUENCH_RETURN_IF_ERROR(EnsureStaging());
  }
  while (len > 0) {
    const uint64_t n = std::min<uint64_t>(len, aligned ? (1u << 30) : kDirectStagingBytes);
    const uint8_t* src = p;
    if (!aligned) {
      std::memcpy(staging_, p, n);
      src = staging_;
    }
    uint64_t done = 0;
    while (done < n) {
      ssize_t w = pwrite(dfd_, src + done, n - done, static_cast<off_t>(offset + done));
      if (w < 0 && errno == EINTR) continue;
      if (w < 0 && errno == EINVAL) {
        // The file system takes O_DIRECT at open but not this alignment: buffered from now on
        // (the bytes not yet written are written so; a block is still written one way only).
        direct_ok_.store(false);
        QUENCH_RETURN_IF_ERROR(FlushPartialBlocks());
        return WriteBuffered(offset + done, p + done, len - done);
      }
      if (w < 0) return IoError(tmp_path_, "write failed", errno);
      if (w == 0) return IoError(tmp_path_, "write failed", ENOSPC);
      // A short direct write ends on a block boundary (or at the end of the disk's space);
      // the rest is retried from there.
      done += static_cast<uint64_t>(w);
    }
    p += n;
    offset += n;
    len -= n;
  }
  return Status::Ok();
}

Status OutputFile::WriteBuffered(uint64_t offset, const uint8_t* p, uint64_t len) {
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

namespace {

// Staging buffers that files no longer need, kept for the next file that needs one. A run's
// shards are written one after the other, and a buffer freed at one shard's commit and
// allocated again for the next (4 MiB: malloc maps it, and the freed one is unmapped) came
// back as fresh pages each time, a fault and a zeroed page for every 4 KiB the held writes
// touched. A file takes a spare before a new one is allocated, so the buffers in existence
// (in use or spare) are never more than were in use at once: what the memory budget's
// reserve counts (pipeline.cc kReserve).
struct SpareStaging {
  static constexpr size_t kMax = 2;
  std::mutex mu;
  std::vector<uint8_t*> free;
};

SpareStaging& Spares() {
  static SpareStaging* s = new SpareStaging;  // never destroyed: files may outlive statics
  return *s;
}

}  // namespace

void OutputFile::ReleaseSpareStaging() {
  std::vector<uint8_t*> gone;
  {
    SpareStaging& s = Spares();
    std::lock_guard<std::mutex> lock(s.mu);
    gone.swap(s.free);
  }
  for (uint8_t* p : gone) std::free(p);
}

Status OutputFile::EnsureStaging() {
  if (staging_ != nullptr) return Status::Ok();
  {
    SpareStaging& s = Spares();
    std::lock_guard<std::mutex> lock(s.mu);
    if (!s.free.empty()) {
      staging_ = s.free.back();
      s.free.pop_back();
      return Status::Ok();
    }
  }
  void* mem = nullptr;
  if (posix_memalign(&mem, DirectIoAlignment(), kDirectStagingBytes) != 0) {
    // Worded as every other allocation failure of a run ("out of memory: ..."), so that a
    // caller (and test_memory's address-space sweep) knows it for one.
    return Error(ErrorCode::kIo, "out of memory: cannot allocate a " +
                                     std::to_string(kDirectStagingBytes >> 20) +
                                     " MiB direct-I/O staging buffer for " + tmp_path_.string());
  }
  staging_ = static_cast<uint8_t*>(mem);
  return Status::Ok();
}

void OutputFile::FreeStaging() {
  std::lock_guard<std::mutex> lock(staging_mu_);
  if (staging_ == nullptr) return;
  {
    SpareStaging& s = Spares();
    std::lock_guard<std::mutex> spare_lock(s.mu);
    if (s.free.size() < SpareStaging::kMax) {
      s.free.push_back(std::exchange(staging_, nullptr));
      return;
    }
  }
  std::free(staging_);
  staging_ = nullptr;
}

Status OutputFile::Sync() {
  if (synced_) return *synced_;
  synced_ = SyncWritten();
  return *synced_;
}

Status OutputFile::SyncWritten() {
  if (direct()) {
    // Whole blocks still held (runs never joined to a direct write) go out directly; only
    // partial blocks are left for the page cache.
    std::vector<Held> ready;
    {
      std::lock_guard<std::mutex> lock(pending_mu_);
      TakeAllBlocks(&ready);
    }
    for (const Held& h : ready) QUENCH_RETURN_IF_ERROR(WriteHeld(h));
  }
  FreeStaging();
  direct_ok_.store(false);
  QUENCH_RETURN_IF_ERROR(FlushPartialBlocks());
  if (dfd_ >= 0) {
    close(dfd_);
    dfd_ = -1;
  }
  // One fsync covers both descriptors' writes: it flushes the inode's cached pages and the
  // disk's write cache, which direct writes may still sit in.
  if (FsyncRetrying(fd_) != 0) return IoError(tmp_path_, "fsync failed", errno);
  return Status::Ok();
}

Status OutputFile::Commit() {
  QUENCH_RETURN_IF_ERROR(Sync());
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
  FreeStaging();
  direct_ok_.store(false);
  {
    std::lock_guard<std::mutex> lock(pending_mu_);
    pending_.TakeAll();
  }
  if (dfd_ >= 0) {
    close(dfd_);
    dfd_ = -1;
  }
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

Status WriteAll(int fd, const fs::path& path, std::string_view bytes) {
  const char* p = bytes.data();
  size_t left = bytes.size();
  while (left > 0) {
    const ssize_t w = write(fd, p, left);
    if (w < 0 && errno == EINTR) continue;
    // write(2) returns 0 for a non-empty buffer only where no space is left.
    if (w <= 0) return IoError(path, "write failed", w < 0 ? errno : ENOSPC);
    p += w;
    left -= static_cast<size_t>(w);
  }
  return Status::Ok();
}

Status WriteFileReplacing(const fs::path& path, std::string_view bytes) {
  const fs::path tmp = TmpName(path);
  const int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return IoError(tmp, "cannot create", errno);
  if (Status s = WriteAll(fd, tmp, bytes); !s.ok()) {
    close(fd);
    unlink(tmp.c_str());
    return s;
  }
  if (close(fd) != 0 || rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    unlink(tmp.c_str());
    return IoError(path, "cannot write", err);
  }
  return Status::Ok();
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

int ReadWholeFile(const fs::path& path, std::string* text, bool* at_open) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (at_open != nullptr) *at_open = fd < 0;
  if (fd < 0) return errno;
  char buf[65536];
  ssize_t r;
  while ((r = read(fd, buf, sizeof buf)) != 0) {
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) break;
    text->append(buf, static_cast<size_t>(r));
  }
  const int err = r < 0 ? errno : 0;
  close(fd);
  return err;
}

Result<std::string> ReadFileToString(const fs::path& path) {
  std::string s;
  bool at_open = false;
  if (const int err = ReadWholeFile(path, &s, &at_open); err != 0) {
    return IoError(path, at_open ? "cannot open for reading" : "read failed", err);
  }
  return s;
}

Status WriteFolderAtomic(const fs::path& out, const std::function<Status(const fs::path&)>& write) {
  std::error_code ec;
  const fs::path target = fs::absolute(out, ec).lexically_normal();
  const fs::path parent = target.parent_path();
  QUENCH_RETURN_IF_ERROR(MakeFolders(parent));
  const fs::path tmp =
      parent / ("." + target.filename().string() + ".quench-tmp-" + std::to_string(getpid()));
  fs::remove_all(tmp, ec);
  if (!fs::create_directory(tmp, ec)) {
    return Error(ErrorCode::kIo, tmp.string() + ": cannot create: " + ec.message());
  }
  Status st = write(tmp);
  if (st.ok()) {
    fs::rename(tmp, target, ec);
    if (ec) {
      st = Error(ErrorCode::kIo, target.string() + ": cannot rename into place: " + ec.message());
    }
  }
  if (!st.ok()) {
    fs::remove_all(tmp, ec);
    return st;
  }
  // A rename that may not last is no output either: taken back, so that the error stands alone.
  st = SyncDirectory(parent);
  if (!st.ok()) fs::remove_all(target, ec);
  return st;
}

Status MakeFolders(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Error(ErrorCode::kIo, dir.string() + ": cannot create: " + ec.message());
  return Status::Ok();
}

Status SyncDirectory(const fs::path& dir) {
  int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return IoError(dir, "cannot open folder", errno);
  int rc = FsyncRetrying(fd);
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
