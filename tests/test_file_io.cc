// OutputFile: whatever the write mode, the committed file holds exactly the bytes written at
// their offsets (the expected image is the random source itself), whichever order, thread,
// size and memory alignment the writes come in; bytes nobody wrote stay zero; an uncommitted
// file leaves nothing behind; a file system that takes O_DIRECT at open and then refuses a
// write (EINVAL, simulated by interposing pwrite) still gets every byte, written buffered.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "format/file_io.h"
#include "format/pending_runs.h"
#include "tests/test_util.h"

// Fault injection: this executable's pwrite64 takes precedence over libc's for every call in
// it, OutputFile's included (meson builds with _FILE_OFFSET_BITS=64, under which glibc's
// headers send pwrite and pwritev calls to pwrite64 and pwritev64; the static_assert below
// keeps that true). While g_direct_writes_left is non-negative, writes on an O_DIRECT descriptor
// succeed that many times and then fail with EINVAL, as a file system that accepts O_DIRECT
// at open but not the alignment of a write would.
static_assert(sizeof(off_t) == 8, "pwrite must resolve to pwrite64");
std::atomic<long> g_direct_writes_left{-1};
std::atomic<long> g_refused{0};
std::atomic<long> g_direct_calls{0};  // pwrite calls on O_DIRECT descriptors

// Counts a call on `fd` and says whether to refuse it (errno set to EINVAL).
static bool RefuseDirect(int fd) {
  const bool direct = (fcntl(fd, F_GETFL) & O_DIRECT) != 0;
  if (direct) ++g_direct_calls;
  if (g_direct_writes_left.load() >= 0 && direct) {
    if (g_direct_writes_left.fetch_sub(1) <= 0) {
      g_direct_writes_left.store(0);
      ++g_refused;
      errno = EINVAL;
      return true;
    }
  }
  return false;
}

extern "C" ssize_t pwrite64(int fd, const void* buf, size_t n, off_t off) {
  if (RefuseDirect(fd)) return -1;
  return static_cast<ssize_t>(syscall(SYS_pwrite64, fd, buf, n, off));
}

// The same for pwritev64 (OutputFile joins held blocks to a direct write with it): one call,
// counted and refused like a pwrite.
extern "C" ssize_t pwritev64(int fd, const struct iovec* iov, int iovcnt, off_t off) {
  if (RefuseDirect(fd)) return -1;
  // On 64-bit targets the whole offset goes in the low word (the kernel's pos_from_hilo).
  return static_cast<ssize_t>(syscall(SYS_pwritev, fd, iov, iovcnt, off, 0L));
}

namespace quench {
namespace {

using testing::ReadBytes;
using testing::TempDir;

struct Range {
  uint64_t offset, len;
};

// Cuts [0, size) into disjoint ranges of 1 byte to 3 MiB, shuffled: small pieces that share
// blocks, pieces inside one block, pieces OutputFile holds back to join with their neighbours
// (under 1 MiB of whole blocks), and large ones written directly (with the held blocks
// beside them joined on).
std::vector<Range> CutIntoRanges(uint64_t size, std::mt19937_64& rng) {
  std::vector<Range> ranges;
  std::uniform_int_distribution<int> kind(0, 4);
  for (uint64_t at = 0; at < size;) {
    uint64_t len;
    switch (kind(rng)) {
      case 0: len = 1 + rng() % 64; break;
      case 1: len = 1 + rng() % 5000; break;
      case 2: len = 4096 * (1 + rng() % 8); break;
      case 3: len = 1 + rng() % (600 << 10); break;
      default: len = 1 + rng() % (3 << 20); break;
    }
    len = std::min(len, size - at);
    ranges.push_back({at, len});
    at += len;
  }
  std::shuffle(ranges.begin(), ranges.end(), rng);
  return ranges;
}

// Whether the file wrote direct: when opened, and once every range was written (a refused
// direct write switches it to buffered).
struct DirectUse {
  bool at_open = false, after_writes = false;
};

// Writes `image` through an OutputFile in `mode`, the ranges split among `threads` threads,
// each write from a copy of the bytes at a random memory misalignment (0 to 4095).
DirectUse WriteImage(const std::filesystem::path& path, const std::string& image,
                     const std::vector<Range>& ranges, WriteMode mode, int threads) {
  auto f = OutputFile::Create(path, image.size(), mode);
  REQUIRE(f.ok());
  OutputFile& out = **f;
  DirectUse use;
  use.at_open = out.direct();
  std::atomic<size_t> next{0};
  std::atomic<int> failures{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      std::mt19937_64 rng(1000 + t);
      std::vector<uint8_t> copy;
      for (size_t i; (i = next.fetch_add(1)) < ranges.size();) {
        const Range& r = ranges[i];
        const size_t shift = rng() % 4096;
        copy.assign(shift + r.len, 0);
        std::memcpy(copy.data() + shift, image.data() + r.offset, r.len);
        if (!out.WriteAt(r.offset, copy.data() + shift, r.len).ok()) ++failures;
      }
    });
  }
  for (auto& th : pool) th.join();
  use.after_writes = out.direct();
  CHECK(failures.load() == 0);
  REQUIRE(out.Commit().ok());
  return use;
}

std::string RandomImage(uint64_t size, std::mt19937_64& rng) {
  std::string s(size, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

TEST_SUITE("file_io") {
  TEST_CASE("every mode writes exactly the image, from any order, thread and alignment") {
    TempDir dir;
    std::mt19937_64 rng(7);
    // Sizes: under one block, a whole number of blocks, and several MiB with a short tail.
    for (uint64_t size : {uint64_t{3000}, uint64_t{64 << 10}, uint64_t{(5 << 20) + 1234}}) {
      const std::string image = RandomImage(size, rng);
      const std::vector<Range> ranges = CutIntoRanges(size, rng);
      for (WriteMode mode : {WriteMode::kDirect, WriteMode::kBuffered}) {
        for (int threads : {1, 4}) {
          CAPTURE(size);
          CAPTURE(threads);
          CAPTURE(mode == WriteMode::kDirect);
          const auto path = dir.path() / "out.bin";
          const DirectUse use = WriteImage(path, image, ranges, mode, threads);
          if (mode == WriteMode::kBuffered) CHECK_FALSE(use.at_open);
          const std::string got = ReadBytes(path);
          REQUIRE(got.size() == image.size());
          CHECK(got == image);
          CHECK_FALSE(std::filesystem::exists(dir.path() / "out.bin.quench-tmp"));
        }
      }
    }
  }

  TEST_CASE("direct writes are used where the file system takes them") {
    // Guards against the direct path silently never running in the test above: ext4, xfs and
    // btrfs take O_DIRECT, so there it must be in use; elsewhere the fallback is reported.
    TempDir dir;
    auto f = OutputFile::Create(dir.path() / "probe.bin", 1 << 20, WriteMode::kDirect);
    REQUIRE(f.ok());
    std::vector<uint8_t> block(1 << 20, 0x5a);
    REQUIRE((*f)->WriteAt(0, block.data(), block.size()).ok());
    const bool direct = (*f)->direct();
    REQUIRE((*f)->Commit().ok());
    struct statfs sfs {};
    REQUIRE(statfs(dir.path().c_str(), &sfs) == 0);
    const auto magic = static_cast<unsigned long>(sfs.f_type);
    const bool takes_direct = magic == 0xEF53 /* ext2/3/4 */ || magic == 0x58465342 /* xfs */ ||
                              magic == 0x9123683E /* btrfs */;
    char magic_hex[32];
    std::snprintf(magic_hex, sizeof magic_hex, "0x%lx", magic);
    const std::string note = std::string("file system magic ") + magic_hex +
                             ", O_DIRECT in use: " + (direct ? "yes" : "no");
    MESSAGE(note);
    if (takes_direct) CHECK(direct);
    CHECK(ReadBytes(dir.path() / "probe.bin") == std::string(1 << 20, '\x5a'));
  }

  TEST_CASE("bytes no write covers stay zero, in blocks shared with written bytes") {
    TempDir dir;
    const uint64_t size = 3 * 4096 + 100;
    std::string expected(size, '\0');
    auto f = OutputFile::Create(dir.path() / "gaps.bin", size, WriteMode::kDirect);
    REQUIRE(f.ok());
    // [10, 20) and [4000, 9000) leave most of block 0 and part of block 2 unwritten; the last
    // short block is written whole.
    const std::vector<Range> writes = {{10, 10}, {4000, 5000}, {3 * 4096, 100}};
    for (const Range& r : writes) {
      std::string bytes(r.len, '\0');
      for (uint64_t i = 0; i < r.len; ++i) bytes[i] = static_cast<char>(1 + (r.offset + i) % 250);
      expected.replace(r.offset, r.len, bytes);
      REQUIRE((*f)->WriteAt(r.offset, bytes.data(), r.len).ok());
    }
    REQUIRE((*f)->Commit().ok());
    CHECK(ReadBytes(dir.path() / "gaps.bin") == expected);
  }

  TEST_CASE("a direct write refused with EINVAL falls back to buffered, no byte lost") {
    TempDir dir;
    std::mt19937_64 rng(19);
    const uint64_t size = (12 << 20) + 777;
    const std::string image = RandomImage(size, rng);
    const std::vector<Range> ranges = CutIntoRanges(size, rng);
    // A first pass with nothing refused counts the direct writes (-1); then the refusal comes
    // at the first one, the second, half-way and at the last (blocks gathered from pieces are
    // pending in each case). One thread writes in a fixed order, so its count is exact; four
    // threads interleave differently from run to run, and held runs join differently with
    // them, so their count varies: their late refusals come at a quarter and half of the
    // counting pass's, well inside any run's.
    for (int threads : {1, 4}) {
      long total = 0;
      for (long allowed : {-1L, 0L, 1L, -2L, -3L}) {
        if (allowed == -2) allowed = threads == 1 ? total / 2 : total / 4;
        if (allowed == -3) allowed = threads == 1 ? total - 1 : total / 2;
        CAPTURE(allowed);
        CAPTURE(threads);
        const auto path = dir.path() / "fallback.bin";
        g_refused = 0;
        g_direct_calls = 0;
        g_direct_writes_left = allowed;
        // Refusals end with this pass, even if a REQUIRE inside WriteImage ends it early.
        struct StopRefusing {
          ~StopRefusing() { g_direct_writes_left = -1; }
        } stop_refusing;
        const DirectUse use = WriteImage(path, image, ranges, WriteMode::kDirect, threads);
        if (allowed == -1) {
          total = g_direct_calls.load();
          if (use.at_open) CHECK(total >= 4);
          CHECK(use.after_writes == use.at_open);
        } else if (use.at_open) {
          // The injected refusal happened and switched the file to buffered writes.
          CHECK(g_refused.load() >= 1);
          CHECK_FALSE(use.after_writes);
        }
        CHECK(ReadBytes(path) == image);
      }
    }
  }

  TEST_CASE("files written at once and one after another each get exactly their own image") {
    // A file's staging buffer (unaligned direct writes, held runs) goes to the next file that
    // needs one once the file is synced: a buffer still in use must never be handed out, and
    // what a buffer held for an earlier file must never reach a later one's bytes.
    TempDir dir;
    std::mt19937_64 rng(23);
    const uint64_t size = (6 << 20) + 321;
    std::vector<std::string> images;
    std::vector<std::vector<Range>> cuts;
    for (int i = 0; i < 6; ++i) {
      images.push_back(RandomImage(size, rng));
      cuts.push_back(CutIntoRanges(size, rng));
    }
    const auto path = [&](int i) { return dir.path() / ("f" + std::to_string(i) + ".bin"); };
    // Three files at once, each by two threads: one commits while the others still write.
    {
      std::vector<std::thread> files;
      for (int i = 0; i < 3; ++i) {
        files.emplace_back(
            [&, i] { WriteImage(path(i), images[i], cuts[i], WriteMode::kDirect, 2); });
      }
      for (auto& t : files) t.join();
    }
    // Then one after another (each takes what the last one gave back), and one more after
    // the spares are freed.
    WriteImage(path(3), images[3], cuts[3], WriteMode::kDirect, 4);
    WriteImage(path(4), images[4], cuts[4], WriteMode::kDirect, 1);
    OutputFile::ReleaseSpareStaging();
    WriteImage(path(5), images[5], cuts[5], WriteMode::kDirect, 4);
    for (int i = 0; i < 6; ++i) {
      CAPTURE(i);
      CHECK(ReadBytes(path(i)) == images[i]);
    }
  }

  TEST_CASE("held runs join adjacent pieces, refuse overlaps and split where blocks are taken") {
    std::mt19937_64 rng(3);
    const std::string src = RandomImage(20000, rng);
    const auto bytes = [&](uint64_t at) {
      return reinterpret_cast<const uint8_t*>(src.data()) + at;
    };
    using Runs = std::vector<std::pair<uint64_t, uint64_t>>;
    PendingRuns held(4096);
    CHECK(held.Add(100, bytes(100), 50));
    CHECK(held.Add(150, bytes(150), 50));  // after a run
    CHECK(held.Add(50, bytes(50), 50));    // before one
    CHECK(held.Add(300, bytes(300), 100));
    CHECK(held.Runs() == Runs{{50, 200}, {300, 400}});
    CHECK(held.Add(200, bytes(200), 100));  // between two: one run
    CHECK(held.Runs() == Runs{{50, 400}});
    CHECK_FALSE(held.Add(120, bytes(120), 10));  // inside a run
    CHECK_FALSE(held.Add(20, bytes(20), 31));    // into a run's start
    CHECK_FALSE(held.Add(399, bytes(399), 5));   // over a run's end
    CHECK(held.bytes() == 350);
    CHECK(held.RunAt(400) == std::pair<uint64_t, uint64_t>{50, 400});  // ending there
    CHECK(held.RunAt(60) == std::pair<uint64_t, uint64_t>{50, 400});
    CHECK(held.RunAt(401) == std::pair<uint64_t, uint64_t>{401, 401});
    CHECK(held.Add(0, bytes(0), 50));
    CHECK(held.Add(400, bytes(400), 20000 - 400));
    CHECK(held.Runs() == Runs{{0, 20000}});
    // Pieces [0, 50) [50, 100) ... [400, 20000): the taken range cuts the last one twice.
    const std::vector<HeldPiece> mid = held.Take(4096, 12288);
    REQUIRE(mid.size() == 1);
    CHECK(mid[0].at == 4096);
    CHECK(mid[0].bytes == src.substr(4096, 8192));
    CHECK(held.Runs() == Runs{{0, 4096}, {12288, 20000}});
    CHECK(held.bytes() == 20000 - 8192);
    CHECK(held.Take(4096, 8192).empty());  // no longer held
    CHECK(held.Take(0, 12288).empty());    // not one run
    // A range over several pieces comes out in file order, and copies back to back.
    const std::vector<HeldPiece> head = held.Take(100, 300);
    REQUIRE(head.size() == 3);
    std::string joined(200, '\0');
    CopyPieces(head, reinterpret_cast<uint8_t*>(joined.data()));
    CHECK(joined == src.substr(100, 200));
    CHECK(held.Runs() == Runs{{0, 100}, {300, 4096}, {12288, 20000}});
    uint64_t covered = 0;
    for (const HeldPiece& q : held.TakeAll()) {  // each piece its source's bytes
      CHECK(q.bytes == src.substr(q.at, q.bytes.size()));
      CHECK_FALSE((q.at < 300 && q.at + q.bytes.size() > 100));    // none of the taken ranges
      CHECK_FALSE((q.at < 12288 && q.at + q.bytes.size() > 4096));
      covered += q.bytes.size();
    }
    CHECK(covered == 20000 - 8192 - 200);
    CHECK(held.empty());
    CHECK(held.bytes() == 0);
  }

  TEST_CASE("small writes reach the disk joined; held blocks go out with the write beside them") {
    TempDir dir;
    std::mt19937_64 rng(11);
    // 1,000 pieces of 1-12 KiB in file order, as a shard of small tensors gives: a request
    // each before; now a request per MiB of them (plus the last, short block at Commit).
    const uint64_t size = (6 << 20) + 100;
    const std::string image = RandomImage(size, rng);
    g_direct_calls = 0;
    auto f = OutputFile::Create(dir.path() / "small.bin", size, WriteMode::kDirect);
    REQUIRE(f.ok());
    const bool direct = (*f)->direct();
    for (uint64_t at = 0; at < size;) {
      const uint64_t len = std::min<uint64_t>(size - at, 1024 + rng() % (11 << 10));
      REQUIRE((*f)->WriteAt(at, image.data() + at, len).ok());
      at += len;
    }
    REQUIRE((*f)->Commit().ok());
    CHECK(ReadBytes(dir.path() / "small.bin") == image);
    if (direct) CHECK(g_direct_calls.load() <= 7);

    // A small write held, then a large one right after it: the held bytes and the large
    // write's unaligned head make whole blocks, which go out in the large write's request.
    g_direct_calls = 0;
    auto g = OutputFile::Create(dir.path() / "joined.bin", 3 << 20, WriteMode::kDirect);
    REQUIRE(g.ok());
    std::vector<uint8_t> aligned_copy((3 << 20) + 8192);
    uint8_t* base = aligned_copy.data() +
                    (4096 - reinterpret_cast<uintptr_t>(aligned_copy.data()) % 4096);
    std::memcpy(base, image.data(), 3 << 20);  // at addresses like its file offsets
    REQUIRE((*g)->WriteAt(0, base, 5000).ok());
    CHECK(g_direct_calls.load() == 0);
    REQUIRE((*g)->WriteAt(5000, base + 5000, (3 << 20) - 5000).ok());
    if ((*g)->direct()) CHECK(g_direct_calls.load() == 1);
    REQUIRE((*g)->Commit().ok());
    CHECK(ReadBytes(dir.path() / "joined.bin") == image.substr(0, 3 << 20));
  }

  TEST_CASE("Sync writes every byte under the temporary name; Commit then only publishes") {
    // The staged index and config.json are synced beside the last shard's commit and
    // renamed later: after Sync the temporary file must hold the whole image (held runs and
    // the short last block included) with the final name absent, and Commit must publish
    // exactly that image. A synced file never committed leaves neither name.
    for (const WriteMode mode : {WriteMode::kBuffered, WriteMode::kDirect}) {
      CAPTURE(static_cast<int>(mode));
      TempDir dir;
      std::mt19937_64 rng(23);
      const uint64_t size = (2 << 20) + 4096 * 3 + 555;
      const std::string image = RandomImage(size, rng);
      auto f = OutputFile::Create(dir.path() / "s.bin", size, mode);
      REQUIRE(f.ok());
      // Small pieces out of order (held in direct mode), then the rest in one write.
      REQUIRE((*f)->WriteAt(100, image.data() + 100, 900).ok());
      REQUIRE((*f)->WriteAt(0, image.data(), 100).ok());
      REQUIRE((*f)->WriteAt(size - 555, image.data() + size - 555, 555).ok());
      REQUIRE((*f)->WriteAt(1000, image.data() + 1000, size - 555 - 1000).ok());
      REQUIRE((*f)->Sync().ok());
      REQUIRE((*f)->Sync().ok());  // once done, a no-op
      CHECK_FALSE(std::filesystem::exists(dir.path() / "s.bin"));
      CHECK(ReadBytes(dir.path() / "s.bin.quench-tmp") == image);
      REQUIRE((*f)->Commit().ok());
      CHECK(ReadBytes(dir.path() / "s.bin") == image);
      CHECK_FALSE(std::filesystem::exists(dir.path() / "s.bin.quench-tmp"));
      {
        auto g = OutputFile::Create(dir.path() / "t.bin", 4096, mode);
        REQUIRE(g.ok());
        REQUIRE((*g)->WriteAt(0, image.data(), 4096).ok());
        REQUIRE((*g)->Sync().ok());
      }
      CHECK_FALSE(std::filesystem::exists(dir.path() / "t.bin"));
      CHECK_FALSE(std::filesystem::exists(dir.path() / "t.bin.quench-tmp"));
    }
  }

  TEST_CASE("a file never committed leaves neither name behind") {
    TempDir dir;
    {
      auto f = OutputFile::Create(dir.path() / "x.bin", 1 << 20, WriteMode::kDirect);
      REQUIRE(f.ok());
      std::vector<uint8_t> bytes(300 << 10, 1);
      REQUIRE((*f)->WriteAt(1000, bytes.data(), bytes.size()).ok());
    }
    CHECK_FALSE(std::filesystem::exists(dir.path() / "x.bin"));
    CHECK_FALSE(std::filesystem::exists(dir.path() / "x.bin.quench-tmp"));
  }
}

}  // namespace
}  // namespace quench
