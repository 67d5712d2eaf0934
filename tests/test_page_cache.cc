// RangeCached (format/page_cache.h) against mincore(2), an independent account of the same
// pages: a file's ranges after its pages are dropped from the cache, after part of it is read
// back, and after all of it is; plus the edge cases (an empty range, a closed descriptor, a
// range past the end of the file). On a kernel without cachestat every range must be
// reported not cached (the caller then asks for it, as before).
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <string>
#include <vector>

#include "format/page_cache.h"
#include "tests/test_util.h"

namespace {

const uint64_t kPageBytes = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));

// Whether every page of [offset, offset + len) is resident, by mincore on a mapping of the file.
bool ResidentByMincore(int fd, uint64_t file_bytes, uint64_t offset, uint64_t len) {
  void* p = mmap(nullptr, file_bytes, PROT_READ, MAP_SHARED, fd, 0);
  REQUIRE(p != MAP_FAILED);
  const uint64_t begin = offset / kPageBytes, end = (offset + len + kPageBytes - 1) / kPageBytes;
  std::vector<unsigned char> v((file_bytes + kPageBytes - 1) / kPageBytes);
  REQUIRE(mincore(p, file_bytes, v.data()) == 0);
  munmap(p, file_bytes);
  for (uint64_t i = begin; i < end; ++i) {
    if ((v[i] & 1) == 0) return false;
  }
  return true;
}

bool KernelHasCachestat(int fd) {
  struct {
    uint64_t off, len;
  } range{0, 1};
  uint64_t st[5] = {};
  return syscall(451, fd, &range, st, 0) == 0 || errno != ENOSYS;
}

}  // namespace

TEST_CASE("RangeCached agrees with mincore as pages leave and enter the cache") {
  quench::testing::TempDir dir;
  const std::string path = (dir.path() / "f.bin").string();
  const uint64_t pages = 64, bytes = pages * kPageBytes + 123;  // a short last page
  {
    const int w = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    REQUIRE(w >= 0);
    std::string data(bytes, '\0');
    for (uint64_t i = 0; i < bytes; ++i) data[i] = static_cast<char>(i * 131 + 7);
    REQUIRE(write(w, data.data(), data.size()) == static_cast<ssize_t>(data.size()));
    REQUIRE(fsync(w) == 0);  // clean pages, which POSIX_FADV_DONTNEED drops
    close(w);
  }
  const int fd = open(path.c_str(), O_RDONLY);
  REQUIRE(fd >= 0);
  CHECK(quench::RangeCached(fd, 5, 0));  // nothing to ask for
  CHECK_FALSE(quench::RangeCached(-1, 0, kPageBytes));

  REQUIRE(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0);
  // Read back pages [8, 24) only (no read-ahead beyond them).
  REQUIRE(posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM) == 0);
  std::string buf(16 * kPageBytes, '\0');
  REQUIRE(pread(fd, buf.data(), buf.size(), static_cast<off_t>(8 * kPageBytes)) ==
          static_cast<ssize_t>(buf.size()));
  const bool cachestat = KernelHasCachestat(fd);
  const std::vector<std::pair<uint64_t, uint64_t>> ranges = {
      {0, bytes},                             // the whole file
      {8 * kPageBytes, 16 * kPageBytes},      // exactly what was read
      {8 * kPageBytes + 100, kPageBytes},     // unaligned, inside it, over two pages
      {7 * kPageBytes, 2 * kPageBytes},       // one page before it
      {23 * kPageBytes + 1, kPageBytes},      // one page after it
      {40 * kPageBytes, 3 * kPageBytes},      // outside it
      {pages * kPageBytes, 123},              // the short last page
  };
  for (int pass = 0; pass < 2; ++pass) {
    for (const auto& [off, len] : ranges) {
      CAPTURE(pass);
      CAPTURE(off);
      CAPTURE(len);
      const bool want = cachestat && ResidentByMincore(fd, bytes, off, len);
      CHECK(quench::RangeCached(fd, off, len) == want);
    }
    // Then all of it read: every range cached.
    std::string all(bytes, '\0');
    REQUIRE(pread(fd, all.data(), all.size(), 0) == static_cast<ssize_t>(all.size()));
  }
  if (cachestat) {
    CHECK(quench::RangeCached(fd, 0, bytes));
    // A range that runs past the end of the file is not all cached.
    CHECK_FALSE(quench::RangeCached(fd, 0, bytes + 4 * kPageBytes));
  }
  close(fd);
}
