// The imatrix_mse observer and Wanda selection against the pinned reference:
// data/golden/imatrix (scripts/make_golden_imatrix.py runs llm-compressor 0.14.0.1's
// IMatrixMSEObserver with a given importance) and data/golden/wanda
// (scripts/make_golden_wanda.py runs its Wanda sparsify_weight). Scales, zero points and
// codes are equal on every case, whole tensor at once and in row chunks (the tensor-wide
// patience rule made chunk-independent by StopStep); Wanda's pruned weights are equal
// byte for byte, ties included.
#include <doctest/doctest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "calib/imatrix_mse.h"
#include "calib/wanda.h"
#include "format/json.h"
#include "format/safetensors.h"
#include "golden_file.h"
#include "imatrix_golden.h"
#include "quench/dtype.h"
#include "schemes/float_formats.h"
#include "schemes/int_shared.h"
#include "schemes/prune.h"
#include "test_util.h"

namespace quench::testing {
namespace {

using File = GoldenFile;
File Load(const fs::path& p) { return LoadGolden(p); }

std::vector<std::string> Cases(const char* folder) {
  auto manifest = ReadJsonFile((DataDir() / "golden" / folder / "manifest.json").string());
  REQUIRE(manifest.ok());
  std::vector<std::string> names;
  for (const auto& c : manifest->Find("cases")->as_array()) {
    names.push_back(c.Find("name")->as_string());
  }
  REQUIRE(names.size() >= 8);
  return names;
}

TEST_CASE("imatrix_mse scales, zero points and codes equal the reference observer's") {
  for (const std::string& name : Cases("imatrix")) {
    CAPTURE(name);
    const File f = Load(DataDir() / "golden" / "imatrix" / (name + ".safetensors"));
    const DType dt = ParseDType(f.Meta("dtype"));
    const TensorInfo& wi = f.Info("w");
    const std::string w = f.Raw("w");
    const size_t rows = wi.shape[0], cols = wi.shape[1];
    const std::vector<float> sum = f.Tensor<float>("imatrix_sum");
    const int64_t count = f.Tensor<int64_t>("imatrix_count")[0];
    const std::vector<double> sum64(sum.begin(), sum.end());
    const std::vector<float> imp = calib::NormalizedImportance(sum64, double(count));
    CHECK(imp.empty() == (name.find("uniform") != std::string::npos));

    WeightChunk in;
    in.data = reinterpret_cast<const uint8_t*>(w.data());
    in.dtype = dt;
    in.rows = rows;
    in.cols = cols;
    in.params.bits = std::stoi(f.Meta("num_bits"));
    in.params.group_size = std::stoi(f.Meta("group_size"));
    if (in.params.group_size < 0) in.params.group_size = 0;
    in.params.symmetric = f.Meta("symmetric") == "true";
    calib::ImatrixOptions opt;
    uint32_t steps = 0;
    REQUIRE(calib::AnyImproved(in, imp, opt, &steps));
    const int stop = calib::StopStep(steps, opt);

    CheckIntSearch(f, in, imp, opt, stop, 7);
  }
}

// pack_to_int32 (compressed-tensors): the codes offset by 2^(b-1), element i in bits
// b i .. b i + b - 1 of the row's little-endian int32 stream. QuantizeChosen's packed rows
// equal that packing of its unpacked codes, for every width and both symmetries, with the
// same scales.
TEST_CASE("imatrix_mse chosen codes packed as pack_to_int32 packs them, every width") {
  std::mt19937 rng(8);
  std::normal_distribution<float> normal(0.f, 0.02f);
  const size_t rows = 5, cols = 256;
  std::vector<uint16_t> w(rows * cols);
  for (auto& v : w) v = F32ToBF16(normal(rng));
  for (const int bits : {8, 4, 3, 2}) {
    for (const bool sym : {true, false}) {
      for (const int group : {128, 0}) {
        CAPTURE(bits);
        CAPTURE(sym);
        CAPTURE(group);
        WeightChunk in;
        in.data = reinterpret_cast<const uint8_t*>(w.data());
        in.dtype = DType::kBF16;
        in.rows = rows;
        in.cols = cols;
        in.params.bits = bits;
        in.params.group_size = group;
        in.params.symmetric = sym;
        const size_t ng = group == 0 ? 1 : cols / group;
        std::vector<uint8_t> steps(rows * ng);
        for (auto& st : steps) st = static_cast<uint8_t>(rng() % 20);
        const size_t words = (cols * bits + 31) / 32;
        std::vector<uint8_t> packed(rows * words * 4), codes(rows * cols);
        std::vector<uint8_t> s1(rows * ng * 2), s2(rows * ng * 2), z1(rows * ng * 4), z2(rows * ng);
        ChunkOutputs po, uo;
        po.out[0] = packed.data();
        po.out[1] = s1.data();
        po.out[2] = z1.data();
        uo.out[0] = codes.data();
        uo.out[1] = s2.data();
        uo.out[2] = z2.data();
        const calib::ImatrixOptions opt;
        REQUIRE(calib::QuantizeChosen(in, calib::ImatrixFormat::kInt, opt, steps.data(), true,
                                      po));
        REQUIRE(calib::QuantizeChosen(in, calib::ImatrixFormat::kInt, opt, steps.data(), false,
                                      uo));
        CHECK(s1 == s2);
        std::vector<uint8_t> want(rows * words * 4, 0);
        for (size_t r = 0; r < rows; ++r) {
          std::vector<uint32_t> stream(words, 0u);
          for (size_t i = 0; i < cols; ++i) {
            const uint64_t u = static_cast<uint8_t>(
                static_cast<int8_t>(codes[r * cols + i]) + (1 << (bits - 1)));
            const size_t bit = i * bits;
            const uint64_t placed = u << (bit % 32);
            stream[bit / 32] |= static_cast<uint32_t>(placed);
            if ((bit % 32) + bits > 32) stream[bit / 32 + 1] |= static_cast<uint32_t>(placed >> 32);
          }
          for (size_t k = 0; k < words; ++k) {
            for (int byte = 0; byte < 4; ++byte) {
              want[(r * words + k) * 4 + byte] = static_cast<uint8_t>(stream[k] >> (8 * byte));
            }
          }
        }
        CHECK(packed == want);
      }
    }
  }
}

TEST_CASE("imatrix_mse clips: on the golden cases some groups leave the min-max range") {
  // A search that never shrank would equal round to nearest and prove nothing above.
  size_t clipped = 0, groups = 0;
  for (const std::string& name : Cases("imatrix")) {
    const File f = Load(DataDir() / "golden" / "imatrix" / (name + ".safetensors"));
    if (f.Meta("symmetric") != "true" || f.Meta("dtype") != "F32") continue;
    const std::vector<float> w = f.Tensor<float>("w"), s = f.Tensor<float>("scale");
    const int bits = std::stoi(f.Meta("num_bits"));
    const size_t rows = f.Info("w").shape[0], cols = f.Info("w").shape[1];
    const size_t ng = s.size() / rows, gs = cols / ng;
    for (size_t g = 0; g < rows * ng; ++g) {
      float amax = 0;
      for (size_t j = 0; j < gs; ++j) {
        amax = std::max(amax, std::fabs(w[(g / ng) * cols + (g % ng) * gs + j]));
      }
      const float rtn = amax / ((float((1 << bits) - 1)) / 2.0f);
      ++groups;
      if (s[g] < rtn) ++clipped;
    }
  }
  REQUIRE(groups > 0);
  CHECK(clipped * 4 > groups);
}

TEST_CASE("StopStep follows the reference's patience over the whole tensor") {
  calib::ImatrixOptions o;
  CHECK(calib::LastStep(o) == 19);
  CHECK(calib::StopStep(0x1u, o) == 5);          // steps 1..5 silent: break after step 5
  CHECK(calib::StopStep(0xFFFFFu, o) == 19);     // always improving: every step runs
  CHECK(calib::StopStep(0x1u | (1u << 5), o) == 10);
  o.patience = 0;
  CHECK(calib::StopStep(0x1u, o) == 19);         // patience 0: never stops early
}

TEST_CASE("Wanda's pruned weights equal the reference's sparsify_weight") {
  for (const std::string& name : Cases("wanda")) {
    CAPTURE(name);
    const File f = Load(DataDir() / "golden" / "wanda" / (name + ".safetensors"));
    const DType dt = ParseDType(f.Meta("dtype"));
    const std::string spec_text = f.Meta("spec");
    auto spec = prune::ParsePruneSpec(spec_text);
    REQUIRE(spec.ok());
    const TensorInfo& wi = f.Info("w");
    const std::string w = f.Raw("w"), want = f.Raw("pruned");
    const std::vector<float> s = f.Tensor<float>("s");
    std::vector<double> s64(s.begin(), s.end());
    const std::vector<float> scale = calib::WandaColumnScale(s64, 1.0);
    std::string got(w.size(), '\0');
    uint64_t zeroed = 0;
    REQUIRE(calib::WandaPruneRows(reinterpret_cast<const uint8_t*>(w.data()),
                                  reinterpret_cast<uint8_t*>(got.data()), dt, wi.shape[0],
                                  wi.shape[1], *spec, scale.data(), &zeroed));
    CHECK(zeroed == prune::PrunedElements(*spec, wi.shape[0], wi.shape[1]));
    CHECK(got == want);
    // In place, row by row, gives the same bytes.
    std::string inplace = w;
    const size_t row_bytes = wi.shape[1] * DTypeBits(dt) / 8;
    for (size_t r = 0; r < wi.shape[0]; ++r) {
      uint8_t* p = reinterpret_cast<uint8_t*>(inplace.data()) + r * row_bytes;
      REQUIRE(calib::WandaPruneRows(p, p, dt, 1, wi.shape[1], *spec, scale.data(), nullptr));
    }
    CHECK(inplace == want);
  }
}

TEST_CASE("Wanda refuses NaN rows and per-tensor specs") {
  std::vector<float> row(8, 1.0f), out(8);
  row[3] = std::nanf("");
  const std::vector<float> scale(8, 1.0f);
  auto spec = prune::ParsePruneSpec("2:4");
  REQUIRE(spec.ok());
  CHECK_FALSE(calib::WandaPruneRows(reinterpret_cast<const uint8_t*>(row.data()),
                                    reinterpret_cast<uint8_t*>(out.data()), DType::kF32, 1, 8,
                                    *spec, scale.data(), nullptr));
  auto u = prune::ParsePruneSpec("unstructured:0.5");
  REQUIRE(u.ok());
  u->per_tensor = true;
  row[3] = 1.0f;
  CHECK_FALSE(calib::WandaPruneRows(reinterpret_cast<const uint8_t*>(row.data()),
                                    reinterpret_cast<uint8_t*>(out.data()), DType::kF32, 1, 8,
                                    *u, scale.data(), nullptr));
}

}  // namespace
}  // namespace quench::testing
