// Activation statistics (docs/statistics-format.md): opening checks every array against the
// format; merge adds counts, sums and Hessians and reduces min/max (expected values computed
// here from the parts' arrays); `quench stats inspect` reports what each site supports.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "calib/stats.h"
#include "format/json.h"
#include "test_util.h"

namespace quench::testing {
namespace {

template <class T>
std::string Bytes(const std::vector<T>& v) {
  std::string s(v.size() * sizeof(T), '\0');
  std::memcpy(s.data(), v.data(), s.size());
  return s;
}

// One part: site "a" (4 features, with a Hessian) read by q/k/v, and per-expert site "e"
// (2 experts x 3 features) read by the experts' down_proj. `k` varies the values.
struct Part {
  int64_t count_a;
  std::vector<double> sum_x2_a, sum_abs_a, hess_a;
  std::vector<float> min_a, max_a;
  std::vector<int64_t> count_e;
  std::vector<double> sum_x2_e;
  std::vector<float> min_e, max_e;
};

Part MakePart(int k) {
  Part p;
  p.count_a = 10 + k;
  for (int i = 0; i < 4; ++i) {
    p.sum_x2_a.push_back(1.5 * (i + 1) + k);
    p.sum_abs_a.push_back(0.25 * i + k);
    p.min_a.push_back(-1.0f * (i + 1) - static_cast<float>(k));
    p.max_a.push_back(2.0f * (i + 1) - static_cast<float>(k));
  }
  for (int i = 0; i < 10; ++i) p.hess_a.push_back(0.1 * i + k);  // 4 * 5 / 2
  p.count_e = {3 + k, 0};
  for (int i = 0; i < 6; ++i) {
    p.sum_x2_e.push_back(i + 0.5 * k);
    p.min_e.push_back(i < 3 ? -static_cast<float>(i + k) : std::numeric_limits<float>::infinity());
    p.max_e.push_back(i < 3 ? static_cast<float>(i * k) : -std::numeric_limits<float>::infinity());
  }
  return p;
}

std::string Manifest(const std::string& model_type = "llama", const std::string& moe = "all",
                     int version = 1, const std::string& tokens = "100") {
  return R"({"format": "quench-stats", "version": )" + std::to_string(version) +
         R"(, "model": {"model_type": ")" + model_type +
         R"(", "weights": {"m.q_proj.weight": [8, 4]}}, "collection": {"dataset": "d", )"
         R"("tokens": )" + tokens + R"(, "samples": 2, "moe": ")" + moe +
         R"(", "hessian": "full"}, "files": ["stats-00001.safetensors"], "sites": {)"
         R"("a": {"file": "stats-00001.safetensors", "in_features": 4, "experts": null, )"
         R"("fields": ["count", "sum_x2", "sum_abs", "min", "max", "hessian"]}, )"
         R"("e": {"file": "stats-00001.safetensors", "in_features": 3, "experts": 2, )"
         R"("fields": ["count", "sum_x2", "min", "max"]}}, "consumers": {)"
         R"("m.q_proj.weight": {"site": "a"}, "m.k_proj.weight": {"site": "a"}, )"
         R"("m.experts.0.down_proj.weight": {"site": "e", "expert": 0}, )"
         R"("m.experts.1.down_proj.weight": {"site": "e", "expert": 1}}})";
}

void WritePart(const fs::path& dir, const Part& p, const std::string& manifest = Manifest()) {
  fs::create_directories(dir);
  WriteBytes(dir / "manifest.json", manifest);
  WriteShard(dir / "stats-00001.safetensors",
             {{"a.count", DType::kI64, {}, Bytes(std::vector<int64_t>{p.count_a})},
              {"a.sum_x2", DType::kF64, {4}, Bytes(p.sum_x2_a)},
              {"a.sum_abs", DType::kF64, {4}, Bytes(p.sum_abs_a)},
              {"a.min", DType::kF32, {4}, Bytes(p.min_a)},
              {"a.max", DType::kF32, {4}, Bytes(p.max_a)},
              {"a.hessian", DType::kF64, {10}, Bytes(p.hess_a)},
              {"e.count", DType::kI64, {2}, Bytes(p.count_e)},
              {"e.sum_x2", DType::kF64, {2, 3}, Bytes(p.sum_x2_e)},
              {"e.min", DType::kF32, {2, 3}, Bytes(p.min_e)},
              {"e.max", DType::kF32, {2, 3}, Bytes(p.max_e)}});
}

}  // namespace

TEST_SUITE("stats") {
  TEST_CASE("a statistics folder opens, its arrays read as the format stores them") {
    TempDir dir;
    const Part p = MakePart(1);
    WritePart(dir.path(), p);
    auto s = calib::Statistics::Open(dir.path());
    REQUIRE(s.ok());
    CHECK(s->sites().size() == 2);
    CHECK(s->sites().at("e").experts == 2u);
    CHECK(s->consumers().at("m.experts.1.down_proj.weight").expert == 1u);
    CHECK_FALSE(s->consumers().at("m.q_proj.weight").expert.has_value());
    auto x2 = s->ReadField("a", "sum_x2");
    REQUIRE(x2.ok());
    CHECK(*x2 == p.sum_x2_a);
    auto count = s->ReadField("e", "count");
    REQUIRE(count.ok());
    CHECK(*count == std::vector<double>{4, 0});
    CHECK_FALSE(s->ReadField("e", "hessian").ok());
  }

  TEST_CASE("a per-expert site's Hessians carry the expert dimension") {
    auto full = calib::FieldLayout("hessian", 3, 2);
    REQUIRE(full.ok());
    CHECK(full->shape == std::vector<uint64_t>{2, 6});
    auto blk = calib::FieldLayout("hessian_blk2", 4, 5);
    REQUIRE(blk.ok());
    CHECK(blk->shape == std::vector<uint64_t>{5, 2, 2, 2});
    auto dense = calib::FieldLayout("hessian_blk2", 4, std::nullopt);
    REQUIRE(dense.ok());
    CHECK(dense->shape == std::vector<uint64_t>{2, 2, 2});
    CHECK_FALSE(calib::FieldLayout("hessian_blk3", 4, 5).ok());
  }

  TEST_CASE("folders that break the format are refused with the reason") {
    struct Case {
      const char* what;
      std::string manifest;
      const char* message;
    };
    std::string wrong_field = Manifest();
    wrong_field.replace(wrong_field.find("\"sum_abs\""), 9, "\"sum_x3\"");
    std::string bad_block_name = Manifest();
    bad_block_name.replace(bad_block_name.find("\"sum_abs\""), 9, "\"hessian_blkx\"");
    std::string bad_block_size = Manifest();
    bad_block_size.replace(bad_block_size.find("\"sum_abs\""), 9, "\"hessian_blk3\"");
    std::string no_count = Manifest();
    no_count.replace(no_count.find("[\"count\", \"sum_x2\", \"min\""), 10, "[");
    std::string bad_consumer = Manifest();
    bad_consumer.replace(bad_consumer.find("{\"site\": \"e\", \"expert\": 1}"), 26,
                         "{\"site\": \"e\", \"expert\": 2}");
    std::string no_expert = Manifest();
    no_expert.replace(no_expert.find("{\"site\": \"e\", \"expert\": 1}"), 26, "{\"site\": \"e\"}");
    std::string ghost = Manifest();
    ghost.replace(ghost.find("{\"site\": \"a\"}"), 13, "{\"site\": \"b\"}");
    std::string wrong_shape = Manifest();
    wrong_shape.replace(wrong_shape.find("\"in_features\": 4"), 16, "\"in_features\": 5");
    // (Found by scripts/fuzz: opened, a merge then wrote the array twice, a file nothing reads.)
    std::string absent = Manifest();
    absent.replace(absent.find("\"files\": [\"stats-00001.safetensors\"]"), 36,
                   "\"files\": [\"stats-00001.safetensors\", \"block\"]");
    std::string twice = Manifest();
    twice.replace(twice.find("\"min\", \"max\"]}}"), 15, "\"min\", \"max\", \"min\"]}}");
    const Case cases[] = {
        {"newer version", Manifest("llama", "all", 2), "version 2; this quench reads version 1"},
        {"unknown field", wrong_field, "site 'a': unknown field 'sum_x3'"},
        {"a block Hessian without its size", bad_block_name,
         "field 'hessian_blkx': not hessian_blk<B>"},
        {"a block size that does not divide the site's width", bad_block_size,
         "field 'hessian_blk3': the block size must divide in_features 4"},
        {"no count", no_count, "site 'e' has no \"count\""},
        {"expert out of range", bad_consumer, "expert index outside site 'e'"},
        {"expert index missing", no_expert, "without an \"expert\" index"},
        {"unknown site", ghost, "consumer 'm.q_proj.weight' names no site"},
        {"array of the wrong shape", wrong_shape,
         "array 'a.sum_x2' is F64 [4]; the format needs F64 [5]"},
        {"not a statistics manifest", R"({"format": "other"})", "not a quench statistics manifest"},
        {"a field listed twice", twice, "site 'e' lists field 'min' twice"},
        // (An I/O error, exit 4, before: found by scripts/fuzz-outputs.)
        {"a listed file missing", absent, "\"files\" lists block, which is not in the folder"},
    };
    for (const Case& c : cases) {
      const std::string what = c.what;
      CAPTURE(what);
      TempDir dir;
      WritePart(dir.path(), MakePart(0), c.manifest);
      auto s = calib::Statistics::Open(dir.path());
      REQUIRE_FALSE(s.ok());
      const std::string message = s.status().message();
      CAPTURE(message);
      CHECK(s.status().code() == ErrorCode::kInvalidInput);
      CHECK(s.status().message().find(c.message) != std::string::npos);
    }
  }

  TEST_CASE("merge adds counts, sums and Hessians and reduces min and max") {
    TempDir dir;
    const Part p0 = MakePart(0), p1 = MakePart(1), p2 = MakePart(3);
    WritePart(dir / "r0", p0, Manifest("llama", "all", 1, "100"));
    WritePart(dir / "r1", p1, Manifest("llama", "all", 1, "50"));
    WritePart(dir / "r2", p2, Manifest("llama", "all", 1, "7"));
    const RunResult r = RunQuench({"stats", "merge", (dir / "r0").string(), (dir / "r1").string(),
                                   (dir / "r2").string(), "-o", (dir / "all").string()});
    REQUIRE(r.exit_code == 0);
    auto m = calib::Statistics::Open(dir / "all");
    REQUIRE(m.ok());
    auto field = [&](const char* site, const char* f) { return *m->ReadField(site, f); };
    CHECK(field("a", "count") == std::vector<double>{10 + 11 + 13});
    for (size_t i = 0; i < 4; ++i) {
      CAPTURE(i);
      CHECK(field("a", "sum_x2")[i] == p0.sum_x2_a[i] + p1.sum_x2_a[i] + p2.sum_x2_a[i]);
      CHECK(field("a", "sum_abs")[i] == p0.sum_abs_a[i] + p1.sum_abs_a[i] + p2.sum_abs_a[i]);
      CHECK(field("a", "min")[i] == std::min({p0.min_a[i], p1.min_a[i], p2.min_a[i]}));
      CHECK(field("a", "max")[i] == std::max({p0.max_a[i], p1.max_a[i], p2.max_a[i]}));
    }
    for (size_t i = 0; i < 10; ++i) {
      CHECK(field("a", "hessian")[i] == p0.hess_a[i] + p1.hess_a[i] + p2.hess_a[i]);
    }
    CHECK(field("e", "count") == std::vector<double>{3 + 4 + 6, 0});
    // An expert that saw no tokens in any part keeps the empty range (+Inf, -Inf).
    CHECK(std::isinf(field("e", "min")[4]));
    CHECK(field("e", "min")[4] > 0);
    CHECK(field("e", "max")[1] == std::max({p0.max_e[1], p1.max_e[1], p2.max_e[1]}));
    const JsonValue* c = m->manifest().Find("collection");
    CHECK(c->Find("tokens")->as_uint() == 157);
    CHECK(c->Find("merged_from")->as_array().size() == 3);
  }

  TEST_CASE("merge refuses parts of different models or settings and leaves nothing") {
    TempDir dir;
    WritePart(dir / "a", MakePart(0));
    WritePart(dir / "b", MakePart(1), Manifest("qwen3"));
    WritePart(dir / "c", MakePart(1), Manifest("llama", "routed"));
    const RunResult model = RunQuench({"stats", "merge", (dir / "a").string(),
                                       (dir / "b").string(), "-o", (dir / "o1").string()});
    CHECK(model.exit_code == 3);
    CHECK(model.err.find("they come from different models") != std::string::npos);
    // One line, led by the error's category as convert, inspect and finalize print it.
    CHECK(model.err.starts_with("quench: error: invalid-input: "));
    CHECK(std::count(model.err.begin(), model.err.end(), '\n') == 1);
    CHECK_FALSE(fs::exists(dir / "o1"));
    const RunResult settings = RunQuench({"stats", "merge", (dir / "a").string(),
                                          (dir / "c").string(), "-o", (dir / "o2").string()});
    CHECK(settings.exit_code == 3);
    CHECK(settings.err.find("different settings") != std::string::npos);
    const RunResult one = RunQuench({"stats", "merge", (dir / "a").string(), "-o",
                                     (dir / "o3").string()});
    CHECK(one.exit_code == 2);
    CHECK(one.err.find("stats merge needs at least two statistics folders") != std::string::npos);
    CHECK_FALSE(fs::exists(dir / "o3"));
    // An output folder that holds anything is not written into.
    WritePart(dir / "full", MakePart(0));
    const std::vector<std::string> before = ListFiles(dir / "full");
    const RunResult full = RunQuench({"stats", "merge", (dir / "a").string(),
                                      (dir / "a").string(), "-o", (dir / "full").string()});
    CHECK(full.exit_code == 2);
    CHECK(full.err.find((dir / "full").string() + " exists and is not empty") !=
          std::string::npos);
    CHECK(ListFiles(dir / "full") == before);
  }

  TEST_CASE("merge refuses a negative count and counts beyond int64, and leaves nothing") {
    // Found by scripts/fuzz (fuzz_stats): the counts were added in int64 unchecked, a signed
    // overflow (undefined behaviour) for parts whose counts sum past 2^63 - 1, and a
    // negative count merged as if it were tokens.
    TempDir dir;
    Part big = MakePart(0);
    big.count_e = {int64_t{1} << 62, 0};
    Part negative = MakePart(1);
    negative.count_a = -4;
    WritePart(dir / "big", big);
    WritePart(dir / "neg", negative);
    WritePart(dir / "ok", MakePart(2));
    const RunResult overflow = RunQuench({"stats", "merge", (dir / "big").string(),
                                          (dir / "big").string(), "-o", (dir / "o1").string()});
    CHECK(overflow.exit_code == 3);
    CHECK(overflow.err == "quench: error: invalid-input: cannot merge 'e.count': element 0 is a "
                          "negative count in some part, or the parts' counts add up to more "
                          "than int64 holds\n");
    CHECK_FALSE(fs::exists(dir / "o1"));
    // One part's count of 2^62 is a count; with another of 3 it still fits.
    const RunResult fits = RunQuench({"stats", "merge", (dir / "big").string(),
                                      (dir / "ok").string(), "-o", (dir / "o2").string()});
    REQUIRE(fits.exit_code == 0);
    auto m = calib::Statistics::Open(dir / "o2");
    REQUIRE(m.ok());
    CHECK(*m->ReadField("e", "count") ==
          std::vector<double>{static_cast<double>((int64_t{1} << 62) + 5), 0});
    const RunResult neg = RunQuench({"stats", "merge", (dir / "ok").string(),
                                     (dir / "neg").string(), "-o", (dir / "o3").string()});
    CHECK(neg.exit_code == 3);
    CHECK(neg.err.find("cannot merge 'a.count': element 0 is a negative count") !=
          std::string::npos);
    CHECK_FALSE(fs::exists(dir / "o3"));
    // inspect says so too, rather than printing the count as 2^64 - 4 tokens.
    const RunResult inspect = RunQuench({"stats", "inspect", (dir / "neg").string()});
    CHECK(inspect.exit_code == 3);
    CHECK(inspect.err == "quench: error: invalid-input: " + (dir / "neg").string() +
                             ": site 'a' holds a negative token count; these statistics are "
                             "damaged\n");
  }

  TEST_CASE("stats inspect lists sites, tokens and what each supports") {
    TempDir dir;
    WritePart(dir.path(), MakePart(2));
    const RunResult r = RunQuench({"stats", "inspect", dir.path().string(), "--json"});
    REQUIRE(r.exit_code == 0);
    auto j = ParseJson("inspect", r.out);
    REQUIRE(j.ok());
    const auto& sites = j->Find("sites")->as_array();
    REQUIRE(sites.size() == 2);
    CHECK(sites[0].Find("site")->as_string() == "a");
    CHECK(sites[0].Find("tokens")->as_uint() == 12);
    CHECK(sites[0].Find("consumers")->as_uint() == 2);
    CHECK(sites[0].Find("supports")->as_string() == "activation scales, imatrix, wanda, awq, gptq");
    CHECK(sites[1].Find("tokens_min")->as_uint() == 0);
    CHECK(sites[1].Find("tokens_max")->as_uint() == 5);
    CHECK(sites[1].Find("experts_without_tokens")->as_uint() == 1);
    const RunResult text = RunQuench({"stats", "inspect", dir.path().string()});
    CHECK(text.exit_code == 0);
    CHECK(text.out.find("0..5 (1 none)") != std::string::npos);
    const RunResult none = RunQuench({"stats", "inspect", (dir / "absent").string()});
    CHECK(none.exit_code == 3);
    CHECK(none.err == "quench: error: invalid-input: " + (dir / "absent").string() +
                          ": not a statistics folder\n");
  }
}

}  // namespace quench::testing
