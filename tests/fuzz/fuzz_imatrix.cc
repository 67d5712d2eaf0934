// The importance-matrix reader (src/calib/imatrix_file.cc: GGUF through src/format/gguf.cc,
// and the legacy .dat layout) on whole files. Properties: reading never crashes or reads past
// the file; an accepted file's entries have sums for every column of every matrix, a count per
// matrix (or one, legacy), and only finite, non-negative values.
#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>

#include "calib/imatrix.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using quench::fuzz::Require;
  static const int fd = memfd_create("fuzz.imatrix", MFD_CLOEXEC);
  if (fd < 0 || ftruncate(fd, 0) != 0) return 0;
  if (size > 0 && pwrite(fd, data, size, 0) != static_cast<ssize_t>(size)) return 0;
  auto im = quench::calib::ReadImatrix("/proc/self/fd/" + std::to_string(fd));
  if (!im.ok()) {
    Require(!im.status().message().empty(), "an error without a message");
    return 0;
  }
  Require(!im->entries.empty(), "an accepted file without entries");
  for (const auto& e : im->entries) {
    if (im->layout == "gguf") {
      Require(e.sum_x2.size() == e.cols * e.mats, "sums do not cover columns x matrices");
      Require(e.counts.size() == e.mats, "not one count per matrix");
    } else {
      Require(e.counts.size() == 1 && !e.sum_x2.empty(), "legacy entry without values");
    }
    for (double v : e.sum_x2) Require(std::isfinite(v) && v >= 0, "a NaN, Inf or negative sum");
    for (int64_t c : e.counts) Require(c >= 0, "a negative count");
  }
  return 0;
}
