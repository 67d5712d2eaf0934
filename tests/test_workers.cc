// One conversion over many machines (issue 22): the share function, byte identity of N
// workers with a single-machine run for every scheme family (pruning and a recipe included),
// and the faults: a worker killed and rerun, two workers with one index, a worker with another
// scheme, finalize before every part is in, a corrupt part, a damaged shard.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <mutex>
#include <numeric>
#include <thread>

#include "format/json.h"
#include "format/safetensors.h"
#include "pipeline/workers.h"
#include "test_util.h"

namespace qt = quench::testing;
namespace fs = std::filesystem;

namespace {

int Wait(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::vector<std::string> ConvertArgs(const fs::path& src, const fs::path& dst,
                                     const std::vector<std::string>& opts) {
  std::vector<std::string> a = {"convert", src.string(), dst.string()};
  a.insert(a.end(), opts.begin(), opts.end());
  return a;
}

// Runs workers 0..n-1 at once (real processes sharing DST); every one must exit 0.
void RunWorkers(const fs::path& src, const fs::path& dst, const std::vector<std::string>& opts,
                int n, const fs::path& io) {
  std::vector<pid_t> pids;
  for (int i = 0; i < n; ++i) {
    std::vector<std::string> a = ConvertArgs(src, dst, opts);
    a.insert(a.end(), {"--worker", std::to_string(i) + "/" + std::to_string(n)});
    pids.push_back(qt::SpawnQuench(a, io / ("w" + std::to_string(i))));
  }
  for (int i = 0; i < n; ++i) {
    const int rc = Wait(pids[static_cast<size_t>(i)]);
    CAPTURE(i);
    CHECK_MESSAGE(rc == 0, qt::ReadBytes(io / ("w" + std::to_string(i) + ".err")));
  }
}

// A checkpoint of `shards` BF16 shards of one [rows, cols] down_proj each, large enough that a
// kill lands between two shards of a worker.
void WriteBigSource(const fs::path& dir, int shards, uint64_t rows, uint64_t cols) {
  for (int k = 0; k < shards; ++k) {
    std::vector<float> v(rows * cols);
    uint32_t x = 12345u + static_cast<uint32_t>(k);
    for (float& f : v) {
      x = x * 1664525u + 1013904223u;
      f = static_cast<float>(static_cast<int32_t>(x >> 8) - (1 << 23)) /
          static_cast<float>(1 << 23);
    }
    char name[64];
    std::snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", k + 1, shards);
    qt::WriteShard(dir / name, {{"model.layers." + std::to_string(k) + ".mlp.down_proj.weight",
                                 quench::DType::kBF16, {rows, cols}, qt::Bf16Bytes(v)}});
  }
  qt::WriteBytes(dir / "config.json",
                 R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama"})");
}

// DST as a finalizer leaves it when stopped once config.json is written: two workers' parts
// (--no-finalize) and every published file as the single run in `want` has it, the parts and
// resume markers not yet removed.
void StopFinalizerAfterConfig(const fs::path& src, const fs::path& want, const fs::path& out) {
  for (int i = 0; i < 2; ++i) {
    auto r = qt::RunQuench(ConvertArgs(src, out, {"--scheme", "W4A16", "--no-finalize",
                                                  "--worker", std::to_string(i) + "/2"}));
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  }
  for (const char* f : {"model.safetensors.index.json", "config.json"}) {
    fs::copy_file(want / f, out / f);
  }
  REQUIRE(fs::exists(out / ".quench-parts"));
  REQUIRE(fs::exists(out / ".quench-resume"));
}

uint64_t Makespan(const std::vector<uint64_t>& costs, const std::vector<int>& owner, int n) {
  std::vector<uint64_t> load(static_cast<size_t>(n), 0);
  for (size_t k = 0; k < costs.size(); ++k) load[static_cast<size_t>(owner[k])] += costs[k];
  return *std::max_element(load.begin(), load.end());
}

// A lock's contents as a holder on another machine writes them: held while its mtime (the
// heartbeat) is fresh, stale kStaleSeconds after.
constexpr const char* kElsewhere =
    "machine=elsewhere/0000/pid:[1] pid=4242 start=1 since=2026-12-04T00:00:00Z nonce=feed\n";

// The sharded golden source (3 shards, fused sets across them): most cases' SRC.
fs::path Sharded() { return qt::DataDir() / "golden/qedge-bf16-sharded/src"; }

// A single-machine run of `src` with `opts` into tmp/want: the folder the workers' DST must
// equal.
void ConvertWant(const qt::TempDir& tmp, const fs::path& src,
                 const std::vector<std::string>& opts) {
  REQUIRE(qt::RunQuench(ConvertArgs(src, tmp / "want", opts)).exit_code == 0);
}

// Workers 0..n-1 of `opts` into `dst`, one after another, with --no-finalize: every part in,
// nothing published.
void WriteParts(const fs::path& src, const fs::path& dst, const std::vector<std::string>& opts,
                int n) {
  for (int i = 0; i < n; ++i) {
    std::vector<std::string> a = ConvertArgs(src, dst, opts);
    a.insert(a.end(), {"--worker", std::to_string(i) + "/" + std::to_string(n), "--no-finalize"});
    REQUIRE(qt::RunQuench(a).exit_code == 0);
  }
}

// Two workers' parts of a W4A16 conversion of Sharded() in tmp/out, waiting to be finalized,
// and the single-machine run they must equal in tmp/want. Returns tmp/out.
fs::path PartsToFinalize(const qt::TempDir& tmp) {
  const fs::path src = Sharded();
  const std::vector<std::string> opts = {"--scheme", "W4A16"};
  ConvertWant(tmp, src, opts);
  WriteParts(src, tmp / "out", opts, 2);
  return tmp / "out";
}

// Starts quench with `args` (stdout and stderr at io.out / io.err) under the fault library in
// mode hang: the `nth` call `call` on a path matching `path` waits, for good or until the file
// `release` exists (empty: for good). Returns once that call is reached (the log names it).
pid_t SpawnHeldAt(const std::vector<std::string>& args, const fs::path& io, const char* call,
                  const char* path, int nth, const fs::path& release = {}) {
  const char* lib = std::getenv("QUENCH_FAULT_IO_LIB");
  REQUIRE(lib != nullptr);
  const fs::path log = io.string() + ".fault.log";
  std::vector<std::pair<const char*, std::string>> env = {
      {"LD_PRELOAD", lib}, {"QUENCH_FAULT_MODE", "hang"}, {"QUENCH_FAULT_CALL", call},
      {"QUENCH_FAULT_PATH", path}, {"QUENCH_FAULT_NTH", std::to_string(nth)},
      {"QUENCH_FAULT_LOG", log.string()}};
  if (!release.empty()) env.push_back({"QUENCH_FAULT_RELEASE", release.string()});
  for (const auto& [k, v] : env) setenv(k, v.c_str(), 1);
  const pid_t pid = qt::SpawnQuench(args, io);
  for (const auto& [k, v] : env) unsetenv(k);
  bool held = false;
  for (int i = 0; i < 1200 && !held; ++i) {  // up to 2 minutes
    // The log's second line names the call once it is reached.
    held = qt::ReadBytes(log).find(std::string(call) + " ") != std::string::npos;
    if (!held) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  REQUIRE(held);
  return pid;
}

// While the finalize `held` waits where SpawnHeldAt stopped it (its output at `io`, released
// by the file `go`), another finalize publishes DST; then `held` goes on and must answer
// "published already" with exit 0, DST holding the single run's files (tmp / "want").
void PublishUnderHeldFinalize(const qt::TempDir& tmp, const fs::path& out, pid_t held,
                              const fs::path& io, const fs::path& go) {
  auto other = qt::RunQuench({"finalize", out.string(), "-q"});
  REQUIRE_MESSAGE(other.exit_code == 0, other.err);
  REQUIRE_FALSE(fs::exists(out / ".quench-parts"));
  qt::WriteBytes(go, "");
  const int rc = Wait(held);
  const std::string err = qt::ReadBytes(io.string() + ".err");
  CHECK_MESSAGE(rc == 0, err);
  CHECK_MESSAGE(err.find("is published already; nothing to do") != std::string::npos, err);
  CHECK(qt::CheckSameFiles(tmp / "want", out) > 0);
}

// Runs quench with `args` while a finalizer on another machine (a fresh heartbeat) holds
// DST's finalize.lock, then, after 1.5 s, lets it go without publishing (it gave up, as a
// finalize run before the last part was in does). DST must not be published meanwhile.
// Returns the command's exit status and stderr.
std::pair<int, std::string> BesideAFinalizerThatGivesUp(const fs::path& dst,
                                                        const std::vector<std::string>& args,
                                                        const fs::path& io) {
  const fs::path lock = dst / ".quench-parts" / "finalize.lock";
  qt::WriteBytes(lock, kElsewhere);
  const pid_t pid = qt::SpawnQuench(args, io);
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  CHECK_FALSE(fs::exists(dst / "config.json"));
  fs::remove(lock);
  const int rc = Wait(pid);
  return {rc, qt::ReadBytes(io.string() + ".err")};
}

}  // namespace

TEST_SUITE("workers") {
  TEST_CASE("the share is a pure function of the costs, balanced within LPT's 4/3 bound") {
    // costs [5,5,4,3,3], 2 workers: 5->w0, 5->w1, 4->w0 (tie: lower index), 3->w1 (8 < 9),
    // 3->w1 (8 < 9) -> loads 9 and 11.
    CHECK(quench::AssignShards({5, 5, 4, 3, 3}, 2) == std::vector<int>{0, 1, 0, 1, 1});
    // More workers than shards: each shard alone, the last workers get none.
    CHECK(quench::AssignShards({1, 7, 3}, 5) == std::vector<int>{2, 0, 1});
    CHECK(quench::AssignShards({4, 4, 4}, 1) == std::vector<int>{0, 0, 0});
    CHECK(quench::AssignShards({}, 3).empty());
    // Against the best assignment found by trying all of them (an independent oracle).
    uint32_t x = 7;
    for (int trial = 0; trial < 200; ++trial) {
      const int shards = 1 + trial % 8, n = 1 + trial % 3;
      std::vector<uint64_t> costs(static_cast<size_t>(shards));
      for (uint64_t& c : costs) c = (x = x * 1103515245u + 12345u) >> 20;
      uint64_t best = UINT64_MAX;
      std::vector<int> a(static_cast<size_t>(shards), 0);
      for (uint64_t code = 0, total = static_cast<uint64_t>(std::pow(n, shards)); code < total;
           ++code) {
        uint64_t c = code;
        for (int& o : a)
          o = static_cast<int>(c % static_cast<uint64_t>(n)), c /= static_cast<uint64_t>(n);
        best = std::min(best, Makespan(costs, a, n));
      }
      const std::vector<int> lpt = quench::AssignShards(costs, n);
      CAPTURE(trial);
      CHECK(lpt == quench::AssignShards(costs, n));  // deterministic
      CHECK(3 * Makespan(costs, lpt, n) <= 4 * best);
    }
  }

  TEST_CASE("N workers write the bytes of a single-machine run, for every scheme family") {
    const fs::path data = qt::DataDir();
    struct Case {
      fs::path src;
      std::vector<std::string> opts;
    };
    qt::TempDir tmp;
    qt::WriteBytes(tmp / "recipe.yaml", R"(
quant_stage:
  quant_modifiers:
    QuantizationModifier:
      ignore: ["lm_head", "re:.*embed_tokens$"]
      scheme:
        NVFP4A16: ["re:.*mlp\\..*"]
        FP8_DYNAMIC: ["re:.*self_attn\\..*"]
)");
    const fs::path tiny = data / "tiny-llama";
    const fs::path edge = data / "golden/edge-bf16-sharded/src";    // 2 shards, nested files
    const fs::path qedge =
        data / "golden/qedge-bf16-sharded/src";  // 3 shards, fused sets across them
    const std::vector<Case> cases = {
        {tiny, {"--scheme", "FP8_DYNAMIC"}},
        {edge, {"--scheme", "FP8_BLOCK"}},
        {tiny, {"--scheme", "W4A16", "--group-size", "64"}},
        {qedge, {"--scheme", "W4A16_ASYM"}},
        {tiny, {"--scheme", "W8A8"}},
        {qedge, {"--scheme", "NVFP4A16"}},
        {tiny, {"--scheme", "NVFP4A16", "--prune", "2:4"}},
        {qedge, {"--scheme", "MXFP4A16"}},
        {tiny, {"--scheme", "MXFP8"}},
        {edge,
         {"--scheme", "FP8_DYNAMIC", "--prune", "unstructured:0.5", "--prune-granularity",
          "tensor"}},
        {tiny, {"--scheme", "none", "--prune", "2:4"}},
        {tiny, {"--recipe", (tmp / "recipe.yaml").string()}},
    };
    int c = 0;
    for (const Case& k : cases) {
      std::vector<std::string> opts = k.opts;
      opts.insert(opts.end(), {"-q", "--threads", "1"});
      const fs::path want = tmp / ("want" + std::to_string(c));
      auto single = qt::RunQuench(ConvertArgs(k.src, want, opts));
      REQUIRE_MESSAGE(single.exit_code == 0, single.err);
      for (int n : {1, 2, 3, 5}) {
        CAPTURE(k.src.string());
        CAPTURE(k.opts);
        CAPTURE(n);
        const fs::path got = tmp / ("got" + std::to_string(c) + "-" + std::to_string(n));
        fs::create_directories(tmp / "io");
        RunWorkers(k.src, got, opts, n, tmp / "io");
        qt::CheckSameFiles(want, got);
      }
      ++c;
    }
  }

  TEST_CASE("workers run one after another: only the last publishes; reruns are no-ops") {
    qt::TempDir tmp;
    const fs::path src = Sharded();
    const std::vector<std::string> opts = {"--scheme", "NVFP4A16"};
    ConvertWant(tmp, src, opts);
    const fs::path out = tmp / "out";
    for (int i = 0; i < 3; ++i) {
      auto r = qt::RunQuench(
          ConvertArgs(src, out, {"--scheme", "NVFP4A16", "--worker", std::to_string(i) + "/3"}));
      REQUIRE_MESSAGE(r.exit_code == 0, r.err);
      CHECK(r.err.find("worker " + std::to_string(i) + "/3, from --worker") != std::string::npos);
      // Nothing looks finished until the last part is in.
      CHECK(fs::exists(out / "config.json") == (i == 2));
      if (i == 0) {
        auto again =
            qt::RunQuench(ConvertArgs(src, out, {"--scheme", "NVFP4A16", "--worker", "0/3"}));
        REQUIRE_MESSAGE(again.exit_code == 0, again.err);
        CHECK(again.err.find("its part is complete") != std::string::npos);
      }
    }
    qt::CheckSameFiles(tmp / "want", out);
    // A worker rerun after publication changes nothing.
    auto late = qt::RunQuench(ConvertArgs(src, out, {"--scheme", "NVFP4A16", "--worker", "1/3"}));
    REQUIRE_MESSAGE(late.exit_code == 0, late.err);
    CHECK(late.err.find("already this conversion") != std::string::npos);
    qt::CheckSameFiles(tmp / "want", out);
    // Another conversion into the published folder needs --overwrite.
    auto other = qt::RunQuench(ConvertArgs(src, out, {"--scheme", "W4A16", "--worker", "1/3"}));
    CHECK(other.exit_code == 2);
    CHECK(other.err.find("--overwrite") != std::string::npos);
  }

  TEST_CASE("--report per worker ({worker} in its name), merged by finalize --report") {
    qt::TempDir tmp;
    const fs::path src = Sharded();
    const fs::path out = tmp / "out";
    auto same_name = qt::RunQuench(ConvertArgs(
        src, out, {"--scheme", "W8A8", "--worker", "0/2", "--report", (tmp / "r.json").string()}));
    CHECK(same_name.exit_code == 2);
    CHECK(same_name.err.find("{worker}") != std::string::npos);
    uint64_t in = 0;
    for (int i = 0; i < 2; ++i) {
      auto r = qt::RunQuench(
          ConvertArgs(src, out,
                      {"--scheme", "W8A8", "--no-finalize", "--worker", std::to_string(i) + "/2",
                       "--report", (tmp / "r-{worker}.json").string()}));
      REQUIRE_MESSAGE(r.exit_code == 0, r.err);
      auto report = quench::ReadJsonFile((tmp / ("r-" + std::to_string(i) + ".json")).string());
      REQUIRE(report.ok());
      // This worker's bytes: the source bytes of the shards in its part.
      auto part = quench::ReadPart(quench::PartPath(out, i, 2));
      REQUIRE(part.ok());
      in += part->summary.Find("bytes_in")->as_uint();
    }
    CHECK_FALSE(fs::exists(out / "config.json"));  // --no-finalize
    auto fin =
        qt::RunQuench({"finalize", out.string(), "--report", (tmp / "merged.json").string()});
    REQUIRE_MESSAGE(fin.exit_code == 0, fin.err);
    CHECK(fs::exists(out / "config.json"));
    CHECK_FALSE(fs::exists(out / ".quench-parts"));
    CHECK_FALSE(fs::exists(out / ".quench-resume"));
    auto merged = quench::ReadJsonFile((tmp / "merged.json").string());
    REQUIRE(merged.ok());
    CHECK(merged->Find("workers")->as_array().size() == 2);
    CHECK(merged->Find("totals")->Find("bytes_in")->as_uint() == in);
    // Every tensor byte of the source read once over the two workers: the safetensors sizes
    // less their headers, counted independently here.
    uint64_t source = 0;
    for (const std::string& f : qt::ListFiles(src)) {
      if (!f.ends_with(".safetensors")) continue;
      const std::string b = qt::ReadBytes(src / f);
      uint64_t n = 0;
      std::memcpy(&n, b.data(), 8);
      source += b.size() - 8 - n;
    }
    CHECK(in == source);
  }

  TEST_CASE(
      "launcher variables end to end: Kubernetes indexed job, a refused conflict, relative paths") {
    qt::TempDir tmp;
    const fs::path src = qt::DataDir() / "tiny-llama";
    ConvertWant(tmp, src, {"--scheme", "FP8_BLOCK"});
    const std::string bin = qt::QuenchBin().string();
    // Each pod has its own working folder and names SRC and DST relative to it.
    fs::create_directories(tmp / "pod0");
    fs::create_directories(tmp / "pod1");
    fs::create_symlink(src, tmp / "pod1/model");
    const std::vector<std::pair<std::string, std::string>> runs = {
        {"pod0", "cd " + (tmp / "pod0").string() + " && " + bin + " convert " + src.string() +
                     " ../out --scheme FP8_BLOCK --workers 2"},
        {"pod1", "cd " + (tmp / "pod1").string() + " && " + bin +
                     " convert model ../out --scheme FP8_BLOCK --workers 2"}};
    for (int i = 0; i < 2; ++i) {
      auto r = qt::RunCommand({"sh", "-c", runs[static_cast<size_t>(i)].second},
                              {{"JOB_COMPLETION_INDEX", std::to_string(i)}});
      REQUIRE_MESSAGE(r.exit_code == 0, r.err);
      CHECK(r.err.find("worker " + std::to_string(i) +
                       "/2, from Kubernetes indexed job (JOB_COMPLETION_INDEX=" +
                       std::to_string(i) + ", --workers 2)") != std::string::npos);
    }
    qt::CheckSameFiles(tmp / "want", tmp / "out");
    // Two launchers that disagree: refused before anything is written.
    auto conflict = qt::RunCommand(
        {bin, "convert", src.string(), (tmp / "other").string(), "--scheme", "FP8_BLOCK"},
        {{"OMPI_COMM_WORLD_RANK", "0"},
         {"OMPI_COMM_WORLD_SIZE", "2"},
         {"PMI_RANK", "1"},
         {"PMI_SIZE", "2"}});
    CHECK(conflict.exit_code == 2);
    CHECK(conflict.err.find("disagree") != std::string::npos);
    CHECK_FALSE(fs::exists(tmp / "other"));
  }

  TEST_CASE("two processes removing the same leftovers at once both succeed and leave none") {
    // The last worker publishing removes .quench-parts and .quench-resume while a finalizer
    // started beside it (or a rerun) removes them too: each must finish the removal the
    // other started, not stop at the first entry that vanished under it (fuzz-interrupt's
    // "finalize beside the last worker" left a part behind with both exiting 0). Two threads
    // stand in for the two processes; many entries make their listings overlap.
    for (int round = 0; round < 20; ++round) {
      qt::TempDir tmp;
      const fs::path dst = tmp / "out";
      for (const char* dir : {".quench-parts", ".quench-resume"}) {
        fs::create_directories(dst / dir / "sub");
        for (int i = 0; i < 400; ++i) {
          qt::WriteBytes(dst / dir / ("part-" + std::to_string(i) + ".json"), "{}");
          qt::WriteBytes(dst / dir / "sub" / std::to_string(i), "x");
        }
      }
      std::mutex mu;
      std::vector<std::string> leftovers;
      quench::ConvertCallbacks cb;
      cb.leftover = [&](std::string_view m) {
        std::lock_guard<std::mutex> lock(mu);
        leftovers.emplace_back(m);
      };
      quench::Status a, b;
      std::thread other([&] { b = quench::RemoveMarkersAndParts(dst, cb); });
      a = quench::RemoveMarkersAndParts(dst, cb);
      other.join();
      CHECK(a.ok());
      CHECK(b.ok());
      CHECK_MESSAGE(leftovers.empty(), (leftovers.empty() ? "" : leftovers.front()));
      CHECK(!fs::exists(dst / ".quench-parts"));
      CHECK(!fs::exists(dst / ".quench-resume"));
    }
  }

  TEST_CASE("a finalizer killed after publishing: a worker's rerun removes its parts and markers") {
    qt::TempDir tmp;
    const fs::path src = Sharded();
    const std::vector<std::string> opts = {"--scheme", "W4A16"};
    ConvertWant(tmp, src, opts);
    const fs::path out = tmp / "out";
    StopFinalizerAfterConfig(src, tmp / "want", out);
    const fs::path lock = out / ".quench-parts" / "finalize.lock";
    // While a finalizer elsewhere holds the lock (a fresh heartbeat), it removes them itself.
    qt::WriteBytes(lock, kElsewhere);
    const std::vector<std::string> rerun =
        ConvertArgs(src, out, {"--scheme", "W4A16", "--worker", "1/2"});
    auto busy = qt::RunQuench(rerun);
    REQUIRE_MESSAGE(busy.exit_code == 0, busy.err);
    CHECK(fs::exists(lock));
    // That finalizer gone (no heartbeat for longer than kStaleSeconds): the rerun finishes
    // its cleanup, and says what it found.
    fs::last_write_time(lock, fs::file_time_type::clock::now() -
                                  std::chrono::seconds(quench::kStaleSeconds + 30));
    auto r = qt::RunQuench(rerun);
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    CHECK(r.err.find("already this conversion") != std::string::npos);
    CHECK_MESSAGE(r.err.find("shard(s) were already done; published") != std::string::npos,
                  r.err);  // not "no shards"
    qt::CheckSameFiles(tmp / "want", out);
  }

  TEST_CASE(
      "the last worker, or quench finalize, waits out a finalizer that gives up, then publishes") {
    qt::TempDir tmp;
    const fs::path src = Sharded();
    const std::vector<std::string> opts = {"--scheme", "W4A16"};
    ConvertWant(tmp, src, opts);
    const fs::path out = tmp / "out";
    std::vector<std::string> args;  // what runs beside the finalizer that gives up
    // A `quench finalize` started before the last part was in holds finalize.lock, finds the
    // part missing and gives up (exit 3). Before: the last worker, finding the lock held, said
    // "another process is finalizing" and exited 0: nobody published (found by
    // scripts/fuzz-interrupt, finalize beside the last worker).
    SUBCASE("the last worker") {
      std::vector<std::string> first = ConvertArgs(src, out, opts);
      first.insert(first.end(), {"--worker", "0/2"});
      REQUIRE(qt::RunQuench(first).exit_code == 0);
      args = ConvertArgs(src, out, opts);
      args.insert(args.end(), {"--worker", "1/2"});
    }
    // Before: exit 2 at once ("another process is finalizing"), also where that process then
    // gave up; a pipeline's last step failed while the folder was still to publish.
    SUBCASE("quench finalize") {
      WriteParts(src, out, opts, 2);
      args = {"finalize", out.string()};
    }
    const auto [rc, err] = BesideAFinalizerThatGivesUp(out, args, tmp / "beside");
    CHECK_MESSAGE(rc == 0, err);
    CHECK(err.find("waiting for it") != std::string::npos);
    CHECK(qt::CheckSameFiles(tmp / "want", out) > 0);
  }

  TEST_CASE("quench finalize stopped by a signal while it waits: exit 130, nothing published") {
    // Before: it had no handler, so SIGTERM or SIGHUP killed it (exit 143 / 129, no message).
    qt::TempDir tmp;
    const fs::path out = PartsToFinalize(tmp);
    const fs::path lock = out / ".quench-parts" / "finalize.lock";
    for (int sig : {SIGTERM, SIGHUP, SIGINT}) {
      CAPTURE(sig);
      qt::WriteBytes(lock, kElsewhere);  // a finalizer elsewhere, alive: this one waits
      const fs::path io = tmp / ("signal-" + std::to_string(sig));
      const pid_t pid = qt::SpawnQuench({"finalize", out.string()}, io);
      std::this_thread::sleep_for(std::chrono::milliseconds(1000));
      kill(pid, sig);
      const int rc = Wait(pid);
      const std::string err = qt::ReadBytes(io.string() + ".err");
      CHECK_MESSAGE(rc == 130, err);
      CHECK(err.find("quench: error: interrupted: finalize of ") != std::string::npos);
      CHECK(err.find("nothing was published") != std::string::npos);
      CHECK_FALSE(fs::exists(out / "config.json"));
    }
    // Started under nohup (SIGHUP ignored), SIGHUP does not stop it: it waits on, then
    // publishes once the other finalizer lets go.
    qt::WriteBytes(lock, kElsewhere);
    const pid_t pid = qt::SpawnQuench({"finalize", out.string()}, tmp / "nohup",
                                      [] { std::signal(SIGHUP, SIG_IGN); });
    std::this_thread::sleep_for(std::chrono::milliseconds(1000));
    kill(pid, SIGHUP);
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    int status = 0;
    CHECK(waitpid(pid, &status, WNOHANG) == 0);  // still running
    fs::remove(lock);
    const int rc = Wait(pid);
    CHECK_MESSAGE(rc == 0, qt::ReadBytes((tmp / "nohup").string() + ".err"));
    CHECK(qt::CheckSameFiles(tmp / "want", out) > 0);
  }

  TEST_CASE("quench finalize waiting for the lock while its holder publishes: exit 0") {
    // Found by fuzz-interrupt (finalize beside the last worker, once the finalize waited): the
    // holder published and removed the parts, the lock's folder with them, while the waiting
    // finalize was taking the lock: "cannot create the lock file: No such file or directory"
    // (exit 4) for a folder just published. fault_io holds that finalize in its second try
    // (mode hang) while another finalize publishes, then lets it go on.
    qt::TempDir tmp;
    const fs::path out = PartsToFinalize(tmp);
    const fs::path lock = out / ".quench-parts" / "finalize.lock";
    qt::WriteBytes(lock, kElsewhere);
    const fs::path go = tmp / "go";
    const pid_t waiting = SpawnHeldAt({"finalize", out.string()}, tmp / "waiting", "open",
                                      "finalize.lock.new-", 2, go);
    fs::remove(lock);  // the holder is done; another finalize publishes meanwhile
    PublishUnderHeldFinalize(tmp, out, waiting, tmp / "waiting", go);
  }

  TEST_CASE("quench finalize whose parts another process publishes under it: exit 0") {
    // The race above from the other side: a finalize that found the folder not yet
    // published, then no parts folder (the last worker, or another finalize, had published
    // and removed it meanwhile), must not answer "holds no worker parts" (exit 3): its second
    // look (FinalizePartsWaiting) finds the folder published. fault_io holds that finalize at
    // its look for the parts folder (its first stat of it) while another finalize publishes,
    // then lets it go on.
    qt::TempDir tmp;
    const fs::path out = PartsToFinalize(tmp);
    const fs::path go = tmp / "go";
    const pid_t held =
        SpawnHeldAt({"finalize", out.string()}, tmp / "held", "stat", ".quench-parts$", 1, go);
    PublishUnderHeldFinalize(tmp, out, held, tmp / "held", go);
  }

  TEST_CASE(
      "finalize stopped while removing the parts and markers: finalize again completes; on a "
      "published folder it does nothing") {
    qt::TempDir tmp;
    const fs::path src = Sharded();
    ConvertWant(tmp, src, {"--scheme", "W4A16"});
    // Every state a finalizer can be stopped in once config.json is written (it writes the
    // files, then removes the markers, then the parts, one file after another).
    enum Left { kAll, kNoMarkers, kSomeParts, kEmptyPartsFolder };
    for (Left left : {kAll, kNoMarkers, kSomeParts, kEmptyPartsFolder}) {
      CAPTURE(static_cast<int>(left));
      const fs::path out = tmp / ("out" + std::to_string(static_cast<int>(left)));
      StopFinalizerAfterConfig(src, tmp / "want", out);
      if (left != kAll) fs::remove_all(out / ".quench-resume");
      if (left == kSomeParts) fs::remove(out / ".quench-parts" / "part-00000-of-00002.json");
      if (left == kEmptyPartsFolder) {
        for (const std::string& f : qt::ListFiles(out / ".quench-parts"))
          fs::remove(out / ".quench-parts" / f);
      }
      auto r = qt::RunQuench({"finalize", out.string()});
      REQUIRE_MESSAGE(r.exit_code == 0, r.err);
      CHECK_MESSAGE(r.err.find("is published already; nothing to do") != std::string::npos, r.err);
      qt::CheckSameFiles(tmp / "want", out);
      // Once more, on the finished folder: the same answer, nothing changed.
      auto again = qt::RunQuench({"finalize", out.string()});
      REQUIRE_MESSAGE(again.exit_code == 0, again.err);
      CHECK(again.err.find("is published already; nothing to do") != std::string::npos);
      qt::CheckSameFiles(tmp / "want", out);
    }
  }

  TEST_CASE(
      "a single run and workers do not write one DST at once; their leftovers serve a --resume") {
    qt::TempDir tmp;
    const fs::path src = Sharded();
    ConvertWant(tmp, src, {"--scheme", "W4A16"});
    const fs::path out = tmp / "out";
    // Worker 0 of 2 has done its part; worker 1 is running elsewhere (a fresh heartbeat).
    auto w0 = qt::RunQuench(ConvertArgs(src, out, {"--scheme", "W4A16", "--worker", "0/2"}));
    REQUIRE_MESSAGE(w0.exit_code == 0, w0.err);
    const fs::path worker_lock = quench::WorkerLockPath(out, 1);
    qt::WriteBytes(worker_lock, kElsewhere);
    const std::vector<std::string> single =
        ConvertArgs(src, out, {"--scheme", "W4A16", "--resume"});
    auto busy = qt::RunQuench(single);
    CHECK(busy.exit_code == 2);
    CHECK_MESSAGE(
        busy.err.find("is being written by workers (worker-00001.lock: host elsewhere, pid 4242") !=
            std::string::npos,
        busy.err);
    CHECK_FALSE(fs::exists(out / ".quench-run.lock"));
    // The other way: a single run holding DST elsewhere; a worker is refused.
    qt::WriteBytes(out / ".quench-run.lock", kElsewhere);
    auto refused = qt::RunQuench(ConvertArgs(src, out, {"--scheme", "W4A16", "--worker", "0/2"}));
    CHECK(refused.exit_code == 2);
    CHECK_MESSAGE(
        refused.err.find("is being written by a single quench run (host elsewhere, pid 4242") !=
            std::string::npos,
        refused.err);
    // Both holders gone (no heartbeat for longer than kStaleSeconds): a single --resume keeps
    // worker 0's shards, converts the rest, publishes, and leaves no parts behind.
    const auto old =
        fs::file_time_type::clock::now() - std::chrono::seconds(quench::kStaleSeconds + 30);
    fs::last_write_time(worker_lock, old);
    fs::last_write_time(out / ".quench-run.lock", old);
    auto r = qt::RunQuench(single);
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    // As many shards kept as worker 0 said were its share.
    const size_t at = w0.err.find("worker 0/2: ");
    REQUIRE(at != std::string::npos);
    const std::string share =
        w0.err.substr(at + 12, w0.err.find(" of 3 output shards", at) - at - 12);
    CHECK_MESSAGE(
        r.err.find("resume: " + share + " of 3 output shards are complete") != std::string::npos,
        r.err);
    qt::CheckSameFiles(tmp / "want", out);
  }

  TEST_CASE(
      "an empty worker lock (a run killed while taking it) holds nothing; a lock is never left "
      "empty") {
    qt::TempDir tmp;
    const fs::path src = qt::DataDir() / "tiny-llama";
    const fs::path out = tmp / "out";
    qt::WriteBytes(quench::WorkerLockPath(out, 0), "");
    const std::vector<std::string> args =
        ConvertArgs(src, out, {"--scheme", "FP8_DYNAMIC", "--worker", "0/2", "--no-finalize"});
    auto r = qt::RunQuench(args);
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    // The part is in; the lock, released, left nothing behind (nor the file it was made from).
    CHECK(qt::ListFiles(out / ".quench-parts") ==
          std::vector<std::string>{"part-00000-of-00002.json"});
  }

  TEST_CASE(
      "a worker lock held from another machine: refused while its heartbeat is fresh, taken over "
      "once stale") {
    qt::TempDir tmp;
    const fs::path src = qt::DataDir() / "tiny-llama";
    const fs::path out = tmp / "out";
    const fs::path lock = quench::WorkerLockPath(out, 0);
    qt::WriteBytes(lock, kElsewhere);
    const std::vector<std::string> args =
        ConvertArgs(src, out, {"--scheme", "FP8_DYNAMIC", "--worker", "0/1"});
    auto busy = qt::RunQuench(args);
    CHECK(busy.exit_code == 2);
    CHECK_MESSAGE(busy.err.find("worker 0/1 is already running (host elsewhere, pid 4242") !=
                      std::string::npos,
                  busy.err);
    CHECK_FALSE(fs::exists(out / "config.json"));
    // No heartbeat for longer than kStaleSeconds: the holder is gone.
    const auto old =
        fs::file_time_type::clock::now() - std::chrono::seconds(quench::kStaleSeconds + 30);
    fs::last_write_time(lock, old);
    auto r = qt::RunQuench(args);
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    CHECK(fs::exists(out / "config.json"));
  }

  TEST_CASE("--dry-run --worker prints the worker's share and writes nothing") {
    qt::TempDir tmp;
    const fs::path src = Sharded();
    std::vector<std::string> shares;
    for (int i = 0; i < 2; ++i) {
      auto r = qt::RunQuench(
          ConvertArgs(src, tmp / "out",
                      {"--scheme", "W4A16", "--dry-run", "--worker", std::to_string(i) + "/2"}));
      REQUIRE_MESSAGE(r.exit_code == 0, r.err);
      const size_t at = r.out.find("worker " + std::to_string(i) + "/2 (--worker");
      REQUIRE(at != std::string::npos);
      shares.push_back(r.out.substr(at, r.out.find("share:", at) - at));
    }
    CHECK_FALSE(fs::exists(tmp / "out"));
    // Every shard in exactly one share.
    for (const char* s : {"model-00001-of-00003", "model-00002-of-00003", "model-00003-of-00003"}) {
      CAPTURE(s);
      CHECK((shares[0].find(s) != std::string::npos) + (shares[1].find(s) != std::string::npos) ==
            1);
    }
  }

  TEST_CASE("faults: finalize early, another scheme, a corrupt part, a damaged shard") {
    qt::TempDir tmp;
    const fs::path src = Sharded();
    const fs::path out = tmp / "out";
    ConvertWant(tmp, src, {"--scheme", "FP8_DYNAMIC"});
    auto worker = [&](int i, const char* scheme) {
      return qt::RunQuench(
          ConvertArgs(src, out, {"--scheme", scheme, "--worker", std::to_string(i) + "/3"}));
    };
    // Finalize before every part is in: names the workers that owe parts and their shards.
    REQUIRE(worker(0, "FP8_DYNAMIC").exit_code == 0);
    auto early = qt::RunQuench({"finalize", out.string()});
    CHECK(early.exit_code == 3);
    CHECK(early.err.find("worker 1/3 has not finished its part (model-0000") != std::string::npos);
    CHECK(early.err.find("worker 2/3 has not finished") != std::string::npos);
    CHECK(early.err.find("nothing was published") != std::string::npos);
    CHECK_FALSE(fs::exists(out / "config.json"));

    // One worker with another scheme: the last worker's finalize names it; nothing published.
    REQUIRE(worker(1, "FP8_DYNAMIC").exit_code == 0);
    auto odd = worker(2, "W4A16");
    CHECK(odd.exit_code == 3);
    CHECK(odd.err.find("worker 2/3 planned another conversion (--scheme W4A16") !=
          std::string::npos);
    CHECK_FALSE(fs::exists(out / "config.json"));
    CHECK_FALSE(fs::exists(out / "model.safetensors.index.json"));
    // Rerun with the right scheme: the part is redone and the folder published.
    auto fixed = worker(2, "FP8_DYNAMIC");
    REQUIRE_MESSAGE(fixed.exit_code == 0, fixed.err);
    qt::CheckSameFiles(tmp / "want", out);

    // A corrupt part (one byte changed) and a damaged shard (truncated): both named, with the
    // worker that owes them; a rerun of those workers repairs the folder.
    fs::remove_all(out);
    REQUIRE(worker(0, "FP8_DYNAMIC").exit_code == 0);
    REQUIRE(worker(1, "FP8_DYNAMIC").exit_code == 0);
    const fs::path part0 = quench::PartPath(out, 0, 3);
    std::string bytes = qt::ReadBytes(part0);
    const size_t at = bytes.find("\"bytes\": ") + 9;
    bytes[at] = bytes[at] == '9' ? '8' : '9';
    qt::WriteBytes(part0, bytes);
    auto part1 = quench::ReadPart(quench::PartPath(out, 1, 3));
    REQUIRE(part1.ok());
    REQUIRE(part1->shards.size() == 1);  // 3 shards, 3 workers
    const std::string damaged = part1->shards[0].name;
    fs::resize_file(out / damaged, fs::file_size(out / damaged) - 1);
    auto last = worker(2, "FP8_DYNAMIC");
    CHECK(last.exit_code == 3);
    CHECK(last.err.find("worker 0/3's part is corrupt") != std::string::npos);
    CHECK(last.err.find(damaged + " has ") != std::string::npos);
    CHECK(last.err.find("worker 1/3 owes it") != std::string::npos);
    CHECK_FALSE(fs::exists(out / "config.json"));
    REQUIRE(worker(0, "FP8_DYNAMIC").exit_code == 3);  // its part is fine now; worker 1's is not
    CHECK_FALSE(fs::exists(out / "config.json"));
    auto repaired = worker(1, "FP8_DYNAMIC");
    REQUIRE_MESSAGE(repaired.exit_code == 0, repaired.err);
    qt::CheckSameFiles(tmp / "want", out);

    // A shard whose header was changed in place, its size and mtime kept: still named.
    fs::remove_all(out);
    REQUIRE(worker(0, "FP8_DYNAMIC").exit_code == 0);
    auto part0_again = quench::ReadPart(quench::PartPath(out, 0, 3));
    REQUIRE(part0_again.ok());
    REQUIRE(part0_again->shards.size() == 1);
    const fs::path shard0 = out / part0_again->shards[0].name;
    const auto mtime = fs::last_write_time(shard0);
    std::string shard_bytes = qt::ReadBytes(shard0);
    const size_t dtype_at = shard_bytes.find("\"dtype\":\"");
    REQUIRE(dtype_at != std::string::npos);
    shard_bytes[dtype_at + 9] = shard_bytes[dtype_at + 9] == 'B' ? 'C' : 'B';
    qt::WriteBytes(shard0, shard_bytes);
    fs::last_write_time(shard0, mtime);
    REQUIRE(worker(1, "FP8_DYNAMIC").exit_code == 0);
    auto header = worker(2, "FP8_DYNAMIC");
    CHECK(header.exit_code == 3);
    CHECK_MESSAGE(header.err.find(part0_again->shards[0].name +
                                  " has another header; worker 0/3 owes it") != std::string::npos,
                  header.err);
    CHECK_FALSE(fs::exists(out / "config.json"));
  }

  TEST_CASE("finalize refuses parts of runs with different worker counts, naming both") {
    // A worker of a 3-way split left beside a 2-way one's: which parts belong together is
    // the user's call; finalize publishes nothing until the stale ones are gone or --workers
    // names the count.
    qt::TempDir tmp;
    const fs::path src = Sharded();
    const fs::path out = tmp / "out";
    ConvertWant(tmp, src, {"--scheme", "FP8_DYNAMIC"});
    auto worker = [&](const std::string& share) {
      return qt::RunQuench(ConvertArgs(src, out, {"--scheme", "FP8_DYNAMIC", "--worker", share}));
    };
    REQUIRE(worker("0/3").exit_code == 0);
    REQUIRE(worker("0/2").exit_code == 0);
    auto mixed = qt::RunQuench({"finalize", out.string()});
    CHECK(mixed.exit_code == 3);
    CHECK_MESSAGE(mixed.err.find(out.string() + " holds parts of runs with different worker "
                                 "counts (2, 3); remove the stale ones from " +
                                 (out / ".quench-parts").string() + " or pass --workers N") !=
                      std::string::npos,
                  mixed.err);
    CHECK_FALSE(fs::exists(out / "config.json"));
    // Told which count is meant, finalize judges that run's parts alone.
    auto two = qt::RunQuench({"finalize", out.string(), "--workers", "2"});
    CHECK(two.exit_code == 3);
    CHECK(two.err.find("worker 1/2 has not finished its part") != std::string::npos);
    REQUIRE(worker("1/2").exit_code == 0);
    qt::CheckSameFiles(tmp / "want", out);
  }

  // A part is checked against its checksum, which damage breaks; these keep it whole (a part
  // no quench writes): finalize indexed one part's shard list by another's (SIGSEGV, found
  // mutating parts), and took any file name a part gave.
  TEST_CASE("faults: parts whose checksum holds but whose shard list or file names are wrong") {
    qt::TempDir tmp;
    const fs::path src = Sharded();
    const fs::path out = tmp / "out";
    // Rewrites worker i's part with `edit` applied to its body and the checksum made anew.
    auto rewrite = [&](int i, const std::function<void(quench::JsonValue&)>& edit) {
      const fs::path path = quench::PartPath(out, i, 3);
      auto part = quench::ParseJson(path.string(), qt::ReadBytes(path));
      REQUIRE(part.ok());
      quench::JsonValue body = *part->Find("body");
      edit(body);
      char hex[17];
      std::snprintf(hex, sizeof hex, "%016llx",
                    static_cast<unsigned long long>(quench::Fnv1a64(quench::DumpPythonJson(body))));
      part->Set("body", std::move(body));
      part->Set("body_fnv1a64", std::string(hex));
      qt::WriteBytes(path, quench::DumpPythonJson(*part) + "\n");
    };
    WriteParts(src, out, {"--scheme", "FP8_DYNAMIC"}, 3);
    rewrite(0, [](quench::JsonValue& b) {
      quench::JsonValue shards = *b.Find("plan_shards");
      shards.Push(shards.as_array().front());
      b.Set("plan_shards", std::move(shards));
    });
    auto longer = qt::RunQuench({"finalize", out.string()});
    CHECK(longer.exit_code == 3);
    CHECK_MESSAGE(longer.err.find("planned another conversion") != std::string::npos, longer.err);
    CHECK(longer.err.find("nothing was published") != std::string::npos);
    CHECK_FALSE(fs::exists(out / "config.json"));

    fs::remove_all(out);
    WriteParts(src, out, {"--scheme", "FP8_DYNAMIC"}, 3);
    rewrite(1, [](quench::JsonValue& b) {
      quench::JsonValue files = *b.Find("files");
      quench::JsonValue f = files.as_array().front();
      f.Set("name", std::string("../outside.json"));
      files.Push(std::move(f));
      b.Set("files", std::move(files));
    });
    auto outside = qt::RunQuench({"finalize", out.string()});
    CHECK(outside.exit_code == 3);
    CHECK_MESSAGE(outside.err.find("worker 1/3's part is corrupt (") != std::string::npos,
                  outside.err);
    CHECK(outside.err.find("a field of the part is missing or invalid") != std::string::npos);
    CHECK_FALSE(fs::exists(tmp / "outside.json"));
    CHECK_FALSE(fs::exists(out / "config.json"));

    // Worker 2^32 of 3 (an int would read it as worker 0, the file's own index); a shard's
    // header_bytes beyond any safetensors header (finalize reads that much of the shard).
    const std::vector<std::function<void(quench::JsonValue&)>> edits = {
        [](quench::JsonValue& b) { b.Set("worker", uint64_t{1} << 32); },
        [](quench::JsonValue& b) {
          quench::JsonValue shards = *b.Find("shards");
          shards.as_array().front().Set("header_bytes", uint64_t{1} << 40);
          b.Set("shards", std::move(shards));
        }};
    for (const auto& edit : edits) {
      fs::remove_all(out);
      WriteParts(src, out, {"--scheme", "FP8_DYNAMIC"}, 3);
      rewrite(0, edit);
      auto refused = qt::RunQuench({"finalize", out.string()});
      CHECK(refused.exit_code == 3);
      CHECK_MESSAGE(refused.err.find("worker 0/3's part is corrupt (") != std::string::npos,
                    refused.err);
      CHECK_FALSE(fs::exists(out / "config.json"));
    }

    // A file named as the part of a run of 0 workers (or of an index past its count) is no
    // part: the count once became 0, and finalize went on to publish with nothing checked
    // (SIGSEGV).
    const fs::path odd = tmp / "odd";
    fs::create_directories(odd / ".quench-parts");
    for (const char* name : {"part-00000-of-00000.json", "part-00004-of-00002.json"}) {
      CAPTURE(name);
      qt::WriteBytes(odd / ".quench-parts" / name, "{}\n");
      auto none = qt::RunQuench({"finalize", odd.string()});
      CHECK(none.exit_code == 3);
      CHECK(none.err == "quench: error: invalid-input: " + odd.string() +
                            ": no worker has finished its part yet\n");
      CHECK_FALSE(fs::exists(odd / "config.json"));
    }
  }

  TEST_CASE("faults: a worker killed mid-part and rerun; two workers given one index") {
    qt::TempDir tmp;
    WriteBigSource(tmp / "src", 4, 2048, 16384);  // four 64 MiB shards: two per worker
    const std::vector<std::string> opts = {"--scheme", "FP8_DYNAMIC", "--threads", "1", "-q"};
    REQUIRE(qt::RunQuench(ConvertArgs(tmp / "src", tmp / "want", opts)).exit_code == 0);
    const fs::path out = tmp / "out";
    auto worker_args = [&](int i) {
      std::vector<std::string> a = ConvertArgs(tmp / "src", out, opts);
      a.insert(a.end(), {"--worker", std::to_string(i) + "/2"});
      return a;
    };
    // Worker 0 is killed (SIGKILL: no cleanup) once its first shard is durable: held, by the
    // fault library (tests/fault_io.cc, mode hang), in the rename that would publish its second
    // shard's marker. (Polling for the first marker and killing raced the worker under load:
    // it could finish its part first.)
    const pid_t pid =
        SpawnHeldAt(worker_args(0), tmp / "killed", "rename", ".safetensors.json$", 2);
    kill(pid, SIGKILL);
    CHECK(Wait(pid) == 128 + SIGKILL);
    CHECK(fs::exists(quench::WorkerLockPath(out, 0)));  // its lock is left behind, stale
    CHECK_FALSE(fs::exists(quench::PartPath(out, 0, 2)));
    // Two workers given index 1 at once: one runs, the other is refused (exit 2) naming it.
    const pid_t a = qt::SpawnQuench(worker_args(1), tmp / "a");
    for (int i = 0; i < 20000 && !fs::exists(quench::WorkerLockPath(out, 1)); ++i) {
      std::this_thread::sleep_for(std::chrono::microseconds(500));
    }
    kill(a, SIGSTOP);  // held mid-run, so that the second surely meets the first
    auto dup = qt::RunQuench(worker_args(1));
    kill(a, SIGCONT);
    CHECK(dup.exit_code == 2);
    CHECK_MESSAGE(dup.err.find("worker 1/2 is already running (host ") != std::string::npos,
                  dup.err);
    CHECK(Wait(a) == 0);
    CHECK_FALSE(fs::exists(out / "config.json"));
    // The killed worker's rerun takes over its stale lock, keeps its finished shard, and as
    // the last part in, publishes.
    auto r = qt::RunQuench(ConvertArgs(
        tmp / "src", out, {"--scheme", "FP8_DYNAMIC", "--threads", "1", "--worker", "0/2"}));
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    // Killed with one shard durable and vouched for, the second's marker not yet published.
    CHECK_MESSAGE(r.err.find("resume: 1 of 2 output shards are complete") != std::string::npos,
                  r.err);
    qt::CheckSameFiles(tmp / "want", out);
  }
}
