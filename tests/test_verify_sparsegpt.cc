// quench verify of SparseGPT outputs (--algorithm sparsegpt): SparseGPT picks its own mask and
// updates the weights it keeps, so verify --prune (which compares with the source pruned by
// magnitude) rejects its outputs; with --algorithm sparsegpt verify checks the zeros' structure
// SparseGPT's definition fixes (verify/zero_structure.h) and accepts them, with and without
// SRC, unstructured and 2:4, pruning alone and with a scheme. A planted fault (a column block
// left dense) is rejected by the sparsity rule; the options' usage errors exit 2.
#include <doctest/doctest.h>

#include <fstream>
#include <string>
#include <vector>

#include "test_util.h"
#include "tiny_llama_stats.h"

namespace quench::testing {
namespace {

const char* const kQ = "model.layers.0.self_attn.q_proj.weight";

RunResult Verify(const fs::path& dst, const std::vector<std::string>& extra) {
  std::vector<std::string> a = {"verify", dst.string()};
  a.insert(a.end(), extra.begin(), extra.end());
  a.push_back("-q");
  return RunQuench(a);
}

TEST_CASE("verify --algorithm sparsegpt accepts SparseGPT's outputs that --prune alone rejects") {
  TempDir tmp;
  WriteStats(tmp / "stats", TinyLlamaSites());
  const fs::path src = DataDir() / "tiny-llama";
  struct Case {
    const char* scheme;
    const char* prune;
  };
  for (const Case& c : {Case{"none", "unstructured:0.5"}, Case{"W8A8", "unstructured:0.5"},
                        Case{"FP8_DYNAMIC", "unstructured:0.3"}, Case{"W4A16", "2:4"},
                        Case{"none", "2:4"}}) {
    CAPTURE(c.scheme);
    CAPTURE(c.prune);
    const fs::path dst = tmp / (std::string(c.scheme) + "-" + (c.prune[0] == 'u' ? "u" : "nm"));
    std::vector<std::string> conv = {"convert", src.string(), dst.string(), "--scheme", c.scheme,
                                     "--prune", c.prune, "--algorithm", "sparsegpt", "--stats",
                                     (tmp / "stats").string(), "-q"};
    if (std::string(c.scheme) == "W4A16") {
      conv.insert(conv.end(), {"--group-size", "64"});
    }
    auto r = RunQuench(conv);
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    // Magnitude's mask and the source's values: not SparseGPT's.
    const auto magnitude = Verify(dst, {src.string(), "--prune", c.prune});
    CHECK(magnitude.exit_code == 3);
    const auto with_src =
        Verify(dst, {src.string(), "--prune", c.prune, "--algorithm", "sparsegpt"});
    CHECK_MESSAGE(with_src.exit_code == 0, with_src.out << with_src.err);
    if (std::string(c.scheme) != "none") {
      const auto alone = Verify(dst, {"--prune", c.prune, "--algorithm", "sparsegpt"});
      CHECK_MESSAGE(alone.exit_code == 0, alone.out << alone.err);
    }
  }

  SUBCASE("a column block left dense is not SparseGPT's output") {
    const fs::path dst = tmp / "W8A8-u";
    // Row-major int8 [256, 256]: every code of columns 0..127 set non-zero, so that block
    // holds no zeros and every row at most 128 - what the other block has.
    auto all = LoadAll(dst);
    auto [l, t] = FindTensor(all, kQ);
    REQUIRE(t != nullptr);
    const uint64_t cols = t->shape[1];
    std::fstream f(l->shard.path, std::ios::in | std::ios::out | std::ios::binary);
    for (uint64_t r = 0; r < t->shape[0]; ++r) {
      std::string row(reinterpret_cast<const char*>(l->Data(*t)) + r * cols, 128);
      for (char& b : row) {
        if (b == 0) b = 1;
      }
      f.seekp(static_cast<std::streamoff>(l->shard.header.data_start + t->begin + r * cols));
      f.write(row.data(), 128);
    }
    f.close();
    for (const std::vector<std::string>& extra :
         {std::vector<std::string>{src.string()}, std::vector<std::string>{}}) {
      std::vector<std::string> a = extra;
      a.insert(a.end(), {"--prune", "unstructured:0.5", "--algorithm", "sparsegpt"});
      const auto bad = Verify(dst, a);
      CHECK(bad.exit_code == 3);
      CHECK(bad.out.find(std::string(kQ) + "': sparsity: dequantized zeros do not have the "
                         "structure SparseGPT unstructured:0.5 leaves: columns 0..127 hold 0 "
                         "zeros") != std::string::npos);
    }
  }

  SUBCASE("usage") {
    const fs::path dst = tmp / "W8A8-u";
    CHECK(Verify(dst, {"--algorithm", "sparsegpt"}).exit_code == 2);
    CHECK(Verify(dst, {"--prune", "unstructured:0.5", "--algorithm", "obs"}).exit_code == 2);
    CHECK(Verify(dst, {"--prune", "unstructured:0.5", "--prune-granularity", "tensor",
                       "--algorithm", "sparsegpt"}).exit_code == 2);
    CHECK(Verify(dst, {"--prune", "unstructured:0.5", "--algorithm", "sparsegpt",
                       "--gptq-block-size", "0"}).exit_code == 2);
  }
}

}  // namespace
}  // namespace quench::testing
