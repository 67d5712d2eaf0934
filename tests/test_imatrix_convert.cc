// The imatrix_mse observer and Wanda end to end: data/tiny-llama with a statistics folder
// written here (per-channel sum of x^2 over decades, outlier channels; no Hessians) converted
// through the CLI and through Convert() with small chunks. Every output equals the algorithm
// checked against the reference in test_imatrix.cc applied to the whole source tensor at once
// (so the pipeline's chunking, packing, pruning and the patience stop step change nothing);
// config.json names the observer; the refusals at planning.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "calib/imatrix_mse.h"
#include "calib/wanda.h"
#include "format/json.h"
#include "format/safetensors.h"
#include "imatrix_golden.h"
#include "quench/convert.h"
#include "schemes/prune.h"
#include "stats_folder.h"
#include "test_util.h"

namespace quench::testing {
namespace {

struct Site {
  std::string name;
  size_t n;
  std::vector<std::string> consumers;
  std::vector<double> sum_x2;
};

std::vector<double> SumX2(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(-4.0, 2.0);
  std::vector<double> s(n);
  for (size_t j = 0; j < n; ++j) s[j] = 512.0 * std::exp(u(rng)) * (j % 37 == 5 ? 400.0 : 1.0);
  return s;
}

// Sites of data/tiny-llama's layers 0 and 1 (`skip`: a weight left without statistics).
std::vector<Site> TinyLlamaSites(const std::string& skip = "") {
  std::vector<Site> sites;
  uint32_t seed = 18;
  for (const SiteShape& s : TinyLlamaSiteShapes()) {
    std::vector<double> sum_x2 = SumX2(s.n, seed++);
    if (s.consumers.front() != skip) sites.push_back({s.name, s.n, s.consumers, std::move(sum_x2)});
  }
  return sites;
}

void WriteStats(const fs::path& dir, const std::vector<Site>& sites, size_t shape_bump = 0) {
  auto folder = LoadModelFolder(DataDir() / "tiny-llama");
  REQUIRE(folder.ok());
  StatsParts parts;
  for (const Site& s : sites) {
    for (const std::string& c : s.consumers) parts.AddModelConsumer(*folder, c, s.name, shape_bump);
    std::vector<double> abs(s.n);
    for (size_t i = 0; i < s.n; ++i) abs[i] = std::sqrt(s.sum_x2[i]);
    parts.AddSite(s.name, 512, s.sum_x2, abs, std::vector<float>(s.n, -1.f),
                  std::vector<float>(s.n, 1.f));
  }
  WriteStatsFolder(dir, kTinyLlamaModel, TinyLlamaCollection("none"), parts);
}

// What the verified algorithms give for one whole source weight: Wanda-pruned rows (if
// `prune`), then the imatrix search (if `group` > 0 or channel: group == -1), written packed.
struct Expected {
  std::string rows;  // the (pruned) source rows
  std::string packed, scale, zp;
};
Expected Compute(const std::string& src, size_t rows, size_t cols, const Site& site,
                 const char* prune, int group, bool sym, const calib::ImatrixOptions& o) {
  Expected e;
  e.rows = src;
  if (prune != nullptr) {
    auto spec = prune::ParsePruneSpec(prune);
    REQUIRE(spec.ok());
    const std::vector<float> sc = calib::WandaColumnScale(site.sum_x2, 512);
    REQUIRE(calib::WandaPruneRows(reinterpret_cast<const uint8_t*>(src.data()),
                                  reinterpret_cast<uint8_t*>(e.rows.data()), DType::kBF16, rows,
                                  cols, *spec, sc.data(), nullptr));
  }
  if (group == 0) return e;
  WeightChunk in;
  in.data = reinterpret_cast<const uint8_t*>(e.rows.data());
  in.dtype = DType::kBF16;
  in.rows = rows;
  in.cols = cols;
  in.params.bits = 4;
  in.params.group_size = group > 0 ? group : 0;
  in.params.symmetric = sym;
  const std::vector<float> imp = calib::NormalizedImportance(site.sum_x2, 512);
  REQUIRE_FALSE(imp.empty());
  uint32_t steps = 0;
  REQUIRE(calib::AnyImproved(in, imp, o, &steps));
  const size_t ng = group > 0 ? cols / size_t(group) : 1;
  e.packed.assign(rows * cols / 2, '\0');
  e.scale.assign(rows * ng * 2, '\0');
  e.zp.assign(sym ? 0 : (rows * 4 + 31) / 32 * 4 * ng, '\0');
  ChunkOutputs out;
  out.out[0] = reinterpret_cast<uint8_t*>(e.packed.data());
  out.out[1] = reinterpret_cast<uint8_t*>(e.scale.data());
  out.out[2] = reinterpret_cast<uint8_t*>(e.zp.data());
  REQUIRE(calib::SearchInto(in, imp, o, calib::StopStep(steps, o), true, out));
  return e;
}

void CheckAgainst(const fs::path& out_dir, const std::vector<Site>& sites, const char* prune,
                  int group, bool sym,
                  const calib::ImatrixOptions& o = calib::ImatrixOptions()) {
  auto sources = LoadAll(DataDir() / "tiny-llama");
  auto out = LoadAll(out_dir);
  size_t weights = 0;
  for (const Site& s : sites) {
    for (const std::string& c : s.consumers) {
      CAPTURE(c);
      const std::string m = c.substr(0, c.size() - 7);
      auto [sl, st] = FindTensor(sources, c);
      const std::string src(reinterpret_cast<const char*>(sl->Data(*st)), st->end - st->begin);
      const Expected e = Compute(src, st->shape[0], st->shape[1], s, prune, group, sym, o);
      if (group == 0) {
        CHECK(TensorBytes(out, c) == e.rows);
      } else {
        CHECK(TensorBytes(out, m + ".weight_packed") == e.packed);
        CHECK(TensorBytes(out, m + ".weight_scale") == e.scale);
        if (!sym) CHECK(TensorBytes(out, m + ".weight_zero_point") == e.zp);
      }
      ++weights;
    }
  }
  CHECK(weights == 14);
}

TEST_CASE("W4A16 with imatrix_mse: every weight is the verified search's, in any chunking") {
  TempDir tmp;
  const std::vector<Site> sites = TinyLlamaSites();
  WriteStats(tmp / "stats", sites);
  const fs::path src = DataDir() / "tiny-llama";
  auto r = RunQuench({"convert", src.string(), (tmp / "imx").string(), "--scheme", "W4A16",
                      "--group-size", "64", "--observer", "imatrix_mse", "--stats",
                      (tmp / "stats").string(), "-q"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  CheckAgainst(tmp / "imx", sites, nullptr, 64, true);
  // The same through Convert() with 4 KiB chunks (a tensor in many chunks, each searched up
  // to the tensor's stop step).
  ConvertOptions o;
  o.src = src;
  o.dst = tmp / "imx-chunks";
  o.scheme = "W4A16";
  o.group_size = 64;
  o.observer = "imatrix_mse";
  o.stats = tmp / "stats";
  o.chunk_bytes = 4096;
  auto s = Convert(o);
  REQUIRE_MESSAGE(s.ok(), s.status().ToString());
  CheckAgainst(tmp / "imx-chunks", sites, nullptr, 64, true);
  // The search clips: scales differ from round to nearest's on some groups.
  auto rr = RunQuench({"convert", src.string(), (tmp / "rtn").string(), "--scheme", "W4A16",
                       "--group-size", "64", "-q"});
  REQUIRE(rr.exit_code == 0);
  const std::string sc = "model.layers.0.mlp.down_proj.weight_scale";
  CHECK(TensorBytes(LoadAll(tmp / "imx"), sc) != TensorBytes(LoadAll(tmp / "rtn"), sc));
  auto cfg = ReadJsonFile((tmp / "imx" / "config.json").string());
  REQUIRE(cfg.ok());
  const JsonValue* w =
      cfg->Find("quantization_config")->Find("config_groups")->Find("W4A16")->Find("weights");
  CHECK(w->Find("observer")->as_string() == "imatrix_mse");
}

TEST_CASE("A recipe's observer: imatrix_mse, asymmetric, with Wanda 2:4 before it") {
  TempDir tmp;
  const std::vector<Site> sites = TinyLlamaSites();
  WriteStats(tmp / "stats", sites);
  WriteBytes(tmp / "recipe.json",
             R"({"config_groups": {"group_0": {"targets": ["Linear"], "weights": )"
             R"({"num_bits": 4, "type": "int", "symmetric": false, "strategy": "group", )"
             R"("group_size": 64, "observer": "imatrix_mse"}}}, "ignore": ["lm_head"]})");
  auto r = RunQuench({"convert", (DataDir() / "tiny-llama").string(), (tmp / "o").string(),
                      "--recipe", (tmp / "recipe.json").string(), "--prune", "2:4",
                      "--prune-metric", "wanda", "--stats", (tmp / "stats").string(), "-q"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  CheckAgainst(tmp / "o", sites, "2:4", 64, false);
}

TEST_CASE(
    "observer_kwargs (--observer-arg, a recipe's): that search; config.json as the reference's") {
  // The weights args compressed-tensors dumps for the same observer_kwargs:
  // data/golden/imatrix-kwargs (scripts/make_golden_imatrix_kwargs.py).
  auto golden =
      ReadJsonFile((DataDir() / "golden" / "imatrix-kwargs" / "manifest.json").string());
  REQUIRE(golden.ok());
  auto reference_args = [&](const std::string& name) {
    for (const auto& c : golden->Find("cases")->as_array()) {
      if (c.Find("name")->as_string() == name) return DumpPythonJson(*c.Find("weights_args"));
    }
    FAIL("no golden case " << name);
    return std::string();
  };
  TempDir tmp;
  const std::vector<Site> sites = TinyLlamaSites();
  WriteStats(tmp / "stats", sites);
  const std::string src = (DataDir() / "tiny-llama").string();
  auto r = RunQuench({"convert", src, (tmp / "flags").string(), "--scheme", "W4A16",
                      "--group-size", "64", "--observer", "imatrix_mse", "--observer-arg",
                      "norm=2.4", "--stats", (tmp / "stats").string(), "-q"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  calib::ImatrixOptions norm;
  norm.norm = 2.4;
  CheckAgainst(tmp / "flags", sites, nullptr, 64, true, norm);
  auto cfg = ReadJsonFile((tmp / "flags" / "config.json").string());
  REQUIRE(cfg.ok());
  const JsonValue* w =
      cfg->Find("quantization_config")->Find("config_groups")->Find("W4A16")->Find("weights");
  CHECK(DumpPythonJson(*w->Find("observer_kwargs")) == "{\n  \"norm\": 2.4\n}");
  // Asymmetric, group 64, grid 30 and maxshrink 0.9 from a recipe: every weight arg as the
  // reference writes it.
  WriteBytes(tmp / "recipe.json",
             R"({"config_groups": {"group_0": {"targets": ["Linear"], "weights": )"
             R"({"num_bits": 4, "type": "int", "symmetric": false, "strategy": "group", )"
             R"("group_size": 64, "observer": "imatrix_mse", )"
             R"("observer_kwargs": {"grid": 30, "maxshrink": 0.9}}}}, "ignore": ["lm_head"]})");
  r = RunQuench({"convert", src, (tmp / "recipe").string(), "--recipe",
                 (tmp / "recipe.json").string(), "--stats", (tmp / "stats").string(), "-q"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  calib::ImatrixOptions grid;
  grid.grid = 30;
  grid.maxshrink = 0.9;
  CheckAgainst(tmp / "recipe", sites, nullptr, 64, false, grid);
  cfg = ReadJsonFile((tmp / "recipe" / "config.json").string());
  REQUIRE(cfg.ok());
  const JsonValue* groups = cfg->Find("quantization_config")->Find("config_groups");
  CHECK(DumpPythonJson(*groups->Find("group_0")->Find("weights")) ==
        reference_args("w4asym_g64_bf16_grid30"));
  // The settings change the bytes: the default search chooses otherwise somewhere.
  r = RunQuench({"convert", src, (tmp / "default").string(), "--scheme", "W4A16",
                 "--group-size", "64", "--observer", "imatrix_mse", "--stats",
                 (tmp / "stats").string(), "-q"});
  REQUIRE(r.exit_code == 0);
  const std::string sc = "model.layers.0.mlp.down_proj.weight_scale";
  CHECK(TensorBytes(LoadAll(tmp / "flags"), sc) != TensorBytes(LoadAll(tmp / "default"), sc));
  // Refusals: settings for the min-max observer, and with a recipe (which has its own).
  r = RunQuench({"convert", src, (tmp / "x").string(), "--scheme", "W4A16", "--observer-arg",
                 "norm=2.4", "-q"});
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("the min-max observer takes none") != std::string::npos);
  r = RunQuench({"convert", src, (tmp / "y").string(), "--recipe",
                 (tmp / "recipe.json").string(), "--observer-arg", "norm=2.4", "--stats",
                 (tmp / "stats").string(), "-q"});
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("a recipe gives each group's weights.observer_kwargs") != std::string::npos);
  CHECK_FALSE(fs::exists(tmp / "x"));
  CHECK_FALSE(fs::exists(tmp / "y"));
}

TEST_CASE("Wanda alone (--scheme none): the verified selection, unlike magnitude's") {
  TempDir tmp;
  const std::vector<Site> sites = TinyLlamaSites();
  WriteStats(tmp / "stats", sites);
  const std::string src = (DataDir() / "tiny-llama").string();
  for (const char* spec : {"2:4", "unstructured:0.5"}) {
    CAPTURE(spec);
    const fs::path w = tmp / "wanda", m = tmp / "magnitude";
    fs::remove_all(w);
    fs::remove_all(m);
    auto r = RunQuench({"convert", src, w.string(), "--scheme", "none", "--prune", spec,
                        "--prune-metric", "wanda", "--stats", (tmp / "stats").string(), "-q"});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    CheckAgainst(w, sites, spec, 0, true);
    auto rm = RunQuench({"convert", src, m.string(), "--scheme", "none", "--prune", spec, "-q"});
    REQUIRE(rm.exit_code == 0);
    const std::string q = "model.layers.0.self_attn.q_proj.weight";
    CHECK(TensorBytes(LoadAll(w), q) != TensorBytes(LoadAll(m), q));
  }
}

TEST_CASE("MiniLM W4A16 with imatrix_mse: llm-compressor oneshot's own observer's bytes") {
  // data/golden/imatrix-minilm: statistics from scripts/collect-stats and hashes of what
  // llm-compressor's oneshot wrote with observer imatrix_mse on the same samples
  // (scripts/make_golden_imatrix_minilm.py).
  TempDir tmp;
  const MiniLmImatrix m = ConvertMiniLmImatrix(tmp, "W4A16", "expected.json");
  size_t equal = 0;
  const auto& want = m.expected.Find("tensors")->as_object();
  for (const auto& [name, w] : want) {
    CAPTURE(name);
    const std::string hash = TensorFnv1a64(m.out, name);
    CHECK(hash == w.Find("fnv1a64")->as_string());
    equal += hash == w.Find("fnv1a64")->as_string();
  }
  CHECK(want.size() == 111);  // 37 Linear weights x (packed, scale, shape)
  MESSAGE("MiniLM imatrix_mse: " << equal << " of " << want.size() << " tensors equal");
  auto cfg = ReadJsonFile((m.dst / "config.json").string());
  REQUIRE(cfg.ok());
  const JsonValue* groups = cfg->Find("quantization_config")->Find("config_groups");
  CHECK(DumpPythonJson(*groups->Find("W4A16")->Find("weights")) ==
        DumpPythonJson(*m.expected.Find("weights_args")));
}

TEST_CASE("imatrix_mse reads only the statistics of the sites in use") {
  // A 16 MiB site no weight uses, between layer 0's and layer 1's sites: after the pages of
  // the statistics file are dropped from the page cache, a conversion must leave the unused
  // site's pages (but for read-around at its ends) out of it, while the used sites' pages are
  // in it (which shows the measurement sees reads).
  TempDir tmp;
  std::vector<Site> sites = TinyLlamaSites();
  const size_t big = size_t(2) << 20;  // doubles
  sites.insert(sites.begin() + 4, Site{"model.unused", big, {}, std::vector<double>(big, 1.0)});
  WriteStats(tmp / "stats", sites);
  const fs::path file = tmp / "stats" / "stats-00001.safetensors";
  auto header = ReadSafetensorsHeader(file);
  REQUIRE(header.ok());
  auto range = [&](const std::string& name) {
    for (const auto& t : header->tensors) {
      if (t.name == name)
        return std::make_pair(header->data_start + t.begin, header->data_start + t.end);
    }
    FAIL("no array " << name);
    return std::make_pair(uint64_t{0}, uint64_t{0});
  };
  const int fd = ::open(file.c_str(), O_RDONLY);
  REQUIRE(fd >= 0);
  REQUIRE(::fdatasync(fd) == 0);
  REQUIRE(::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0);
  ConvertOptions o;
  o.src = DataDir() / "tiny-llama";
  o.dst = tmp / "o";
  o.scheme = "W4A16";
  o.group_size = 64;
  o.observer = "imatrix_mse";
  o.stats = tmp / "stats";
  auto r = Convert(o);
  REQUIRE_MESSAGE(r.ok(), r.status().ToString());
  const uint64_t size = fs::file_size(file);
  void* m = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  REQUIRE(m != MAP_FAILED);
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> resident((size + page - 1) / page);
  REQUIRE(::mincore(m, size, resident.data()) == 0);
  auto pages_in = [&](uint64_t begin, uint64_t end) {
    size_t n = 0;
    for (uint64_t p = begin / page; p < (end + page - 1) / page; ++p) n += resident[p] & 1;
    return n;
  };
  const auto [ub, ue] = range("model.unused.sum_x2");
  const uint64_t margin = uint64_t{2} << 20;  // kernel read-around at the ends
  CHECK(pages_in(ub + margin, ue - margin) == 0);
  const auto [qb, qe] = range("model.layers.1.self_attn.q_proj.sum_x2");
  CHECK(pages_in(qb, qe) > 0);
  ::munmap(m, size);
  ::close(fd);
}

TEST_CASE("imatrix_mse and Wanda are refused at planning without what they need") {
  TempDir tmp;
  WriteStats(tmp / "stats", TinyLlamaSites());
  WriteStats(tmp / "missing", TinyLlamaSites("model.layers.1.mlp.down_proj.weight"));
  WriteStats(tmp / "other", TinyLlamaSites(), /*shape_bump=*/1);
  const std::string src = (DataDir() / "tiny-llama").string(), dst = (tmp / "o").string();
  const std::string stats = (tmp / "stats").string();
  const std::vector<Refusal> cases = {
      {{"--scheme", "W4A16", "--group-size", "64", "--observer", "imatrix_mse"}, 2,
       "needs --stats"},
      {{"--scheme", "W4A16", "--group-size", "64", "--observer", "mse", "--stats", stats}, 2,
       "unknown --observer"},
      {{"--scheme", "none", "--prune", "2:4", "--prune-metric", "wanda"}, 2, "needs --stats"},
      {{"--scheme", "W4A16", "--group-size", "64", "--prune-metric", "wanda", "--stats", stats},
       2, "needs --prune"},
      {{"--scheme", "none", "--prune", "unstructured:0.5", "--prune-granularity", "tensor",
        "--prune-metric", "wanda", "--stats", stats}, 2, "compares the weights of a row"},
      {{"--scheme", "none", "--prune", "2:4", "--prune-metric", "movement", "--stats", stats}, 2,
       "unknown --prune-metric"},
      {{"--scheme", "W4A16", "--group-size", "64", "--observer", "imatrix_mse", "--stats", stats,
        "--algorithm", "gptq"}, 3, "not built yet"},
      {{"--scheme", "MXFP8A16", "--observer", "imatrix_mse", "--stats", stats}, 3,
       "integer and FP4 schemes"},
      {{"--scheme", "W4A16", "--group-size", "64", "--observer", "imatrix_mse", "--stats",
        (tmp / "missing").string()}, 3, "no statistics for 'model.layers.1.mlp.down_proj.weight'"},
      {{"--scheme", "none", "--prune", "2:4", "--prune-metric", "wanda", "--stats",
        (tmp / "other").string()}, 3, "another model's statistics"},
  };
  CheckRefusals({"convert", src, dst}, cases, dst);
}

}  // namespace
}  // namespace quench::testing

namespace quench::testing {

TEST_CASE("calibration on tensors at odd addresses (a header of odd length): the same bytes") {
  // safetensors aligns nothing: a header padded to an odd length puts every tensor of the
  // shard at an odd file offset, so at an odd address in the mapping. The raw-row kernels
  // read bf16 values as uint16_t, which must be 2-byte aligned (UBSan found the reads under
  // scripts/fuzz-io); such rows go through the f32 copy, searched alike.
  TempDir tmp;
  const fs::path odd = tmp / "odd";
  CopyWithOddHeaders(DataDir() / "tiny-llama", odd);
  WriteStats(tmp / "stats", TinyLlamaSites());
  // The other calibrations that read bf16 rows (AWQ, SmoothQuant, Wanda) after them: the
  // same bytes too (they ran clean under UBSan on such a source).
  const std::string imatrix = "--observer=imatrix_mse";
  for (const std::vector<std::string>& scheme : std::vector<std::vector<std::string>>{
           {"W4A16", "--group-size", "64", imatrix}, {"W4A16_ASYM", "--group-size", "64", imatrix},
           {"W8A16", "--group-size", "64", imatrix}, {"W8A8", imatrix}, {"NVFP4A16", imatrix},
           {"MXFP4A16", imatrix}, {"W4A16", "--group-size", "64", "--algorithm", "awq"},
           {"W8A8", "--algorithm", "smoothquant"},
           {"W4A16", "--group-size", "64", "--prune", "2:4", "--prune-metric", "wanda"}}) {
    CAPTURE(scheme[0]);
    CAPTURE(scheme.back());
    std::vector<std::string> args = {"--scheme"};
    args.insert(args.end(), scheme.begin(), scheme.end());
    for (std::string a : {std::string("--stats"), (tmp / "stats").string(), std::string("-q")}) {
      args.push_back(a);
    }
    // The shards hold the same tensors with the same bytes (quench lays its outputs out
    // itself: the source's padding does not reach them); config.json alike.
    CheckSameConversions(DataDir() / "tiny-llama", odd, args, tmp.path());
  }
}

}  // namespace quench::testing
