// The imatrix_mse observer's settings (observer_kwargs: norm, grid, maxshrink, patience,
// expand) against the pinned reference: data/golden/imatrix-kwargs
// (scripts/make_golden_imatrix_kwargs.py runs llm-compressor 0.14.0.1's IMatrixMSEObserver
// with QuantizationArgs.observer_kwargs set, then compressed-tensors' quantize / FP4
// compressors). The settings are read from each case's kwargs JSON through the same parser
// the CLI and recipes use; scales, zero points, codes (int), packed codes, E4M3 / E8M0 scales
// and global scales (FP4) are equal byte for byte, whole tensor and in row chunks. Then the
// parser's refusals (what llm-compressor's __init__ raises on, and what quench cannot do).
#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "calib/imatrix_mse.h"
#include "calib/imatrix_run.h"
#include "format/json.h"
#include "golden_file.h"
#include "imatrix_golden.h"
#include "plan/observer_kwargs.h"
#include "quench/dtype.h"
#include "schemes/fp4.h"
#include "schemes/int_shared.h"
#include "test_util.h"

namespace quench::testing {
namespace {

WeightChunk Chunk(const std::string& w, DType dt, const std::vector<uint64_t>& shape) {
  WeightChunk in;
  in.data = reinterpret_cast<const uint8_t*>(w.data());
  in.dtype = dt;
  in.rows = shape[0];
  in.cols = shape[1];
  return in;
}

// Per group the chosen step of the whole-tensor search (masks, the patience stop).
std::vector<uint8_t> ChosenSteps(const WeightChunk& in, calib::ImatrixFormat fmt,
                                 const std::vector<float>& imp, const calib::ImatrixOptions& o,
                                 size_t groups) {
  std::vector<uint32_t> masks(groups);
  REQUIRE(calib::GroupSteps(in, fmt, imp, o, masks.data()));
  uint32_t any = 0;
  for (uint32_t m : masks) any |= m;
  const int stop = calib::StopStep(any, o);
  std::vector<uint8_t> steps(groups);
  for (size_t i = 0; i < groups; ++i) steps[i] = calib::ChosenStep(masks[i], stop);
  return steps;
}

void CheckInt(const GoldenFile& f, const calib::ImatrixOptions& o) {
  const DType dt = ParseDType(f.Meta("dtype"));
  const std::string w = f.Raw("w");
  WeightChunk in = Chunk(w, dt, f.Shape("w"));
  in.params.bits = std::stoi(f.Meta("num_bits"));
  in.params.group_size = std::max(0, std::stoi(f.Meta("group_size")));
  in.params.symmetric = f.Meta("symmetric") == "true";
  const std::vector<float> sum = f.Tensor<float>("imatrix_sum");
  const std::vector<float> imp = calib::NormalizedImportance(
      std::vector<double>(sum.begin(), sum.end()), double(f.Tensor<int64_t>("imatrix_count")[0]));
  uint32_t steps = 0;
  REQUIRE(calib::AnyImproved(in, imp, o, &steps));
  const int stop = calib::StopStep(steps, o);
  CheckIntSearch(f, in, imp, o, stop, 5);
}

void CheckFp4(const GoldenFile& f, const calib::ImatrixOptions& o) {
  const DType dt = ParseDType(f.Meta("dtype"));
  const bool nv = f.Meta("preset").rfind("NVFP4", 0) == 0;
  const calib::ImatrixFormat fmt = nv ? calib::ImatrixFormat::kNvfp4 : calib::ImatrixFormat::kMxfp4;
  const size_t n = std::stoul(f.Meta("members")), gsize = nv ? 16 : 32;
  const double count = double(f.Tensor<int64_t>("imp_count")[0]);
  std::vector<std::string> ws(n);
  std::vector<WeightChunk> ins(n);
  std::vector<std::vector<uint8_t>> steps(n);
  float searched = 0.f;  // the fused set's largest chosen range: its global scale
  for (size_t m = 0; m < n; ++m) {
    const std::string k = std::to_string(m);
    ws[m] = f.Raw("w" + k);
    ins[m] = Chunk(ws[m], dt, f.Shape("w" + k));
    const std::vector<float> sum = f.Tensor<float>("imp_sum" + k);
    const std::vector<float> imp =
        calib::NormalizedImportance(std::vector<double>(sum.begin(), sum.end()), count);
    const size_t groups = ins[m].rows * ins[m].cols / gsize;
    steps[m] = ChosenSteps(ins[m], fmt, imp, o, groups);
    std::vector<float> pos(groups);
    REQUIRE(calib::ChosenRanges(ins[m], fmt, o, steps[m].data(), pos.data()));
    searched = std::max(searched, *std::max_element(pos.begin(), pos.end()));
  }
  const float gs = fp4::Nvfp4GlobalScale(searched, dt);
  for (size_t m = 0; m < n; ++m) {
    CAPTURE(m);
    const std::string k = std::to_string(m);
    if (nv) CHECK(f.Tensor<float>("global_scale" + k).at(0) == gs);
    const size_t rows = ins[m].rows, cols = ins[m].cols, ng = cols / gsize;
    const size_t esz = DTypeBits(dt) / 8;
    const std::string want_packed = f.Raw("packed" + k), want_scale = f.Raw("scale" + k);
    for (size_t chunk : {rows, size_t(7)}) {
      CAPTURE(chunk);
      std::string packed(rows * cols / 2, '\0'), scales(rows * ng, '\0');
      for (size_t r0 = 0; r0 < rows; r0 += chunk) {
        WeightChunk c = ins[m];
        c.rows = std::min(chunk, rows - r0);
        c.data = ins[m].data + r0 * cols * esz;
        c.row0 = r0;
        c.params.global_scale = gs;
        ChunkOutputs out;
        out.out[0] = reinterpret_cast<uint8_t*>(packed.data()) + r0 * cols / 2;
        out.out[1] = reinterpret_cast<uint8_t*>(scales.data()) + r0 * ng;
        REQUIRE(calib::QuantizeChosen(c, fmt, o, steps[m].data() + r0 * ng, false, out));
      }
      CHECK(packed == want_packed);
      CHECK(scales == want_scale);
    }
  }
}

}  // namespace

TEST_CASE("imatrix_mse with observer_kwargs: the reference observer's scales and codes") {
  auto manifest =
      ReadJsonFile((DataDir() / "golden" / "imatrix-kwargs" / "manifest.json").string());
  REQUIRE(manifest.ok());
  size_t cases = 0;
  for (const auto& c : manifest->Find("cases")->as_array()) {
    const std::string name = c.Find("name")->as_string();
    CAPTURE(name);
    const GoldenFile f =
        LoadGolden(DataDir() / "golden" / "imatrix-kwargs" / (name + ".safetensors"));
    // The kwargs as a recipe would give them, through the recipe / CLI parser.
    const JsonValue* kw = c.Find("weights_args")->Find("observer_kwargs");
    auto o = calib::ImatrixOptionsFromKwargs(ObserverKwargsText(*kw));
    REQUIRE_MESSAGE(o.ok(), o.status().ToString());
    CHECK(!(o->grid == 20 && o->maxshrink == 0.95 && o->norm == 3.0 && o->patience == 5 &&
            o->expand == 1.0));  // every case departs from the defaults
    if (f.Meta("kind") == "int") {
      CheckInt(f, *o);
    } else {
      CheckFp4(f, *o);
    }
    ++cases;
  }
  CHECK(cases >= 13);
}

TEST_CASE("--observer-arg values keep their JSON types, as config.json writes them") {
  auto kw = ObserverKwargsFromArgs({"norm=2.4", "grid=30", "maxshrink=1e-1", "strict=true",
                                    "patience=0"});
  REQUIRE(kw.ok());
  // Python's json.dumps(kwargs, indent=2, sort_keys=True).
  CHECK(ObserverKwargsText(*kw) == "{\n  \"grid\": 30,\n  \"maxshrink\": 0.1,\n  \"norm\": 2.4,\n"
                                   "  \"patience\": 0,\n  \"strict\": true\n}");
  auto s = ParseObserverKwargs("imatrix_mse", *kw, "");
  REQUIRE(s.ok());
  CHECK(s->grid == 30);
  CHECK(s->maxshrink == 0.1);
  CHECK(s->norm == 2.4);
  CHECK(s->patience == 0);
  CHECK(s->strict);
  CHECK(ObserverKwargsText(JsonValue::MakeObject()).empty());
}

TEST_CASE("observer_kwargs are refused where llm-compressor raises or quench cannot follow") {
  auto refused = [](std::vector<std::string> args, const std::string& observer,
                    const std::string& says) {
    CAPTURE(says);
    auto kw = ObserverKwargsFromArgs(args);
    Status st = kw.ok() ? ParseObserverKwargs(observer, *kw, "").status() : kw.status();
    REQUIRE_FALSE(st.ok());
    CHECK(st.code() == ErrorCode::kUsage);
    CHECK(st.message().find(says) != std::string::npos);
  };
  // llm-compressor's IMatrixMSEObserver.__init__ checks.
  refused({"grid=0"}, "imatrix_mse", "grid must be from 1");
  refused({"patience=-1"}, "imatrix_mse", "patience must be from 0");
  refused({"maxshrink=1.5"}, "imatrix_mse", "maxshrink must be in [0, 1]");
  refused({"norm=0"}, "imatrix_mse", "norm must be a finite positive number");
  // quench's own: a key the observer never reads, a fractional grid, no range, too many steps.
  refused({"max_shrink=0.5"}, "imatrix_mse", "not 'max_shrink'");
  refused({"grid=20.5"}, "imatrix_mse", "whole number");
  refused({"expand=0"}, "imatrix_mse", "expand must be a finite positive number");
  refused({"grid=100"}, "imatrix_mse", "96 search steps; quench searches at most 32");
  refused({"strict=1"}, "imatrix_mse", "strict must be true or false");
  refused({"grid"}, "imatrix_mse", "KEY=VALUE");
  refused({"norm=abc"}, "imatrix_mse", "is not a number");
  refused({"grid=20", "grid=30"}, "imatrix_mse", "given twice");
  refused({"grid=20"}, "minmax", "the min-max observer takes none");
  // The limit itself: int(1.0 * 31) + 1 = 32 steps is taken.
  auto kw = ObserverKwargsFromArgs({"grid=31", "maxshrink=1.0"});
  REQUIRE(kw.ok());
  CHECK(ParseObserverKwargs("imatrix_mse", *kw, "").ok());
}

}  // namespace quench::testing
