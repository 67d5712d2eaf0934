// quench verify: every golden output (the reference's) and quench's own output verify clean
// against their sources; checkpoints with planted faults are each rejected by the right rule.
#include <doctest/doctest.h>

#include <cstring>
#include <functional>

#include "format/json.h"
#include "format/quant_config.h"
#include "quench/convert.h"
#include "schemes/float_formats.h"
#include "test_util.h"
#include "verify/verify.h"

namespace qt = quench::testing;
namespace fs = std::filesystem;
using quench::DType;

namespace {

struct Case {
  std::string name, source, expected;
};

std::vector<Case> GoldenCases() {
  const fs::path data = qt::DataDir();
  auto manifest = quench::ReadJsonFile((data / "golden/manifest.json").string());
  REQUIRE_MESSAGE(manifest.ok(), manifest.status().ToString());
  std::vector<Case> out;
  for (const auto& c : manifest->Find("cases")->as_array()) {
    out.push_back({c.Find("name")->as_string(), (data / c.Find("source")->as_string()).string(),
                   (data / c.Find("expected")->as_string()).string()});
  }
  return out;
}

quench::VerifyReport RunVerify(const fs::path& dst, std::optional<fs::path> src,
                               const std::string& prune = "", bool per_tensor = false) {
  quench::VerifyOptions o;
  o.dst = dst;
  o.src = std::move(src);
  if (!prune.empty()) {
    auto spec = quench::prune::ParsePruneSpec(prune);
    REQUIRE(spec.ok());
    o.prune = *spec;
    o.prune.per_tensor = per_tensor;
  }
  auto r = quench::Verify(o);
  REQUIRE_MESSAGE(r.ok(), r.status().ToString());
  return std::move(r).value();
}

std::string Problems(const quench::VerifyReport& r) {
  std::string s;
  for (const auto& p : r.problems) s += p.ToString() + "\n";
  return s;
}

bool Has(const quench::VerifyReport& r, const std::string& rule, const std::string& tensor) {
  for (const auto& p : r.problems) {
    if (p.rule == rule && p.tensor == tensor) return true;
  }
  return false;
}

// A writable copy of a golden output.
fs::path CopyGolden(const qt::TempDir& tmp, const std::string& name) {
  const fs::path dst = tmp / "dst";
  fs::copy(qt::DataDir() / "golden" / name, dst, fs::copy_options::recursive);
  for (const auto& e : fs::recursive_directory_iterator(dst)) {
    if (e.is_regular_file()) {
      fs::permissions(e.path(), fs::perms::owner_read | fs::perms::owner_write,
                      fs::perm_options::add);
    }
  }
  return dst;
}

// Every tensor of a folder, shard by shard, to edit and write back.
struct Editable {
  fs::path dir;
  std::map<std::string, std::vector<qt::RawTensor>> shards;  // rel name -> tensors

  explicit Editable(const fs::path& d) : dir(d) {
    auto folder = quench::LoadModelFolder(d);
    REQUIRE_MESSAGE(folder.ok(), folder.status().ToString());
    for (const auto& s : folder->shards) {
      const std::string bytes = qt::ReadBytes(s.path);
      auto& v = shards[s.rel_name];
      for (const auto& t : s.header.tensors) {
        v.push_back(
            {t.name, t.dtype, t.shape, bytes.substr(s.header.data_start + t.begin, t.nbytes())});
      }
    }
  }
  qt::RawTensor* Find(const std::string& name) {
    for (auto& [_, v] : shards) {
      for (auto& t : v) {
        if (t.name == name) return &t;
      }
    }
    FAIL("no tensor " << name);
    return nullptr;
  }
  void Remove(const std::string& name) {
    for (auto& [_, v] : shards) {
      std::erase_if(v, [&](const qt::RawTensor& t) { return t.name == name; });
    }
  }
  // Writes every shard and a consistent index (so that only the planted fault is wrong).
  void Save() {
    std::vector<std::pair<std::string, std::string>> wm;
    uint64_t total = 0;
    for (const auto& [rel, v] : shards) {
      qt::WriteShard(dir / rel, v);
      for (const auto& t : v) {
        wm.push_back({t.name, fs::path(rel).filename().string()});
        total += t.bytes.size();
      }
    }
    std::sort(wm.begin(), wm.end());
    for (const auto& e : fs::directory_iterator(dir)) {
      const std::string f = e.path().filename().string();
      if (f.ends_with("safetensors.index.json"))
        qt::WriteBytes(e.path(), quench::BuildIndexJson({wm.begin(), wm.end()}, total));
    }
  }
};

const char kQ[] = "model.layers.0.self_attn.q_proj";

// Applies `edit` to the weights arguments of every config group in dir/config.json.
void EditWeightArgs(const fs::path& dir, const std::function<void(quench::JsonValue&)>& edit) {
  auto cfg = quench::ReadJsonFile((dir / "config.json").string());
  REQUIRE(cfg.ok());
  quench::JsonValue qc = *cfg->Find("quantization_config");
  quench::JsonValue groups = *qc.Find("config_groups");
  for (auto& [key, g] : groups.as_object()) {
    quench::JsonValue w = *g.Find("weights");
    edit(w);
    g.Set("weights", std::move(w));
  }
  qc.Set("config_groups", std::move(groups));
  cfg->Set("quantization_config", std::move(qc));
  qt::WriteBytes(dir / "config.json", quench::DumpPythonJson(*cfg));
}

// The bundled checkpoint converted into tmp/out with `scheme` and pruning `prune`.
fs::path ConvertPruned(const qt::TempDir& tmp, const std::string& scheme, const std::string& prune,
                       bool per_tensor = false, std::vector<std::string> ignore = {}) {
  quench::ConvertOptions o;
  o.src = qt::DataDir() / "tiny-llama";
  o.dst = tmp / "out";
  o.scheme = scheme;
  o.prune = prune;
  o.prune_granularity = per_tensor ? "tensor" : "row";
  o.ignore = std::move(ignore);
  auto s = quench::Convert(o);
  REQUIRE_MESSAGE(s.ok(), s.status().ToString());
  return o.dst;
}

}  // namespace

TEST_SUITE("verify") {
  TEST_CASE("every golden output verifies against its source, and alone") {
    const auto cases = GoldenCases();
    REQUIRE(cases.size() >= 60);
    for (const Case& c : cases) {
      CAPTURE(c.name);
      const auto with_src = RunVerify(c.expected, fs::path(c.source));
      CHECK_MESSAGE(with_src.ok(), Problems(with_src));
      CHECK(with_src.modules_quantized > 0);
      CHECK(with_src.quality.size() == with_src.modules_quantized);
      for (const auto& q : with_src.quality) {
        CAPTURE(q.module);
        CHECK(q.worst_bound_ratio <= 0.75);  // round-to-nearest: about half the bound (max 0.57)
        CHECK(q.sqnr_db >= q.threshold_db);
      }
      const auto alone = RunVerify(c.expected, std::nullopt);
      CHECK_MESSAGE(alone.ok(), Problems(alone));
      CHECK(alone.modules_quantized == with_src.modules_quantized);
    }
  }

  TEST_CASE("quench's own output verifies, default ignores included") {
    for (const char* scheme : {"FP8_DYNAMIC", "W4A16_ASYM", "NVFP4A16", "MXFP4A16"}) {
      CAPTURE(scheme);
      qt::TempDir tmp;
      quench::ConvertOptions o;
      o.src = qt::DataDir() / "tiny-llama";
      o.dst = tmp / "out";
      o.scheme = scheme;
      if (std::string(scheme) == "W4A16_ASYM") o.ignore = {"re:.*down_proj$"};
      auto s = quench::Convert(o);
      REQUIRE_MESSAGE(s.ok(), s.status().ToString());
      const auto r = RunVerify(o.dst, o.src);
      CHECK_MESSAGE(r.ok(), Problems(r));
      CHECK(r.modules_quantized >= 12);
    }
  }

  TEST_CASE("planted faults are each rejected by the right rule") {
    const fs::path src = qt::DataDir() / "tiny-llama";
    const std::string q = kQ;

    SUBCASE("wrong dtype of a scale") {
      qt::TempDir tmp;
      Editable e(CopyGolden(tmp, "tiny-llama/FP8_DYNAMIC"));
      qt::RawTensor* s = e.Find(q + ".weight_scale");
      std::string f32;
      for (size_t i = 0; i < s->bytes.size(); i += 2) {
        const float v = qt::DecodeBF16(reinterpret_cast<const uint8_t*>(s->bytes.data() + i));
        f32.append(reinterpret_cast<const char*>(&v), 4);
      }
      s->dtype = DType::kF32;
      s->bytes = f32;
      e.Save();
      const auto r = RunVerify(e.dir, src);
      CHECK_MESSAGE(Has(r, "dtype", q + ".weight_scale"), Problems(r));
      CHECK_MESSAGE(Has(RunVerify(e.dir, std::nullopt), "dtype", q + ".weight_scale") == false,
                    "without SRC any float scale dtype is accepted");
    }
    SUBCASE("a tensor missing from the index's weight_map, and a wrong total_size") {
      qt::TempDir tmp;
      Editable e(CopyGolden(tmp, "tiny-llama/FP8_DYNAMIC"));
      e.Save();
      // The index again without q's weight_scale, and its total_size one byte off.
      std::vector<std::pair<std::string, std::string>> wm;
      uint64_t total = 0;
      for (const auto& [rel, v] : e.shards) {
        for (const auto& t : v) {
          total += t.bytes.size();
          if (t.name != q + ".weight_scale") {
            wm.push_back({t.name, fs::path(rel).filename().string()});
          }
        }
      }
      std::sort(wm.begin(), wm.end());
      for (const auto& f : fs::directory_iterator(e.dir)) {
        if (f.path().filename().string().ends_with("safetensors.index.json")) {
          qt::WriteBytes(f.path(), quench::BuildIndexJson({wm.begin(), wm.end()}, total + 1));
        }
      }
      for (const auto& r : {RunVerify(e.dir, src), RunVerify(e.dir, std::nullopt)}) {
        CHECK_MESSAGE(Has(r, "index", q + ".weight_scale"), Problems(r));
        CHECK_MESSAGE(Has(r, "index", ""), Problems(r));  // the total
        CHECK_FALSE(Has(r, "index", q + ".weight"));
      }
    }
    SUBCASE("a config group's strategy 'block' without its block_structure, or on NVFP4 / MX") {
      // (Divided by the missing block sizes: SIGFPE, found mutating DST configs; NVFP4 and MX
      // scales were indexed by a block strategy their format does not have.) A config
      // problem where the config is inconsistent, and for W4A16 each module's scale against
      // the shape blocks would give.
      for (const char* golden :
           {"tiny-llama/W4A16", "tiny-llama/NVFP4A16", "tiny-llama/MXFP4A16"}) {
        for (const bool sized : {false, true}) {
          CAPTURE(golden);
          CAPTURE(sized);
          qt::TempDir tmp;
          Editable e(CopyGolden(tmp, golden));
          e.Save();
          EditWeightArgs(e.dir, [&](quench::JsonValue& w) {
            w.Set("strategy", std::string("block"));
            if (sized) {
              w.Set("block_structure",
                    quench::JsonValue(quench::JsonValue::Array{quench::JsonValue(uint64_t{1}),
                                                               quench::JsonValue(uint64_t{1})}));
            }
          });
          // (int4 in blocks of 1 x 1 is a consistent config: only its scales are wrong.)
          const bool int4 = std::string(golden) == "tiny-llama/W4A16";
          for (const auto& r : {RunVerify(e.dir, src), RunVerify(e.dir, std::nullopt)}) {
            CHECK_MESSAGE(Has(r, "config", "") == !(int4 && sized), Problems(r));
            if (int4) CHECK_MESSAGE(Has(r, "shape", q + ".weight_scale"), Problems(r));
          }
        }
      }
    }
    SUBCASE("num_bits beyond any format's, as large as 2^31") {
      // (Read into an int: 2^31 wrapped to -2^31, and the int grid's ends overflowed, found
      // by scripts/fuzz-outputs under UBSan.) A config problem; the values are not decoded
      // against arguments that do not fit the format.
      for (const uint64_t bits : {uint64_t{16}, uint64_t{1} << 31}) {
        CAPTURE(bits);
        qt::TempDir tmp;
        Editable e(CopyGolden(tmp, "tiny-llama/W8A8"));
        e.Save();
        EditWeightArgs(e.dir, [&](quench::JsonValue& w) { w.Set("num_bits", bits); });
        for (const auto& r : {RunVerify(e.dir, src), RunVerify(e.dir, std::nullopt)}) {
          CHECK_MESSAGE(Has(r, "config", ""), Problems(r));
        }
      }
    }
    SUBCASE("wrong shape") {
      qt::TempDir tmp;
      Editable e(CopyGolden(tmp, "tiny-llama/FP8_DYNAMIC"));
      qt::RawTensor* s = e.Find(q + ".weight_scale");
      s->shape = {1, s->shape[0]};
      e.Save();
      CHECK(Has(RunVerify(e.dir, src), "shape", q + ".weight_scale"));
      CHECK(Has(RunVerify(e.dir, std::nullopt), "shape", q + ".weight_scale"));
    }
    SUBCASE("missing weight_scale") {
      qt::TempDir tmp;
      Editable e(CopyGolden(tmp, "tiny-llama/W8A8"));
      e.Remove(q + ".weight_scale");
      e.Save();
      CHECK(Has(RunVerify(e.dir, src), "missing", q + ".weight_scale"));
      CHECK(Has(RunVerify(e.dir, std::nullopt), "missing", q + ".weight_scale"));
    }
    SUBCASE("extra tensor") {
      qt::TempDir tmp;
      Editable e(CopyGolden(tmp, "tiny-llama/W4A16"));
      e.shards.begin()->second.push_back(
          {"model.extra_buffer", DType::kF32, {1}, std::string(4, '\0')});
      // A zero point on a symmetric scheme is extra even without the source.
      e.shards.begin()->second.push_back(
          {q + ".weight_zero_point", DType::kI32, {1, 1}, std::string(4, '\0')});
      e.Save();
      const auto r = RunVerify(e.dir, src);
      CHECK_MESSAGE(Has(r, "extra", "model.extra_buffer"), Problems(r));
      CHECK(Has(r, "extra", q + ".weight_zero_point"));
      CHECK(Has(RunVerify(e.dir, std::nullopt), "extra", q + ".weight_zero_point"));
    }
    SUBCASE("a source tensor missing") {
      qt::TempDir tmp;
      Editable e(CopyGolden(tmp, "tiny-llama/NVFP4A16"));
      e.Remove("model.norm.weight");
      e.Save();
      const auto r = RunVerify(e.dir, src);
      CHECK_MESSAGE(Has(r, "missing", "model.norm.weight"), Problems(r));
    }
    SUBCASE("a copied tensor changed by one byte") {
      qt::TempDir tmp;
      Editable e(CopyGolden(tmp, "tiny-llama/MXFP8A16"));
      e.Find("model.embed_tokens.weight")->bytes[1001] ^= 0x01;
      e.Save();
      const auto r = RunVerify(e.dir, src);
      CHECK_MESSAGE(Has(r, "changed", "model.embed_tokens.weight"), Problems(r));
      CHECK(r.problems.size() == 1);
    }
    SUBCASE("a quantized weight with one code flipped to a far value") {
      // One element in a tensor of 65k barely moves the SQNR; the hard bound catches it.
      struct Flip {
        const char* golden;
        std::string tensor;
        size_t byte;
        uint8_t value;
      };
      for (const Flip& f : {Flip{"tiny-llama/FP8_DYNAMIC", q + ".weight", 7, 0},
                            Flip{"tiny-llama/MXFP8A16", q + ".weight", 7, 0},
                            Flip{"tiny-llama/W8A8", q + ".weight", 7, 0},
                            Flip{"tiny-llama/W4A16", q + ".weight_packed", 7, 0},
                            Flip{"tiny-llama/W4A16_ASYM", q + ".weight_packed", 7, 0},
                            Flip{"tiny-llama/NVFP4A16", q + ".weight_packed", 7, 0},
                            Flip{"tiny-llama/MXFP4A16", q + ".weight_packed", 7, 0}}) {
        CAPTURE(f.golden);
        qt::TempDir tmp;
        Editable e(CopyGolden(tmp, f.golden));
        qt::RawTensor* t = e.Find(f.tensor);
        // Far value: the opposite end of the grid from the element's current code.
        uint8_t& b = reinterpret_cast<uint8_t&>(t->bytes[f.byte]);
        const std::string g = f.golden;
        if (g.ends_with("FP8_DYNAMIC") || g.ends_with("MXFP8A16")) {
          b = (b & 0x80) ? 0x7E : 0xFE;  // +-448
        } else if (g.ends_with("W8A8")) {
          b = static_cast<int8_t>(b) < 0 ? 127 : 0x80;  // +127 / -128
        } else if (g.find("W4A16") != std::string::npos) {
          b ^= 0x80;  // int4: high nibble +-8 (opposite half of the range)
        } else {
          b = static_cast<uint8_t>((b & 0x0F) | (((b >> 4) & 8) ? 0x70 : 0xF0));  // FP4: +-6
        }
        e.Save();
        const auto r = RunVerify(e.dir, src);
        CHECK_MESSAGE(Has(r, "error-bound", f.tensor), Problems(r));
        CHECK_FALSE(Has(r, "sqnr", f.tensor));
      }
    }
    SUBCASE("a scale scaled by 2") {
      for (const char* golden : {"tiny-llama/W8A8", "tiny-llama/FP8_BLOCK", "tiny-llama/W4A16"}) {
        CAPTURE(golden);
        qt::TempDir tmp;
        Editable e(CopyGolden(tmp, golden));
        qt::RawTensor* s = e.Find(q + ".weight_scale");
        for (size_t i = 0; i < s->bytes.size(); i += 2) {
          uint16_t h;
          std::memcpy(&h, s->bytes.data() + i, 2);
          h = static_cast<uint16_t>(h + 0x80);  // bf16 exponent + 1 = x2
          std::memcpy(s->bytes.data() + i, &h, 2);
        }
        e.Save();
        const auto r = RunVerify(e.dir, src);
        CHECK_MESSAGE(
            Has(r, "sqnr",
                q + (std::string(golden).ends_with("W4A16") ? ".weight_packed" : ".weight")),
            Problems(r));
      }
    }
    SUBCASE("NVFP4 fused members with different global scales") {
      qt::TempDir tmp;
      Editable e(CopyGolden(tmp, "tiny-llama/NVFP4A16"));
      qt::RawTensor* g = e.Find("model.layers.1.mlp.up_proj.weight_global_scale");
      float v;
      std::memcpy(&v, g->bytes.data(), 4);
      v *= 2;
      std::memcpy(g->bytes.data(), &v, 4);
      e.Save();
      const auto r = RunVerify(e.dir, std::nullopt);
      CHECK_MESSAGE(
          Has(r, "fused-global-scale", "model.layers.1.mlp.gate_proj.weight_global_scale"),
          Problems(r));
      CHECK(r.problems.size() == 1);
    }
    SUBCASE("weight_shape contents wrong") {
      qt::TempDir tmp;
      Editable e(CopyGolden(tmp, "tiny-llama/W4A16"));
      qt::RawTensor* s = e.Find(q + ".weight_shape");
      int64_t in;
      std::memcpy(&in, s->bytes.data() + 8, 8);
      in += 8;
      std::memcpy(s->bytes.data() + 8, &in, 8);
      e.Save();
      CHECK(Has(RunVerify(e.dir, src), "weight-shape", q + ".weight_shape"));
      const auto alone = RunVerify(e.dir, std::nullopt);
      CHECK_MESSAGE(Has(alone, "weight-shape", q + ".weight_shape"), Problems(alone));
    }
    SUBCASE("a quantized tensor the config does not select") {
      qt::TempDir tmp;
      const fs::path dst = CopyGolden(tmp, "tiny-llama/FP8_DYNAMIC");
      auto cfg = quench::ReadJsonFile((dst / "config.json").string());
      REQUIRE(cfg.ok());
      quench::JsonValue qc = *cfg->Find("quantization_config");
      quench::JsonValue ignore = *qc.Find("ignore");
      ignore.Push(quench::JsonValue(q));
      qc.Set("ignore", ignore);
      cfg->Set("quantization_config", qc);
      qt::WriteBytes(dst / "config.json", quench::DumpPythonJson(*cfg));
      for (auto s : {std::optional<fs::path>(src), std::optional<fs::path>()}) {
        const auto r = RunVerify(dst, s);
        CHECK_MESSAGE(Has(r, "not-selected", q), Problems(r));
      }
    }
    SUBCASE("a selected module stored unquantized") {
      qt::TempDir tmp;
      Editable e(CopyGolden(tmp, "tiny-llama/FP8_DYNAMIC"));
      e.Remove(q + ".weight_scale");
      *e.Find(q + ".weight") = [&] {
        Editable s(src);
        return *s.Find(q + ".weight");
      }();
      e.Save();
      CHECK(Has(RunVerify(e.dir, src), "not-quantized", q + ".weight"));
    }
    SUBCASE("truncated shard") {
      qt::TempDir tmp;
      const fs::path dst = CopyGolden(tmp, "tiny-llama/W4A16");
      const fs::path shard = dst / "model-00002-of-00002.safetensors";
      fs::resize_file(shard, fs::file_size(shard) - 100);
      const auto r = RunVerify(dst, src);
      REQUIRE(r.problems.size() == 1);
      CHECK(r.problems[0].rule == "safetensors");
      CHECK(r.problems[0].message.find("model-00002-of-00002.safetensors") != std::string::npos);
    }
  }

  TEST_CASE("--prune: pruned outputs verify; unpruned, wrongly pruned and planted ones do not") {
    const fs::path src = qt::DataDir() / "tiny-llama";
    struct PCase {
      const char* scheme;
      const char* prune;
      bool per_tensor;
    };
    for (const PCase& c : {PCase{"W8A8", "2:4", false}, PCase{"NVFP4A16", "2:4", false},
                           PCase{"W4A16_ASYM", "2:4", false},
                           PCase{"FP8_DYNAMIC", "unstructured:0.4", true},
                           PCase{"MXFP4A16", "unstructured:0.5", false}}) {
      CAPTURE(c.scheme);
      CAPTURE(c.prune);
      qt::TempDir tmp;
      std::vector<std::string> ignore;
      if (std::string(c.scheme) == "W4A16_ASYM") ignore = {"re:.*down_proj$"};
      const fs::path dst = ConvertPruned(tmp, c.scheme, c.prune, c.per_tensor, ignore);
      const auto with_src = RunVerify(dst, src, c.prune, c.per_tensor);
      CHECK_MESSAGE(with_src.ok(), Problems(with_src));
      CHECK(with_src.quality.size() >= 12);
      const auto alone = RunVerify(dst, std::nullopt, c.prune, c.per_tensor);
      CHECK_MESSAGE(alone.ok(), Problems(alone));
      // Without --prune the pruned weights are far from the source: the option is needed.
      CHECK_FALSE(RunVerify(dst, src).ok());
    }

    SUBCASE("an unpruned output is not 2:4") {
      const fs::path dst = qt::DataDir() / "golden/tiny-llama/W8A8";
      const std::string w = std::string(kQ) + ".weight";
      CHECK(Has(RunVerify(dst, std::nullopt, "2:4"), "sparsity", w));
      CHECK(Has(RunVerify(dst, src, "2:4"), "pruned", w));
    }
    SUBCASE("an element pruned in the source but not zero in DST") {
      qt::TempDir tmp;
      const fs::path dst = ConvertPruned(tmp, "FP8_DYNAMIC", "2:4");
      Editable e(dst);
      // Columns 0..3 of row 0 keep two elements; give both pruned ones (code 0) the code 0x38
      // (E4M3 1.0), so the group has no zero left.
      qt::RawTensor* w = e.Find(std::string(kQ) + ".weight");
      int planted = 0;
      for (int j = 0; j < 4; ++j) {
        if (w->bytes[j] == 0) {
          w->bytes[j] = 0x38;
          ++planted;
        }
      }
      REQUIRE(planted == 2);
      e.Save();
      CHECK(Has(RunVerify(dst, src, "2:4"), "pruned", std::string(kQ) + ".weight"));
      CHECK(Has(RunVerify(dst, std::nullopt, "2:4"), "sparsity", std::string(kQ) + ".weight"));
    }
    SUBCASE("pruning alone: each tensor is the source, pruned or not") {
      qt::TempDir tmp;
      const fs::path dst = ConvertPruned(tmp, "none", "2:4");
      const auto r = RunVerify(dst, src, "2:4");
      CHECK_MESSAGE(r.ok(), Problems(r));
      CHECK(r.tensors_pruned == 14);  // 2 layers x (q, k, v, o, gate, up, down)
      CHECK(r.tensors_copied + r.tensors_pruned == 21);
      CHECK(Has(RunVerify(dst, src, "1:4"), "changed", std::string(kQ) + ".weight"));
      const auto alone = RunVerify(dst, std::nullopt, "2:4");
      CHECK_FALSE(alone.ok());
      CHECK(alone.problems.size() == 1);
      CHECK(alone.problems[0].rule == "config");
    }
    SUBCASE("command line") {
      qt::TempDir tmp;
      auto conv = qt::RunQuench({"convert", src.string(), (tmp / "out").string(), "--scheme",
                                 "W8A8", "--prune", "unstructured:0.5", "--prune-granularity",
                                 "tensor", "-q"});
      REQUIRE_MESSAGE(conv.exit_code == 0, conv.err);
      const std::string dst = (tmp / "out").string();
      auto ok = qt::RunQuench({"verify", dst, src.string(), "--prune", "unstructured:0.5",
                               "--prune-granularity", "tensor", "-q"});
      CHECK_MESSAGE(ok.exit_code == 0, ok.out << ok.err);
      // Per row is a different selection from per tensor.
      CHECK(qt::RunQuench({"verify", dst, src.string(), "--prune", "unstructured:0.5", "-q"})
                .exit_code == 3);
      CHECK(qt::RunQuench({"verify", dst, "--prune-granularity", "tensor"}).exit_code == 2);
      CHECK(qt::RunQuench({"verify", dst, "--prune", "5:4"}).exit_code == 2);
      CHECK(qt::RunQuench({"verify", dst, "--prune"}).exit_code == 2);
    }
  }

  // Expert pruning alone (scheme none: no quantization_config) keeps every survivor's bytes,
  // fused 3-D stacks whole: verify with SRC compares each tensor with the source as pruned.
  // The reference's own outputs (compressed-tensors' MagnitudeExpertPruner) must pass; a kept
  // expert with one byte changed must not. (Verify once refused every such folder for its
  // missing quantization_config; found by scripts/fuzz-convert --verify.)
  TEST_CASE(
      "expert pruning alone: the reference's outputs verify against SRC, a changed byte does not") {
    auto manifest =
        quench::ReadJsonFile((qt::DataDir() / "golden/expert_prune_manifest.json").string());
    REQUIRE(manifest.ok());
    size_t cases = 0;
    for (const quench::JsonValue& c : manifest->Find("cases")->as_array()) {
      if (c.Find("scheme")->as_string() != "none") continue;
      const std::string name = c.Find("name")->as_string();
      CAPTURE(name);
      ++cases;
      const fs::path src = qt::DataDir() / c.Find("source")->as_string();
      const fs::path expected = qt::DataDir() / c.Find("expected")->as_string();
      const auto clean = RunVerify(expected, src);
      CHECK_MESSAGE(clean.ok(), Problems(clean));
      CHECK(clean.quality.empty());  // nothing quantized
      // One byte of the first kept expert tensor changed in a copy.
      qt::TempDir tmp;
      const fs::path dst = tmp / "dst";
      fs::copy(expected, dst, fs::copy_options::recursive);
      std::string changed;
      for (const auto& [rel, l] : qt::LoadAll(dst)) {
        for (const quench::TensorInfo& t : l.shard.header.tensors) {
          if (!changed.empty() || t.name.find(".experts.") == std::string::npos) continue;
          std::string bytes = qt::ReadBytes(dst / rel);
          bytes[l.shard.header.data_start + t.begin + 1] ^= 0x10;
          qt::WriteBytes(dst / rel, bytes);
          changed = t.name;
        }
      }
      REQUIRE(!changed.empty());
      const auto bad = RunVerify(dst, src);
      CHECK(!bad.ok());
      CHECK(Has(bad, "changed", changed));
    }
    CHECK(cases >= 5);
  }

  // Routers quantized too (--no-default-ignore): with every expert kept, the router is a
  // quantized module like any other (it was taken for a pruned router with wrong rows); with
  // experts pruned, which ones were kept cannot be told from quantized rows, which verify says
  // (found by scripts/fuzz-convert --verify).
  TEST_CASE("quantized routers: all experts kept verify; pruned ones are refused with SRC") {
    const fs::path src = qt::DataDir() / "golden/xprune-2d/src";
    qt::TempDir tmp;
    auto r = qt::RunQuench({"convert", src.string(), (tmp / "all").string(), "-q", "--scheme",
                            "FP8_DYNAMIC", "--no-default-ignore"});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    const auto all = RunVerify(tmp / "all", src);
    CHECK_MESSAGE(all.ok(), Problems(all));
    // quench refuses to quantize a router it slices; a pruned model quantized afterwards
    // (experts pruned alone, then converted with its routers) is such an output.
    r = qt::RunQuench({"convert", src.string(), (tmp / "bf16").string(), "-q", "--scheme",
                       "none", "--prune-experts", "0.5"});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    r = qt::RunQuench({"convert", (tmp / "bf16").string(), (tmp / "pruned").string(), "-q",
                       "--scheme", "FP8_DYNAMIC", "--no-default-ignore"});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    auto v = qt::RunQuench({"verify", (tmp / "pruned").string(), src.string()});
    CHECK(v.exit_code == 3);
    CHECK(v.err.find("quench: error: verify: unsupported: router 'model.layers.0.mlp.gate.weight' "
                     "keeps 4 of SRC's 8 experts but is F8_E4M3") != std::string::npos);
    const auto alone = RunVerify(tmp / "pruned", std::nullopt);
    CHECK_MESSAGE(alone.ok(), Problems(alone));
  }

  // A source tensor whose name only looks like a quantized one (a BF16 "X.weight_packed",
  // with no X.weight) is copied; with SRC, verify sees the copy instead of a module whose
  // quantized weight is missing (found by scripts/fuzz-convert --verify).
  TEST_CASE("a copied tensor named like a packed weight is a copy, not a missing module") {
    qt::TempDir tmp;
    std::vector<float> w(64 * 64);
    for (size_t i = 0; i < w.size(); ++i) w[i] = 0.01f * static_cast<float>(i % 41) - 0.2f;
    qt::WriteShard(tmp / "src/model.safetensors",
                   {{"model.layers.0.mlp.up_proj.weight", DType::kBF16, {64, 64}, qt::Bf16Bytes(w)},
                    {"model.layers.0.mlp.down_proj.weight_packed", DType::kBF16, {64, 64},
                     qt::Bf16Bytes(w)}});
    qt::WriteBytes(tmp / "src/config.json", "{\"architectures\": [\"LlamaForCausalLM\"]}");
    auto r = qt::RunQuench({"convert", (tmp / "src").string(), (tmp / "dst").string(), "-q",
                            "--scheme", "FP8_DYNAMIC"});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    const auto v = RunVerify(tmp / "dst", tmp / "src");
    CHECK_MESSAGE(v.ok(), Problems(v));
    CHECK(v.quality.size() == 1);  // up_proj
  }

  TEST_CASE("quench verify: exit codes, one line per problem, --json") {
    const fs::path src = qt::DataDir() / "tiny-llama";
    const fs::path good = qt::DataDir() / "golden/tiny-llama/W4A16";
    auto ok = qt::RunQuench({"verify", good.string(), src.string()});
    CHECK_MESSAGE(ok.exit_code == 0, ok.out << ok.err);
    CHECK(ok.out.find("worst tensors") != std::string::npos);
    CHECK(ok.out.find("OK: 2 shard(s)") != std::string::npos);

    qt::TempDir tmp;
    Editable e(CopyGolden(tmp, "tiny-llama/W4A16"));
    e.Remove(std::string(kQ) + ".weight_scale");
    e.Find("model.embed_tokens.weight")->bytes[0] ^= 1;
    e.Save();
    auto bad = qt::RunQuench({"verify", e.dir.string(), src.string()});
    CHECK(bad.exit_code == 3);
    CHECK(bad.out.find("tensor 'model.layers.0.self_attn.q_proj.weight_scale': missing: ") !=
          std::string::npos);
    CHECK(bad.out.find("tensor 'model.embed_tokens.weight': changed: ") != std::string::npos);
    CHECK(bad.out.find("INVALID:") != std::string::npos);

    auto js = qt::RunQuench({"verify", e.dir.string(), src.string(), "--json"});
    CHECK(js.exit_code == 3);
    auto j = quench::ParseJson("stdout", js.out);
    REQUIRE_MESSAGE(j.ok(), js.out);
    CHECK(j->Find("ok")->as_bool() == false);
    CHECK(j->Find("problems")->as_array().size() == 2);
    CHECK(j->Find("tensors")->as_array().size() == 11);

    CHECK(qt::RunQuench({"verify"}).exit_code == 2);
    CHECK(qt::RunQuench({"verify", (tmp / "nope").string()}).exit_code == 3);
  }

  TEST_CASE("quench verify's command line: --worst, -q, and each usage error's message") {
    const std::string src = (qt::DataDir() / "tiny-llama").string();
    const std::string good = (qt::DataDir() / "golden/tiny-llama/W4A16").string();
    // The table lists as many tensors as --worst asks (the checkpoint has 12 quantized), -q
    // and --worst=0 leave only the summary line.
    auto count_rows = [](const std::string& out) {
      size_t rows = 0;
      for (size_t at = 0; (at = out.find(" dB  (min ", at)) != std::string::npos; ++at) ++rows;
      return rows;
    };
    const std::string summary =
        "OK: 2 shard(s), 45 tensors, 12 quantized modules, 9 copied tensors unchanged, "
        "4000256 source bytes compared, 0 problem(s)\n";
    auto three = qt::RunQuench({"verify", good, src, "--worst", "3"});
    CHECK(three.exit_code == 0);
    CHECK(count_rows(three.out) == 3);
    CHECK(three.out.find("SQNR over 12 tensors: min ") != std::string::npos);
    CHECK(count_rows(qt::RunQuench({"verify", good, src}).out) == 10);  // the default
    CHECK(qt::RunQuench({"verify", good, src, "-q"}).out == summary);
    CHECK(qt::RunQuench({"verify", good, src, "--worst=0"}).out == summary);
    // Usage errors: exit 2, nothing on stdout, one message naming the flag (verify's name
    // the command before the category: main.cc ReportError).
    const std::pair<std::vector<std::string>, std::string> cases[] = {
        {{good, "--worst"}, "--worst needs a value"},
        {{good, "--worst", "three"}, "--worst takes a count"},
        {{good, "--stats"}, "--stats needs a value"},
        {{good, "--prune"}, "--prune needs a value"},
        {{good, "--algorithm"}, "--algorithm needs a value"},
        {{good, "--frobnicate"}, "unknown option '--frobnicate'"},
        {{good, src, src}, "expected DST [SRC]"},
        {{good, "--prune-granularity", "tensor"}, "--prune-granularity needs --prune"},
        {{good, "--algorithm", "obs"}, "--algorithm is magnitude or sparsegpt, not 'obs'"},
        {{good, "--algorithm", "sparsegpt"},
         "--algorithm sparsegpt needs --prune SPEC (what DST was pruned to)"},
        {{good, "--prune", "unstructured:0.5", "--prune-granularity", "tensor", "--algorithm",
          "sparsegpt"},
         "SparseGPT prunes per block of columns, not per tensor"},
        {{good, "--prune", "2:4", "--algorithm", "sparsegpt", "--gptq-block-size", "0"},
         "--gptq-block-size takes a count > 0"},
        {{good, "--stats", src},
         "verify --stats needs SRC, the checkpoint DST was made from (the scales are planned "
         "again from it and the statistics)"},
    };
    for (const auto& [args, message] : cases) {
      std::vector<std::string> argv = {"verify"};
      argv.insert(argv.end(), args.begin(), args.end());
      auto r = qt::RunQuench(argv);
      CHECK_MESSAGE(r.exit_code == 2, message);
      CHECK_MESSAGE(r.out.empty(), message);
      CHECK_MESSAGE(r.err.find("quench: error: verify: usage: " + message) != std::string::npos,
                    r.err);
    }
  }
}
