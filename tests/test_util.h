// Helpers shared by the tests: data folder, temporary folders, file bytes, running the CLI.
#ifndef QUENCH_TESTS_TEST_UTIL_H_
#define QUENCH_TESTS_TEST_UTIL_H_

#include <doctest/doctest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "format/model_folder.h"
#include "format/safetensors.h"

namespace quench::testing {

namespace fs = std::filesystem;
using quench::DType;

inline fs::path DataDir() {
  if (const char* d = std::getenv("QUENCH_DATA_DIR")) return d;
  return fs::path(__FILE__).parent_path().parent_path() / "data";
}

inline fs::path QuenchBin() {
  if (const char* b = std::getenv("QUENCH_BIN")) return b;
  return fs::path(__FILE__).parent_path().parent_path() / "build" / "quench";
}

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "quench-test-XXXXXX").string();
    path_ = mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }
  fs::path operator/(const std::string& s) const { return path_ / s; }

 private:
  fs::path path_;
};

inline std::string ReadBytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

inline void WriteBytes(const fs::path& p, const std::string& bytes) {
  fs::create_directories(p.parent_path());
  std::ofstream f(p, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Relative paths of every regular file under `root`, sorted.
inline std::vector<std::string> ListFiles(const fs::path& root) {
  std::vector<std::string> out;
  if (!fs::exists(root)) return out;
  for (const auto& e : fs::recursive_directory_iterator(root)) {
    if (e.is_regular_file()) out.push_back(fs::relative(e.path(), root).generic_string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Every file of `want` is in `got` with the same bytes (a difference names its first byte), and
// `got` has no other; `keep`, when given, picks the files compared on both sides. Returns how
// many files were compared.
inline size_t CheckSameFiles(const fs::path& want, const fs::path& got,
                             const std::function<bool(const std::string&)>& keep = {}) {
  std::vector<std::string> names = ListFiles(want), got_names = ListFiles(got);
  if (keep) {
    std::erase_if(names, [&](const std::string& f) { return !keep(f); });
    std::erase_if(got_names, [&](const std::string& f) { return !keep(f); });
  }
  CHECK(got_names == names);
  for (const std::string& f : names) {
    CAPTURE(f);
    const std::string a = ReadBytes(got / f), b = ReadBytes(want / f);
    CHECK(a.size() == b.size());
    if (a != b) {
      size_t at = 0;
      while (at < a.size() && at < b.size() && a[at] == b[at]) ++at;
      FAIL_CHECK("first difference at byte " << at);
    }
  }
  return names.size();
}

// Filters for CheckSameFiles.
inline bool SafetensorsOnly(const std::string& f) { return f.ends_with(".safetensors"); }
inline bool WeightsOnly(const std::string& f) { return f != "config.json"; }

struct RunResult {
  int exit_code = -1;
  std::string out;   // stdout
  std::string err;   // stderr
  long max_rss_kib = 0;
};

// Runs argv[0] (a path, or looked up in PATH) with `env` added to its environment; captures
// stdout/stderr through files, the exit code (128 + signal when killed) and peak RSS.
inline RunResult RunCommand(const std::vector<std::string>& argv,
                            const std::vector<std::pair<std::string, std::string>>& env = {}) {
  TempDir io;
  const fs::path out = io / "stdout", err = io / "stderr";
  std::fflush(stdout);  // or the child's freopen writes the parent's buffered output
  std::fflush(stderr);
  pid_t pid = fork();
  if (pid == 0) {
    FILE* o = std::freopen(out.c_str(), "w", stdout);
    FILE* e = std::freopen(err.c_str(), "w", stderr);
    (void)o;
    (void)e;
    for (const auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
    std::vector<std::string> copy = argv;
    std::vector<char*> args;
    for (std::string& a : copy) args.push_back(a.data());
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  RunResult r;
  int status = 0;
  struct rusage ru {};
  wait4(pid, &status, 0, &ru);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.max_rss_kib = ru.ru_maxrss;
  r.out = ReadBytes(out);
  r.err = ReadBytes(err);
  return r;
}

// Starts the quench binary with `args` without waiting for it (waitpid the pid returned);
// with `io`, its stdout and stderr go to io.out and io.err; `in_child` runs in the child
// just before the binary (its signals and descriptors as a case needs them).
inline pid_t SpawnQuench(const std::vector<std::string>& args, const fs::path& io = {},
                         const std::function<void()>& in_child = {}) {
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t pid = fork();
  if (pid == 0) {
    // SIGHUP at its default, as in a terminal's processes, whatever the test runner inherited
    // (nohup ignores it, and quench keeps an ignored SIGHUP ignored).
    std::signal(SIGHUP, SIG_DFL);
    if (!io.empty()) {
      const std::string out = io.string() + ".out", err = io.string() + ".err";
      if (!std::freopen(out.c_str(), "w", stdout) || !std::freopen(err.c_str(), "w", stderr)) {
        _exit(126);
      }
    }
    if (in_child) in_child();
    std::string bin = QuenchBin().string();
    std::vector<std::string> copy = args;
    std::vector<char*> argv = {bin.data()};
    for (std::string& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(bin.c_str(), argv.data());
    _exit(127);
  }
  return pid;
}

// The all-MiniLM-L6-v2 checkpoint scripts/test fetches, named by QUENCH_MINILM_DIR.
inline fs::path MiniLmDir() {
  const char* dir = std::getenv("QUENCH_MINILM_DIR");
  REQUIRE_MESSAGE((dir != nullptr && *dir != 0),
                  "QUENCH_MINILM_DIR is not set: run the suite with scripts/test, which "
                  "fetches the checkpoint with scripts/fetch_minilm.sh");
  return dir;
}

// Runs the quench binary with `args`.
inline RunResult RunQuench(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {QuenchBin().string()};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunCommand(argv);
}

// A command line the CLI refuses: the arguments after the common ones, the exit code and a
// part of the message.
struct Refusal {
  std::vector<std::string> args;
  int exit_code;
  const char* message;
};

// Runs quench with `common` then each case's arguments: the case's exit code, its message on
// stderr, and nothing written at `dst`.
inline void CheckRefusals(const std::vector<std::string>& common,
                          const std::vector<Refusal>& cases, const fs::path& dst) {
  for (const Refusal& c : cases) {
    std::vector<std::string> args = common;
    args.insert(args.end(), c.args.begin(), c.args.end());
    auto r = RunQuench(args);
    CAPTURE(r.err);
    CHECK(r.exit_code == c.exit_code);
    CHECK(r.err.find(c.message) != std::string::npos);
    CHECK_FALSE(fs::exists(dst));
  }
}

// ---- Independent decoders, written from the format definitions (not the code under test).

// bfloat16: the high half of an IEEE binary32.
inline double DecodeBF16(const uint8_t* p) {
  uint32_t bits = static_cast<uint32_t>(p[0] | (p[1] << 8)) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// float8_e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinities.
inline double DecodeE4M3(uint8_t c) {
  const int sign = c >> 7, e = (c >> 3) & 0xF, m = c & 7;
  double v = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1.0 + m / 8.0, e - 7);
  return sign ? -v : v;
}

// FP4 E2M1 nibble: 1 sign, 2 exponent (bias 1), 1 mantissa bit.
inline double DecodeE2M1(uint8_t nibble) {
  const int sign = (nibble >> 3) & 1, e = (nibble >> 1) & 3, m = nibble & 1;
  double v = e == 0 ? m * 0.5 : std::ldexp(1.0 + m / 2.0, e - 1);
  return sign ? -v : v;
}

// Rounds a double to bfloat16 with round-to-nearest-even (via binary32, exact for the values
// the tests feed it).
inline float RoundBF16(double d) {
  float f = static_cast<float>(d);
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000u;
  std::memcpy(&f, &bits, 4);
  return f;
}

// ---- Small checkpoints written by the tests.

struct RawTensor {
  std::string name;
  DType dtype;
  std::vector<uint64_t> shape;
  std::string bytes;
};

inline void WriteShard(const fs::path& file, const std::vector<RawTensor>& tensors) {
  std::vector<quench::TensorSpec> specs;
  for (const auto& t : tensors) specs.push_back({t.name, t.dtype, t.shape, t.bytes.size()});
  auto layout = quench::LayOutSafetensors(specs);
  std::string out = layout.header;
  out.resize(layout.file_size);
  for (const auto& ti : layout.tensors) {
    for (const auto& t : tensors) {
      if (t.name == ti.name) {
        std::memcpy(out.data() + layout.data_start + ti.begin, t.bytes.data(), t.bytes.size());
      }
    }
  }
  WriteBytes(file, out);
}

// A copy of checkpoint folder `src` at `dst` whose every shard's header is padded with spaces
// to an odd length (the format allows any padding): every tensor then lies at an odd offset,
// so at an odd address where the file is mapped.
inline void CopyWithOddHeaders(const fs::path& src, const fs::path& dst) {
  fs::copy(src, dst, fs::copy_options::recursive);
  for (const std::string& f : ListFiles(dst)) {
    if (!f.ends_with(".safetensors")) continue;
    std::string bytes = ReadBytes(dst / f);
    uint64_t n = 0;
    std::memcpy(&n, bytes.data(), 8);
    const uint64_t pad = n % 2 == 0 ? 1 : 2;  // odd, and at least one space more
    bytes.insert(8 + n, std::string(pad, ' '));
    n += pad;
    std::memcpy(bytes.data(), &n, 8);
    REQUIRE(n % 2 == 1);
    WriteBytes(dst / f, bytes);
  }
}

// Converts folders `a` and `b` with the same options `args` (into folders under `work`,
// removed after) and checks that the two outputs hold the same files with the same bytes.
inline void CheckSameConversions(const fs::path& a, const fs::path& b,
                                 const std::vector<std::string>& args, const fs::path& work) {
  for (const auto& [src, dst] : {std::pair{a, work / "from-a"}, std::pair{b, work / "from-b"}}) {
    std::vector<std::string> argv = {QuenchBin().string(), "convert", src.string(), dst.string()};
    argv.insert(argv.end(), args.begin(), args.end());
    const RunResult r = RunCommand(argv);
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  }
  CHECK(CheckSameFiles(work / "from-a", work / "from-b") > 0);
  fs::remove_all(work / "from-a");
  fs::remove_all(work / "from-b");
}

// BF16 bytes of `v` (truncation: any BF16 is valid input).
inline std::string Bf16Bytes(const std::vector<float>& v) {
  std::string s(v.size() * 2, '\0');
  for (size_t i = 0; i < v.size(); ++i) {
    uint32_t bits;
    std::memcpy(&bits, &v[i], 4);
    const uint16_t h = static_cast<uint16_t>(bits >> 16);
    std::memcpy(s.data() + 2 * i, &h, 2);
  }
  return s;
}

// ---- Reading outputs back.

struct Loaded {
  quench::Shard shard;
  std::string bytes;
  const quench::TensorInfo* Find(const std::string& name) const {
    for (const auto& t : shard.header.tensors) {
      if (t.name == name) return &t;
    }
    return nullptr;
  }
  const uint8_t* Data(const quench::TensorInfo& t) const {
    return reinterpret_cast<const uint8_t*>(bytes.data()) + shard.header.data_start + t.begin;
  }
};

inline std::map<std::string, Loaded> LoadAll(const fs::path& dir) {
  std::map<std::string, Loaded> out;
  auto folder = quench::LoadModelFolder(dir);
  REQUIRE_MESSAGE(folder.ok(), folder.status().ToString());
  for (auto& s : folder->shards) {
    Loaded l;
    l.bytes = ReadBytes(s.path);
    l.shard = s;
    out[s.rel_name] = std::move(l);
  }
  return out;
}

// Finds tensor `name` in any shard of `all`.
inline std::pair<const Loaded*, const quench::TensorInfo*> FindTensor(
    const std::map<std::string, Loaded>& all, const std::string& name) {
  for (const auto& [_, l] : all) {
    if (const auto* t = l.Find(name)) return {&l, t};
  }
  return {nullptr, nullptr};
}

// The bytes of tensor `name` in any shard of `all`.
inline std::string TensorBytes(const std::map<std::string, Loaded>& all, const std::string& name) {
  auto [l, t] = FindTensor(all, name);
  REQUIRE_MESSAGE(t != nullptr, name);
  return std::string(reinterpret_cast<const char*>(l->Data(*t)), t->end - t->begin);
}

// FNV-1a 64 of tensor `name`'s bytes in any shard of `all`, as 16 hex digits (the hashes the
// golden generators record).
inline std::string TensorFnv1a64(const std::map<std::string, Loaded>& all,
                                 const std::string& name) {
  char hash[17];
  std::snprintf(hash, sizeof hash, "%016llx",
                static_cast<unsigned long long>(quench::Fnv1a64(TensorBytes(all, name))));
  return hash;
}

// BF16 tensor `name` of any shard of `all`, decoded.
inline std::vector<double> Bf16Weight(const std::map<std::string, Loaded>& all,
                                      const std::string& name) {
  auto [l, t] = FindTensor(all, name);
  REQUIRE_MESSAGE(t != nullptr, name);
  std::vector<double> v((t->end - t->begin) / 2);
  for (size_t i = 0; i < v.size(); ++i) v[i] = DecodeBF16(l->Data(*t) + 2 * i);
  return v;
}

// The --memory-limit floor's contract for one conversion, `run(limit)` being it under
// --memory-limit `limit`: refused at 1M with the figure it needs ("pass --memory-limit NM or
// more"), refused one MiB below the figure, and converted at the figure with its peak RSS
// under it. Returns the refusal's message and the figure (MiB).
struct ReportedFloor {
  std::string refusal;
  uint64_t mib = 0;
};
inline ReportedFloor CheckReportedFloor(const std::function<RunResult(const std::string&)>& run,
                                        const std::string& label) {
  const RunResult refused = run("1M");
  REQUIRE(refused.exit_code == 2);
  const std::string pass = "pass --memory-limit ";
  const size_t at = refused.err.find(pass);
  REQUIRE_MESSAGE(at != std::string::npos, refused.err);
  const uint64_t mib = std::stoull(refused.err.substr(at + pass.size()));
  CHECK(run(std::to_string(mib - 1) + "M").exit_code == 2);
  const RunResult ok = run(std::to_string(mib) + "M");
  REQUIRE_MESSAGE(ok.exit_code == 0, ok.err);
  MESSAGE(label << " peak RSS " << ok.max_rss_kib << " KiB at its floor, " << mib << " MiB");
  CHECK(static_cast<uint64_t>(ok.max_rss_kib) < mib * 1024);
  return {refused.err, mib};
}

}  // namespace quench::testing

#endif  // QUENCH_TESTS_TEST_UTIL_H_
