// The imatrix_mse observer on FP4 weights against the pinned reference:
// data/golden/imatrix-fp4 (scripts/make_golden_imatrix_fp4.py runs llm-compressor 0.14.0.1's
// IMatrixMSEObserver with compressed-tensors' NVFP4A16 and MXFP4 weight arguments and a
// given importance, then the compressor). Packed codes, E4M3 / E8M0 scales and NVFP4's
// global scale (from the fused observers' searched ranges) are equal byte for byte, whole
// tensor and in row chunks.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "calib/imatrix_mse.h"
#include "format/json.h"
#include "format/safetensors.h"
#include "golden_file.h"
#include "imatrix_golden.h"
#include "quench/convert.h"
#include "quench/dtype.h"
#include "schemes/fp4.h"
#include "test_util.h"

namespace quench::testing {
namespace {

using File = GoldenFile;
File Load(const fs::path& p) { return LoadGolden(p); }

// One member's weight and its search.
struct Member {
  std::string w;
  WeightChunk in;
  std::vector<float> imp;
  std::vector<uint8_t> steps;
  float searched_amax = 0.f;  // the largest chosen range
  float plain_amax = 0.f;     // max |w|
};

TEST_CASE("imatrix_mse on NVFP4 and MXFP4: codes, scales and global scales equal the "
          "reference observer's") {
  auto manifest = ReadJsonFile((DataDir() / "golden" / "imatrix-fp4" / "manifest.json").string());
  REQUIRE(manifest.ok());
  size_t cases = 0, clipped_groups = 0, gs_from_search = 0;
  for (const auto& c : manifest->Find("cases")->as_array()) {
    const std::string name = c.Find("name")->as_string();
    CAPTURE(name);
    ++cases;
    const File f = Load(DataDir() / "golden" / "imatrix-fp4" / (name + ".safetensors"));
    const DType dt = ParseDType(f.Meta("dtype"));
    const bool nv = f.Meta("preset").rfind("NVFP4", 0) == 0;
    const calib::ImatrixFormat fmt =
        nv ? calib::ImatrixFormat::kNvfp4 : calib::ImatrixFormat::kMxfp4;
    const size_t n = std::stoul(f.Meta("members"));
    const int64_t count = f.Tensor<int64_t>("imp_count")[0];
    const calib::ImatrixOptions opt;
    std::vector<Member> ms(n);
    for (size_t m = 0; m < n; ++m) {
      Member& mb = ms[m];
      const std::string k = std::to_string(m);
      mb.w = f.Raw("w" + k);
      const TensorInfo& wi = f.Info("w" + k);
      mb.in.data = reinterpret_cast<const uint8_t*>(mb.w.data());
      mb.in.dtype = dt;
      mb.in.rows = wi.shape[0];
      mb.in.cols = wi.shape[1];
      const std::vector<float> sum = f.Tensor<float>("imp_sum" + k);
      mb.imp = calib::NormalizedImportance(std::vector<double>(sum.begin(), sum.end()),
                                           double(count));
      CHECK(mb.imp.empty() == (name.find("uniform") != std::string::npos));
      // The whole-tensor search: masks, the patience stop, each group's chosen step.
      const size_t gs = calib::GroupColumns(mb.in, fmt);
      REQUIRE(gs == (nv ? 16u : 32u));
      const size_t groups = mb.in.rows * mb.in.cols / gs;
      std::vector<uint32_t> masks(groups);
      REQUIRE(calib::GroupSteps(mb.in, fmt, mb.imp, opt, masks.data()));
      uint32_t any = 0;
      for (uint32_t x : masks) any |= x;
      const int stop = calib::StopStep(any, opt);
      mb.steps.resize(groups);
      for (size_t i = 0; i < groups; ++i) {
        mb.steps[i] = calib::ChosenStep(masks[i], stop);
        clipped_groups += mb.steps[i] != 0;
      }
      std::vector<float> pos(groups);
      REQUIRE(calib::ChosenRanges(mb.in, fmt, opt, mb.steps.data(), pos.data()));
      mb.searched_amax = *std::max_element(pos.begin(), pos.end());
      REQUIRE(fp4::AbsMaxScalar(mb.in, &mb.plain_amax));
    }
    // NVFP4: the set's global scale from the searched ranges of every member.
    float searched = 0.f, plain = 0.f;
    for (const Member& mb : ms) {
      searched = std::max(searched, mb.searched_amax);
      plain = std::max(plain, mb.plain_amax);
    }
    const float gs = fp4::Nvfp4GlobalScale(searched, dt);
    if (nv && gs != fp4::Nvfp4GlobalScale(plain, dt)) ++gs_from_search;
    for (size_t m = 0; m < n; ++m) {
      CAPTURE(m);
      Member& mb = ms[m];
      const std::string k = std::to_string(m);
      if (nv) CHECK(f.Tensor<float>("global_scale" + k).at(0) == gs);
      const std::string want_packed = f.Raw("packed" + k);
      const std::string want_scale = f.Raw("scale" + k);
      const size_t rows = mb.in.rows, cols = mb.in.cols, ng = cols / (nv ? 16 : 32);
      const size_t esz = DTypeBits(dt) / 8;
      REQUIRE(want_packed.size() == rows * cols / 2);
      REQUIRE(want_scale.size() == rows * ng);
      for (size_t chunk : {rows, size_t(7)}) {
        CAPTURE(chunk);
        std::vector<uint8_t> packed(rows * cols / 2), scales(rows * ng);
        for (size_t r0 = 0; r0 < rows; r0 += chunk) {
          WeightChunk c = mb.in;
          c.rows = std::min(chunk, rows - r0);
          c.data = mb.in.data + r0 * cols * esz;
          c.row0 = r0;
          c.params.global_scale = gs;
          ChunkOutputs out;
          out.out[0] = packed.data() + r0 * cols / 2;
          out.out[1] = scales.data() + r0 * ng;
          REQUIRE(calib::QuantizeChosen(c, fmt, opt, mb.steps.data() + r0 * ng, false, out));
        }
        size_t code_diff = 0, scale_diff = 0;
        for (size_t i = 0; i < packed.size(); ++i)
          code_diff += packed[i] != uint8_t(want_packed[i]);
        for (size_t i = 0; i < scales.size(); ++i)
          scale_diff += scales[i] != uint8_t(want_scale[i]);
        CHECK(code_diff == 0);
        CHECK(scale_diff == 0);
      }
    }
  }
  CHECK(cases >= 9);
  // The goldens exercise what the search changes: clipped groups, and NVFP4 global scales
  // that differ from the weights' max |x| (the reference takes the searched ranges).
  CHECK(clipped_groups > 0);
  CHECK(gs_from_search > 0);
}

TEST_CASE("imatrix_mse FP4 search refuses NaN and shapes the format cannot take") {
  std::vector<uint16_t> w(2 * 32, 0x3F80);  // bf16 1.0
  WeightChunk in;
  in.data = reinterpret_cast<const uint8_t*>(w.data());
  in.dtype = DType::kBF16;
  in.rows = 2;
  in.cols = 32;
  const calib::ImatrixOptions opt;
  std::vector<uint32_t> masks(4);
  CHECK(calib::GroupSteps(in, calib::ImatrixFormat::kNvfp4, {}, opt, masks.data()));
  CHECK(calib::GroupSteps(in, calib::ImatrixFormat::kMxfp4, {}, opt, masks.data()));
  w[5] = 0x7FC0;  // NaN
  CHECK_FALSE(calib::GroupSteps(in, calib::ImatrixFormat::kNvfp4, {}, opt, masks.data()));
  in.cols = 24;  // not a multiple of 16
  in.rows = 1;
  CHECK(calib::GroupColumns(in, calib::ImatrixFormat::kNvfp4) == 0);
  CHECK_FALSE(calib::GroupSteps(in, calib::ImatrixFormat::kNvfp4, {}, opt, masks.data()));
}

TEST_CASE("MiniLM NVFP4A16 with imatrix_mse: llm-compressor oneshot's own observer's bytes") {
  // data/golden/imatrix-minilm/expected-nvfp4a16.json: hashes (and global scale values) of
  // what oneshot wrote with observer imatrix_mse on the samples the statistics came from
  // (scripts/make_golden_imatrix_minilm.py). quench fuses BERT's query/key/value (vLLM's
  // qkv_proj needs one global scale), llm-compressor's fuse_weight_observers does not: there
  // the set's global scale must be generate_gparam of the largest searched range, i.e. the
  // smallest of the reference's three, and the member whose own scale that is must match
  // byte for byte. Every other tensor must match byte for byte.
  TempDir tmp;
  const MiniLmImatrix m = ConvertMiniLmImatrix(tmp, "NVFP4A16", "expected-nvfp4a16.json");
  const auto& out = m.out;
  const auto& want = m.expected.Find("tensors")->as_object();
  CHECK(want.size() == 111);  // 37 Linear weights x (packed, scale, global scale)
  const JsonValue& tensors = *m.expected.Find("tensors");
  auto want_hash = [&](const std::string& n) {
    return tensors.Find(n)->Find("fnv1a64")->as_string();
  };
  size_t equal = 0, qkv_sets = 0;
  for (const auto& [name, w] : want) {
    CAPTURE(name);
    if (name.find(".attention.self.") != std::string::npos) continue;
    CHECK(TensorFnv1a64(out, name) == w.Find("fnv1a64")->as_string());
    equal += TensorFnv1a64(out, name) == w.Find("fnv1a64")->as_string();
  }
  for (int layer = 0; layer < 6; ++layer) {
    const std::string p = "encoder.layer." + std::to_string(layer) + ".attention.self.";
    CAPTURE(p);
    float smallest = 0.f;
    std::string owner;
    for (const char* m : {"query", "key", "value"}) {
      const float v = static_cast<float>(
          tensors.Find(p + m + ".weight_global_scale")->Find("value")->as_double());
      if (owner.empty() || v < smallest) smallest = v, owner = m;
    }
    for (const char* m : {"query", "key", "value"}) {
      auto [l, t] = FindTensor(out, p + m + ".weight_global_scale");
      REQUIRE(t != nullptr);
      float got;
      std::memcpy(&got, l->Data(*t), 4);
      CHECK(got == smallest);
    }
    for (const char* suffix : {".weight_packed", ".weight_scale", ".weight_global_scale"}) {
      CHECK(TensorFnv1a64(out, p + owner + suffix) == want_hash(p + owner + suffix));
    }
    ++qkv_sets;
  }
  CHECK(qkv_sets == 6);
  MESSAGE("MiniLM NVFP4A16 imatrix_mse: " << equal << " tensors outside q/k/v equal");
}

}  // namespace
}  // namespace quench::testing
