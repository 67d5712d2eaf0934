// The I/O floor for scripts/bench: the time to read every input shard once and to write as
// many bytes as quench's output, the way quench writes them (a file per shard created under
// a temporary name, space reserved, written in chunks with pwrite, fsynced, renamed), with no
// computation in between. quench's time divided by this is the "ratio to the floor".
//
// To be a floor, it does no more data movement than quench and overlaps what quench overlaps:
//   * inputs are memory-mapped (MADV_SEQUENTIAL) as quench does; a reader thread loads every
//     input byte once (a running XOR) up to two chunks ahead of the writer, having asked for
//     the next kPrefetchBytes of input with MADV_WILLNEED (quench's input stage asks for the
//     same 64 MiB ahead); without this a cold read is slower than quench's and the floor is
//     no floor; the writer pwrites each chunk's share of the output (see below), then drops
//     the chunk's pages (MADV_DONTNEED) as quench does;
//   * writes are O_DIRECT in whole 4 KiB blocks from a huge-page buffer (quench's default;
//     the short last block goes through the page cache), or with QUENCH_IOFLOOR_WRITE=buffered
//     straight from the mapping through the page cache
//     with writeback started at once (sync_file_range, as quench's --no-direct-io does);
//     scripts/bench runs both and takes the faster as the floor;
//   * a finished file is fsynced and renamed on a helper thread while the next input is read,
//     and the folder is fsynced at the end; the clock stops when every file is durable.
// QUENCH_IOFLOOR_MODE=read selects the older, slower floor instead: one thread, read() into a
// CHUNK_BYTES buffer, pwrite from it (an extra copy of every input byte).
//
// usage: quench-iofloor OUT_DIR OUT_BYTES CHUNK_BYTES INPUT...   (prints seconds)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

void WriteAll(int fd, const char* p, uint64_t n, uint64_t off) {
  while (n > 0) {
    ssize_t w = pwrite(fd, p, n, static_cast<off_t>(off));
    if (w <= 0) {
      if (w < 0 && errno == EINTR) continue;
      std::perror("pwrite");
      std::exit(1);
    }
    p += w;
    n -= static_cast<uint64_t>(w);
    off += static_cast<uint64_t>(w);
  }
}

struct Output {
  int fd = -1;
  int dfd = -1;  // O_DIRECT descriptor of the same file, or -1 (buffered writes)
  std::filesystem::path tmp, dst;
};

// Direct writes (O_DIRECT, as quench writes by default) unless QUENCH_IOFLOOR_WRITE=buffered.
bool DirectWrites() {
  const char* w = std::getenv("QUENCH_IOFLOOR_WRITE");
  return w == nullptr || std::strcmp(w, "buffered") != 0;
}

Output OpenOutput(const std::filesystem::path& out_dir, size_t i, uint64_t share) {
  Output o;
  o.tmp = out_dir / ("floor-" + std::to_string(i) + ".tmp");
  o.dst = out_dir / ("floor-" + std::to_string(i));
  o.fd = open(o.tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (o.fd < 0) {
    std::perror("open output");
    std::exit(1);
  }
  if (share > 0) posix_fallocate(o.fd, 0, static_cast<off_t>(share));
  if (DirectWrites()) o.dfd = open(o.tmp.c_str(), O_WRONLY | O_DIRECT);
  return o;
}

std::future<int> CommitAsync(Output o) {
  return std::async(std::launch::async, [o] {
    if (o.dfd >= 0) close(o.dfd);
    int rc = fsync(o.fd);
    close(o.fd);
    std::filesystem::rename(o.tmp, o.dst);
    return rc;
  });
}

// Each input's share of the output, so reading and writing interleave as in quench.
std::vector<uint64_t> Shares(const std::vector<uint64_t>& sizes, uint64_t out_total) {
  uint64_t in_total = 0, given = 0;
  for (uint64_t s : sizes) in_total += s;
  std::vector<uint64_t> shares;
  for (size_t i = 0; i < sizes.size(); ++i) {
    const uint64_t share = i + 1 == sizes.size()
                               ? out_total - given
                               : static_cast<uint64_t>(static_cast<long double>(out_total) *
                                                       sizes[i] / std::max<uint64_t>(in_total, 1));
    shares.push_back(share);
    given += share;
  }
  return shares;
}

// Legacy floor: one thread, read() + pwrite from the buffer.
std::vector<std::future<int>> RunRead(const std::filesystem::path& out_dir,
                                      const std::vector<std::string>& inputs,
                                      const std::vector<uint64_t>& sizes,
                                      const std::vector<uint64_t>& shares, uint64_t chunk) {
  std::vector<char> buf(chunk);
  std::vector<std::future<int>> commits;
  for (size_t i = 0; i < inputs.size(); ++i) {
    int in = open(inputs[i].c_str(), O_RDONLY);
    if (in < 0) {
      std::perror("open input");
      std::exit(1);
    }
    Output o = OpenOutput(out_dir, i, shares[i]);
    uint64_t pos = 0, off_out = 0;
    for (;;) {
      ssize_t r = read(in, buf.data(), chunk);
      if (r <= 0) break;
      pos += static_cast<uint64_t>(r);
      const uint64_t upto = static_cast<uint64_t>(static_cast<long double>(shares[i]) * pos /
                                                  std::max<uint64_t>(sizes[i], 1));
      const uint64_t want = std::min<uint64_t>(upto - off_out, static_cast<uint64_t>(r));
      if (want > 0) WriteAll(o.fd, buf.data(), want, off_out);
      off_out += want;
    }
    while (off_out < shares[i]) {
      const uint64_t want = std::min<uint64_t>(chunk, shares[i] - off_out);
      WriteAll(o.fd, buf.data(), want, off_out);
      off_out += want;
    }
    close(in);
    commits.push_back(CommitAsync(o));
  }
  return commits;
}

// Default floor: mmap, a reader thread loading every byte ahead, the writer pwriting from the
// mapping.
std::vector<std::future<int>> RunMmap(const std::filesystem::path& out_dir,
                                      const std::vector<std::string>& inputs,
                                      const std::vector<uint64_t>& sizes,
                                      const std::vector<uint64_t>& shares, uint64_t chunk) {
  struct Chunk {
    size_t input;
    uint64_t off, len;
  };
  std::vector<const char*> maps(inputs.size(), nullptr);
  std::vector<Chunk> chunks;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (sizes[i] == 0) continue;
    int fd = open(inputs[i].c_str(), O_RDONLY);
    void* p = fd < 0 ? MAP_FAILED : mmap(nullptr, sizes[i], PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      std::perror("open/mmap input");
      std::exit(1);
    }
    close(fd);
    madvise(p, sizes[i], MADV_SEQUENTIAL);
    maps[i] = static_cast<const char*>(p);
    for (uint64_t off = 0; off < sizes[i]; off += chunk) {
      chunks.push_back({i, off, std::min(chunk, sizes[i] - off)});
    }
  }

  constexpr size_t kAhead = 2;
  constexpr uint64_t kPrefetchBytes = 64ull << 20;  // kReadAheadBytes in src/pipeline/pipeline.cc
  const size_t prefetch_chunks = std::max<size_t>(1, kPrefetchBytes / chunk);
  auto prefetch = [&](size_t k) {
    if (k >= chunks.size()) return;
    const Chunk& c = chunks[k];
    madvise(const_cast<char*>(maps[c.input] + c.off), c.len, MADV_WILLNEED);
  };
  std::mutex mu;
  std::condition_variable cv;
  size_t loaded = 0, written = 0;
  std::atomic<uint64_t> sink{0};
  std::thread reader([&] {
    uint64_t x = 0;
    for (size_t k = 0; k + 1 < prefetch_chunks; ++k) prefetch(k);
    for (size_t k = 0; k < chunks.size(); ++k) {
      prefetch(k + prefetch_chunks - 1);
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return k < written + kAhead; });
      }
      const Chunk& c = chunks[k];
      const char* p = maps[c.input] + c.off;
      uint64_t words = c.len / 8, w;
      for (uint64_t j = 0; j < words; ++j) {
        std::memcpy(&w, p + 8 * j, 8);
        x ^= w;
      }
      for (uint64_t j = words * 8; j < c.len; ++j) x ^= static_cast<unsigned char>(p[j]);
      {
        std::lock_guard<std::mutex> lock(mu);
        loaded = k + 1;
      }
      cv.notify_all();
    }
    sink = x;
  });

  std::vector<std::future<int>> commits;
  std::vector<char> zeros;
  // The direct writes' source: one chunk, 2 MiB-aligned, huge pages where THP allows, touched
  // before the clock matters (its bytes are not the output's; the floor only moves bytes).
  constexpr uint64_t kHuge = 2ull << 20;
  const uint64_t direct_len = (chunk + kHuge - 1) / kHuge * kHuge;
  void* direct_mem = nullptr;
  if (posix_memalign(&direct_mem, kHuge, direct_len) != 0) {
    std::perror("posix_memalign");
    std::exit(1);
  }
  madvise(direct_mem, direct_len, MADV_HUGEPAGE);
  std::memset(direct_mem, 0x5a, direct_len);
  const char* direct_buf = static_cast<const char*>(direct_mem);
  Output o;
  uint64_t off_out = 0;
  for (size_t i = 0, k = 0; i < inputs.size(); ++i) {
    o = OpenOutput(out_dir, i, shares[i]);
    off_out = 0;
    for (; k < chunks.size() && chunks[k].input == i; ++k) {
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return loaded > k; });
      }
      const Chunk& c = chunks[k];
      const uint64_t upto = static_cast<uint64_t>(static_cast<long double>(shares[i]) *
                                                  (c.off + c.len) / sizes[i]);
      uint64_t want = std::min<uint64_t>(upto - off_out, c.len);
      if (o.dfd >= 0) {
        // Whole 4 KiB blocks from a huge-page buffer (what quench writes from; physically
        // contiguous memory goes to the disk in fewer requests than the mapping's pages); the
        // file's short last block is written through the page cache below, as quench does.
        want = want / 4096 * 4096;
        if (want > 0) WriteAll(o.dfd, direct_buf, want, off_out);
      } else if (want > 0) {
        WriteAll(o.fd, maps[i] + c.off, want, off_out);
        // quench starts writeback of every buffered write at once (OutputFile::WriteAt).
        sync_file_range(o.fd, static_cast<off_t>(off_out), static_cast<off_t>(want),
                        SYNC_FILE_RANGE_WRITE);
      }
      off_out += want;
      madvise(const_cast<char*>(maps[i] + c.off), c.len, MADV_DONTNEED);
      {
        std::lock_guard<std::mutex> lock(mu);
        written = k + 1;
      }
      cv.notify_all();
    }
    // Only when the output is larger than the input (never for FP8 schemes).
    while (off_out < shares[i]) {
      zeros.resize(chunk);
      const uint64_t want = std::min<uint64_t>(chunk, shares[i] - off_out);
      WriteAll(o.fd, zeros.data(), want, off_out);
      off_out += want;
    }
    commits.push_back(CommitAsync(o));
  }
  reader.join();
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (maps[i]) munmap(const_cast<char*>(maps[i]), sizes[i]);
  }
  if (sink.load() == 0x5eed) std::fprintf(stderr, " ");  // keep the loads
  std::free(direct_mem);
  return commits;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: quench-iofloor OUT_DIR OUT_BYTES CHUNK_BYTES INPUT...\n");
    return 2;
  }
  const std::filesystem::path out_dir = argv[1];
  const uint64_t out_total = std::strtoull(argv[2], nullptr, 10);
  const uint64_t chunk =
      (std::max<uint64_t>(4096, std::strtoull(argv[3], nullptr, 10)) + 4095) / 4096 * 4096;
  std::vector<std::string> inputs(argv + 4, argv + argc);
  std::filesystem::create_directories(out_dir);

  std::vector<uint64_t> sizes;
  for (const auto& in : inputs) sizes.push_back(std::filesystem::file_size(in));
  const std::vector<uint64_t> shares = Shares(sizes, out_total);
  const char* mode = std::getenv("QUENCH_IOFLOOR_MODE");
  const bool legacy = mode != nullptr && std::strcmp(mode, "read") == 0;

  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::future<int>> commits = legacy
                                              ? RunRead(out_dir, inputs, sizes, shares, chunk)
                                              : RunMmap(out_dir, inputs, sizes, shares, chunk);
  for (auto& c : commits) {
    if (c.get() != 0) {
      std::perror("fsync");
      return 1;
    }
  }
  int dfd = open(out_dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!std::getenv("QUENCH_IOFLOOR_KEEP")) std::filesystem::remove_all(out_dir);
  std::printf("%.6f\n", secs);
  return 0;
}
