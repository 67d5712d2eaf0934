// The I/O floor for scripts/bench: the time to read every input shard once and to write as
// many bytes as quench's output, the way quench writes them (a file per shard created under
// a temporary name, space reserved, written in chunks with pwrite, fsynced, renamed), with no
// computation in between. quench's time divided by this is the "ratio to the floor".
// Like quench, a finished file is fsynced and renamed on a helper thread while the next input is
// read, and the folder is fsynced at the end; the clock stops when every file is durable.
//
// usage: quench-iofloor OUT_DIR OUT_BYTES CHUNK_BYTES INPUT...
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <future>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: quench-iofloor OUT_DIR OUT_BYTES CHUNK_BYTES INPUT...\n");
    return 2;
  }
  const std::filesystem::path out_dir = argv[1];
  const uint64_t out_total = std::strtoull(argv[2], nullptr, 10);
  const uint64_t chunk = std::strtoull(argv[3], nullptr, 10);
  std::vector<std::string> inputs(argv + 4, argv + argc);
  std::filesystem::create_directories(out_dir);

  uint64_t in_total = 0;
  std::vector<uint64_t> sizes;
  for (const auto& in : inputs) {
    sizes.push_back(std::filesystem::file_size(in));
    in_total += sizes.back();
  }
  std::vector<char> buf(chunk);
  const auto t0 = std::chrono::steady_clock::now();
  volatile uint64_t sink = 0;
  uint64_t written = 0;
  std::vector<std::future<int>> commits;
  auto write_all = [](int fd, const char* p, uint64_t n, uint64_t off) {
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
  };
  for (size_t i = 0; i < inputs.size(); ++i) {
    // Each input's share of the output, so reading and writing interleave as in quench.
    const uint64_t share = i + 1 == inputs.size()
                               ? out_total - written
                               : out_total * sizes[i] / std::max<uint64_t>(in_total, 1);
    int in = open(inputs[i].c_str(), O_RDONLY);
    const auto tmp = out_dir / ("floor-" + std::to_string(i) + ".tmp");
    int out = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (in < 0 || out < 0) {
      std::perror("open");
      return 1;
    }
    if (share > 0) posix_fallocate(out, 0, static_cast<off_t>(share));
    uint64_t off_out = 0;
    for (;;) {
      ssize_t r = read(in, buf.data(), chunk);
      if (r <= 0) break;
      sink = sink + static_cast<unsigned char>(buf[0]);
      const uint64_t want = std::min<uint64_t>(
          {share - off_out, static_cast<uint64_t>(r),
           static_cast<uint64_t>(r) * share / std::max<uint64_t>(sizes[i], 1) + 1});
      if (want > 0) write_all(out, buf.data(), want, off_out);
      off_out += want;
    }
    while (off_out < share) {
      const uint64_t want = std::min<uint64_t>(chunk, share - off_out);
      write_all(out, buf.data(), want, off_out);
      off_out += want;
    }
    written += share;
    close(in);
    const auto dst = out_dir / ("floor-" + std::to_string(i));
    commits.push_back(std::async(std::launch::async, [out, tmp, dst] {
      int rc = fsync(out);
      close(out);
      std::filesystem::rename(tmp, dst);
      return rc;
    }));
  }
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
  std::filesystem::remove_all(out_dir);
  std::printf("%.6f\n", secs);
  return 0;
}
