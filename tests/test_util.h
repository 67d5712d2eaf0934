// Helpers shared by the tests: data folder, temporary folders, file bytes, running the CLI.
#ifndef QUENCH_TESTS_TEST_UTIL_H_
#define QUENCH_TESTS_TEST_UTIL_H_

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace quench::testing {

namespace fs = std::filesystem;

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

struct RunResult {
  int exit_code = -1;
  std::string out;   // stdout
  std::string err;   // stderr
  long max_rss_kib = 0;
};

// Runs the quench binary with `args`; captures stdout/stderr through files.
inline RunResult RunQuench(const std::vector<std::string>& args) {
  TempDir io;
  const fs::path out = io / "stdout", err = io / "stderr";
  pid_t pid = fork();
  if (pid == 0) {
    FILE* o = std::freopen(out.c_str(), "w", stdout);
    FILE* e = std::freopen(err.c_str(), "w", stderr);
    (void)o;
    (void)e;
    std::vector<char*> argv;
    std::string bin = QuenchBin().string();
    argv.push_back(bin.data());
    std::vector<std::string> copy = args;
    for (std::string& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(bin.c_str(), argv.data());
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

}  // namespace quench::testing

#endif  // QUENCH_TESTS_TEST_UTIL_H_
