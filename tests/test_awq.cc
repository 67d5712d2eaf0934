// AWQ's grid search against the pinned reference (data/golden/awq, from
// scripts/make_golden_awq.py running llm-compressor 0.14.0.1's AWQModifier._compute_best_scale
// on mappings whose parent is the balance layer itself, v_proj -> o_proj and up -> down, where
// its loss is the layer's output MSE, which quench's full-Hessian proxy computes exactly): the
// chosen grid point (ratio and duo) is the reference's on every case (duo_scaling true, false and
// "both", whose grid alternates the two), and the chosen scales
// equal its own within two f32 ulps. The losses are printed beside the reference's: quench's
// is the exact f64 trace, the reference's an MSE of outputs rounded to the model's dtype, whose
// rounding noise is up to 16% of an int8 weight's small error in BF16 (0.5% in F32).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "calib/awq.h"
#include "format/json.h"
#include "format/safetensors.h"
#include "golden_file.h"
#include "test_util.h"

namespace quench::testing {
namespace {

using File = GoldenFile;
File Load(const fs::path& p) { return LoadGolden(p); }

template <class T>
std::vector<T> As(const File& f, const std::string& name) {
  const std::string r = f.Raw(name);
  std::vector<T> v(r.size() / sizeof(T));
  std::memcpy(v.data(), r.data(), r.size());
  return v;
}

TEST_CASE("AWQ's grid search chooses the reference's ratio and scales on every golden case") {
  const fs::path dir = DataDir() / "golden" / "awq";
  const JsonValue::Array cases = ManifestCases(dir);
  REQUIRE(cases.size() == 12);  // 8 with duo_scaling true or false, 4 with "both"
  for (const auto& c : cases) {
    const std::string name = c.as_string();
    CAPTURE(name);
    const File f = Load(dir / (name + ".safetensors"));
    calib::AwqLayer l;
    l.dtype = f.Meta("dtype") == "bf16" ? DType::kBF16 : DType::kF32;
    const std::string w = f.Raw("w");
    l.data = reinterpret_cast<const uint8_t*>(w.data());
    l.rows = f.Find("w")->shape[0];
    l.cols = f.Find("w")->shape[1];
    l.q.bits = std::stoi(f.Meta("bits"));
    l.q.group_size = std::stoi(f.Meta("group"));
    l.q.symmetric = f.Meta("symmetric") == "1";
    const double count = double(As<int64_t>(f, "count")[0]);
    std::vector<float> x_mean;
    for (double s : As<double>(f, "sum_abs")) x_mean.push_back(float(s) / float(count));
    auto duo = calib::ParseDuoScaling(f.Meta("duo_scaling"));
    REQUIRE(duo.ok());
    auto r = calib::AwqSearch({l}, x_mean, As<double>(f, "hessian"), true, count, 20, *duo);
    REQUIRE_MESSAGE(r.ok(), r.status().ToString());
    const std::vector<double> ref = As<double>(f, "losses");
    REQUIRE(r->losses.size() == ref.size());
    const int64_t best = As<int64_t>(f, "best")[0];
    const auto grid = calib::AwqGrid(20, *duo);
    std::string both;
    for (size_t i = 0; i < ref.size(); ++i) {
      both += std::to_string(i) + ": " + std::to_string(ref[i]) + " / " +
              std::to_string(r->losses[i]) + "\n";
    }
    CAPTURE(both);
    CHECK(r->ratio == grid[size_t(best)].first);
    CHECK(r->duo == grid[size_t(best)].second);
    const std::vector<double> want = As<double>(f, "scales");
    REQUIRE(want.size() == r->scales.size());
    size_t differ = 0;
    double worst = 0;
    for (size_t j = 0; j < want.size(); ++j) {
      differ += want[j] != r->scales[j];
      worst = std::max(worst, std::fabs(r->scales[j] / want[j] - 1.0));
    }
    // torch computes x_mean^r with its f32 pow and the normaliser with its f32 sqrt, neither
    // correctly rounded on the CPU (test_smoothquant.cc measures the sqrt); quench rounds both
    // correctly, so a scale may be up to two f32 ulps (2.4e-7 relative) from the reference's.
    CHECK(worst <= 2.4e-7);
    double loss_worst = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      loss_worst = std::max(loss_worst, std::fabs(r->losses[i] / ref[i] - 1.0));
    }
    MESSAGE(name << ": ratio " << r->ratio << std::string(r->duo ? " (duo)" : "") << "; " << differ
                 << " of " << want.size() << " scales differ, by " << worst
                 << " relative at most; losses within " << loss_worst << " of the reference's");
  }
}

}  // namespace
}  // namespace quench::testing
