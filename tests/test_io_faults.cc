// File system calls that fail, come back short or are interrupted (tests/fault_io.cc, loaded
// with LD_PRELOAD), one named call at a time: each error is reported as an I/O error (exit 4)
// naming the errno's text, what a finished run could not tidy is a warning (exit 0, the
// output complete), and short or interrupted calls change nothing. scripts/fuzz-io draws
// such faults at random; these are the ones it found, pinned.
#include <cerrno>
#include <cstring>

#include "test_util.h"

namespace qt = quench::testing;
namespace fs = std::filesystem;

namespace {

using Env = std::vector<std::pair<std::string, std::string>>;

fs::path FaultLib() {
  const char* lib = std::getenv("QUENCH_FAULT_IO_LIB");
  REQUIRE_MESSAGE((lib != nullptr && *lib != 0),
                  "QUENCH_FAULT_IO_LIB is not set: meson sets it to tests/fault_io.cc built");
  return lib;
}

// Runs quench with the fault library in `mode` (fail, short, eintr) and `env` added.
qt::RunResult RunFaulted(const std::vector<std::string>& args, const std::string& mode,
                         Env env = {}) {
  env.push_back({"LD_PRELOAD", FaultLib().string()});
  env.push_back({"QUENCH_FAULT_MODE", mode});
  std::vector<std::string> argv = {qt::QuenchBin().string()};
  argv.insert(argv.end(), args.begin(), args.end());
  return qt::RunCommand(argv, env);
}

// Every `call` on a path holding `path` fails with `err` (a file or folder that fails each
// time it is touched); with `nth`, only the nth such call and the `times` - 1 after it.
qt::RunResult RunFailing(const std::vector<std::string>& args, const std::string& call,
                         const std::string& path, int err = EIO, int nth = 1,
                         int times = 1000) {
  return RunFaulted(args, "fail",
                    {{"QUENCH_FAULT_CALL", call}, {"QUENCH_FAULT_PATH", path},
                     {"QUENCH_FAULT_ERRNO", std::to_string(err)},
                     {"QUENCH_FAULT_NTH", std::to_string(nth)},
                     {"QUENCH_FAULT_TIMES", std::to_string(times)}});
}

// The last line of stderr.
std::string LastLine(const std::string& err) {
  std::string s = err;
  while (!s.empty() && s.back() == '\n') s.pop_back();
  return s.substr(s.rfind('\n') == std::string::npos ? 0 : s.rfind('\n') + 1);
}

// An I/O error naming `what` and the errno's text.
void CheckIoError(const qt::RunResult& r, const std::string& what, int err = EIO) {
  CAPTURE(r.err);
  CHECK(r.exit_code == 4);
  const std::string last = LastLine(r.err);
  // verify's errors say which command they come from first (docs/convert-reference.md).
  CHECK((last.starts_with("quench: error: io:") || last.starts_with("quench: error: verify: io:")));
  CHECK(last.find(what) != std::string::npos);
  CHECK(last.find(std::strerror(err)) != std::string::npos);
}

std::vector<std::string> Convert(const fs::path& src, const fs::path& dst,
                                 std::vector<std::string> more = {}) {
  std::vector<std::string> args = {"convert", src.string(), dst.string(), "--scheme",
                                   "FP8_DYNAMIC", "-q"};
  args.insert(args.end(), more.begin(), more.end());
  return args;
}

fs::path TinyLlama() { return qt::DataDir() / "tiny-llama"; }

}  // namespace

TEST_CASE("short reads and writes, and interrupted calls, write the same bytes") {
  // Before: the run lock's one write(2) took a short count as a failure ("cannot write the
  // lock file"), and an fsync or posix_fallocate interrupted by a signal failed the run.
  qt::TempDir tmp;
  REQUIRE(qt::RunQuench(Convert(TinyLlama(), tmp / "want")).exit_code == 0);
  // A compressed-tensors source: its weight_shape tensors are read with pread at planning.
  const fs::path ct = qt::DataDir() / "golden/ctsrc/W8A16";
  REQUIRE(qt::RunQuench(Convert(ct, tmp / "want-ct")).exit_code == 0);
  for (const std::string mode : {"short", "eintr"}) {
    for (const std::vector<std::string>& how :
         {std::vector<std::string>{}, {"--no-direct-io"}, {"--threads", "1"}}) {
      CAPTURE(mode);
      CAPTURE(how.size());
      const fs::path dst = tmp / ("got-" + mode + std::to_string(how.size()));
      auto r = RunFaulted(Convert(TinyLlama(), dst, how), mode);
      CAPTURE(r.err);
      REQUIRE(r.exit_code == 0);
      CHECK(qt::CheckSameFiles(tmp / "want", dst) > 0);
      const fs::path dst_ct = tmp / ("got-ct-" + mode + std::to_string(how.size()));
      r = RunFaulted(Convert(ct, dst_ct, how), mode);
      CAPTURE(r.err);
      REQUIRE(r.exit_code == 0);
      CHECK(qt::CheckSameFiles(tmp / "want-ct", dst_ct) > 0);
    }
    // Workers, the last one publishing.
    const fs::path dst = tmp / ("workers-" + mode);
    for (const char* w : {"0/2", "1/2"}) {
      auto r = RunFaulted(Convert(TinyLlama(), dst, {"--worker", w}), mode);
      CAPTURE(r.err);
      REQUIRE(r.exit_code == 0);
    }
    CHECK(qt::CheckSameFiles(tmp / "want", dst) > 0);
  }
}

TEST_CASE("a failing read or listing is an I/O error naming its errno, never another category") {
  qt::TempDir tmp;
  SUBCASE("the source's index") {
    // Before: "model.safetensors.index.json: cannot read", without the reason.
    CheckIoError(RunFailing(Convert(TinyLlama(), tmp / "dst"), "pread", "index.json"),
                 "model.safetensors.index.json");
  }
  SUBCASE("the resume markers' folder cannot be made") {
    // Before: the mkdir's error was dropped and the marker's create reported "No such file or
    // directory".
    CheckIoError(RunFailing(Convert(TinyLlama(), tmp / "dst"), "mkdir", ".quench-resume",
                            EDQUOT),
                 ".quench-resume", EDQUOT);
  }
  SUBCASE("this process's /proc stat, needed for its lock's token") {
    // Before: read through an istreambuf_iterator, whose read error escaped as an exception
    // (exit 1, "internal error: basic_filebuf::underflow").
    CheckIoError(RunFailing(Convert(TinyLlama(), tmp / "dst"), "open", "/stat"), "/stat");
  }
  SUBCASE("finalize: a part that cannot be read, the parts folder that cannot be listed") {
    // Before: "worker 0/2's part is corrupt ...: rerun that worker" (exit 3), and "no worker
    // has finished its part yet" (exit 3).
    const fs::path dst = tmp / "dst";
    for (const char* w : {"0/2", "1/2"}) {
      REQUIRE(qt::RunQuench(Convert(TinyLlama(), dst, {"--worker", w, "--no-finalize"}))
                  .exit_code == 0);
    }
    CheckIoError(RunFailing({"finalize", dst.string(), "-q"}, "open", "part-00000-of-00002"),
                 "part-00000-of-00002.json");
    CheckIoError(RunFailing({"finalize", dst.string(), "-q"}, "openat", ".quench-parts"),
                 ".quench-parts");
    // A resume marker that is there but cannot be read: not "worker 1/2 owes it".
    CheckIoError(RunFailing({"finalize", dst.string(), "-q"}, "open", ".quench-resume/"),
                 ".quench-resume");
    CHECK_FALSE(fs::exists(dst / "config.json"));
    auto r = qt::RunQuench({"finalize", dst.string(), "-q"});
    CAPTURE(r.err);
    REQUIRE(r.exit_code == 0);
    REQUIRE(qt::RunQuench(Convert(TinyLlama(), tmp / "want")).exit_code == 0);
    CHECK(qt::CheckSameFiles(tmp / "want", dst) > 0);
  }
}

TEST_CASE(
    "verify and import-imatrix: a file the disk fails to give is an I/O error, not a problem") {
  qt::TempDir tmp;
  const fs::path dst = tmp / "dst";
  REQUIRE(qt::RunQuench(Convert(TinyLlama(), dst)).exit_code == 0);
  // Before: the index's read error became an "index" problem of the checkpoint (exit 3).
  CheckIoError(RunFailing({"verify", dst.string(), TinyLlama().string(), "-q"}, "read",
                          "model.safetensors.index.json"),
               "model.safetensors.index.json");
  // Before: a ModelOpt NVFP4 SRC whose first read failed was not decoded before the
  // comparison (the failure taken for "not packed"), and every packed tensor a problem.
  const fs::path mo = qt::DataDir() / "golden/mosrc/src";
  const fs::path mo_dst = tmp / "mo-dst";
  REQUIRE(qt::RunQuench(Convert(mo, mo_dst)).exit_code == 0);
  REQUIRE(qt::RunQuench({"verify", mo_dst.string(), mo.string(), "-q"}).exit_code == 0);
  CheckIoError(RunFailing({"verify", mo_dst.string(), mo.string(), "-q"}, "open",
                          "mosrc/src/model", EIO, 1, 1),
               "model");
  // Before: the GGUF magic was read through an ifstream, and a failing read made the file
  // "not an importance matrix (GGUF or legacy .dat)" (exit 3). Now it is read through the
  // file's mapping, as the rest of it is.
  auto r = RunFailing({"stats", "import-imatrix",
                       (qt::DataDir() / "imatrix/llama.imatrix.gguf").string(), "--model",
                       TinyLlama().string(), "-o", (tmp / "imported").string()},
                      "read", "llama.imatrix.gguf");
  CAPTURE(r.err);
  CHECK(r.exit_code == 0);
}

TEST_CASE("what a finished run cannot remove is a warning naming it; the next run tidies") {
  // Before: the run lock (or its `.new-` file, or the resume markers) stayed in a finished
  // folder without a word, and exit 0.
  qt::TempDir tmp;
  REQUIRE(qt::RunQuench(Convert(TinyLlama(), tmp / "want")).exit_code == 0);
  struct Case {
    const char* call;
    const char* path;
    int nth, times;   // which of those calls fail
    const char* left;  // what stays in DST
  };
  // The run lock is the second unlink on its path (the first: the `.new-` file it was linked
  // from); that file's unlink is tried again at the end, so both must fail for it to stay.
  // remove_all removes the (empty) markers' folder with remove(3).
  for (const Case& c : {Case{"unlink", ".quench-run.lock", 2, 1, ".quench-run.lock"},
                        Case{"unlink", ".quench-run.lock.new-", 1, 2, ".quench-run.lock.new-"},
                        Case{"remove", ".quench-resume", 1, 1, ".quench-resume"}}) {
    CAPTURE(c.path);
    const fs::path dst = tmp / (std::string("dst") + c.path);
    auto r = RunFailing(Convert(TinyLlama(), dst), c.call, c.path, EIO, c.nth, c.times);
    CAPTURE(r.err);
    REQUIRE(r.exit_code == 0);
    // -q keeps notes quiet, not this.
    CHECK(r.err.find("quench: warning: ") != std::string::npos);
    CHECK(r.err.find(c.left) != std::string::npos);
    bool stays = false;
    for (const auto& e : fs::directory_iterator(dst)) {
      stays |= e.path().filename().string().starts_with(c.left);
    }
    CHECK(stays);
    CHECK(qt::CheckSameFiles(tmp / "want", dst,
                             [](const std::string& f) { return !f.starts_with(".quench"); }) > 0);
    // As the warning says: the same command with --resume removes it.
    r = qt::RunQuench(Convert(TinyLlama(), dst, {"--resume"}));
    CAPTURE(r.err);
    REQUIRE(r.exit_code == 0);
    CHECK(qt::CheckSameFiles(tmp / "want", dst) > 0);
    for (const auto& e : fs::directory_iterator(dst)) {
      CHECK_FALSE(e.path().filename().string().starts_with(c.left));
    }
  }
}

TEST_CASE(
    "workers: markers finalize cannot remove are a warning, and finalize again removes them") {
  // Before: no warning, and a second finalize ("published already") left them for good.
  qt::TempDir tmp;
  REQUIRE(qt::RunQuench(Convert(TinyLlama(), tmp / "want")).exit_code == 0);
  const fs::path dst = tmp / "dst";
  for (const char* w : {"0/2", "1/2"}) {
    REQUIRE(qt::RunQuench(Convert(TinyLlama(), dst, {"--worker", w, "--no-finalize"}))
                .exit_code == 0);
  }
  auto r = RunFailing({"finalize", dst.string(), "-q"}, "remove", ".quench-resume");
  CAPTURE(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.err.find("quench: warning: " + (dst / ".quench-resume").string()) !=
        std::string::npos);
  CHECK(fs::exists(dst / ".quench-resume"));
  r = qt::RunQuench({"finalize", dst.string(), "-q"});
  CAPTURE(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK_FALSE(fs::exists(dst / ".quench-resume"));
  CHECK(qt::CheckSameFiles(tmp / "want", dst) > 0);
}

TEST_CASE("a stats merge that fails leaves no output folder, as import-imatrix did") {
  // Before: merge wrote straight into OUT, so a full disk left OUT holding a partial folder
  // (no manifest), which the rerun then refused ("exists and is not empty").
  qt::TempDir tmp;
  const std::string stats = (qt::DataDir() / "golden/smoothquant/stats").string();
  const fs::path out = tmp / "merged";
  CheckIoError(RunFailing({"stats", "merge", stats, stats, "-o", out.string()}, "rename",
                          "stats-00001.safetensors", ENOSPC),
               "stats-00001.safetensors", ENOSPC);
  CHECK(fs::is_empty(tmp.path()));  // nor a temporary folder beside it
  CHECK_FALSE(fs::exists(out));
  auto r = qt::RunQuench({"stats", "merge", stats, stats, "-o", out.string()});
  CAPTURE(r.err);
  CHECK(r.exit_code == 0);
  CHECK(fs::exists(out / "manifest.json"));
}

TEST_CASE("import-imatrix whose last step (syncing OUT's parent) fails leaves no output") {
  // Before: exit 4 with OUT in place, which the rerun refused.
  qt::TempDir tmp;
  const fs::path parent = tmp / "parent", out = parent / "imported";
  const std::vector<std::string> cmd = {
      "stats", "import-imatrix", (qt::DataDir() / "imatrix/llama.imatrix.gguf").string(),
      "--model", TinyLlama().string(), "-o", out.string()};
  CheckIoError(RunFailing(cmd, "fsync", "/parent$"), "parent");
  CHECK(fs::is_empty(parent));
  auto r = qt::RunQuench(cmd);
  CAPTURE(r.err);
  CHECK(r.exit_code == 0);
  CHECK(fs::exists(out / "manifest.json"));
}

TEST_CASE(
    "each buffer mapping or thread start that fails: exit 4 or the same bytes, never an abort") {
  // Before: with --threads 1, a oneTBB thread that could not start when the pipeline's
  // tbb::global_control was destroyed (raising the limit back) threw out of that destructor:
  // std::terminate, exit 134.
  qt::TempDir tmp;
  REQUIRE(qt::RunQuench(Convert(TinyLlama(), tmp / "want")).exit_code == 0);
  for (const std::vector<std::string>& how :
       {std::vector<std::string>{"--threads", "1"}, std::vector<std::string>{}}) {
    const fs::path log = tmp / "fault.log";
    REQUIRE(RunFaulted(Convert(TinyLlama(), tmp / ("count" + std::to_string(how.size())), how),
                       "oom", {{"QUENCH_FAULT_LOG", log.string()}})
                .exit_code == 0);
    const int points = std::stoi(qt::ReadBytes(log));
    REQUIRE(points > 5);  // the lock's heartbeat, the writers, the buffers, oneTBB, commits
    for (int at = 1; at <= points; ++at) {
      CAPTURE(at);
      CAPTURE(how.size());
      const fs::path dst = tmp / ("dst-" + std::to_string(how.size()) + "-" + std::to_string(at));
      auto r = RunFaulted(Convert(TinyLlama(), dst, how), "oom",
                          {{"QUENCH_FAULT_AT", std::to_string(at)}});
      CAPTURE(r.err);
      REQUIRE((r.exit_code == 0 || r.exit_code == 4));
      if (r.exit_code == 0) {
        CHECK(qt::CheckSameFiles(tmp / "want", dst) > 0);
      } else {
        CHECK(LastLine(r.err).starts_with("quench: error: io:"));
        CHECK_FALSE(fs::exists(dst / "config.json"));
      }
    }
  }
}
