// Expert pruning with the algorithms that read activation statistics: imatrix_mse, Wanda and
// static activation scales (FP8, NVFP4's input global scale, W8A8 --static-activations) on a
// tiny MoE whose statistics are per expert (`--moe routed` sites, each expert its own
// ranges and importances). Statistics name the source's experts and pruning renumbers the
// survivors, so each weight's entry is looked up under its source name (FindWeightStats).
// Expected values: the unpruned conversion with the same statistics (each algorithm's own
// tests check it against the reference): the pruned output's expert i equals the unpruned
// output's expert kept[i] byte for byte, the router is its rows kept, every other tensor is
// the same. The kept experts {1, 3, 4, 6} are the four largest router-row L1 norms, by
// construction, so a lookup under the new name (expert i's statistics for expert kept[i])
// would differ; that the statistics do change these outputs is checked too (the unpruned
// conversion with the experts' statistics rotated differs on every kept expert).
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "quench/convert.h"
#include "test_util.h"

namespace qt = quench::testing;
namespace fs = std::filesystem;
using quench::DType;
using qt::RawTensor;

namespace {

constexpr uint64_t kN = 128, kExperts = 8;
const std::vector<uint32_t> kKept = {1, 3, 4, 6};
const std::string kLayer = "model.layers.0.";
const std::string kExpertsPrefix = "model.layers.0.mlp.experts.";

template <class T>
std::string Bytes(const std::vector<T>& v) {
  std::string s(v.size() * sizeof(T), '\0');
  std::memcpy(s.data(), v.data(), s.size());
  return s;
}

std::string RandomBf16(std::mt19937& rng, size_t n) {
  std::normal_distribution<float> d(0.0f, 0.05f);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return qt::Bf16Bytes(v);
}

// One MoE layer (router [8, 128], experts' gate/up/down [128, 128]) and attention.
fs::path WriteMoe(const fs::path& dir) {
  fs::create_directories(dir);
  std::mt19937 rng(18);
  std::vector<RawTensor> t;
  for (const char* m : {"q_proj", "k_proj", "v_proj", "o_proj"}) {
    t.push_back(
        {kLayer + "self_attn." + m + ".weight", DType::kBF16, {kN, kN}, RandomBf16(rng, kN * kN)});
  }
  // Row magnitudes: experts 1, 3, 4, 6 are the largest.
  const float mag[kExperts] = {1, 5, 2, 6, 7, 3, 8, 4};
  std::vector<float> router(kExperts * kN);
  for (size_t i = 0; i < router.size(); ++i) router[i] = (i % 3 ? 1.f : -1.f) * mag[i / kN] / 64;
  t.push_back({kLayer + "mlp.gate.weight", DType::kBF16, {kExperts, kN}, qt::Bf16Bytes(router)});
  for (uint64_t e = 0; e < kExperts; ++e) {
    for (const char* m : {"gate_proj", "up_proj", "down_proj"}) {
      t.push_back({kExpertsPrefix + std::to_string(e) + "." + m + ".weight", DType::kBF16,
                   {kN, kN}, RandomBf16(rng, kN * kN)});
    }
  }
  t.push_back(
      {"model.norm.weight", DType::kBF16, {kN}, qt::Bf16Bytes(std::vector<float>(kN, 1.f))});
  qt::WriteShard(dir / "model.safetensors", t);
  qt::WriteBytes(dir / "config.json",
                 R"({"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", )"
                 R"("num_experts": 8, "num_experts_per_tok": 2})");
  return dir;
}

struct Site {
  std::string name;
  bool per_expert;
  std::vector<std::pair<std::string, std::optional<uint32_t>>> consumers;
};

// `--moe routed` statistics of WriteMoe's model: per channel and per expert, sums of x^2 over
// decades with outlier channels and ranges that differ by expert. `rotate`: expert e's arrays
// are the ones WriteMoe's expert (e + rotate) % 8 would have.
void WriteStats(const fs::path& dir, uint32_t rotate = 0) {
  fs::create_directories(dir);
  std::vector<Site> sites = {
      {kLayer + "self_attn.q_proj", false,
       {{kLayer + "self_attn.q_proj.weight", {}}, {kLayer + "self_attn.k_proj.weight", {}},
        {kLayer + "self_attn.v_proj.weight", {}}}},
      {kLayer + "self_attn.o_proj", false, {{kLayer + "self_attn.o_proj.weight", {}}}},
      {kLayer + "mlp.gate", false, {{kLayer + "mlp.gate.weight", {}}}},
      {kExpertsPrefix + "gate_proj", true, {}},
      {kExpertsPrefix + "down_proj", true, {}}};
  for (uint32_t e = 0; e < kExperts; ++e) {
    const std::string p = kExpertsPrefix + std::to_string(e) + ".";
    sites[3].consumers.push_back({p + "gate_proj.weight", e});
    sites[3].consumers.push_back({p + "up_proj.weight", e});
    sites[4].consumers.push_back({p + "down_proj.weight", e});
  }
  std::string weights, site_json, consumers;
  std::vector<RawTensor> arrays;
  uint32_t seed = 40;
  for (const Site& s : sites) {
    for (const auto& [c, e] : s.consumers) {
      weights += std::string(weights.empty() ? "" : ", ") + "\"" + c + "\": [" +
                 std::to_string(c.ends_with("gate.weight") ? kExperts : kN) + ", " +
                 std::to_string(kN) + "]";
      consumers += std::string(consumers.empty() ? "" : ", ") + "\"" + c + "\": {\"site\": \"" +
                   s.name + "\"" + (e ? ", \"expert\": " + std::to_string(*e) : "") + "}";
    }
    const uint64_t rows = s.per_expert ? kExperts : 1;
    site_json += std::string(site_json.empty() ? "" : ", ") + "\"" + s.name +
                 "\": {\"file\": \"stats-00001.safetensors\", \"in_features\": " +
                 std::to_string(kN) + ", \"experts\": " +
                 (s.per_expert ? std::to_string(kExperts) : "null") +
                 ", \"fields\": [\"count\", \"sum_x2\", \"sum_abs\", \"min\", \"max\"]}";
    // Per row (expert): its own seed, so that rotating rows moves whole experts' arrays.
    std::vector<std::vector<double>> x2(rows), ab(rows);
    std::vector<std::vector<float>> mn(rows), mx(rows);
    std::vector<int64_t> count(rows);
    for (uint64_t r = 0; r < rows; ++r) {
      std::mt19937 rng(seed + static_cast<uint32_t>(r));
      std::uniform_real_distribution<double> u(-4.0, 2.0);
      count[r] = 100 + 37 * static_cast<int64_t>(r);
      const double spread = 1.0 + static_cast<double>(r);
      for (uint64_t j = 0; j < kN; ++j) {
        const double v = static_cast<double>(count[r]) * std::exp(u(rng)) *
                         ((j + 3 * r) % 37 == 5 ? 400.0 : 1.0);
        x2[r].push_back(v);
        ab[r].push_back(std::sqrt(v));
        mn[r].push_back(static_cast<float>(-spread * (0.5 + u(rng) / 8)));
        mx[r].push_back(static_cast<float>(spread * (0.7 + u(rng) / 8)));
      }
    }
    seed += 100;
    std::vector<double> fx2, fab;
    std::vector<float> fmn, fmx;
    std::vector<int64_t> fcount;
    for (uint64_t r = 0; r < rows; ++r) {
      const uint64_t from = s.per_expert ? (r + rotate) % kExperts : r;
      fx2.insert(fx2.end(), x2[from].begin(), x2[from].end());
      fab.insert(fab.end(), ab[from].begin(), ab[from].end());
      fmn.insert(fmn.end(), mn[from].begin(), mn[from].end());
      fmx.insert(fmx.end(), mx[from].begin(), mx[from].end());
      fcount.push_back(count[from]);
    }
    std::vector<uint64_t> shape = s.per_expert ? std::vector<uint64_t>{kExperts, kN}
                                               : std::vector<uint64_t>{kN};
    arrays.push_back({s.name + ".count", DType::kI64,
                      s.per_expert ? std::vector<uint64_t>{kExperts} : std::vector<uint64_t>{},
                      Bytes(fcount)});
    arrays.push_back({s.name + ".sum_x2", DType::kF64, shape, Bytes(fx2)});
    arrays.push_back({s.name + ".sum_abs", DType::kF64, shape, Bytes(fab)});
    arrays.push_back({s.name + ".min", DType::kF32, shape, Bytes(fmn)});
    arrays.push_back({s.name + ".max", DType::kF32, shape, Bytes(fmx)});
  }
  qt::WriteBytes(
      dir / "manifest.json",
      R"({"format": "quench-stats", "version": 1, "model": {"model_type": "qwen3_moe", )"
      R"("weights": {)" +
          weights +
          R"(}}, "collection": {"dataset": "synthetic", )"
          R"("samples": 4, "seq_len": 128, "tokens": 512, "sequences": 4, "moe": "routed", )"
          R"("top_k": 2, "hessian": "none"}, "files": ["stats-00001.safetensors"], "sites": {)" +
          site_json + R"(}, "consumers": {)" + consumers + "}}");
  qt::WriteShard(dir / "stats-00001.safetensors", arrays);
}

// One algorithm's options (besides src, dst, stats and expert pruning).
struct Algorithm {
  const char* name;
  const char* scheme;
  const char* observer = "minmax";
  const char* prune = "";
  const char* prune_metric = "magnitude";
  bool static_activations = false;
};

quench::Result<quench::ConvertSummary> Run(const Algorithm& a, const fs::path& src,
                                           const fs::path& stats, const fs::path& dst,
                                           std::optional<double> prune_experts) {
  quench::ConvertOptions o;
  o.src = src;
  o.dst = dst;
  o.scheme = a.scheme;
  o.observer = a.observer;
  o.prune = a.prune;
  o.prune_metric = a.prune_metric;
  o.static_activations = a.static_activations;
  o.stats = stats;
  o.prune_experts = prune_experts;
  return quench::Convert(o);
}

// "experts.<i>." of a pruned output -> "experts.<kKept[i]>." of the source.
std::string SourceName(const std::string& name) {
  if (!name.starts_with(kExpertsPrefix)) return name;
  const size_t from = kExpertsPrefix.size(), to = name.find('.', from);
  return kExpertsPrefix + std::to_string(kKept.at(std::stoul(name.substr(from, to - from)))) +
         name.substr(to);
}

std::string Data(const qt::Loaded& l, const quench::TensorInfo& t) {
  return std::string(reinterpret_cast<const char*>(l.Data(t)), t.nbytes());
}

// The pruned output is the unpruned one with the experts not kept gone and the router sliced.
void CheckKeptEqualUnpruned(const fs::path& pruned, const fs::path& whole) {
  const auto p = qt::LoadAll(pruned), w = qt::LoadAll(whole);
  size_t np = 0, nw = 0, ep = 0, ew = 0;
  for (const auto& [_, l] : w) {
    for (const auto& t : l.shard.header.tensors) {
      ++nw;
      ew += t.name.starts_with(kExpertsPrefix);
    }
  }
  for (const auto& [_, l] : p) {
    for (const auto& t : l.shard.header.tensors) {
      CAPTURE(t.name);
      ++np;
      ep += t.name.starts_with(kExpertsPrefix);
      const auto [wl, wt] = qt::FindTensor(w, SourceName(t.name));
      REQUIRE(wt != nullptr);
      CHECK(wt->dtype == t.dtype);
      const std::string all = Data(*wl, *wt);
      if (t.name == kLayer + "mlp.gate.weight") {
        std::string want;
        for (uint32_t k : kKept) want += all.substr(k * kN * 2, kN * 2);
        CHECK(Data(l, t) == want);
      } else {
        CHECK(t.shape == wt->shape);
        CHECK(Data(l, t) == all);
      }
    }
  }
  CHECK(ep * 2 == ew);
  CHECK(np == nw - ew / 2);
}

// Every kept expert's tensors of `a` differ somewhere from `b`'s (the statistics matter).
void CheckKeptExpertsDiffer(const fs::path& a, const fs::path& b) {
  const auto x = qt::LoadAll(a), y = qt::LoadAll(b);
  for (uint32_t k : kKept) {
    CAPTURE(k);
    bool differs = false;
    for (const auto& [_, l] : x) {
      for (const auto& t : l.shard.header.tensors) {
        if (!t.name.starts_with(kExpertsPrefix + std::to_string(k) + ".")) continue;
        const auto [yl, yt] = qt::FindTensor(y, t.name);
        REQUIRE(yt != nullptr);
        differs |= Data(l, t) != Data(*yl, *yt);
      }
    }
    CHECK(differs);
  }
}

}  // namespace

TEST_SUITE("expert_prune_calib") {
  TEST_CASE("statistics under expert pruning: each survivor gets its source expert's entry") {
    qt::TempDir tmp;
    const fs::path src = WriteMoe(tmp / "src");
    WriteStats(tmp / "stats");
    WriteStats(tmp / "rotated", /*rotate=*/1);
    const Algorithm algorithms[] = {
        {"imatrix_mse W4A16", "W4A16", "imatrix_mse"},
        {"Wanda 2:4 alone", "none", "minmax", "2:4", "wanda"},
        {"Wanda unstructured:0.5 + W4A16", "W4A16", "minmax", "unstructured:0.5", "wanda"},
        {"static FP8", "FP8"},
        {"static NVFP4 input_global_scale", "NVFP4"},
        {"W8A8 --static-activations", "W8A8", "minmax", "", "magnitude", true},
    };
    for (const Algorithm& a : algorithms) {
      const std::string name = a.name;
      CAPTURE(name);
      const fs::path dir = tmp / name;
      auto pruned = Run(a, src, tmp / "stats", dir / "pruned", 0.5);
      REQUIRE_MESSAGE(pruned.ok(), pruned.status().ToString());
      auto whole = Run(a, src, tmp / "stats", dir / "whole", std::nullopt);
      REQUIRE_MESSAGE(whole.ok(), whole.status().ToString());
      CheckKeptEqualUnpruned(dir / "pruned", dir / "whole");
      auto rotated = Run(a, src, tmp / "rotated", dir / "rotated", std::nullopt);
      REQUIRE_MESSAGE(rotated.ok(), rotated.status().ToString());
      CheckKeptExpertsDiffer(dir / "whole", dir / "rotated");
    }
  }
}
