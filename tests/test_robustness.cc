// "Never crash, whatever the machine does": symbolic link loops and other entries of SRC that
// cannot be carried over, unreadable files and folders, a container's cgroup memory limit and
// the free-space check before writing. Each case asserts the exit code (README: 3 invalid
// input, 4 I/O), the message naming the path, and what is left on disk.
//
// The tests run as root, which bypasses file permissions. An unreadable file is made with mode
// 000 and quench is run under `setpriv --bounding-set=-dac_override,-dac_read_search`: still
// uid 0, but without the two capabilities that let root ignore permissions, so open() fails
// with EACCES as it would for any user (util-linux's setpriv; needs CAP_SETPCAP, which root
// has in CI and on the development VM). The free-space check runs quench in a private mount
// namespace (`unshare -m`) on a tmpfs of an exact size.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "format/cgroup.h"
#include "format/json.h"
#include "pipeline/memory_budget.h"
#include "test_util.h"

namespace qt = quench::testing;
namespace fs = std::filesystem;

namespace {

const fs::path kTiny = qt::DataDir() / "tiny-llama";

using qt::RunCommand;

// A copy of the bundled checkpoint to break.
fs::path CopyTiny(const qt::TempDir& tmp) {
  const fs::path src = tmp / "src";
  fs::copy(kTiny, src, fs::copy_options::recursive);
  return src;
}

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

std::vector<std::string> Convert(const fs::path& src, const fs::path& dst) {
  return {qt::QuenchBin().string(), "convert", src.string(), dst.string(), "--scheme",
          "FP8_DYNAMIC"};
}

// quench without the capabilities that let root ignore file permissions.
std::vector<std::string> AsUnprivileged(std::vector<std::string> argv) {
  argv.insert(argv.begin(), {"setpriv", "--bounding-set=-dac_override,-dac_read_search"});
  return argv;
}

}  // namespace

TEST_SUITE("robustness") {
  TEST_CASE("symbolic link loops in SRC are refused by convert, inspect and verify (exit 3)") {
    qt::TempDir tmp;
    const fs::path src = CopyTiny(tmp);
    const fs::path dst = tmp / "out";
    SUBCASE("a link to itself") {
      fs::create_symlink("loop", src / "loop");
      const std::string named = (src / "loop").string() + ": symbolic link loop";
      auto r = RunCommand(Convert(src, dst));
      CHECK(r.exit_code == 3);
      CHECK_MESSAGE(Contains(r.err, named), r.err);
      CHECK_FALSE(fs::exists(dst));
      auto i = RunCommand({qt::QuenchBin().string(), "inspect", src.string()});
      CHECK(i.exit_code == 3);
      CHECK_MESSAGE(Contains(i.err, named), i.err);
      // verify reads SRC through the same inventory.
      REQUIRE(RunCommand(Convert(kTiny, dst)).exit_code == 0);
      auto v = RunCommand({qt::QuenchBin().string(), "verify", dst.string(), src.string()});
      CHECK(v.exit_code == 3);
      CHECK_MESSAGE(Contains(v.err, named), v.err);
    }
    SUBCASE("two links pointing at each other, in a subfolder") {
      fs::create_directories(src / "extra");
      fs::create_symlink("b", src / "extra/a");
      fs::create_symlink("a", src / "extra/b");
      auto r = RunCommand(Convert(src, dst));
      CHECK(r.exit_code == 3);
      CHECK_MESSAGE(Contains(r.err, (src / "extra").string() + "/"), r.err);
      CHECK_MESSAGE(Contains(r.err, "symbolic link loop"), r.err);
      CHECK_FALSE(fs::exists(dst));
    }
    SUBCASE("SRC itself is a loop") {
      fs::create_symlink(tmp / "y", tmp / "x");
      fs::create_symlink(tmp / "x", tmp / "y");
      auto r = RunCommand(Convert(tmp / "x", dst));
      CHECK(r.exit_code == 3);
      CHECK_MESSAGE(Contains(r.err, (tmp / "x").string() + ": symbolic link loop"), r.err);
      CHECK_FALSE(fs::exists(dst));
      auto i = RunCommand({qt::QuenchBin().string(), "inspect", (tmp / "x").string()});
      CHECK(i.exit_code == 3);
      CHECK_MESSAGE(Contains(i.err, (tmp / "x").string() + ": symbolic link loop"), i.err);
    }
    SUBCASE("a link to a file that does not exist cannot be carried over") {
      fs::create_symlink("gone.json", src / "special_tokens_map.json");
      auto r = RunCommand(Convert(src, dst));
      CHECK(r.exit_code == 3);
      CHECK_MESSAGE(Contains(r.err, (src / "special_tokens_map.json").string() +
                                        ": symbolic link to a file that does not exist"),
                    r.err);
      CHECK_FALSE(fs::exists(dst));
    }
    SUBCASE("a fifo is refused, not opened (which would hang)") {
      REQUIRE(mkfifo((src / "pipe").c_str(), 0644) == 0);
      auto r = RunCommand(Convert(src, dst));
      CHECK(r.exit_code == 3);
      CHECK_MESSAGE(Contains(r.err, (src / "pipe").string() + ": not a regular file"), r.err);
      CHECK_FALSE(fs::exists(dst));
    }
    SUBCASE("a link to an ancestor folder is not followed: no loop, a note, its files not copied") {
      fs::create_directories(src / "sub");
      fs::create_symlink("..", src / "sub/up");
      auto r = RunCommand(Convert(src, dst));
      CHECK_MESSAGE(r.exit_code == 0, r.err);
      CHECK_MESSAGE(Contains(r.err, "not followed: 1 symbolic link(s) to folders (e.g. sub/up)"),
                    r.err);
      std::vector<std::string> want = qt::ListFiles(kTiny);
      CHECK(qt::ListFiles(dst) == want);
    }
    SUBCASE("a link to a file is followed and its target's bytes copied under the link's name") {
      qt::WriteBytes(tmp / "elsewhere/notes.txt", "kept");
      fs::create_symlink(tmp / "elsewhere/notes.txt", src / "notes.txt");
      auto r = RunCommand(Convert(src, dst));
      CHECK_MESSAGE(r.exit_code == 0, r.err);
      CHECK(qt::ReadBytes(dst / "notes.txt") == "kept");
      CHECK_FALSE(fs::is_symlink(dst / "notes.txt"));
    }
  }

  TEST_CASE("an unreadable file or subfolder in SRC fails planning (exit 4), nothing written") {
    qt::TempDir tmp;
    const fs::path src = CopyTiny(tmp);
    const fs::path dst = tmp / "out";
    // The mechanism itself: without the 000 file the same unprivileged run succeeds, and the
    // tests would otherwise pass vacuously if setpriv kept root's permission override.
    auto control = RunCommand(AsUnprivileged(Convert(src, tmp / "control")));
    REQUIRE_MESSAGE(control.exit_code == 0, control.err);
    qt::WriteBytes(tmp / "probe", "x");
    fs::permissions(tmp / "probe", fs::perms::none);
    REQUIRE(RunCommand(AsUnprivileged({"cat", (tmp / "probe").string()})).exit_code != 0);

    SUBCASE("a file") {
      const fs::path f = src / "tokenizer_config.json";
      fs::permissions(f, fs::perms::none);
      auto r = RunCommand(AsUnprivileged(Convert(src, dst)));
      CHECK(r.exit_code == 4);
      CHECK_MESSAGE(Contains(r.err, f.string() + ": cannot open for reading: Permission denied"),
                    r.err);
      CHECK_FALSE(fs::exists(dst));
      auto i = RunCommand(AsUnprivileged({qt::QuenchBin().string(), "inspect", src.string()}));
      CHECK(i.exit_code == 4);
      CHECK_MESSAGE(Contains(i.err, f.string()), i.err);
    }
    SUBCASE("a shard") {
      const fs::path f = src / "model-00002-of-00002.safetensors";
      fs::permissions(f, fs::perms::none);
      auto r = RunCommand(AsUnprivileged(Convert(src, dst)));
      CHECK(r.exit_code == 4);
      CHECK_MESSAGE(Contains(r.err, f.string() + ": cannot open for reading: Permission denied"),
                    r.err);
      CHECK_FALSE(fs::exists(dst));
    }
    SUBCASE("a subfolder that cannot be listed") {
      qt::WriteBytes(src / "extra/readme.txt", "x");
      fs::permissions(src / "extra", fs::perms::none);
      auto r = RunCommand(AsUnprivileged(Convert(src, dst)));
      CHECK(r.exit_code == 4);
      CHECK_MESSAGE(
          Contains(r.err, (src / "extra").string() + ": cannot list folder: Permission denied"),
          r.err);
      CHECK_FALSE(fs::exists(dst));
      fs::permissions(src / "extra", fs::perms::owner_all);
    }
    SUBCASE("a subfolder whose entries cannot be examined (readable, not searchable)") {
      qt::WriteBytes(src / "extra/readme.txt", "x");
      fs::permissions(src / "extra", fs::perms::owner_read);
      auto r = RunCommand(AsUnprivileged(Convert(src, dst)));
      CHECK(r.exit_code == 4);
      CHECK_MESSAGE(Contains(r.err, (src / "extra/readme.txt").string() + ": cannot stat"), r.err);
      CHECK_FALSE(fs::exists(dst));
      fs::permissions(src / "extra", fs::perms::owner_all);
    }
    SUBCASE("into an existing DST: the folder is left as it was") {
      fs::create_directories(dst);
      fs::permissions(src / "generation_config.json", fs::perms::none);
      auto r = RunCommand(AsUnprivileged(Convert(src, dst)));
      CHECK(r.exit_code == 4);
      CHECK(fs::exists(dst));
      CHECK(qt::ListFiles(dst).empty());
    }
  }

  TEST_CASE("cgroup memory limit: reading v2 and v1 trees") {
    qt::TempDir tmp;
    const fs::path root = tmp.path();
    SUBCASE("v2: the smallest memory.max along the path; 'max' is no limit") {
      qt::WriteBytes(root / "proc/self/cgroup", "0::/kubepods/pod1/ctr\n");
      qt::WriteBytes(root / "sys/fs/cgroup/kubepods/memory.max", "max\n");
      qt::WriteBytes(root / "sys/fs/cgroup/kubepods/pod1/memory.max", "1073741824\n");
      qt::WriteBytes(root / "sys/fs/cgroup/kubepods/pod1/ctr/memory.max", "2147483648\n");
      auto l = quench::ReadCgroupMemoryLimit(root.string());
      REQUIRE(l.has_value());
      CHECK(l->bytes == 1073741824u);
      CHECK(l->file == (root / "sys/fs/cgroup/kubepods/pod1/memory.max").string());
    }
    SUBCASE("v2 in a container without a cgroup namespace: the mount point's own file") {
      qt::WriteBytes(root / "proc/self/cgroup", "0::/kubepods/pod9/abc\n");
      qt::WriteBytes(root / "sys/fs/cgroup/memory.max", "536870912\n");
      auto l = quench::ReadCgroupMemoryLimit(root.string());
      REQUIRE(l.has_value());
      CHECK(l->bytes == 536870912u);
    }
    SUBCASE("v1: memory.limit_in_bytes of the memory hierarchy; the 'unlimited' value is none") {
      qt::WriteBytes(root / "proc/self/cgroup",
                     "5:cpu,cpuacct:/x\n4:memory:/docker/abc\n0::/\n");
      qt::WriteBytes(root / "sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n");
      qt::WriteBytes(root / "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes",
                     "805306368\n");
      auto l = quench::ReadCgroupMemoryLimit(root.string());
      REQUIRE(l.has_value());
      CHECK(l->bytes == 805306368u);
    }
    SUBCASE("no limit anywhere, or nothing readable") {
      qt::WriteBytes(root / "proc/self/cgroup", "4:memory:/a\n0::/b\n");
      qt::WriteBytes(root / "sys/fs/cgroup/memory/a/memory.limit_in_bytes",
                     "9223372036854771712\n");
      qt::WriteBytes(root / "sys/fs/cgroup/b/memory.max", "max\n");
      CHECK_FALSE(quench::ReadCgroupMemoryLimit(root.string()).has_value());
      CHECK_FALSE(quench::ReadCgroupMemoryLimit((root / "nothing").string()).has_value());
    }
  }

  TEST_CASE("cgroup CPU quota: reading v2 and v1 trees") {
    qt::TempDir tmp;
    const fs::path root = tmp.path();
    SUBCASE("v2: the smallest ceil(quota / period) along the path; 'max' is no quota") {
      qt::WriteBytes(root / "proc/self/cgroup", "0::/kubepods/pod1/ctr\n");
      qt::WriteBytes(root / "sys/fs/cgroup/kubepods/cpu.max", "max 100000\n");
      qt::WriteBytes(root / "sys/fs/cgroup/kubepods/pod1/cpu.max", "250000 100000\n");
      qt::WriteBytes(root / "sys/fs/cgroup/kubepods/pod1/ctr/cpu.max", "400000 100000\n");
      auto l = quench::ReadCgroupCpuLimit(root.string());
      REQUIRE(l.has_value());
      CHECK(l->cores == 3);  // 2.5 cores: three threads keep the quota busy
      CHECK(l->file == (root / "sys/fs/cgroup/kubepods/pod1/cpu.max").string());
      CHECK(l->text == "250000 100000");
    }
    SUBCASE("v2: less than a core is one; the mount point's own file counts") {
      qt::WriteBytes(root / "proc/self/cgroup", "0::/docker/abc\n");
      qt::WriteBytes(root / "sys/fs/cgroup/cpu.max", "50000 100000\n");
      auto l = quench::ReadCgroupCpuLimit(root.string());
      REQUIRE(l.has_value());
      CHECK(l->cores == 1);
    }
    SUBCASE("v1: cpu.cfs_quota_us over the period beside it, under the joined mount; -1 none") {
      qt::WriteBytes(root / "proc/self/cgroup",
                     "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n");
      qt::WriteBytes(root / "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n");
      qt::WriteBytes(root / "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n");
      qt::WriteBytes(root / "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "600000\n");
      qt::WriteBytes(root / "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us",
                     "200000\n");
      auto l = quench::ReadCgroupCpuLimit(root.string());
      REQUIRE(l.has_value());
      CHECK(l->cores == 3);
    }
    SUBCASE("v1 mounted under the controller's own name") {
      qt::WriteBytes(root / "proc/self/cgroup", "3:cpu,cpuacct:/x\n");
      qt::WriteBytes(root / "sys/fs/cgroup/cpu/x/cpu.cfs_quota_us", "100000\n");
      qt::WriteBytes(root / "sys/fs/cgroup/cpu/x/cpu.cfs_period_us", "100000\n");
      auto l = quench::ReadCgroupCpuLimit(root.string());
      REQUIRE(l.has_value());
      CHECK(l->cores == 1);
    }
    SUBCASE("no quota anywhere, malformed values, or nothing readable") {
      qt::WriteBytes(root / "proc/self/cgroup", "2:cpu:/a\n0::/b\n");
      qt::WriteBytes(root / "sys/fs/cgroup/cpu/a/cpu.cfs_quota_us", "-1\n");
      qt::WriteBytes(root / "sys/fs/cgroup/cpu/a/cpu.cfs_period_us", "100000\n");
      qt::WriteBytes(root / "sys/fs/cgroup/b/cpu.max", "max 100000\n");
      qt::WriteBytes(root / "sys/fs/cgroup/cpu.max", "200000 0\n");  // no period: ignored
      CHECK_FALSE(quench::ReadCgroupCpuLimit(root.string()).has_value());
      qt::WriteBytes(root / "sys/fs/cgroup/cpu.max", "two 100000\n");
      CHECK_FALSE(quench::ReadCgroupCpuLimit(root.string()).has_value());
      CHECK_FALSE(quench::ReadCgroupCpuLimit((root / "nothing").string()).has_value());
    }
  }

  TEST_CASE("cgroup CPU quota: a run under one sizes its default threads by it, and says so") {
    // The floor's message counts the chunks in flight, two per thread (SizePipeline): one
    // thread under a quota of half a core, whatever this machine has.
    qt::TempDir tmp;
    const fs::path cg = tmp / "cgroup";
    qt::WriteBytes(cg / "proc/self/cgroup", "0::/ctr\n");
    qt::WriteBytes(cg / "sys/fs/cgroup/ctr/cpu.max", "50000 100000\n");
    cpu_set_t set;
    CPU_ZERO(&set);
    REQUIRE(sched_getaffinity(0, sizeof set, &set) == 0);
    const int cores = CPU_COUNT(&set);  // this process's, as quench's would be
    const std::vector<std::string> argv = {qt::QuenchBin().string(), "convert", kTiny.string(),
                                           (tmp / "out").string(), "--scheme", "FP8_DYNAMIC",
                                           "--dry-run", "--memory-limit", "1K"};
    auto r = RunCommand(argv, {{"QUENCH_CGROUP_ROOT", cg.string()}});
    CHECK(r.exit_code == 2);
    CHECK_MESSAGE(Contains(r.err, "(2 chunks in flight;"), r.err);
    const std::string note = "quench: threads: 1, this process's cgroup CPU quota (" +
                             (cg / "sys/fs/cgroup/ctr/cpu.max").string() + ": 50000 100000) on " +
                             std::to_string(cores) + " cores; --threads sets it";
    // A quota of one core limits nothing on a machine of one.
    CHECK_MESSAGE(Contains(r.err, note) == (cores > 1), r.err);
    // --threads given: as given, no note.
    std::vector<std::string> given = argv;
    given.insert(given.end(), {"--threads", "3"});
    auto g = RunCommand(given, {{"QUENCH_CGROUP_ROOT", cg.string()}});
    CHECK_MESSAGE(Contains(g.err, "(6 chunks in flight;"), g.err);
    CHECK_FALSE(Contains(g.err, "cgroup CPU quota"));
  }

  TEST_CASE("cgroup memory limit: choosing the budget") {
    constexpr uint64_t kGiB = 1ull << 30, kMiB = 1ull << 20;
    const quench::CgroupMemoryLimit one_gib{kGiB, "/sys/fs/cgroup/memory.max"};
    // Not given: 3/4 of the cgroup's limit when the 2 GiB default would not fit under it.
    auto fitted = quench::ChooseMemoryBudget(0, 2 * kGiB, one_gib);
    CHECK(fitted.bytes == 768 * kMiB);
    CHECK(fitted.note ==
          "memory limit 768 MiB: 3/4 of this process's cgroup memory limit, 1 GiB "
          "(/sys/fs/cgroup/memory.max), since the default 2 GiB would not fit; --memory-limit "
          "sets it");
    // 3/4 of 2.5 GiB is 1.875 GiB: still under the default, so fitted.
    CHECK(quench::ChooseMemoryBudget(0, 2 * kGiB, {{5 * kGiB / 2, "f"}}).bytes == 15 * kGiB / 8);
    // 3/4 of 4 GiB is 3 GiB: the default fits, no note.
    auto roomy = quench::ChooseMemoryBudget(0, 2 * kGiB, {{4 * kGiB, "f"}});
    CHECK(roomy.bytes == 2 * kGiB);
    CHECK(roomy.note.empty());
    auto none = quench::ChooseMemoryBudget(0, 2 * kGiB, std::nullopt);
    CHECK(none.bytes == 2 * kGiB);
    CHECK(none.note.empty());
    // An odd limit: floor(3 * 1001 / 4) = 750.
    CHECK(quench::ChooseMemoryBudget(0, 2 * kGiB, {{1001, "f"}}).bytes == 750u);
    // Given: honoured as given; a warning when above the cgroup's limit.
    auto above = quench::ChooseMemoryBudget(4 * kGiB, 2 * kGiB, one_gib);
    CHECK(above.bytes == 4 * kGiB);
    CHECK(Contains(above.note, "warning: --memory-limit 4 GiB is above this process's cgroup "
                               "memory limit, 1 GiB"));
    auto below = quench::ChooseMemoryBudget(512 * kMiB, 2 * kGiB, one_gib);
    CHECK(below.bytes == 512 * kMiB);
    CHECK(below.note.empty());
  }

  TEST_CASE("cgroup memory limit: a run in a small container fits its default budget") {
    qt::TempDir tmp;
    const fs::path cg = tmp / "cgroup";
    qt::WriteBytes(cg / "proc/self/cgroup", "0::/pod\n");
    qt::WriteBytes(cg / "sys/fs/cgroup/pod/memory.max", "1073741824\n");
    const std::vector<std::pair<std::string, std::string>> env = {
        {"QUENCH_CGROUP_ROOT", cg.string()}};
    auto report_limit = [](const fs::path& report) -> int64_t {
      auto j = quench::ReadJsonFile(report.string());
      REQUIRE(j.ok());
      const quench::JsonValue* v = j->Find("memory_limit_bytes");
      REQUIRE(v != nullptr);
      return v->as_int();
    };
    SUBCASE("default: 3/4 of 1 GiB, said in a note and in the report") {
      auto argv = Convert(kTiny, tmp / "out");
      argv.insert(argv.end(), {"--report", (tmp / "r.json").string()});
      auto r = RunCommand(argv, env);
      CHECK_MESSAGE(r.exit_code == 0, r.err);
      CHECK_MESSAGE(Contains(r.err, "quench: memory limit 768 MiB: 3/4 of this process's cgroup "
                                    "memory limit, 1 GiB (" +
                                        (cg / "sys/fs/cgroup/pod/memory.max").string() + ")"),
                    r.err);
      CHECK(report_limit(tmp / "r.json") == 805306368);  // 3 * 2^30 / 4
      CHECK(fs::exists(tmp / "out/config.json"));
      // --dry-run says the same.
      auto d = RunCommand({qt::QuenchBin().string(), "convert", kTiny.string(),
                           (tmp / "dry").string(), "--scheme", "FP8_DYNAMIC", "--dry-run"},
                          env);
      CHECK(d.exit_code == 0);
      CHECK(Contains(d.err, "memory limit 768 MiB"));
      CHECK_FALSE(fs::exists(tmp / "dry"));
    }
    SUBCASE("--memory-limit above the cgroup's limit: honoured, with a warning") {
      auto argv = Convert(kTiny, tmp / "out");
      argv.insert(argv.end(), {"--memory-limit", "3G", "--report", (tmp / "r.json").string()});
      auto r = RunCommand(argv, env);
      CHECK_MESSAGE(r.exit_code == 0, r.err);
      CHECK_MESSAGE(Contains(r.err, "warning: --memory-limit 3 GiB is above this process's "
                                    "cgroup memory limit, 1 GiB"),
                    r.err);
      CHECK(report_limit(tmp / "r.json") == 3 * (int64_t{1} << 30));
    }
    SUBCASE("--memory-limit under the cgroup's limit: as given, no note") {
      auto argv = Convert(kTiny, tmp / "out");
      argv.insert(argv.end(), {"--memory-limit", "300M", "--report", (tmp / "r.json").string()});
      auto r = RunCommand(argv, env);
      CHECK_MESSAGE(r.exit_code == 0, r.err);
      CHECK_FALSE(Contains(r.err, "cgroup"));
      CHECK(report_limit(tmp / "r.json") == 300 * (int64_t{1} << 20));
    }
    SUBCASE("a roomy cgroup leaves the 2 GiB default alone") {
      qt::WriteBytes(cg / "sys/fs/cgroup/pod/memory.max", "17179869184\n");
      auto argv = Convert(kTiny, tmp / "out");
      argv.insert(argv.end(), {"--report", (tmp / "r.json").string()});
      auto r = RunCommand(argv, env);
      CHECK_MESSAGE(r.exit_code == 0, r.err);
      CHECK_FALSE(Contains(r.err, "cgroup"));
      CHECK(report_limit(tmp / "r.json") == 2 * (int64_t{1} << 30));
    }
    SUBCASE("--memory-limit 0 is a usage error") {
      auto argv = Convert(kTiny, tmp / "out");
      argv.insert(argv.end(), {"--memory-limit", "0"});
      auto r = RunCommand(argv, env);
      CHECK(r.exit_code == 2);
      CHECK(Contains(r.err, "--memory-limit must be more than 0"));
      CHECK_FALSE(fs::exists(tmp / "out"));
    }
    SUBCASE("a --memory-limit beyond 2^64 bytes is too large, not 0") {
      auto argv = Convert(kTiny, tmp / "out");
      argv.insert(argv.end(), {"--memory-limit", "99999999999999999999T"});
      auto r = RunCommand(argv, env);
      CHECK(r.exit_code == 2);
      CHECK(r.err == "quench: error: usage: size '99999999999999999999T' is too large\n");
      CHECK_FALSE(fs::exists(tmp / "out"));
    }
  }

  TEST_CASE("free space: the check counts whole blocks, markers and folders") {
    // What a run occupies, from the definition: every output file rounded up to whole 4 KiB
    // pages (tmpfs allocates pages), one page per resume marker (a short JSON line, all of
    // them present until the end), one block for the .quench-resume folder, and one page for
    // the run's lock file (DST/.quench-run.lock, held throughout).
    const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
    REQUIRE(page == 4096);
    qt::TempDir tmp;
    const fs::path ref = tmp / "ref";
    REQUIRE(RunCommand(Convert(kTiny, ref)).exit_code == 0);
    uint64_t need = 0, shards = 0;
    for (const std::string& f : qt::ListFiles(ref)) {
      need += (fs::file_size(ref / f) + page - 1) / page * page;
      shards += f.ends_with(".safetensors");
    }
    REQUIRE(shards == 2);
    need += shards * page + page + page;
    // The unrounded sum of the file sizes (what the check counted before) fits in one page
    // less, so the first run below would have passed that check and failed mid-write.
    uint64_t unrounded = 0;
    for (const std::string& f : qt::ListFiles(ref)) unrounded += fs::file_size(ref / f);
    REQUIRE(unrounded <= need - page);

    const fs::path mnt = tmp / "mnt";
    fs::create_directories(mnt);
    // quench on a tmpfs of `size` bytes in a private mount namespace; returns its result and
    // the files left on the tmpfs (listed before the namespace, and the mount, go away).
    auto run_on_tmpfs = [&](uint64_t size, const std::string& extra = "-q") {
      const std::string script =
          "mount -t tmpfs -o size=\"$1\" tmpfs \"$2\" || exit 99\n"
          "\"$3\" convert \"$4\" \"$2/out\" --scheme FP8_DYNAMIC $6; rc=$?\n"
          "(cd \"$2\" && find . -type f | sort) > \"$5\"\n"
          "exit $rc\n";
      auto r = RunCommand({"unshare", "-m", "sh", "-c", script, "sh", std::to_string(size),
                           mnt.string(), qt::QuenchBin().string(), kTiny.string(),
                           (tmp / "left.txt").string(), extra});
      return std::make_pair(r, qt::ReadBytes(tmp / "left.txt"));
    };
    // A dry run makes the same check (DST not there yet: its folder's file system, the lock
    // counted as the run would take it), listed with the plan's errors.
    {
      auto [r, left] = run_on_tmpfs(need - page, "--dry-run");
      REQUIRE_MESSAGE(r.exit_code != 99, (std::string("cannot mount a tmpfs: ") + r.err));
      CHECK(r.exit_code == 4);
      CHECK_MESSAGE(Contains(r.err, "/out: needs " + std::to_string(need) + " bytes"), r.err);
      CHECK_MESSAGE(Contains(r.err, "only " + std::to_string(need - page) + " are free"), r.err);
      CHECK_MESSAGE(Contains(r.err, "1 error(s): a real run would stop"), r.err);
      CHECK(left.empty());
      auto [fits, none] = run_on_tmpfs(need, "--dry-run");
      CHECK_MESSAGE(fits.exit_code == 0, fits.err);
      CHECK(none.empty());
    }
    {
      auto [r, left] = run_on_tmpfs(need - page);
      REQUIRE_MESSAGE(r.exit_code != 99, (std::string("cannot mount a tmpfs: ") + r.err));
      CHECK(r.exit_code == 4);
      CHECK_MESSAGE(Contains(r.err, "/out: needs " + std::to_string(need) + " bytes"), r.err);
      CHECK_MESSAGE(Contains(r.err, "only " + std::to_string(need - page) + " are free"), r.err);
      CHECK(left.empty());  // nothing written, DST (created by the run) removed
    }
    {
      auto [r, left] = run_on_tmpfs(need);
      CHECK_MESSAGE(r.exit_code == 0, r.err);
      std::string want;
      for (const std::string& f : qt::ListFiles(ref)) want += "./out/" + f + "\n";
      CHECK(left == want);
    }
  }
}

TEST_SUITE("robustness") {
  TEST_CASE("every fuzzer finding in data/malformed_recipes is refused with its message") {
    // Each fixture crashed quench once (abort, SIGSEGV or undefined behaviour); expected.json
    // says how it was found and what the refusal must say.
    const fs::path dir = qt::DataDir() / "malformed_recipes";
    auto expected = quench::ReadJsonFile((dir / "expected.json").string());
    REQUIRE(expected.ok());
    REQUIRE(expected->as_object().size() >= 6);
    for (const auto& [file, want] : expected->as_object()) {
      CAPTURE(file);
      REQUIRE(fs::exists(dir / file));
      qt::TempDir tmp;
      auto r = RunCommand({qt::QuenchBin().string(), "convert", kTiny.string(),
                           (tmp / "out").string(), "--recipe", (dir / file).string()});
      CHECK(r.exit_code == 3);
      CHECK(want.Find("code")->as_string() == "invalid-input");
      CHECK_MESSAGE(Contains(r.err, (dir / file).string() + ": "), r.err);
      CHECK_MESSAGE(Contains(r.err, want.Find("message_contains")->as_string()), r.err);
      CHECK_FALSE(fs::exists(tmp / "out"));
    }
  }
}

TEST_SUITE("robustness") {
  TEST_CASE("tensor names up to the limit are planned without exhausting the stack") {
    // Target and ignore matching (std::regex, recursive per character) crashed with SIGSEGV
    // on a name of about 50 000 bytes; names are now limited to 4096 bytes
    // (data/malformed/tensor_name_too_long.safetensors is refused by every command).
    qt::TempDir tmp;
    const std::string name = "model." + std::string(4096 - 13, 'a') + ".weight";
    REQUIRE(name.size() == quench::kMaxTensorNameBytes);
    qt::WriteShard(tmp / "src/model.safetensors",
                   {{name, quench::DType::kBF16, {16, 16},
                     qt::Bf16Bytes(std::vector<float>(256, 0.5f))}});
    auto argv = Convert(tmp / "src", tmp / "out");
    argv.insert(argv.end(), {"--ignore", "re:.*b$", "-q"});
    auto r = RunCommand(argv);
    CHECK_MESSAGE(r.exit_code == 0, r.err);
    CHECK(qt::ListFiles(tmp / "out") ==
          std::vector<std::string>{"model.safetensors", "model.safetensors.index.json"});
  }
}

namespace {

// data/tiny-llama with every tensor in a shard of its own (and its index): a checkpoint of
// more shards than a small open-file limit allows, as a 1T-parameter release has hundreds.
size_t SplitTinyPerTensor(const fs::path& dst) {
  fs::create_directories(dst);
  fs::copy_file(kTiny / "config.json", dst / "config.json");
  const auto all = qt::LoadAll(kTiny);
  std::vector<std::pair<std::string, const quench::TensorInfo*>> tensors;
  for (const auto& [_, l] : all) {
    for (const auto& t : l.shard.header.tensors) tensors.push_back({t.name, &t});
  }
  const size_t n = tensors.size();
  std::string map;
  for (size_t i = 0; i < n; ++i) {
    char file[64];
    std::snprintf(file, sizeof file, "model-%05zu-of-%05zu.safetensors", i + 1, n);
    const quench::TensorInfo& t = *tensors[i].second;
    qt::WriteShard(dst / file, {{t.name, t.dtype, t.shape, qt::TensorBytes(all, t.name)}});
    map += std::string(i == 0 ? "" : ",") + "\"" + t.name + "\":\"" + file + "\"";
  }
  qt::WriteBytes(dst / "model.safetensors.index.json",
                 "{\"metadata\":{},\"weight_map\":{" + map + "}}");
  return n;
}

std::vector<std::string> WithOpenFiles(const std::string& limits, std::vector<std::string> argv) {
  argv.insert(argv.begin(), {"prlimit", "--nofile=" + limits});
  return argv;
}

}  // namespace

TEST_SUITE("robustness") {
  TEST_CASE("open files: the soft limit is raised to the hard one; at the hard one, exit 4 "
            "naming the limit") {
    // Every input shard stays open for the run. 16 files cannot hold the 23 shards, the
    // standard streams, the run's lock and its outputs; the hard limit of 4096 can.
    qt::TempDir tmp;
    const fs::path src = tmp / "src";
    REQUIRE(SplitTinyPerTensor(src) > 16);
    auto plain = RunCommand(Convert(src, tmp / "want"));
    REQUIRE_MESSAGE(plain.exit_code == 0, plain.err);

    auto raised = RunCommand(WithOpenFiles("16:4096", Convert(src, tmp / "out")));
    CHECK_MESSAGE(raised.exit_code == 0, raised.err);
    if (raised.exit_code == 0) CHECK(qt::CheckSameFiles(tmp / "want", tmp / "out") > 0);

    auto capped = RunCommand(WithOpenFiles("16:16", Convert(src, tmp / "capped")));
    CHECK(capped.exit_code == 4);
    CHECK_MESSAGE(Contains(capped.err, "Too many open files (the limit is 16 open files"),
                  capped.err);
    CHECK_MESSAGE(Contains(capped.err, "raise the hard limit"), capped.err);
    CHECK_FALSE(fs::exists(tmp / "capped"));
  }
}
