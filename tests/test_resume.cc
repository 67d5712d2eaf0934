// --resume on what earlier runs left: a finished folder (with or without the markers of a run
// killed after publishing) is left as it is; a finished folder of another conversion is not
// mistaken for this one; the free-space check counts only what is still to be written.
#include <doctest/doctest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "pipeline/resume.h"
#include "quench/convert.h"
#include "test_util.h"

namespace qt = quench::testing;
namespace fs = std::filesystem;

namespace {

const fs::path kTiny = qt::DataDir() / "tiny-llama";

std::vector<std::string> Convert(const fs::path& dst, const std::string& scheme,
                                 bool resume) {
  std::vector<std::string> a = {"convert", kTiny.string(), dst.string(), "--scheme", scheme};
  if (resume) a.push_back("--resume");
  return a;
}

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// Identity of every file under `root`: inode and modification time in nanoseconds. A file
// rewritten (even atomically, with the same bytes) gets a new inode.
std::map<std::string, std::pair<ino_t, long long>> Identities(const fs::path& root) {
  std::map<std::string, std::pair<ino_t, long long>> out;
  for (const std::string& f : qt::ListFiles(root)) {
    struct stat st {};
    REQUIRE(stat((root / f).c_str(), &st) == 0);
    out[f] = {st.st_ino, st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec};
  }
  return out;
}

// The markers a run writes as each shard completes (what a run killed between publishing
// config.json and removing its markers leaves behind), for the FP8_DYNAMIC plan of kTiny.
void WriteMarkers(const fs::path& dst, const std::string& scheme, bool durable = true) {
  quench::ConvertOptions o;
  o.src = kTiny;
  o.dst = dst;
  o.scheme = scheme;
  o.resume = true;
  auto plan = quench::MakePlan(o);
  REQUIRE(plan.ok());
  plan->dst = dst;
  for (size_t k = 0; k < plan->shards.size(); ++k) {
    REQUIRE(quench::WriteResumeMarker(quench::ResumeMarkerPath(dst, plan->shards[k].rel_name),
                                      quench::ShardFingerprint(*plan, k), durable)
                .ok());
  }
}

// FNV-1a 64 of `bytes` (the marker's "source_header_fnv1a64"), written out here.
std::string Fnv1a64Hex(const std::string& bytes) {
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : bytes) h = (h ^ c) * 1099511628211ull;
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
  return hex;
}

}  // namespace

// An FP8_DYNAMIC run of kTiny, whole in `ref`, and what an interrupted one leaves in
// `folder`: shard 1 and its marker. `need`: the whole run's footprint on a tmpfs, as the
// free-space test in test_robustness counts it (files in whole pages, a page per marker, a
// page for the markers' folder, a page for the run's lock file); `mnt`: an empty folder to
// mount the tmpfs on.
struct ShardOneLeft {
  fs::path ref, folder, mnt;
  uint64_t page = 0, need = 0;
};
ShardOneLeft LeaveShardOne(const fs::path& tmp) {
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  ShardOneLeft out{tmp / "ref", tmp / "left", tmp / "mnt", page};
  fs::create_directories(out.mnt);
  REQUIRE(qt::RunQuench(Convert(out.ref, "FP8_DYNAMIC", false)).exit_code == 0);
  for (const std::string& f : qt::ListFiles(out.ref)) {
    out.need += (fs::file_size(out.ref / f) + page - 1) / page * page;
  }
  out.need += 2 * page + page + page;
  fs::create_directories(out.folder);
  fs::copy_file(out.ref / "model-00001-of-00002.safetensors",
                out.folder / "model-00001-of-00002.safetensors");
  WriteMarkers(out.folder, "FP8_DYNAMIC");
  fs::remove(out.folder / ".quench-resume" / "model-00002-of-00002.safetensors.json");
  return out;
}

// Runs the shell `body` in a private mount namespace, with a tmpfs of `size` bytes on
// left.mnt ($2) holding the leftovers as $2/out; $3 is quench, $4 kTiny, $6 the whole run's
// shard 2, $7 `extra`. Exit 99: no tmpfs could be mounted; 98: the copy failed.
qt::RunResult OnTmpfs(const ShardOneLeft& left, uint64_t size, const std::string& body,
                      const std::string& extra = "") {
  const std::string script =
      "mount -t tmpfs -o size=\"$1\" tmpfs \"$2\" || exit 99\n"
      "cp -a \"$5\" \"$2/out\" || exit 98\n" + body;
  auto r = qt::RunCommand({"unshare", "-m", "sh", "-c", script, "sh", std::to_string(size),
                           left.mnt.string(), qt::QuenchBin().string(), kTiny.string(),
                           left.folder.string(),
                           (left.ref / "model-00002-of-00002.safetensors").string(), extra});
  REQUIRE_MESSAGE(r.exit_code != 99, "cannot mount a tmpfs: " << r.err);
  REQUIRE(r.exit_code != 98);
  return r;
}

TEST_SUITE("resume") {
  TEST_CASE("a single run's marker holds its source header's hash, made after planning") {
    // A run without --resume hashes the source headers only for its markers, on the first
    // commit thread: the marker of an interrupted run must be the one a plan made with
    // --resume (headers hashed as they are read) expects, and name the header's FNV-1a.
    qt::TempDir tmp;
    const fs::path src = tmp / "src", dst = tmp / "out";
    fs::create_directories(src);
    const auto weight = [](const std::string& name, uint64_t rows, uint64_t cols) {
      std::vector<float> v(rows * cols);
      for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i % 251) / 64.0f - 1.9f;
      return qt::RawTensor{name, quench::DType::kBF16, {rows, cols}, qt::Bf16Bytes(v)};
    };
    // Shard 1 small; shard 2 large, streamed in 256 KiB chunks, so that the run is still
    // converting it when shard 1's marker appears and the watcher below cancels it. Whether
    // the watcher (or the commit thread writing the marker) gets a core before shard 2 is
    // done is up to the scheduler: on a loaded machine a run can finish first. Such a run
    // proves nothing here, so it is made again with a shard 2 twice as large (at most three
    // tries), and the assertions below are those of the interrupted run.
    qt::WriteShard(src / "model-00001-of-00002.safetensors",
                   {weight("model.layers.0.mlp.down_proj.weight", 64, 256),
                    weight("model.layers.0.mlp.up_proj.weight", 64, 256)});
    quench::ConvertOptions o;
    o.src = src;
    o.dst = dst;
    o.scheme = "FP8_DYNAMIC";
    o.chunk_bytes = 256 << 10;
    const fs::path marker = quench::ResumeMarkerPath(dst, "model-00001-of-00002.safetensors");
    quench::Result<quench::ConvertSummary> r = quench::Error(quench::ErrorCode::kInternal, "");
    for (uint64_t rows = 8192; rows <= 4 * 8192; rows *= 2) {
      fs::remove_all(dst);
      qt::WriteShard(src / "model-00002-of-00002.safetensors",
                     {weight("model.layers.1.mlp.down_proj.weight", rows, 4096)});
      std::atomic<bool> cancel{false}, done{false};
      std::thread watcher([&] {
        while (!done.load() && !fs::exists(marker)) {
          std::this_thread::sleep_for(std::chrono::microseconds(100));
        }
        cancel.store(true);
      });
      quench::ConvertCallbacks cb;
      cb.cancel = &cancel;
      r = quench::Convert(o, cb);
      done.store(true);
      watcher.join();
      if (!r.ok()) break;
      MESSAGE("the run finished before it was cancelled with " << rows
              << " rows in shard 2; again with twice as many");
    }
    REQUIRE_FALSE(r.ok());
    REQUIRE(r.status().code() == quench::ErrorCode::kInterrupted);
    REQUIRE(fs::exists(marker));
    const std::string got = qt::ReadBytes(marker);

    o.resume = true;
    auto plan = quench::MakePlan(o);
    REQUIRE(plan.ok());
    CHECK(got == quench::ShardFingerprint(*plan, 0));
    const std::string file = qt::ReadBytes(src / "model-00001-of-00002.safetensors");
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(file[i]);
    CHECK(Contains(got,
                   "\"source_header_fnv1a64\": \"" + Fnv1a64Hex(file.substr(8, n)) + "\""));
    // --resume keeps the shard and converts the rest.
    const qt::RunResult again = qt::RunQuench({"convert", src.string(), dst.string(), "--scheme",
                                               "FP8_DYNAMIC", "--resume"});
    REQUIRE(again.exit_code == 0);
    CHECK(Contains(again.err, "1 of 2 output shards are complete"));
  }

  TEST_CASE(
      "a marker written without fsync (a single run's) vouches for its shard like a durable one") {
    // An interrupted single run: its shards complete, config.json and the index not yet
    // published, markers as such a run writes them (no fsync), one over a stale marker.
    qt::TempDir tmp;
    const fs::path dst = tmp / "out";
    REQUIRE(qt::RunQuench(Convert(dst, "FP8_DYNAMIC", false)).exit_code == 0);
    fs::remove(dst / "config.json");
    fs::remove(dst / "model.safetensors.index.json");
    fs::create_directories(dst / ".quench-resume");
    std::vector<std::string> shards;
    for (const std::string& f : qt::ListFiles(dst)) {
      if (qt::SafetensorsOnly(f)) shards.push_back(f);
    }
    REQUIRE(shards.size() == 2);
    qt::WriteBytes(dst / ".quench-resume" / (shards.front() + ".json"), "{\"stale\": true}\n");
    WriteMarkers(dst, "FP8_DYNAMIC", /*durable=*/false);
    for (const auto& e : fs::directory_iterator(dst / ".quench-resume")) {
      CHECK_FALSE(e.path().string().ends_with(".quench-tmp"));  // renamed into place
    }
    const auto before = Identities(dst);
    const qt::RunResult r = qt::RunQuench(Convert(dst, "FP8_DYNAMIC", true));
    REQUIRE(r.exit_code == 0);
    CHECK(Contains(r.err, std::to_string(shards.size()) + " of " + std::to_string(shards.size()) +
                              " output shards are complete"));
    const auto after = Identities(dst);
    for (const std::string& f : shards) CHECK(after.at(f) == before.at(f));  // kept, not redone
    CHECK(fs::exists(dst / "config.json"));
    CHECK_FALSE(fs::exists(dst / ".quench-resume"));
  }

  TEST_CASE("--resume on a finished folder leaves every file as it is") {
    qt::TempDir tmp;
    const fs::path dst = tmp / "out";
    REQUIRE(qt::RunQuench(Convert(dst, "FP8_DYNAMIC", false)).exit_code == 0);
    const auto before = Identities(dst);
    REQUIRE(before.size() >= 4);

    SUBCASE("no markers (the run completed)") {}
    SUBCASE("markers left by a run killed after publishing config.json") {
      WriteMarkers(dst, "FP8_DYNAMIC");
      REQUIRE(fs::exists(dst / ".quench-resume"));
    }
    usleep(10000);  // a rewrite would show in the modification times too
    auto r = qt::RunQuench(Convert(dst, "FP8_DYNAMIC", true));
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    CHECK(Contains(r.err, "is already complete; nothing to do"));
    CHECK(Contains(r.err, "0.000 GB read, 0.000 GB written"));
    CHECK_FALSE(fs::exists(dst / ".quench-resume"));
    CHECK(Identities(dst) == before);
  }

  TEST_CASE("--resume on a folder finished with another scheme redoes it") {
    qt::TempDir tmp;
    const fs::path dst = tmp / "out", ref = tmp / "ref";
    REQUIRE(qt::RunQuench(Convert(dst, "FP8_DYNAMIC", false)).exit_code == 0);
    REQUIRE(qt::RunQuench(Convert(ref, "W8A8", false)).exit_code == 0);
    auto r = qt::RunQuench(Convert(dst, "W8A8", true));
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    CHECK(Contains(r.err, "resume: 0 of 2 output shards are complete"));
    REQUIRE(qt::ListFiles(dst) == qt::ListFiles(ref));
    for (const std::string& f : qt::ListFiles(ref)) {
      CAPTURE(f);
      CHECK(qt::ReadBytes(dst / f) == qt::ReadBytes(ref / f));
    }
  }

  TEST_CASE("--resume redoes a shard whose header is not the planned one") {
    qt::TempDir tmp;
    const fs::path dst = tmp / "out", ref = tmp / "ref";
    REQUIRE(qt::RunQuench(Convert(dst, "FP8_DYNAMIC", false)).exit_code == 0);
    REQUIRE(qt::RunQuench(Convert(ref, "FP8_DYNAMIC", false)).exit_code == 0);
    SUBCASE("in a finished folder") {}
    // Found by mutating the leftovers of workers before a single --resume: a shard with its
    // marker was trusted by its size alone, and kept with another header (as finalize
    // refuses it).
    SUBCASE("in an interrupted run's folder, its marker matching") {
      fs::remove(dst / "config.json");  // as a run interrupted before publishing leaves it
      fs::remove(dst / "model.safetensors.index.json");
      WriteMarkers(dst, "FP8_DYNAMIC");
    }
    const fs::path shard = dst / "model-00001-of-00002.safetensors";
    std::string bytes = qt::ReadBytes(shard);
    const size_t at = bytes.find("\"F8_E4M3\"");
    REQUIRE(at != std::string::npos);
    bytes.replace(at, 9, "\"F8_E5M2\"");  // same size, another dtype
    qt::WriteBytes(shard, bytes);
    auto r = qt::RunQuench(Convert(dst, "FP8_DYNAMIC", true));
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    CHECK(Contains(r.err, "resume: 1 of 2 output shards are complete"));
    REQUIRE(qt::ListFiles(dst) == qt::ListFiles(ref));
    for (const std::string& f : qt::ListFiles(ref)) {
      CAPTURE(f);
      CHECK(qt::ReadBytes(dst / f) == qt::ReadBytes(ref / f));
    }
  }

  TEST_CASE("--resume's free-space check counts only the shards still to write") {
    // An interrupted run left shard 1 complete (with its marker) on a tmpfs that has room
    // for the rest of the output and no more: the check must not count shard 1 again.
    qt::TempDir tmp;
    const ShardOneLeft left = LeaveShardOne(tmp.path());
    // The tmpfs holds exactly the whole output: shard 1 takes its part before the run starts.
    auto r = OnTmpfs(left, left.need,
                     "\"$3\" convert \"$4\" \"$2/out\" --scheme FP8_DYNAMIC --resume -q; rc=$?\n"
                     "cmp \"$2/out/model-00002-of-00002.safetensors\" \"$6\" || rc=97\n"
                     "exit $rc\n");
    CHECK_MESSAGE(r.exit_code == 0, r.err);
  }

  TEST_CASE(
      "a --resume that fails (a full disk) keeps the earlier run's shards and markers for the "
      "next") {
    // As above: shard 1 and its marker left by an interrupted run; this time the tmpfs is a
    // page short of the rest, so the first --resume fails its free-space check (exit 4).
    // After room is made (the tmpfs grown), the next --resume keeps shard 1.
    qt::TempDir tmp;
    const ShardOneLeft left = LeaveShardOne(tmp.path());
    auto r = OnTmpfs(
        left, left.need - left.page,
        "\"$3\" convert \"$4\" \"$2/out\" --scheme FP8_DYNAMIC --resume -q; echo \"first $?\"\n"
        "test -f \"$2/out/.quench-resume/model-00001-of-00002.safetensors.json\" && echo kept\n"
        "mount -o remount,size=\"$7\" \"$2\" || exit 97\n"
        "\"$3\" convert \"$4\" \"$2/out\" --scheme FP8_DYNAMIC --resume; echo \"second $?\"\n"
        "cmp \"$2/out/model-00002-of-00002.safetensors\" \"$6\" && echo same\n",
        std::to_string(left.need));
    CHECK_MESSAGE(r.out == "first 4\nkept\nsecond 0\nsame\n", r.out << r.err);
    CHECK_MESSAGE(r.err.find("resume: 1 of 2 output shards are complete") != std::string::npos,
                  r.err);
  }
}
