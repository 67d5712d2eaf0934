// AutoAWQ GEMM and ModelOpt NVFP4 sources end to end. Expected bytes come from the pinned
// reference (scripts/make_golden_quant_sources.py, data/golden/quant_sources_manifest.json):
//   - <src>/W4A16_ASYM, <src>/NVFP4: compressed-tensors' AutoAWQConverter and
//     ModelOptNvfp4Converter (the lossless repack: quench --scheme equal to the source's own);
//   - <src>/BF16: CompressedTensorsDequantizer(dtype=bfloat16) of that repack (the decoded
//     model, quench --scheme BF16);
//   - <src>/FP8_DYNAMIC, W8A8: model_free_ptq of that BF16 checkpoint (quench decoding chunk
//     by chunk inside the pipeline and quantizing again);
//   - mokvsrc: ModelOpt NVFP4 with an FP8 KV cache (k_proj.k_scale, v_proj.v_scale): the
//     converter given kv_cache_scheme (scales cast to BF16, kv_cache_scheme written), and its
//     dequantized model (KV scales dropped).
#include <doctest/doctest.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "format/json.h"
#include "format/quant_config.h"
#include "quench/convert.h"
#include "source_cases.h"
#include "test_util.h"

namespace quench::testing {
namespace {

std::vector<GoldenCase> Cases() { return GoldenCases("quant_sources_manifest.json"); }

TEST_SUITE("quant_sources") {
  TEST_CASE("AutoAWQ and ModelOpt NVFP4: repack, decode and requantize equal the reference") {
    const std::vector<GoldenCase> cases = Cases();
    REQUIRE(cases.size() == 8);
    for (const GoldenCase& g : cases) {
      // The default chunks, and chunks of a few rows (each weight decoded or repacked in
      // many pieces, scales read with their rows).
      for (uint64_t chunk : {uint64_t{0}, uint64_t{1}}) {
        CAPTURE(g.name);
        CAPTURE(chunk);
        TempDir tmp;
        auto r = ConvertSource(g.source, tmp / "out", g.scheme, g.ignore, chunk);
        REQUIRE_MESSAGE(r.ok(), r.status().message());
        CheckSameFiles(g.expected, tmp / "out");
      }
    }
  }

  TEST_CASE("ModelOpt NVFP4 -> NVFP4A16: the same repack without the activation scales") {
    TempDir tmp;
    const fs::path want = DataDir() / "golden" / "mosrc" / "NVFP4";
    auto r = ConvertSource(DataDir() / "golden" / "mosrc" / "src", tmp / "out", "NVFP4A16", {});
    REQUIRE_MESSAGE(r.ok(), r.status().message());
    const auto w = LoadAll(want), got = LoadAll(tmp / "out");
    size_t n_want = 0, n_got = 0;
    for (const auto& [_, l] : got) n_got += l.shard.header.tensors.size();
    for (const auto& [_, l] : w) {
      for (const TensorInfo& t : l.shard.header.tensors) {
        CAPTURE(t.name);
        auto [gl, gt] = FindTensor(got, t.name);
        if (t.name.ends_with(".input_global_scale")) {
          CHECK(gt == nullptr);
          continue;
        }
        ++n_want;
        REQUIRE(gt != nullptr);
        CHECK(gt->dtype == t.dtype);
        CHECK(gt->shape == t.shape);
        CHECK(Bytes(*gl, *gt) == Bytes(l, t));
      }
    }
    CHECK(n_got == n_want);
    auto cfg = ReadJsonFile((tmp / "out" / "config.json").string());
    REQUIRE(cfg.ok());
    const JsonValue* q = cfg->Find("quantization_config");
    REQUIRE(q != nullptr);
    const JsonValue* g = q->Find("config_groups")->Find("config_group_0");
    REQUIRE(g != nullptr);
    CHECK(g->Find("input_activations")->is_null());
    CHECK(g->Find("format")->as_string() == "nvfp4-pack-quantized");
    CHECK(q->Find("ignore")->as_array().size() == 3);  // exclude_modules, as written
  }

  TEST_CASE("other group sizes and NVFP4A16 (fused global scales) decode and requantize") {
    // The decoded BF16 model (the reference's, golden BF16/) quantized by quench's plain path
    // (golden-tested elsewhere) is what decoding inside the pipeline must give: W4A16_ASYM with
    // group 16 on the group-32 AWQ source, and NVFP4A16 (the pre-pass reads decoded rows for
    // the q/k/v and gate/up global scales) from both sources.
    struct Case { const char* src; const char* scheme; std::optional<int> group; };
    for (const Case& c : {Case{"awqsrc", "W4A16_ASYM", 16}, Case{"awqsrc", "NVFP4A16", {}},
                          Case{"mosrc", "W4A16_ASYM", 16}}) {
    CAPTURE(c.src);
    CAPTURE(c.scheme);
    TempDir tmp;
    const fs::path src = DataDir() / "golden" / c.src / "src";
    auto r = ConvertSource(src, tmp / "a", c.scheme, {}, 1, c.group);
    REQUIRE_MESSAGE(r.ok(), r.status().message());
    auto p = ConvertSource(DataDir() / "golden" / c.src / "BF16", tmp / "b", c.scheme, {}, 0,
                           c.group);
    REQUIRE_MESSAGE(p.ok(), p.status().message());
    const auto a = LoadAll(tmp / "a"), b = LoadAll(tmp / "b");
    size_t n = 0;
    for (const auto& [_, l] : b) {
      for (const TensorInfo& t : l.shard.header.tensors) {
        CAPTURE(t.name);
        auto [al, at] = FindTensor(a, t.name);
        REQUIRE(at != nullptr);
        CHECK(Bytes(*al, *at) == Bytes(l, t));
        ++n;
      }
    }
    CHECK(n > 0);
    CHECK(ReadBytes(tmp / "a" / "config.json") == ReadBytes(tmp / "b" / "config.json"));
    }
  }

  TEST_CASE("inspect and --dry-run say what the source is and what happens to it") {
    TempDir tmp;
    auto i = RunQuench({"inspect", (DataDir() / "golden" / "awqsrc" / "src").string()});
    CHECK(i.exit_code == 0);
    CHECK(i.out.find("AutoAWQ GEMM int4, group 32, zero points, F16 scales, 13 weights") !=
          std::string::npos);
    auto kv = RunQuench({"inspect", (DataDir() / "golden" / "mokvsrc" / "src").string()});
    CHECK(kv.exit_code == 0);
    CHECK(kv.out.find("13 weights, FP8 KV cache (4 k/v scales)") != std::string::npos);
    auto d = RunQuench({"convert", (DataDir() / "golden" / "mosrc" / "src").string(),
                        (tmp / "out").string(), "--scheme", "NVFP4", "--dry-run"});
    CHECK(d.exit_code == 0);
    // Notes go to stderr, the plan to stdout.
    CHECK(d.err.find("ModelOpt NVFP4") != std::string::npos);
    CHECK(d.err.find("repacked losslessly into NVFP4") != std::string::npos);
    CHECK(d.out.find("inverted (ModelOpt's per-tensor scale)") != std::string::npos);
    auto b = RunQuench({"convert", (DataDir() / "golden" / "awqsrc" / "src").string(),
                        (tmp / "out").string(), "--scheme", "FP8_DYNAMIC", "--dry-run"});
    CHECK(b.exit_code == 0);
    CHECK(b.err.find("each is decoded to BF16") != std::string::npos);
    CHECK_FALSE(fs::exists(tmp / "out"));
  }

  TEST_CASE("a bad AWQ scale stops the lossless repack too: exit 3, nothing written") {
    // (ModelOpt's repack copies weight_scale unread, as the reference does:
    // docs/convert-reference.md.)
    TempDir tmp;
    for (const char* name : {"awq_scale_nan", "awq_scale_negative", "awq_scale_infinite"}) {
      CAPTURE(name);
      auto r = RunQuench({"convert", (DataDir() / "malformed_folders" / name).string(),
                          (tmp / name).string(), "--scheme", "W4A16_ASYM", "--group-size", "32"});
      CHECK(r.exit_code == 3);
      CHECK(r.err.find("scale at [") != std::string::npos);
      CHECK_FALSE(fs::exists(tmp / name));
    }
  }
  TEST_CASE("verify DST SRC compares against the decoded source") {
    // SRC decoded by the pipeline into a temporary folder first (cli/verify_packed_source.h).
    for (const std::string c : {"mosrc/NVFP4", "mosrc/W8A8", "awqsrc/FP8_DYNAMIC",
                                "mokvsrc/NVFP4"}) {
      CAPTURE(c);
      const std::string src = c.substr(0, c.find('/'));
      auto v = RunQuench({"verify", (DataDir() / "golden" / c).string(),
                          (DataDir() / "golden" / src / "src").string()});
      CHECK(v.exit_code == 0);
      CHECK(v.out.find("OK: ") != std::string::npos);
    }
  }

  TEST_CASE("verify --prune against a quantized source is refused, naming what SRC is") {
    // The pruned check compares zeros against the source's rows; a quantized source's rows
    // are not decoded for it yet. Exit 3 (unsupported), nothing on stdout.
    TempDir tmp;
    const fs::path src = DataDir() / "golden/fp8src/src";
    REQUIRE(RunQuench({"convert", src.string(), (tmp / "o").string(), "--scheme", "FP8_DYNAMIC",
                       "--prune", "2:4", "-q"})
                .exit_code == 0);
    auto v = RunQuench({"verify", (tmp / "o").string(), src.string(), "--prune", "2:4"});
    CHECK(v.exit_code == 3);
    CHECK(v.out.empty());
    CHECK(v.err.find("verify: unsupported: SRC is FP8 E4M3, 128x128 block scales") !=
          std::string::npos);
    CHECK(v.err.find("verify --prune cannot compare against a quantized source yet") !=
          std::string::npos);
  }

  TEST_CASE("verify holds a lossless repack to the source exactly: one flipped code bit is found") {
    // The reference converters' repacks (AutoAWQ: F16 scales, zero scales, the converter's
    // ignore list without the embedding) verify clean; flipping the lowest bit of one 4-bit
    // code moves that element one grid step, which the error bound alone allows, so only the
    // lossless rule (every element dequantized as compressed-tensors does = the decoded
    // source) finds it.
    for (const std::string c : {"awqsrc/W4A16_ASYM", "mosrc/NVFP4"}) {
      CAPTURE(c);
      const fs::path src = DataDir() / "golden" / c.substr(0, c.find('/')) / "src";
      auto ok = RunQuench({"verify", (DataDir() / "golden" / c).string(), src.string()});
      CHECK(ok.exit_code == 0);
      CHECK(ok.out.find("OK: ") != std::string::npos);
      TempDir tmp;
      fs::copy(DataDir() / "golden" / c, tmp / "dst", fs::copy_options::recursive);
      const std::string name = "model.layers.0.mlp.up_proj.weight_packed";
      {
        auto all = LoadAll(tmp / "dst");
        auto [l, t] = FindTensor(all, name);
        REQUIRE(t != nullptr);
        std::string bytes = l->bytes;
        // Byte 20 of row 0: AWQ's I32 word 5 (inputs 40..47), NVFP4's inputs 40 and 41; bit 0
        // is input 40's lowest code bit in both.
        bytes[l->shard.header.data_start + t->begin + 20] ^= 1;
        WriteBytes(l->shard.path, bytes);
      }
      auto bad = RunQuench({"verify", (tmp / "dst").string(), src.string()});
      CHECK(bad.exit_code == 3);
      CHECK(bad.out.find("tensor '" + name + "': lossless: 1 element(s) do not dequantize to "
                         "the decoded source's value, as a lossless repack of it must; first "
                         "[0, 40]") != std::string::npos);
      CHECK(bad.out.find("error-bound") == std::string::npos);
      CHECK(bad.out.find("INVALID: ") != std::string::npos);
    }
  }

  // A conversion to the source's own scheme is no repack when it prunes, uses statistics or
  // selects other modules (RepackMode): the decoded weights are quantized again with scales of
  // their own. verify once held every same-scheme output to the lossless rule, so a pruned
  // NVFP4A16 of a ModelOpt source failed with hundreds of "lossless" elements; the repack's
  // own marks (ModelOpt's global scale, AutoAWQ's F16 scales) now decide (found by
  // scripts/fuzz-convert --verify).
  TEST_CASE("verify: a same-scheme conversion that is not a repack is held to the error bound") {
    struct Case {
      std::string src;
      std::vector<std::string> args;
    };
    for (const Case& c : {Case{"mosrc", {"--scheme", "NVFP4A16", "--prune", "2:4"}},
                          Case{"mokvsrc", {"--scheme", "NVFP4A16", "--prune", "unstructured:0.5"}},
                          Case{"mosrc", {"--scheme", "NVFP4A16", "--ignore", "re:.*down_proj"}},
                          Case{"awqsrc", {"--scheme", "W4A16_ASYM", "--group-size", "32",
                                          "--prune", "2:4"}}}) {
      CAPTURE(c.src);
      CAPTURE(c.args.back());
      TempDir tmp;
      const fs::path src = DataDir() / "golden" / c.src / "src";
      std::vector<std::string> convert = {"convert", src.string(), (tmp / "dst").string(), "-q"};
      convert.insert(convert.end(), c.args.begin(), c.args.end());
      auto r = RunQuench(convert);
      REQUIRE_MESSAGE(r.exit_code == 0, r.err);
      std::vector<std::string> verify = {"verify", (tmp / "dst").string(), src.string()};
      // verify needs the pruning spec the conversion used.
      for (size_t i = 0; i + 1 < c.args.size(); ++i) {
        if (c.args[i] == "--prune") verify.insert(verify.end(), {"--prune", c.args[i + 1]});
      }
      auto v = RunQuench(verify);
      CAPTURE(v.out);
      CHECK(v.exit_code == 0);
      CHECK(v.out.find("lossless") == std::string::npos);
      CHECK(v.out.find("OK: ") != std::string::npos);
    }
  }

  TEST_CASE("verify: a packed source written decoded is compared weight by weight, bit for bit") {
    // DST without quantization_config (--scheme BF16, or --scheme none --prune): each of the
    // 13 packed weights must equal the source decoded, the 8 other tensors be copied, nothing
    // missing or extra. The reference's dequantized models (golden BF16/) and quench's own.
    for (const std::string c : {"awqsrc", "mosrc", "mokvsrc"}) {
      CAPTURE(c);
      const fs::path src = DataDir() / "golden" / c / "src";
      auto ref = RunQuench({"verify", (DataDir() / "golden" / c / "BF16").string(), src.string()});
      CHECK(ref.exit_code == 0);
      CHECK(ref.out.find("OK: 2 shard(s), 21 tensors, 0 quantized modules, 8 copied tensors "
                         "unchanged, 13 decoded from the quantized source") != std::string::npos);
      TempDir tmp;
      auto conv = RunQuench({"convert", src.string(), (tmp / "bf16").string(), "--scheme", "BF16",
                             "-q"});
      REQUIRE(conv.exit_code == 0);
      auto own = RunQuench({"verify", (tmp / "bf16").string(), src.string()});
      CHECK(own.exit_code == 0);
      CHECK(own.out.find("13 decoded from the quantized source") != std::string::npos);
      auto pc = RunQuench({"convert", src.string(), (tmp / "pruned").string(), "--scheme", "none",
                           "--prune", "2:4", "-q"});
      REQUIRE(pc.exit_code == 0);
      auto pruned =
          RunQuench({"verify", (tmp / "pruned").string(), src.string(), "--prune", "2:4"});
      CHECK(pruned.exit_code == 0);
      CHECK(pruned.out.find("OK: ") != std::string::npos);
    }
  }

  TEST_CASE("verify: a decoded weight one bit off, a tensor missing or extra is reported") {
    const std::string w = "model.layers.0.mlp.up_proj.weight";
    for (const std::string c : {"awqsrc", "mosrc", "mokvsrc"}) {
      CAPTURE(c);
      const fs::path src = DataDir() / "golden" / c / "src";
      auto run = [&](const std::function<void(std::map<std::string, std::vector<RawTensor>>&)>& e) {
        TempDir tmp;
        fs::copy(DataDir() / "golden" / c / "BF16", tmp / "dst", fs::copy_options::recursive);
        EditFolder(tmp / "dst", e);
        auto r = RunQuench({"verify", (tmp / "dst").string(), src.string()});
        CHECK(r.exit_code == 3);
        CHECK(r.out.find("INVALID: ") != std::string::npos);
        return r.out;
      };
      // The lowest mantissa bit of element 10 (BF16): one ulp.
      const std::string flipped = run([&](auto& shards) {
        for (auto& [_, v] : shards) {
          for (RawTensor& t : v) {
            if (t.name == w) t.bytes[20] ^= 1;
          }
        }
      });
      CHECK(flipped.find("tensor '" + w + "': changed: differs from the packed source decoded to "
                         "BF16, first at byte 20 of ") != std::string::npos);
      const std::string missing = run([&](auto& shards) {
        for (auto& [_, v] : shards) {
          std::erase_if(v, [&](const RawTensor& t) { return t.name == w; });
        }
      });
      CHECK(missing.find("tensor '" + w + "': missing: source tensor absent from DST") !=
            std::string::npos);
      // A tensor decoding consumes, left behind: AWQ's qweight; ModelOpt's weight_scale.
      const std::string left = c == "awqsrc" ? "model.layers.0.mlp.up_proj.qweight"
                                             : "model.layers.0.mlp.up_proj.weight_scale";
      const std::string extra = run([&](auto& shards) {
        shards.begin()->second.push_back({left, DType::kF32, {1}, std::string(4, '\0')});
      });
      CHECK(extra.find("tensor '" + left + "': extra: not in the source and not written by "
                       "quantization") != std::string::npos);
    }
  }
}

}  // namespace
}  // namespace quench::testing
