// The memory contract: a single tensor several times larger than --memory-limit converts with
// peak resident memory (ru_maxrss of the quench process) under the limit.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <thread>

#include <sys/wait.h>

#include "format/model_folder.h"

#include "format/safetensors.h"
#include "stats_folder.h"
#include "test_util.h"

namespace qt = quench::testing;
namespace fs = std::filesystem;

namespace {

// Writes a one-tensor BF16 checkpoint of rows x cols without holding it in memory.
void WriteBigCheckpoint(const fs::path& dir, uint64_t rows, uint64_t cols,
                        const std::string& name = "model.layers.0.mlp.down_proj.weight",
                        const std::string& file = "model.safetensors") {
  fs::create_directories(dir);
  auto layout =
      quench::LayOutSafetensors({{name, quench::DType::kBF16, {rows, cols}, rows * cols * 2}});
  int fd = open((dir / file).c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  REQUIRE(fd >= 0);
  REQUIRE(write(fd, layout.header.data(), layout.header.size()) ==
          static_cast<ssize_t>(layout.header.size()));
  std::vector<uint16_t> row(cols);
  uint32_t state = 12345;
  for (uint64_t r = 0; r < rows; ++r) {
    for (uint64_t c = 0; c < cols; ++c) {
      state = state * 1664525u + 1013904223u;
      // BF16 values of magnitude ~2^-7..2^-5 with random sign and mantissa.
      row[c] = static_cast<uint16_t>(0x3C00 | ((state >> 9) & 0x7F) | ((state >> 24) & 0x80) << 8 |
                                     ((state >> 16) & 0x1) << 7);
    }
    REQUIRE(write(fd, row.data(), cols * 2) == static_cast<ssize_t>(cols * 2));
  }
  close(fd);
  qt::WriteBytes(dir / "config.json", "{\"architectures\": [\"Test\"]}");
}

// Four shards of one 64 MiB BF16 weight each: a run of them lasts long enough for a kill or a
// second run to land between shard completions.
void WriteFourShards(const fs::path& dir) {
  for (int k = 0; k < 4; ++k) {
    WriteBigCheckpoint(dir, 2048, 16384,
                       "model.layers." + std::to_string(k) + ".mlp.down_proj.weight",
                       "model-0000" + std::to_string(k + 1) + "-of-00004.safetensors");
  }
}

// Writes a one-weight FP8 checkpoint (DeepSeek layout: E4M3 codes, F32 128x128 block
// weight_scale_inv) of rows x cols, a row at a time.
void WriteBigFp8Checkpoint(const fs::path& dir, uint64_t rows, uint64_t cols) {
  fs::create_directories(dir);
  const std::string name = "model.layers.0.mlp.down_proj.weight";
  const uint64_t sr = (rows + 127) / 128, sc = (cols + 127) / 128;
  auto layout = quench::LayOutSafetensors(
      {{name, quench::DType::kF8E4M3, {rows, cols}, rows * cols},
       {name + "_scale_inv", quench::DType::kF32, {sr, sc}, sr * sc * 4}});
  int fd = open((dir / "model.safetensors").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  REQUIRE(fd >= 0);
  REQUIRE(write(fd, layout.header.data(), layout.header.size()) ==
          static_cast<ssize_t>(layout.header.size()));
  // In the layout's order (the safetensors writer puts wider dtypes first: the scale).
  for (const auto& ti : layout.tensors) {
    if (ti.name != name) {
      const std::vector<float> scales(sr * sc, 1.0f / 64);
      REQUIRE(write(fd, scales.data(), scales.size() * 4) ==
              static_cast<ssize_t>(scales.size() * 4));
      continue;
    }
    std::vector<uint8_t> row(cols);
    uint32_t state = 777;
    for (uint64_t r = 0; r < rows; ++r) {
      for (uint64_t c = 0; c < cols; ++c) {
        state = state * 1664525u + 1013904223u;
        row[c] = static_cast<uint8_t>(((state >> 24) & 0x80) | (0x20 + ((state >> 16) & 0x3F)));
      }
      REQUIRE(write(fd, row.data(), cols) == static_cast<ssize_t>(cols));
    }
  }
  close(fd);
  qt::WriteBytes(dir / "config.json",
                 R"({"architectures": ["Test"], "quantization_config": {"quant_method": "fp8", )"
                 R"("fmt": "e4m3", "weight_block_size": [128, 128]}})");
}

// Writes a one-weight AutoAWQ GEMM checkpoint (4-bit, group 128, zero points) of a
// rows (outputs) x cols (inputs) down_proj: qweight [cols, rows/8] I32 packed along the
// outputs, qzeros [cols/128, rows/8] I32, scales [cols/128, rows] F16, a row at a time.
void WriteBigAwqCheckpoint(const fs::path& dir, uint64_t rows, uint64_t cols) {
  fs::create_directories(dir);
  const std::string name = "model.layers.0.mlp.down_proj";
  const uint64_t words = rows / 8, groups = cols / 128;
  auto layout = quench::LayOutSafetensors(
      {{name + ".qweight", quench::DType::kI32, {cols, words}, cols * words * 4},
       {name + ".qzeros", quench::DType::kI32, {groups, words}, groups * words * 4},
       {name + ".scales", quench::DType::kF16, {groups, rows}, groups * rows * 2}});
  int fd = open((dir / "model.safetensors").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  REQUIRE(fd >= 0);
  REQUIRE(write(fd, layout.header.data(), layout.header.size()) ==
          static_cast<ssize_t>(layout.header.size()));
  for (const auto& ti : layout.tensors) {  // in the layout's order
    if (ti.name == name + ".scales") {
      const std::vector<uint16_t> row(rows, 0x211F);  // F16 0.01
      for (uint64_t g = 0; g < groups; ++g) {
        REQUIRE(write(fd, row.data(), rows * 2) == static_cast<ssize_t>(rows * 2));
      }
      continue;
    }
    const bool zeros = ti.name == name + ".qzeros";
    std::vector<uint32_t> row(words, 0x88888888u);  // zero point 8 for every output
    uint32_t state = 4242;
    for (uint64_t i = 0; i < (zeros ? groups : cols); ++i) {
      if (!zeros) {
        for (uint32_t& w : row) w = state = state * 1664525u + 1013904223u;
      }
      REQUIRE(write(fd, row.data(), words * 4) == static_cast<ssize_t>(words * 4));
    }
  }
  close(fd);
  qt::WriteBytes(dir / "config.json",
                 R"({"architectures": ["Test"], "quantization_config": {"quant_method": "awq", )"
                 R"("bits": 4, "group_size": 128, "zero_point": true, "version": "gemm"}})");
}

// tmp/src: WriteBigCheckpoint's 8192 x 16384 BF16 down_proj (256 MiB); tmp/stats: statistics
// for its one site (every channel's sum of squares 1 + c mod 7).
void WriteBigCheckpointWithStats(const qt::TempDir& tmp) {
  WriteBigCheckpoint(tmp / "src", 8192, 16384);
  qt::StatsParts parts;
  const std::string site = "model.layers.0.mlp.down_proj";
  parts.AddConsumer(site + ".weight", 8192, 16384, site);
  std::vector<double> x2(16384), ab(16384, 1.0);
  for (size_t c = 0; c < x2.size(); ++c) x2[c] = 1.0 + static_cast<double>(c % 7);
  parts.AddSite(site, 64, x2, ab, std::vector<float>(16384, -1.f), std::vector<float>(16384, 1.f));
  qt::WriteStatsFolder(tmp / "stats", "", qt::TinyLlamaCollection("none"), parts);
}

// tmp/src converted to tmp/out with each of `schemes` under --memory-limit 64M: the peak RSS
// stays below the limit and the output shard is larger than `min_bytes`.
void ConvertsUnder64M(const qt::TempDir& tmp, std::initializer_list<const char*> schemes,
                      uint64_t min_bytes) {
  const long limit_kib = 64 * 1024;
  for (const char* scheme : schemes) {
    CAPTURE(scheme);
    auto r = qt::RunQuench({"convert", (tmp / "src").string(), (tmp / "out").string(),
                            "--scheme", scheme, "--memory-limit", "64M", "-q", "--overwrite"});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    MESSAGE(std::string(scheme) << " peak RSS " << r.max_rss_kib << " KiB, limit " << limit_kib
                                << " KiB");
    CHECK(r.max_rss_kib < limit_kib);
    CHECK(fs::file_size(tmp / "out/model.safetensors") > min_bytes);
  }
}

// Writes a checkpoint of many small BF16 tensors (an MoE's experts: layers x experts x 3
// weights of 8 x 64), the shape of a checkpoint whose plan, not its chunks, sets the floor.
void WriteManyTensorCheckpoint(const fs::path& dir, int layers, int experts) {
  fs::create_directories(dir);
  std::vector<quench::TensorSpec> specs;
  for (int l = 0; l < layers; ++l) {
    for (int e = 0; e < experts; ++e) {
      for (const char* w : {"gate_proj", "up_proj", "down_proj"}) {
        specs.push_back({"model.layers." + std::to_string(l) + ".mlp.experts." +
                             std::to_string(e) + "." + w + ".weight",
                         quench::DType::kBF16, {8, 64}, 8 * 64 * 2});
      }
    }
  }
  const quench::SafetensorsLayout layout = quench::LayOutSafetensors(specs);
  std::string bytes = layout.header;
  bytes.reserve(layout.file_size);
  uint32_t state = 99;
  while (bytes.size() < layout.file_size) {
    state = state * 1664525u + 1013904223u;
    const uint16_t v =
        static_cast<uint16_t>(0x3C00 | ((state >> 9) & 0x7F) | ((state >> 24) & 0x80) << 8);
    bytes.append(reinterpret_cast<const char*>(&v), 2);
  }
  qt::WriteBytes(dir / "model.safetensors", bytes);
  qt::WriteBytes(dir / "config.json", "{\"architectures\": [\"Test\"]}");
}

}  // namespace

TEST_SUITE("memory") {
  TEST_CASE("an FP8 source 4x the memory limit decoded (8x) converts under the limit") {
    qt::TempDir tmp;
    // 8192 x 16384 E4M3 = 128 MiB, 256 MiB decoded; the limit is 64 MiB. The decoded rows go
    // through pooled staging buffers of a chunk each, counted by the budget (NVFP4A16 decodes
    // in its pre-pass too).
    WriteBigFp8Checkpoint(tmp / "src", 8192, 16384);
    ConvertsUnder64M(tmp, {"BF16", "W4A16", "NVFP4A16"}, 8192ull * 16384 / 4);
  }

  TEST_CASE("a tensor 4x the memory limit converts under the limit") {
    qt::TempDir tmp;
    // 8192 x 16384 BF16 = 256 MiB; the limit is 64 MiB.
    WriteBigCheckpoint(tmp / "src", 8192, 16384);
    // NVFP4A16 reads the tensor twice (global scale first); with this limit the pre-pass must
    // release its pages instead of keeping them for the pipeline.
    ConvertsUnder64M(tmp, {"FP8_DYNAMIC", "FP8_BLOCK", "NVFP4A16"}, 8192ull * 16384 / 2);
  }

  TEST_CASE("imatrix_mse on a tensor 4x the memory limit converts under the limit") {
    qt::TempDir tmp;
    WriteBigCheckpointWithStats(tmp);
    // The search reads the whole tensor before its first chunk is quantized; the kept paths
    // would keep its pages for Quantize, which a tensor over the budget's share must not.
    // (The search's per-group state, ~10 bytes a group, is in the budget: the int schemes'
    // groups of 128 make it 10 MiB for this tensor; NVFP4's groups of 16, 80 MiB: next case.)
    const long limit_kib = 64 * 1024;
    for (const std::string scheme : {"W4A16", "W4A16_ASYM"}) {
      CAPTURE(scheme);
      auto r = qt::RunQuench({"convert", (tmp / "src").string(), (tmp / "out").string(),
                              "--scheme", scheme, "--observer", "imatrix_mse", "--stats",
                              (tmp / "stats").string(), "--memory-limit", "64M", "-q",
                              "--overwrite"});
      REQUIRE_MESSAGE(r.exit_code == 0, r.err);
      MESSAGE(scheme << " peak RSS " << r.max_rss_kib << " KiB, limit " << limit_kib << " KiB");
      CHECK(r.max_rss_kib < limit_kib);
      CHECK(fs::file_size(tmp / "out/model.safetensors") > 8192ull * 16384 / 4);
    }
  }

  TEST_CASE("imatrix_mse's per-group state is in the budget: refused with the figure, then "
            "converted under it") {
    qt::TempDir tmp;
    WriteBigCheckpointWithStats(tmp);
    auto run = [&](const std::string& limit) {
      return qt::RunQuench({"convert", (tmp / "src").string(), (tmp / "out").string(), "--scheme",
                            "NVFP4A16", "--observer", "imatrix_mse", "--stats",
                            (tmp / "stats").string(), "--memory-limit", limit, "-q",
                            "--overwrite"});
    };
    // NVFP4A16's groups of 16: 8192 x 16384 / 16 = 8 Mi groups, each with its improvement mask
    // (4 bytes), its largest magnitude (4) and its chosen range in BF16 (2): 80 MiB.
    const uint64_t state = 8192ull * 16384 / 16 * (4 + 4 + 2);
    auto r = run("64M");
    REQUIRE(r.exit_code == 2);
    CHECK(r.err.find("80 MiB") != std::string::npos);
    const std::string pass = "pass --memory-limit ";
    const size_t at = r.err.find(pass);
    REQUIRE_MESSAGE(at != std::string::npos, r.err);
    const uint64_t mib = std::stoull(r.err.substr(at + pass.size()));
    CHECK(mib * (1ull << 20) > state);
    CHECK(mib * (1ull << 20) < state + (64ull << 20));  // the state plus the pipeline's least
    // The dry run reports it as it reports other planning errors.
    auto d = qt::RunQuench({"convert", (tmp / "src").string(), (tmp / "out").string(), "--scheme",
                            "NVFP4A16", "--observer", "imatrix_mse", "--stats",
                            (tmp / "stats").string(), "--memory-limit", "64M", "--dry-run"});
    CHECK(d.exit_code == 2);
    CHECK(d.err.find(pass + std::to_string(mib) + "M") != std::string::npos);
    // Under the figure it names, the run converts, within it.
    r = run(std::to_string(mib) + "M");
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    MESSAGE("NVFP4A16 imatrix_mse peak RSS " << r.max_rss_kib << " KiB, limit " << mib
                                             << " MiB");
    CHECK(static_cast<uint64_t>(r.max_rss_kib) < mib * 1024);
    CHECK(fs::file_size(tmp / "out/model.safetensors") > 8192ull * 16384 / 2);
  }

  TEST_CASE("at exactly the reported floor, every scheme converts under it") {
    // A 64 MiB weight 16,384 wide: its chunks are the pipeline's smallest, so the floor is the
    // process's baseline, the chunks in flight and what is counted beside them (per-thread
    // scratch, the file pages a read fault maps beyond the chunks and the NVFP4 pre-pass's
    // readers), with nothing to spare. The figure is the one a refused run names.
    // An FP8-block source of the same shape adds the decoded tiles and, for W4A16 and
    // NVFP4A16, the fused kernels' per-thread tables (128 block columns' worth).
    // Compressed-tensors sources of the same weight (quench's own W4A16 and W8A8 outputs:
    // pack-quantized int4 and int8) are decoded a tile at a time by the pipeline and, for
    // NVFP4A16, by the pre-pass's parallel readers; FP8_BLOCK decodes 128-row tiles (4 MiB).
    // An AutoAWQ source (4096 outputs x 16,384 inputs, a 32 MiB qweight packed along the
    // outputs) is read across the whole weight by every chunk: repacked for W4A16, decoded
    // for the others.
    qt::TempDir tmp;
    WriteBigCheckpoint(tmp / "src", 2048, 16384);
    WriteBigFp8Checkpoint(tmp / "fp8", 2048, 16384);
    WriteBigAwqCheckpoint(tmp / "awq", 4096, 16384);
    for (const char* scheme : {"W4A16", "W8A8"}) {
      auto r = qt::RunQuench({"convert", (tmp / "src").string(),
                              (tmp / (std::string("ct-") + scheme)).string(), "--scheme", scheme,
                              "-q"});
      REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    }
    const std::vector<std::vector<std::string>> cases = {
        {"src", "FP8_DYNAMIC"}, {"src", "W4A16"}, {"src", "NVFP4A16"}, {"src", "W8A8"},
        {"src", "MXFP4A16"}, {"src", "FP8_BLOCK"}, {"src", "W4A16", "--prune", "2:4"},
        {"fp8", "W4A16"}, {"fp8", "NVFP4A16"}, {"fp8", "FP8_DYNAMIC"},
        {"ct-W4A16", "NVFP4A16"}, {"ct-W4A16", "W8A8"}, {"ct-W4A16", "FP8_BLOCK"},
        {"ct-W8A8", "NVFP4A16"}, {"ct-W8A8", "W4A16"},
        {"awq", "W4A16"}, {"awq", "NVFP4A16"}, {"awq", "FP8_DYNAMIC"}};
    for (const std::vector<std::string>& c : cases) {
      std::string label;
      for (const std::string& w : c) label += (label.empty() ? "" : " ") + w;
      CAPTURE(label);
      auto run = [&](const std::string& limit) {
        std::vector<std::string> a = {"convert", (tmp / c[0]).string(), (tmp / "out").string(),
                                      "--scheme"};
        a.insert(a.end(), c.begin() + 1, c.end());
        a.insert(a.end(), {"--threads", "2", "--memory-limit", limit, "-q", "--overwrite"});
        return qt::RunQuench(a);
      };
      qt::CheckReportedFloor(run, label);
    }
  }

  TEST_CASE("a checkpoint of many tensors: the plan's memory is in the floor, which is honoured") {
    // 24,000 tensors of 1 KiB: the chunks need little, the plan (entries, names, the output
    // header) tens of MiB. Before the plan was counted the floor named here was the small
    // tensors' 19-23 MiB, and a run under it peaked far above.
    qt::TempDir tmp;
    WriteManyTensorCheckpoint(tmp / "src", 20, 400);
    for (const char* scheme : {"FP8_DYNAMIC", "NVFP4A16"}) {
      CAPTURE(scheme);
      auto run = [&](const std::string& limit) {
        return qt::RunQuench({"convert", (tmp / "src").string(), (tmp / "out").string(),
                              "--scheme", scheme, "--threads", "2", "--memory-limit", limit,
                              "-q", "--overwrite"});
      };
      const std::string refusal = qt::CheckReportedFloor(run, scheme).refusal;
      CHECK(refusal.find("for the plan of 24000 tensors") != std::string::npos);
    }
  }

  TEST_CASE("NVFP4 pages kept between pre-pass and pipeline stay within the limit") {
    qt::TempDir tmp;
    WriteBigCheckpoint(tmp / "src", 8192, 16384);  // 256 MiB
    // 512 MiB leaves room to keep the whole tensor mapped for the pipeline (the fast path);
    // the tensor plus the chunks in flight must still fit.
    const long limit_kib = 512 * 1024;
    auto r = qt::RunQuench({"convert", (tmp / "src").string(), (tmp / "out").string(), "--scheme",
                            "NVFP4A16", "--memory-limit", "512M", "-q"});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    MESSAGE("NVFP4A16 peak RSS " << r.max_rss_kib << " KiB, limit " << limit_kib << " KiB");
    CHECK(r.max_rss_kib > 256 * 1024);  // the pages were kept: this is the path under test
    CHECK(r.max_rss_kib < limit_kib);
  }

  TEST_CASE("Ctrl-C, SIGTERM and SIGHUP stop a run with exit code 130 and leave no output") {
    qt::TempDir tmp;
    WriteBigCheckpoint(tmp / "src", 8192, 16384);
    for (int sig : {SIGINT, SIGTERM, SIGHUP}) {
      CAPTURE(sig);
      const fs::path out = tmp / "out";
      const pid_t pid = qt::SpawnQuench({"convert", (tmp / "src").string(), out.string(),
                                         "--scheme", "FP8_BLOCK", "--threads", "1",
                                         "--memory-limit", "64M", "-q"});
      // Wait until the run has created its output folder, then interrupt it.
      for (int i = 0; i < 2000 && !fs::exists(out); ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      kill(pid, sig);
      int status = 0;
      waitpid(pid, &status, 0);
      REQUIRE(WIFEXITED(status));
      CHECK(WEXITSTATUS(status) == 130);
      CHECK_FALSE(fs::exists(out));
    }
  }

  TEST_CASE("a run started under nohup ignores SIGHUP; a closed stderr pipe does not stop it") {
    qt::TempDir tmp;
    WriteBigCheckpoint(tmp / "src", 8192, 16384);
    const std::vector<std::string> args = {"convert", (tmp / "src").string(),
                                           (tmp / "out").string(), "--scheme", "FP8_BLOCK",
                                           "--threads", "1", "--memory-limit", "64M"};
    REQUIRE(qt::RunQuench({"convert", (tmp / "src").string(), (tmp / "want").string(),
                           "--scheme", "FP8_BLOCK", "-q"})
                .exit_code == 0);
    // The child as nohup leaves it (SIGHUP ignored) or with stderr a pipe nobody reads (the
    // read end closed: every write raises SIGPIPE unless ignored), not quiet, so that it
    // writes progress lines and notes there.
    for (const bool nohup : {true, false}) {
      CAPTURE(nohup);
      fs::remove_all(tmp / "out");
      int fds[2];
      REQUIRE(pipe(fds) == 0);
      const pid_t pid = qt::SpawnQuench(args, {}, [&] {
        if (nohup) {
          std::signal(SIGHUP, SIG_IGN);
        } else {
          dup2(fds[1], 2);
        }
        close(fds[0]);
        close(fds[1]);
        const int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        if (nohup) dup2(null, 2);
      });
      close(fds[0]);
      close(fds[1]);
      if (nohup) {
        for (int i = 0; i < 2000 && !fs::exists(tmp / "out"); ++i) {
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        kill(pid, SIGHUP);
      }
      int status = 0;
      waitpid(pid, &status, 0);
      REQUIRE_MESSAGE(WIFEXITED(status), "killed by signal " << WTERMSIG(status));
      CHECK(WEXITSTATUS(status) == 0);
      CHECK(qt::CheckSameFiles(tmp / "want", tmp / "out") > 0);
    }
  }

  TEST_CASE("kill -9 twice, then --resume: same bytes as an uninterrupted run") {
    qt::TempDir tmp;
    WriteFourShards(tmp / "src");
    const std::vector<std::string> args = {"--scheme", "FP8_DYNAMIC", "--threads", "1", "-q"};
    auto run = [&](const fs::path& out, std::vector<std::string> extra) {
      std::vector<std::string> a = {"convert", (tmp / "src").string(), out.string()};
      a.insert(a.end(), args.begin(), args.end());
      a.insert(a.end(), extra.begin(), extra.end());
      return a;
    };
    REQUIRE(qt::RunQuench(run(tmp / "want", {})).exit_code == 0);

    const fs::path out = tmp / "out";
    // Starts a run and kills it (SIGKILL: no cleanup at all) once `markers` shards are done.
    auto run_and_kill = [&](size_t markers, std::vector<std::string> extra) {
      const pid_t pid = qt::SpawnQuench(run(out, extra));
      for (int i = 0; i < 20000; ++i) {
        size_t n = 0;
        if (fs::exists(out / ".quench-resume")) {
          for (const auto& e : fs::directory_iterator(out / ".quench-resume"))
            n += e.is_regular_file();
        }
        if (n >= markers) break;
        std::this_thread::sleep_for(std::chrono::microseconds(500));
      }
      kill(pid, SIGKILL);
      int status = 0;
      waitpid(pid, &status, 0);
      CHECK(WIFSIGNALED(status));  // it was still running: the kill interrupted it
    };
    run_and_kill(1, {});
    CHECK_FALSE(fs::exists(out / "config.json"));  // an interrupted folder does not look done
    run_and_kill(2, {"--resume"});
    auto last = qt::RunQuench(run(out, {"--resume"}));
    REQUIRE_MESSAGE(last.exit_code == 0, last.err);
    // Same files, same bytes; no markers or temporary files left.
    qt::CheckSameFiles(tmp / "want", out);
  }

  TEST_CASE(
      "rewriting a finished folder (--overwrite, --resume of another scheme): it stops looking "
      "finished first") {
    qt::TempDir tmp;
    WriteFourShards(tmp / "src");
    auto args = [&](const fs::path& out, const std::string& scheme,
                    std::vector<std::string> extra) {
      std::vector<std::string> a = {"convert", (tmp / "src").string(), out.string(), "--scheme",
                                    scheme, "--threads", "1", "-q"};
      a.insert(a.end(), extra.begin(), extra.end());
      return a;
    };
    REQUIRE(qt::RunQuench(args(tmp / "want", "W8A16", {})).exit_code == 0);
    for (const char* how : {"--overwrite", "--resume"}) {
      CAPTURE(how);
      const fs::path out = tmp / "out";
      fs::remove_all(out);
      REQUIRE(qt::RunQuench(args(out, "FP8_DYNAMIC", {})).exit_code == 0);
      // The same folder rewritten as W8A16, killed (no cleanup at all) once a shard is done.
      const pid_t pid = qt::SpawnQuench(args(out, "W8A16", {how}));
      for (int i = 0; i < 20000 && !fs::exists(out / ".quench-resume"); ++i) {
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
      for (int i = 0; i < 20000 && fs::is_empty(out / ".quench-resume"); ++i) {
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
      kill(pid, SIGKILL);
      int status = 0;
      waitpid(pid, &status, 0);
      CHECK(WIFSIGNALED(status));  // still running: shards of both schemes in the folder
      CHECK_FALSE(fs::exists(out / "config.json"));
      auto r = qt::RunQuench(args(out, "W8A16", {"--resume"}));
      REQUIRE_MESSAGE(r.exit_code == 0, r.err);
      qt::CheckSameFiles(tmp / "want", out);
    }
  }

  TEST_CASE("a second run into the DST a run is writing is refused and leaves the first whole") {
    qt::TempDir tmp;
    WriteFourShards(tmp / "src");
    auto args = [&](const fs::path& out, std::vector<std::string> extra) {
      std::vector<std::string> a = {"convert", (tmp / "src").string(), out.string(), "--scheme",
                                    "FP8_DYNAMIC", "--threads", "1", "-q"};
      a.insert(a.end(), extra.begin(), extra.end());
      return a;
    };
    REQUIRE(qt::RunQuench(args(tmp / "want", {})).exit_code == 0);
    const fs::path out = tmp / "out";
    for (const char* second : {"--resume", "--overwrite"}) {
      CAPTURE(second);
      fs::remove_all(out);
      const pid_t pid = qt::SpawnQuench(args(out, {}));
      // Once the first run holds DST (its lock file is in place), a retry of the same step.
      for (int i = 0; i < 20000 && !fs::exists(out / ".quench-run.lock"); ++i) {
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
      auto r = qt::RunQuench(args(out, {second}));
      int status = 0;
      waitpid(pid, &status, 0);
      REQUIRE(WIFEXITED(status));
      CHECK(WEXITSTATUS(status) == 0);
      CHECK(r.exit_code == 2);
      CHECK_MESSAGE(
          r.err.find("is being written by another quench run (host ") != std::string::npos, r.err);
      // The first run's output, whole: the files and bytes of an undisturbed run, no lock left.
      qt::CheckSameFiles(tmp / "want", out);
    }
  }

  TEST_CASE("--resume redoes a shard whose marker does not match (changed recipe)") {
    qt::TempDir tmp;
    WriteBigCheckpoint(tmp / "src", 64, 256);
    const fs::path out = tmp / "out";
    // A finished W8A8 run's shard with a forged marker from an FP8 run must not be reused.
    REQUIRE(
        qt::RunQuench({"convert", (tmp / "src").string(), out.string(), "--scheme", "W8A8", "-q"})
            .exit_code == 0);
    fs::remove(out / "config.json");
    fs::create_directories(out / ".quench-resume");
    qt::WriteBytes(out / ".quench-resume/model.safetensors.json", "{\"forged\": true}\n");
    auto r = qt::RunQuench({"convert", (tmp / "src").string(), out.string(), "--scheme",
                            "FP8_DYNAMIC", "--resume"});
    REQUIRE(r.exit_code == 0);
    CHECK(r.err.find("resume: 0 of 1") != std::string::npos);
    auto [l, t] = qt::FindTensor(qt::LoadAll(out), "model.layers.0.mlp.down_proj.weight");
    REQUIRE(t != nullptr);
    CHECK(t->dtype == quench::DType::kF8E4M3);
    CHECK_FALSE(fs::exists(out / ".quench-resume"));
  }
}

TEST_SUITE("memory") {
  TEST_CASE(
      "under an address-space limit every run ends cleanly: converted, or exit 4 and nothing "
      "left") {
    // A 64 MiB weight, converted under `ulimit -v` from too little to enough: each limit must
    // end in success or in an out-of-memory error (planning's allocations, the writer
    // threads' stacks, the source map, the pipeline's buffers: std::bad_alloc and
    // std::system_error reported, not std::terminate's abort).
    qt::TempDir dir;
    fs::create_directories(dir / "src");
    std::vector<float> w(4096 * 8192, 0.01f);
    qt::WriteShard(dir / "src" / "model.safetensors",
                   {{"layer.weight", quench::DType::kBF16, {4096, 8192}, qt::Bf16Bytes(w)}});
    qt::WriteBytes(dir / "src" / "config.json", "{}");
    int ok = 0, refused = 0;
    // Below some limit the process cannot start at all: the dynamic loader cannot map the
    // libraries (exit 127), or static initialisers find no heap (an abort before main). That
    // floor moves with the binary's size, so it is measured: the smallest limit at which
    // `quench schemes` runs. Every limit from there up must end cleanly.
    int start = 0;
    for (int mib = 8; mib <= 64 && start == 0; ++mib) {
      const qt::RunResult s = qt::RunCommand(
          {"bash", "-c", "ulimit -v " + std::to_string(mib * 1024) + " && exec \"$0\" schemes",
           qt::QuenchBin().string()});
      if (s.exit_code == 0) start = mib;
    }
    REQUIRE(start > 0);
    // The least limit that converts is ~190-205 MiB on x86-64 and moves between runs: each
    // thread that allocates first reserves its own malloc arena (64 MiB of address space), and
    // which threads do depends on timing. 290 MiB above the start leaves every run several
    // limits that are enough (ok > 0 below) without changing what each limit must do.
    for (int mib = start; mib <= start + 290; mib += 10) {
      CAPTURE(mib);
      const fs::path dst = dir / ("out" + std::to_string(mib));
      const qt::RunResult r = qt::RunCommand(
          {"bash", "-c",
           "ulimit -v " + std::to_string(mib * 1024) + " && exec \"$0\" \"$@\"",
           qt::QuenchBin().string(), "convert", (dir / "src").string(), dst.string(),
           "--scheme", "FP8_DYNAMIC", "-q"});
      CAPTURE(r.err);
      CHECK((r.exit_code == 0 || r.exit_code == 4));
      if (r.exit_code == 4) {
        ++refused;
        CHECK((r.err.find("out of memory") != std::string::npos ||
               r.err.find("Cannot allocate memory") != std::string::npos ||
               r.err.find("cannot start the writer threads") != std::string::npos));
        CHECK_FALSE(fs::exists(dst / "config.json"));
        CHECK_FALSE(fs::exists(dst / "model.safetensors"));
      } else if (r.exit_code == 0) {
        ++ok;
        CHECK(fs::exists(dst / "model.safetensors"));
      }
    }
    CHECK(refused > 0);  // the sweep reached limits that are too small
    CHECK(ok > 0);       // and ones that are enough
  }

  TEST_CASE(
      "a budget below the plan's minimum is refused with the figure; the figure is honoured") {
    // FP8_BLOCK quantizes 128-row blocks: a chunk of this 65,536-wide weight is at least
    // 16 MiB of input however small the budget, so --memory-limit 16M cannot be honoured.
    qt::TempDir tmp;
    WriteBigCheckpoint(tmp / "src", 512, 65536);  // 64 MiB, four block rows
    const std::vector<std::string> base = {"convert", (tmp / "src").string(),
                                           (tmp / "out").string(), "--scheme", "FP8_BLOCK",
                                           "--threads", "2", "-q"};
    auto with = [&](std::vector<std::string> extra) {
      std::vector<std::string> a = base;
      a.insert(a.end(), extra.begin(), extra.end());
      return qt::RunQuench(a);
    };
    auto refused = with({"--memory-limit", "16M"});
    CHECK(refused.exit_code == 2);
    CHECK_FALSE(fs::exists(tmp / "out"));
    const std::string key = "is below what this conversion needs: ";
    const size_t at = refused.err.find(key);
    REQUIRE_MESSAGE(at != std::string::npos, refused.err);
    CHECK(refused.err.find("down_proj.weight' needs 128 row(s) per chunk for FP8_BLOCK") !=
          std::string::npos);
    const long floor_mib = std::stol(refused.err.substr(at + key.size()));
    MESSAGE("minimum " << floor_mib << " MiB");
    // Four 16 MiB blocks in flight cannot fit under 64 MiB; a floor far above what the chunks
    // need would refuse budgets that work.
    CHECK(floor_mib > 64);
    CHECK(floor_mib < 256);
    // --dry-run says the same before anything is read.
    auto dry = with({"--memory-limit", "16M", "--dry-run"});
    CHECK(dry.exit_code == 2);
    CHECK(dry.err.find(key) != std::string::npos);
    // One MiB below the figure is refused; the figure itself converts, under it.
    CHECK(with({"--memory-limit", std::to_string(floor_mib - 1) + "M"}).exit_code == 2);
    auto ok = with({"--memory-limit", std::to_string(floor_mib) + "M"});
    REQUIRE_MESSAGE(ok.exit_code == 0, ok.err);
    MESSAGE("peak RSS " << ok.max_rss_kib << " KiB under " << floor_mib << " MiB");
    CHECK(ok.max_rss_kib < floor_mib * 1024);
  }
}
