// End to end: the bundled checkpoint converted with each scheme and re-read; determinism
// across thread counts and chunk sizes; every user-facing error path of `convert`.
// Dequantization checks decode E4M3 and BF16 with the small decoders below, written from the
// format definitions and independent of the code under test.
#include <doctest/doctest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <sstream>

#include "format/json.h"
#include "format/model_folder.h"
#include "format/safetensors.h"
#include "quench/convert.h"
#include "schemes/chunk.h"
#include "schemes/fp8.h"
#include "schemes/int.h"
#include "test_util.h"

namespace qt = quench::testing;
using qt::Bf16Bytes;
using qt::DecodeBF16;
using qt::DecodeE4M3;
using qt::RawTensor;
using qt::WriteShard;
using qt::Loaded;
using qt::LoadAll;
using qt::FindTensor;
namespace fs = std::filesystem;
using quench::DType;

namespace {

quench::Result<quench::ConvertSummary> ConvertDir(const fs::path& src, const fs::path& dst,
                                                  const std::string& scheme, int threads = 0,
                                                  uint64_t chunk_bytes = 0,
                                                  bool direct_io = true) {
  quench::ConvertOptions o;
  o.src = src;
  o.dst = dst;
  o.scheme = scheme;
  o.threads = threads;
  o.chunk_bytes = chunk_bytes;
  o.direct_io = direct_io;
  return quench::Convert(o);
}

const fs::path kTiny = qt::DataDir() / "tiny-llama";
// The smallest chunk the pipeline sizes (what --memory-limit 1M gave): small tensors span
// several chunks.
constexpr uint64_t kSmallChunk = 256 * 1024;

void CheckFp8Dequantizes(const std::map<std::string, Loaded>& src,
                         const std::map<std::string, Loaded>& dst, const std::string& module,
                         bool block) {
  auto [sl, st] = FindTensor(src, module + ".weight");
  auto [dl, qw] = FindTensor(dst, module + ".weight");
  auto [_, qs] = FindTensor(dst, module + ".weight_scale");
  REQUIRE(st != nullptr);
  REQUIRE(qw != nullptr);
  REQUIRE(qs != nullptr);
  CHECK(qw->dtype == DType::kF8E4M3);
  CHECK(qw->shape == st->shape);
  CHECK(qs->dtype == DType::kBF16);
  const uint64_t rows = st->shape[0], cols = st->shape[1];
  const uint64_t bc = (cols + 127) / 128;
  if (block) {
    CHECK(qs->shape == std::vector<uint64_t>{(rows + 127) / 128, bc});
  } else {
    CHECK(qs->shape == std::vector<uint64_t>{rows, 1});
  }
  const uint8_t* x = sl->Data(*st);
  const uint8_t* q = dl->Data(*qw);
  const uint8_t* s = dl->Data(*qs);
  size_t bad = 0;
  for (uint64_t r = 0; r < rows; ++r) {
    for (uint64_t c = 0; c < cols; ++c) {
      const uint64_t si = block ? (r / 128) * bc + c / 128 : r;
      const double scale = DecodeBF16(s + 2 * si);
      const double xv = DecodeBF16(x + 2 * (r * cols + c));
      const double dq = DecodeE4M3(q[r * cols + c]) * scale;
      // E4M3 keeps 3 mantissa bits (half-ulp 2^-4 relative), x/scale is rounded to BF16 first
      // (2^-8 relative), and below 2^-6 the step is 2^-9 (half-step 2^-10) times the scale.
      const double bound = std::fabs(xv) * (1.0 / 16 + 1.0 / 256) + scale / 1024 + 1e-30;
      if (std::fabs(dq - xv) > bound) ++bad;
    }
  }
  CHECK_MESSAGE(bad == 0, module);
}

}  // namespace

TEST_SUITE("convert") {
  TEST_CASE("bundled checkpoint, FP8_DYNAMIC and FP8_BLOCK: structure, copies and accuracy") {
    for (const char* scheme : {"FP8_DYNAMIC", "FP8_BLOCK"}) {
      CAPTURE(scheme);
      qt::TempDir tmp;
      const fs::path out = tmp / "out";
      auto r = ConvertDir(kTiny, out, scheme);
      REQUIRE_MESSAGE(r.ok(), r.status().ToString());
      CHECK(r->tensors_quantized == 14);  // 7 projections x 2 layers
      // Same file names as the source; nothing temporary left behind.
      CHECK(qt::ListFiles(out) == qt::ListFiles(kTiny));
      for (const std::string& f : qt::ListFiles(kTiny)) {
        if (f.ends_with(".safetensors") || f == "config.json" || f.ends_with("index.json"))
          continue;
        CHECK_MESSAGE(qt::ReadBytes(out / f) == qt::ReadBytes(kTiny / f), f);
      }
      auto src = LoadAll(kTiny);
      auto dst = LoadAll(out);
      // Unquantized tensors are copied byte for byte.
      for (const char* name : {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
                               "model.layers.0.input_layernorm.weight",
                               "model.layers.1.post_attention_layernorm.weight"}) {
        auto [sl, st] = FindTensor(src, name);
        auto [dl, dt] = FindTensor(dst, name);
        REQUIRE_MESSAGE(dt != nullptr, name);
        CHECK(dt->dtype == st->dtype);
        CHECK(std::memcmp(sl->Data(*st), dl->Data(*dt), st->nbytes()) == 0);
      }
      for (int layer = 0; layer < 2; ++layer) {
        for (const char* m :
             {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
              "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}) {
          CheckFp8Dequantizes(src, dst,
                              "model.layers." + std::to_string(layer) + "." + m,
                              std::string(scheme) == "FP8_BLOCK");
        }
      }
      // config.json carries the quantization_config; the index maps every tensor.
      auto cfg = quench::ReadJsonFile((out / "config.json").string());
      REQUIRE(cfg.ok());
      const auto* q = cfg->Find("quantization_config");
      REQUIRE(q != nullptr);
      CHECK(q->Find("quant_method")->as_string() == "compressed-tensors");
      CHECK(q->Find("format")->as_string() == "float-quantized");
      const auto* group = q->Find("config_groups")->Find(scheme);
      REQUIRE(group != nullptr);
      CHECK(group->Find("weights")->Find("strategy")->as_string() ==
            (std::string(scheme) == "FP8_BLOCK" ? "block" : "channel"));
      std::vector<std::string> ignore;
      for (const auto& v : q->Find("ignore")->as_array()) ignore.push_back(v.as_string());
      CHECK(ignore == std::vector<std::string>{"lm_head", "re:.*embed_tokens$"});
      auto index = quench::ReadJsonFile((out / "model.safetensors.index.json").string());
      REQUIRE(index.ok());
      size_t mapped = index->Find("weight_map")->as_object().size();
      size_t total = 0;
      uint64_t bytes = 0;
      for (const auto& [_, l] : dst) {
        total += l.shard.header.tensors.size();
        for (const auto& t : l.shard.header.tensors) bytes += t.nbytes();
      }
      CHECK(mapped == total);
      CHECK(index->Find("metadata")->Find("total_size")->as_uint() == bytes);
    }
  }

  TEST_CASE("output bytes do not depend on threads, chunk size or write mode") {
    for (const char* scheme : {"FP8_DYNAMIC", "FP8_BLOCK", "W8A8", "NVFP4A16"}) {
      CAPTURE(scheme);
      qt::TempDir tmp;
      REQUIRE(ConvertDir(kTiny, tmp / "a", scheme, 1).ok());
      // A 1 MiB budget forces the smallest chunks: many per tensor, several in flight.
      REQUIRE(ConvertDir(kTiny, tmp / "b", scheme, 2, kSmallChunk).ok());
      REQUIRE(ConvertDir(kTiny, tmp / "c", scheme, 2).ok());
      // Through the page cache (--no-direct-io) instead of O_DIRECT.
      REQUIRE(ConvertDir(kTiny, tmp / "d", scheme, 2, kSmallChunk, false).ok());
      for (const std::string& f : qt::ListFiles(tmp / "a")) {
        CAPTURE(f);
        CHECK(qt::ReadBytes(tmp / "a" / f) == qt::ReadBytes(tmp / "b" / f));
        CHECK(qt::ReadBytes(tmp / "a" / f) == qt::ReadBytes(tmp / "c" / f));
        CHECK(qt::ReadBytes(tmp / "a" / f) == qt::ReadBytes(tmp / "d" / f));
      }
    }
  }

  TEST_CASE("copies handed out among the other chunks: every shard whole and exact") {
    // Shard 1 starts with a copied tensor larger than the quantized one after it, shard 2
    // holds copies only, shard 3 ends with one; a 1 MiB budget cuts everything into many
    // chunks and copy pieces, which the pipeline interleaves within each shard. Expected:
    // copies byte for byte the source; weights and scales those of the scalar reference
    // kernel run on each whole tensor (no chunking, no pipeline).
    qt::TempDir tmp;
    auto ramp = [](size_t n, float scale) {
      std::vector<float> v(n);
      for (size_t i = 0; i < n; ++i) {
        v[i] = scale * static_cast<float>((i * 7919) % 1999) / 1999.0f - scale / 2;
      }
      return Bf16Bytes(v);
    };
    const std::vector<std::vector<RawTensor>> shards = {
        {{"lm_head.weight", DType::kBF16, {512, 512}, ramp(512 * 512, 3.0f)},
         {"model.layers.0.mlp.down_proj.weight", DType::kBF16, {256, 512}, ramp(256 * 512, 1.0f)},
         {"model.layers.0.post_attention_layernorm.weight", DType::kBF16, {512}, ramp(512, 1.0f)}},
        {{"model.layers.1.input_layernorm.weight", DType::kBF16, {40000}, ramp(40000, 2.0f)},
         {"model.layers.1.post_attention_layernorm.weight", DType::kBF16, {512}, ramp(512, 4.0f)}},
        {{"model.layers.1.mlp.up_proj.weight", DType::kBF16, {384, 512}, ramp(384 * 512, 0.5f)},
         {"model.norm.weight", DType::kBF16, {300000}, ramp(300000, 1.5f)}},
    };
    for (size_t i = 0; i < shards.size(); ++i) {
      WriteShard(tmp / "src" / ("model-0000" + std::to_string(i + 1) + "-of-00003.safetensors"),
                 shards[i]);
    }
    for (int threads : {1, 2}) {
      CAPTURE(threads);
      const fs::path out = tmp / ("out" + std::to_string(threads));
      auto r = ConvertDir(tmp / "src", out, "FP8_DYNAMIC", threads, kSmallChunk);
      REQUIRE_MESSAGE(r.ok(), r.status().ToString());
      auto dst = LoadAll(out);
      CHECK(dst.size() == 3);
      for (const auto& shard : shards) {
        for (const RawTensor& t : shard) {
          CAPTURE(t.name);
          auto [dl, dt] = FindTensor(dst, t.name);
          REQUIRE(dt != nullptr);
          const std::string got(reinterpret_cast<const char*>(dl->Data(*dt)), dt->nbytes());
          if (t.shape.size() == 1 || t.name == "lm_head.weight") {
            CHECK(got == t.bytes);
            continue;
          }
          std::string q(t.shape[0] * t.shape[1], '\0'), sc(t.shape[0] * 2, '\0');
          quench::WeightChunk in;
          in.data = reinterpret_cast<const uint8_t*>(t.bytes.data());
          in.rows = t.shape[0];
          in.cols = t.shape[1];
          quench::ChunkOutputs outs;
          outs.out[0] = reinterpret_cast<uint8_t*>(q.data());
          outs.out[1] = reinterpret_cast<uint8_t*>(sc.data());
          REQUIRE(quench::fp8::QuantizeChannelScalar(in, outs));
          CHECK(got == q);
          auto [sl, st] = FindTensor(dst, t.name + "_scale");
          REQUIRE(st != nullptr);
          CHECK(std::string(reinterpret_cast<const char*>(sl->Data(*st)), st->nbytes()) == sc);
        }
      }
    }
  }

  TEST_CASE("many small tensors: batched into chunks, every tensor exact; NaN named") {
    // A MoE-shaped checkpoint: per layer 24 experts x 3 projections of 16 x 128 (4 KiB each),
    // norms and a router gate (copied), and a q_proj larger than a chunk under a 1 MiB
    // budget; lm_head (copied) larger than a copy piece. Small tensors of a shard share
    // chunks, so this runs the batched path with the budget both small (several chunks of
    // tens of tensors, the large ones split) and default (a shard's small tensors in one
    // chunk). Expected: copies byte for byte the source; quantized weights and scales those
    // of the scalar reference kernels run on each whole tensor; weight_shape the tensor's
    // shape; the output holds exactly these tensors.
    qt::TempDir tmp;
    std::mt19937 rng(20261204);
    auto values = [&](size_t n) {
      std::normal_distribution<float> d(0.f, 0.02f);
      std::vector<float> v(n);
      for (size_t i = 0; i < n; ++i) v[i] = d(rng) * static_cast<float>(1 + i / 128 % 7);
      return Bf16Bytes(v);
    };
    std::vector<std::vector<RawTensor>> shards(2);
    for (int l = 0; l < 3; ++l) {
      auto& sh = shards[l < 2 ? 0 : 1];
      const std::string p = "model.layers." + std::to_string(l) + ".";
      sh.push_back({p + "input_layernorm.weight", DType::kBF16, {128}, values(128)});
      sh.push_back({p + "post_attention_layernorm.weight", DType::kBF16, {128}, values(128)});
      sh.push_back({p + "mlp.gate.weight", DType::kBF16, {24, 128}, values(24 * 128)});
      sh.push_back({p + "self_attn.q_proj.weight", DType::kBF16, {2048, 128}, values(2048 * 128)});
      for (int e = 0; e < 24; ++e) {
        for (const char* m : {"gate_proj", "up_proj", "down_proj"}) {
          sh.push_back({p + "mlp.experts." + std::to_string(e) + "." + m + ".weight",
                        DType::kBF16, {16, 128}, values(16 * 128)});
        }
      }
    }
    shards[1].push_back({"lm_head.weight", DType::kBF16, {1024, 128}, values(1024 * 128)});
    shards[1].push_back({"model.norm.weight", DType::kBF16, {128}, values(128)});
    for (size_t i = 0; i < shards.size(); ++i) {
      WriteShard(tmp / "src" / ("model-0000" + std::to_string(i + 1) + "-of-00002.safetensors"),
                 shards[i]);
    }
    auto copied = [](const RawTensor& t) {
      return t.shape.size() == 1 || t.name == "lm_head.weight" ||
             t.name.find("mlp.gate.") != std::string::npos;
    };
    auto bytes_of = [](const Loaded* l, const quench::TensorInfo* t) {
      return std::string(reinterpret_cast<const char*>(l->Data(*t)), t->nbytes());
    };
    for (const char* scheme : {"FP8_DYNAMIC", "W4A16"}) {
      const bool fp8 = std::string(scheme) == "FP8_DYNAMIC";
      for (int threads : {1, 2}) {
        for (uint64_t chunk : {kSmallChunk, uint64_t{0}}) {
          CAPTURE(scheme);
          CAPTURE(threads);
          CAPTURE(chunk);
          const fs::path out = tmp / "out";
          fs::remove_all(out);
          auto r = ConvertDir(tmp / "src", out, scheme, threads, chunk);
          REQUIRE_MESSAGE(r.ok(), r.status().ToString());
          auto dst = LoadAll(out);
          REQUIRE(dst.size() == 2);
          size_t expected_tensors = 0, found_tensors = 0;
          for (const auto& [_, l] : dst) found_tensors += l.shard.header.tensors.size();
          for (const auto& shard : shards) {
            for (const RawTensor& t : shard) {
              CAPTURE(t.name);
              if (copied(t)) {
                ++expected_tensors;
                auto [dl, dt] = FindTensor(dst, t.name);
                REQUIRE(dt != nullptr);
                CHECK(bytes_of(dl, dt) == t.bytes);
                continue;
              }
              const std::string module = t.name.substr(0, t.name.size() - 7);  // ".weight"
              const uint64_t rows = t.shape[0], cols = t.shape[1];
              quench::WeightChunk in;
              in.data = reinterpret_cast<const uint8_t*>(t.bytes.data());
              in.rows = rows;
              in.cols = cols;
              quench::ChunkOutputs outs;
              std::string q, sc(rows * 2, '\0');
              if (fp8) {
                q.assign(rows * cols, '\0');
                outs.out[0] = reinterpret_cast<uint8_t*>(q.data());
                outs.out[1] = reinterpret_cast<uint8_t*>(sc.data());
                REQUIRE(quench::fp8::QuantizeChannelScalar(in, outs));
                expected_tensors += 2;
              } else {
                in.params.bits = 4;
                in.params.group_size = 128;
                q.assign(rows * cols / 2, '\0');  // 8 int4 values per int32 word
                outs.out[0] = reinterpret_cast<uint8_t*>(q.data());
                outs.out[1] = reinterpret_cast<uint8_t*>(sc.data());
                REQUIRE(quench::intq::QuantizePackedScalar(in, outs));
                expected_tensors += 3;
                auto [shl, sht] = FindTensor(dst, module + ".weight_shape");
                REQUIRE(sht != nullptr);
                std::string shape(16, '\0');
                for (int b = 0; b < 8; ++b) {
                  shape[b] = static_cast<char>(rows >> (8 * b));
                  shape[8 + b] = static_cast<char>(cols >> (8 * b));
                }
                CHECK(bytes_of(shl, sht) == shape);
              }
              auto [wl, wt] = FindTensor(dst, module + (fp8 ? ".weight" : ".weight_packed"));
              auto [sl, st] = FindTensor(dst, module + ".weight_scale");
              REQUIRE(wt != nullptr);
              REQUIRE(st != nullptr);
              CHECK(bytes_of(wl, wt) == q);
              CHECK(bytes_of(sl, st) == sc);
            }
          }
          CHECK(found_tensors == expected_tensors);
        }
      }
    }

    // A NaN in one small tensor among many in its chunk: the run stops naming that tensor
    // and leaves no output.
    std::string& poisoned = shards[0][60].bytes;
    const uint16_t nan = 0x7FC0;
    std::memcpy(poisoned.data() + 2 * 37, &nan, 2);
    WriteShard(tmp / "src" / "model-00001-of-00002.safetensors", shards[0]);
    for (int threads : {1, 2}) {
      CAPTURE(threads);
      const fs::path out = tmp / ("nan" + std::to_string(threads));
      auto r = ConvertDir(tmp / "src", out, "FP8_DYNAMIC", threads, kSmallChunk);
      REQUIRE_FALSE(r.ok());
      CHECK(r.status().code() == quench::ErrorCode::kNonFinite);
      CHECK_MESSAGE(r.status().message().find("'" + shards[0][60].name + "'") != std::string::npos,
                    r.status().message());
      CHECK_FALSE(fs::exists(out));
    }
  }

  TEST_CASE("F16 and F32 weights keep their dtype for scales") {
    for (DType dt : {DType::kF16, DType::kF32}) {
      qt::TempDir tmp;
      const size_t esize = dt == DType::kF16 ? 2 : 4;
      std::string w(64 * 200 * esize, '\0');
      for (size_t i = 0; i < w.size(); ++i) w[i] = static_cast<char>((i * 37 + 11) % 251 & 0x3F);
      WriteShard(tmp / "src/model.safetensors", {{"layer.proj.weight", dt, {64, 200}, w}});
      auto r = ConvertDir(tmp / "src", tmp / "out", "FP8_DYNAMIC");
      REQUIRE_MESSAGE(r.ok(), r.status().ToString());
      auto out = LoadAll(tmp / "out");
      auto [l, s] = FindTensor(out, "layer.proj.weight_scale");
      REQUIRE(s != nullptr);
      CHECK(s->dtype == dt);
      // No config.json in the source: the index is still written (as the reference does).
      CHECK(fs::exists(tmp / "out/model.safetensors.index.json"));
    }
  }

  // Parity of the split itself (names, shapes, bytes, index) is in the golden suite
  // (moe3d-bf16); these are the cases where quench refuses or deliberately keeps a tensor.
  // safetensors allows 0-D tensors (shape [], one element), and checkpoints hold them
  // (scalar parameters, per-tensor scales). The pipeline once read shape[0] of every piece
  // it wrote, which a 0-D tensor does not have: every scheme crashed (found by
  // scripts/fuzz-convert).
  TEST_CASE("0-D tensors are copied whole, beside quantized weights, with every scheme") {
    qt::TempDir tmp;
    std::vector<float> w(64 * 64);
    for (size_t i = 0; i < w.size(); ++i) w[i] = 0.02f * static_cast<float>(i % 53) - 0.5f;
    const float alpha = 1.25f;
    const int64_t step = 7;
    std::string alpha_bytes(4, '\0'), step_bytes(8, '\0');
    std::memcpy(alpha_bytes.data(), &alpha, 4);
    std::memcpy(step_bytes.data(), &step, 8);
    const std::vector<qt::RawTensor> scalars = {
        // Named like a Linear weight: targeted by name, but not a matrix.
        {"model.layers.0.mlp.scale.weight", DType::kBF16, {}, qt::Bf16Bytes({0.5f})},
        {"model.layers.0.alpha", DType::kF32, {}, alpha_bytes},
        {"model.step", DType::kI64, {}, step_bytes}};
    std::vector<qt::RawTensor> tensors = scalars;
    tensors.push_back({"model.layers.0.self_attn.q_proj.weight", DType::kBF16, {64, 64},
                       qt::Bf16Bytes(w)});
    qt::WriteShard(tmp / "src/model.safetensors", tensors);
    qt::WriteBytes(tmp / "src/config.json",
                   "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64}");
    for (const std::vector<std::string>& scheme :
         {std::vector<std::string>{"FP8_DYNAMIC"}, {"W8A8"}, {"NVFP4A16"}, {"MXFP4A16"},
          {"W4A16", "--group-size", "32"}, {"FP8_BLOCK"}}) {
      CAPTURE(scheme[0]);
      const fs::path out = tmp / ("out-" + scheme[0]);
      std::vector<std::string> args = {"convert", (tmp / "src").string(), out.string(), "-q",
                                       "--report", (tmp / (scheme[0] + ".json")).string(),
                                       "--scheme"};
      args.insert(args.end(), scheme.begin(), scheme.end());
      auto r = qt::RunQuench(args);
      REQUIRE_MESSAGE(r.exit_code == 0, r.err);
      auto all = qt::LoadAll(out);
      for (const qt::RawTensor& s : scalars) {
        CAPTURE(s.name);
        auto [l, t] = qt::FindTensor(all, s.name);
        REQUIRE(t != nullptr);
        CHECK(t->shape.empty());
        CHECK(t->dtype == s.dtype);
        CHECK(std::string(reinterpret_cast<const char*>(l->Data(*t)), t->nbytes()) == s.bytes);
      }
      CHECK(qt::FindTensor(all, "model.layers.0.self_attn.q_proj.weight_scale").second != nullptr);
      auto v = qt::RunQuench({"verify", out.string(), (tmp / "src").string()});
      CHECK_MESSAGE(v.exit_code == 0, v.err);
      std::vector<std::string> dry = {"convert", (tmp / "src").string(),
                                      (tmp / "dry").string(), "--dry-run", "--scheme"};
      dry.insert(dry.end(), scheme.begin(), scheme.end());
      auto d = qt::RunQuench(dry);
      CHECK_MESSAGE(d.exit_code == 0, d.err);
    }
  }

  TEST_CASE("fused 3-D experts: [E, in, out] layout kept whole, bad names refused") {
    qt::TempDir tmp;
    // hidden_size 64, intermediate 48: Llama 4 / gpt-oss keep gate_up_proj as [E, H, 2I] and
    // down_proj as [E, I, H].
    std::vector<float> v(2 * 64 * 96);
    for (size_t i = 0; i < v.size(); ++i) v[i] = 0.01f * static_cast<float>(i % 37) - 0.18f;
    const std::string gate_up = qt::Bf16Bytes(v);
    const std::string down = qt::Bf16Bytes(std::vector<float>(v.begin(), v.begin() + 2 * 48 * 64));
    const std::string q = qt::Bf16Bytes(std::vector<float>(v.begin(), v.begin() + 64 * 64));
    auto write = [&](const fs::path& dir, const std::vector<qt::RawTensor>& tensors) {
      qt::WriteShard(dir / "model.safetensors", tensors);
      qt::WriteBytes(dir / "config.json", "{\"architectures\": [\"Llama4ForCausalLM\"], "
                                          "\"text_config\": {\"hidden_size\": 64}}");
    };
    write(tmp / "t",
          {{"model.layers.0.feed_forward.experts.gate_up_proj", DType::kBF16, {2, 64, 96}, gate_up},
           {"model.layers.0.feed_forward.experts.down_proj", DType::kBF16, {2, 48, 64}, down},
           {"model.layers.0.self_attn.q_proj.weight", DType::kBF16, {64, 64}, q}});
    auto r = qt::RunQuench({"convert", (tmp / "t").string(), (tmp / "t-out").string(), "--scheme",
                            "FP8_DYNAMIC"});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    CHECK(r.err.find("left unquantized: 2 fused 3-D expert tensor(s) stored [experts, in, out]") !=
          std::string::npos);
    auto all = qt::LoadAll(tmp / "t-out");
    for (const auto& [name, bytes] :
         {std::pair{std::string("model.layers.0.feed_forward.experts.gate_up_proj"), gate_up},
          std::pair{std::string("model.layers.0.feed_forward.experts.down_proj"), down}}) {
      CAPTURE(name);
      auto [l, t] = qt::FindTensor(all, name);
      REQUIRE(t != nullptr);
      CHECK(t->shape.size() == 3);
      CHECK(std::string(reinterpret_cast<const char*>(l->Data(*t)), t->nbytes()) == bytes);
    }
    CHECK(qt::FindTensor(all, "model.layers.0.feed_forward.experts.0.gate_proj.weight").second ==
          nullptr);
    CHECK(qt::FindTensor(all, "model.layers.0.self_attn.q_proj.weight_scale").second != nullptr);
    // The stacks are copied, so the written ignore list covers their module (compressed-tensors
    // and vLLM read the "Linear" target as every module); q_proj stays quantized. (lm_head
    // first: a causal model's head that the checkpoint does not store is written as tied.)
    {
      auto cfg = quench::ReadJsonFile((tmp / "t-out" / "config.json").string());
      REQUIRE(cfg.ok());
      std::vector<std::string> ignore;
      for (const auto& e : cfg->Find("quantization_config")->Find("ignore")->as_array()) {
        ignore.push_back(e.as_string());
      }
      // The experts module and the per-expert names vLLM asks about (`experts.0.gate_proj`).
      CHECK(ignore ==
            std::vector<std::string>{
                "lm_head", "re:model\\.layers\\.[0-9]+\\.feed_forward\\.experts(\\..*)?$"});
    }

    // model_free_ptq's own refusals: a name with both keys, an odd gate_up_proj dimension.
    write(tmp / "both",
          {{"model.layers.0.mlp.experts.gate_up_proj.down_proj", DType::kBF16, {64, 64}, q}});
    r = qt::RunQuench({"convert", (tmp / "both").string(), (tmp / "both-out").string(), "--scheme",
                       "FP8_DYNAMIC", "-q"});
    CHECK(r.exit_code == 3);
    CHECK(r.err.find("names both gate_up_proj and down_proj") != std::string::npos);
    CHECK_FALSE(fs::exists(tmp / "both-out"));
    write(tmp / "odd", {{"model.layers.0.mlp.experts.gate_up_proj", DType::kBF16, {1, 63, 64},
                         gate_up.substr(0, 63 * 64 * 2)}});
    r = qt::RunQuench({"convert", (tmp / "odd").string(), (tmp / "odd-out").string(), "--scheme",
                       "FP8_DYNAMIC", "-q"});
    CHECK(r.exit_code == 3);
    CHECK(r.err.find("needs an even second dimension") != std::string::npos);
    CHECK_FALSE(fs::exists(tmp / "odd-out"));

    // A stack whose shape cannot tell its order (gpt-oss: intermediate size = hidden size, so
    // down_proj is [E, 2880, 2880]; or 2 x intermediate = hidden for gate_up_proj) is stored
    // as its sibling in the same experts module shows (Llama 4 and gpt-oss keep both [E, in,
    // out]): kept whole with it, never cut along the wrong dimension.
    const auto values = [](size_t n) {
      std::vector<float> x(n);
      for (size_t i = 0; i < n; ++i) x[i] = 0.01f * static_cast<float>(i % 41) - 0.2f;
      return qt::Bf16Bytes(x);
    };
    const std::string wide = values(2 * 64 * 128), square = values(2 * 64 * 64),
                      half = values(2 * 32 * 64);
    for (const auto& stacks : std::vector<std::vector<qt::RawTensor>>{
             // intermediate 64 = hidden: gate_up [E, 64, 128] shows [E, in, out], down does not
             {{"model.layers.0.mlp.experts.gate_up_proj", DType::kBF16, {2, 64, 128}, wide},
              {"model.layers.0.mlp.experts.down_proj", DType::kBF16, {2, 64, 64}, square}},
             // intermediate 32, 2 x 32 = hidden: down [E, 32, 64] shows it, gate_up does not
             {{"model.layers.0.mlp.experts.gate_up_proj", DType::kBF16, {2, 64, 64}, square},
              {"model.layers.0.mlp.experts.down_proj", DType::kBF16, {2, 32, 64}, half}}}) {
      CAPTURE(stacks[1].shape[1]);
      qt::TempDir t2;
      std::vector<qt::RawTensor> all_tensors = stacks;
      all_tensors.push_back({"model.layers.0.self_attn.q_proj.weight", DType::kBF16, {64, 64}, q});
      write(t2 / "s", all_tensors);
      r = qt::RunQuench({"convert", (t2 / "s").string(), (t2 / "o").string(), "--scheme",
                         "FP8_DYNAMIC", "-q"});
      REQUIRE_MESSAGE(r.exit_code == 0, r.err);
      auto got = qt::LoadAll(t2 / "o");
      for (const qt::RawTensor& stack : stacks) {
        CAPTURE(stack.name);
        CHECK(qt::TensorBytes(got, stack.name) == stack.bytes);
      }
      CHECK(qt::FindTensor(got, "model.layers.0.mlp.experts.0.down_proj.weight").second == nullptr);
      CHECK(qt::FindTensor(got, "model.layers.0.mlp.experts.0.gate_proj.weight").second == nullptr);
    }
  }

  TEST_CASE("user errors: clear message, non-zero exit, no output left") {
    qt::TempDir tmp;
    auto convert = [&](std::vector<std::string> extra) {
      std::vector<std::string> args = {"convert"};
      args.insert(args.end(), extra.begin(), extra.end());
      return qt::RunQuench(args);
    };
    // Each case (flags after SRC DST, and the message) as a run and as a dry run: a usage
    // error (exit 2) with its message, and no DST made.
    using Cases = std::vector<std::pair<std::vector<std::string>, std::string>>;
    auto check_usage_errors = [&](const Cases& cases) {
      for (const auto& [flags, message] : cases) {
        for (const bool dry : {false, true}) {
          std::vector<std::string> args = {kTiny.string(), (tmp / "o").string()};
          args.insert(args.end(), flags.begin(), flags.end());
          if (dry) args.push_back("--dry-run");
          CAPTURE(message);
          CAPTURE(dry);
          const auto r = convert(args);
          CHECK(r.exit_code == 2);
          CHECK(r.err.find(message) != std::string::npos);
          CHECK_FALSE(fs::exists(tmp / "o"));
        }
      }
    };
    SUBCASE("DST inside SRC") {
      auto r = convert({kTiny.string(), (kTiny / "out").string(), "--scheme", "FP8_DYNAMIC"});
      CHECK(r.exit_code == 2);
      CHECK(r.err.find("inside it") != std::string::npos);
      CHECK_FALSE(fs::exists(kTiny / "out"));
    }
    SUBCASE("DST equal to SRC") {
      auto r = convert({kTiny.string(), kTiny.string(), "--scheme", "FP8_DYNAMIC"});
      CHECK(r.exit_code == 2);
    }
    SUBCASE("existing non-empty DST without --overwrite") {
      qt::WriteBytes(tmp / "dst/keep.txt", "x");
      auto r = convert({kTiny.string(), (tmp / "dst").string(), "--scheme", "FP8_DYNAMIC"});
      CHECK(r.exit_code == 2);
      CHECK(r.err.find("--overwrite") != std::string::npos);
      CHECK(qt::ListFiles(tmp / "dst") == std::vector<std::string>{"keep.txt"});
      auto ok = convert({kTiny.string(), (tmp / "dst").string(), "--scheme", "FP8_DYNAMIC",
                         "--overwrite", "-q"});
      CHECK(ok.exit_code == 0);
      CHECK(fs::exists(tmp / "dst/config.json"));
      CHECK(fs::exists(tmp / "dst/keep.txt"));
    }
    SUBCASE("unwritable DST") {
      qt::WriteBytes(tmp / "file", "x");
      auto r = convert({kTiny.string(), (tmp / "file/out").string(), "--scheme", "FP8_DYNAMIC"});
      CHECK(r.exit_code != 0);
      CHECK(r.err.find("file/out") != std::string::npos);
    }
    SUBCASE("unknown scheme and missing arguments are usage errors") {
      CHECK(convert({kTiny.string(), (tmp / "o").string(), "--scheme", "FP9"}).exit_code == 2);
      CHECK(convert({kTiny.string(), (tmp / "o").string()}).exit_code == 2);
      CHECK(convert({kTiny.string(), "--scheme", "FP8_DYNAMIC"}).exit_code == 2);
      CHECK(convert({kTiny.string(), (tmp / "o").string(), "--scheme", "FP8_DYNAMIC",
                     "--threads", "zero"}).exit_code == 2);
      CHECK(convert({kTiny.string(), (tmp / "o").string(), "--scheme", "FP8_DYNAMIC",
                     "--memory-limit", "lots"}).exit_code == 2);
      CHECK_FALSE(fs::exists(tmp / "o"));
    }
    SUBCASE("flag and recipe combinations the groups cannot be made from are usage errors") {
      // Each before any weight is read, run and dry run alike, with the reason and the way
      // out in the message.
      qt::WriteBytes(tmp / "r.yaml",
                     "quant_stage: {quant_modifiers: {QuantizationModifier: "
                     "{scheme: W8A8, targets: [Linear]}}}\n");
      const std::string recipe = (tmp / "r.yaml").string();
      const Cases cases = {
          {{"--scheme", "W8A8", "--kv-cache", "fp16"}, "--kv-cache takes fp8"},
          {{"--recipe", recipe, "--scheme", "W4A16"}, "do not combine it with --scheme"},
          {{"--recipe", recipe, "--observer-arg", "maxshrink=0.3"},
           "a recipe gives each group's weights.observer_kwargs"},
          {{"--scheme", "none"}, "--scheme none does nothing without --prune or --prune-experts"},
          {{"--scheme", "FP8"}, "config group 'FP8' cannot be applied without calibration data"},
          {{"--scheme", "W8A8", "--static-activations"},
           "config group 'W8A8' cannot be applied without calibration data"},
          {{"--scheme", "W8A8", "--kv-cache", "fp8"}, "kv_cache_scheme needs k/v scales"},
          {{"--scheme", "none", "--prune", "2:4", "--kv-cache", "fp8"},
           "--kv-cache goes with a quantization scheme"},
          {{"--recipe", recipe, "--kv-cache", "fp8"}, "r.yaml: kv_cache_scheme needs k/v scales"},
      };
      check_usage_errors(cases);
    }
    SUBCASE("option values out of range name the option and what it takes") {
      // Statistics are given where an algorithm needs them, so that the option itself is
      // what is refused.
      const std::string stats = (qt::DataDir() / "golden/imatrix-minilm/stats").string();
      const Cases cases = {
          {{"--scheme", "W4A16", "--algorithm", "gptq", "--stats", stats, "--gptq-block-size",
            "0"},
           "--gptq-block-size needs a positive whole number, not '0'"},
          {{"--scheme", "W4A16", "--algorithm", "gptq", "--stats", stats, "--dampening", "-1"},
           "--dampening needs a fraction >= 0, not '-1'"},
          {{"--scheme", "W4A16", "--algorithm", "awq", "--stats", stats, "--awq-n-grid", "1"},
           "--awq-n-grid needs a whole number from 2 to 1000, not '1'"},
          {{"--scheme", "W4A16", "--prune-metric", "wanda", "--stats", stats},
           "--prune-metric wanda needs --prune (unstructured:F or N:M)"},
          {{"--scheme", "W4A16", "--prune", "unstructured:1.5"},
           "the fraction must be in [0, 1)"},
          {{"--scheme", "W4A16", "--prune", "0:4"}, "N and M must be at least 1"},
          {{"--scheme", "none", "--prune-experts", "1.5"},
           "--prune-experts needs a fraction from 0 to 1, not '1.5'"},
          {{"--scheme", "FP8_DYNAMIC", "--group-size", "64"},
           "--group-size applies to the integer schemes only"},
          {{"--scheme", "W4A16", "--group-size", "0"},
           "--group-size must be -1 (one scale per output channel) or a positive multiple of 8"},
          {{"--scheme", "FP8_DYNAMIC", "--symmetric"},
           "--symmetric/--asymmetric apply to the integer schemes only"},
          {{"--scheme", "FP8_DYNAMIC", "--memory-limit", "lots"},
           "invalid size 'lots' (examples: 512M, 2G, 1.5GiB, 1000000)"},
          {{"--scheme", "FP8_DYNAMIC", "--memory-limit", "5Q"},
           "invalid size unit in '5Q' (use K, M, G or T; powers of 1024)"},
          {{"--scheme", "FP8_DYNAMIC", "--report", (kTiny / "report.json").string()},
           "is inside the source folder; quench never writes into a source checkpoint"},
      };
      check_usage_errors(cases);
      CHECK_FALSE(fs::exists(kTiny / "report.json"));
    }
    SUBCASE("N:M pruning of rows whose length is not a multiple of M: each weight named") {
      // tiny-llama's inputs are 256 (attention, gate/up) and 704 (down_proj) wide; all 14
      // weights are refused. A run names the first and counts the rest; --dry-run lists all.
      const std::vector<std::string> args = {kTiny.string(), (tmp / "o").string(), "--scheme",
                                             "FP8_DYNAMIC", "--prune", "3:7"};
      const std::string first =
          "'model.layers.0.mlp.down_proj.weight': 3:7 pruning needs the column count to be a "
          "multiple of 7, got 704";
      const std::string last =
          "'model.layers.1.self_attn.v_proj.weight': 3:7 pruning needs the column count to be "
          "a multiple of 7, got 256";
      auto r = convert(args);
      CHECK(r.exit_code == 3);
      CHECK(r.err.find(first) != std::string::npos);
      CHECK(r.err.find("(and 13 more planning errors; --dry-run lists them all)") !=
            std::string::npos);
      std::vector<std::string> dry_args = args;
      dry_args.push_back("--dry-run");
      auto dry = convert(dry_args);
      CHECK(dry.exit_code == 3);
      CHECK(dry.err.find(first) != std::string::npos);
      CHECK(dry.err.find(last) != std::string::npos);
      CHECK(dry.err.find("14 error(s)") != std::string::npos);
      CHECK_FALSE(fs::exists(tmp / "o"));
    }
    SUBCASE("a DST that is a file, or a folder with other files, is refused with the way out") {
      qt::WriteBytes(tmp / "file", "x");
      auto file = convert({kTiny.string(), (tmp / "file").string(), "--scheme", "FP8_DYNAMIC"});
      CHECK(file.exit_code == 2);
      CHECK(file.err.find("exists and is not a folder") != std::string::npos);
      CHECK(qt::ReadBytes(tmp / "file") == "x");
      qt::WriteBytes(tmp / "full/notes.txt", "mine");
      auto full = convert({kTiny.string(), (tmp / "full").string(), "--scheme", "FP8_DYNAMIC"});
      CHECK(full.exit_code == 2);
      CHECK(full.err.find("exists and is not empty; pass --overwrite to replace the files "
                          "quench writes there, or --resume to finish an interrupted run") !=
            std::string::npos);
      CHECK(qt::ListFiles(tmp / "full") == std::vector<std::string>{"notes.txt"});
    }
    SUBCASE("an output name the source already uses is refused, naming it") {
      // a.proj.weight quantizes to a.proj.weight + a.proj.weight_scale; the source's own
      // a.proj.weight_scale (not a .weight, so copied) would be written a second time.
      const std::string ones = Bf16Bytes(std::vector<float>(32 * 16, 1.f));
      WriteShard(
          tmp / "dup/model.safetensors",
          {{"a.proj.weight", DType::kBF16, {32, 16}, ones},
           {"a.proj.weight_scale", DType::kBF16, {32, 1}, Bf16Bytes(std::vector<float>(32, 1.f))},
           {"b.proj.weight", DType::kBF16, {32, 16}, ones}});
      qt::WriteBytes(tmp / "dup/config.json", "{}");
      auto dry = convert({(tmp / "dup").string(), (tmp / "o").string(), "--scheme", "FP8_DYNAMIC",
                          "--dry-run"});
      CHECK(dry.exit_code == 3);  // invalid input
      CHECK(dry.err.find("'a.proj.weight_scale' would be written twice") != std::string::npos);
      CHECK(dry.err.find("b.proj") == std::string::npos);
      auto r = convert({(tmp / "dup").string(), (tmp / "o").string(), "--scheme", "FP8_DYNAMIC"});
      CHECK(r.exit_code == 3);
      CHECK(r.err.find("'a.proj.weight_scale' would be written twice") != std::string::npos);
      CHECK_FALSE(fs::exists(tmp / "o"));
    }
    SUBCASE("an output name the source already uses in another dtype is refused too") {
      // The source's a.proj.weight_scale is F32 (copied as F32); the quantized weight's scale
      // is BF16: one name in two dtypes, which the file cannot hold either.
      const std::string ones = Bf16Bytes(std::vector<float>(32 * 16, 1.f));
      WriteShard(tmp / "dup2/model.safetensors",
                 {{"a.proj.weight", DType::kBF16, {32, 16}, ones},
                  {"a.proj.weight_scale", DType::kF32, {32, 1}, std::string(32 * 4, '\0')}});
      qt::WriteBytes(tmp / "dup2/config.json", "{}");
      auto dry = convert({(tmp / "dup2").string(), (tmp / "o").string(), "--scheme",
                          "FP8_DYNAMIC", "--dry-run"});
      CHECK(dry.exit_code == 3);  // invalid input
      CHECK(dry.err.find("'a.proj.weight_scale' would be written twice") != std::string::npos);
      CHECK_FALSE(fs::exists(tmp / "o"));
    }
    SUBCASE("non-finite weights are refused, naming the tensor") {
      std::vector<float> v(32 * 16, 0.5f);
      v[100] = std::nanf("");
      WriteShard(
          tmp / "nan/model.safetensors",
          {{"a.proj.weight", DType::kBF16, {32, 16}, Bf16Bytes(std::vector<float>(32 * 16, 1.f))},
           {"b.proj.weight", DType::kBF16, {32, 16}, Bf16Bytes(v)}});
      qt::WriteBytes(tmp / "nan/config.json", "{}");
      auto r = convert({(tmp / "nan").string(), (tmp / "o").string(), "--scheme", "FP8_BLOCK"});
      CHECK(r.exit_code == 3);
      CHECK(r.err.find("b.proj.weight") != std::string::npos);
      CHECK(r.err.find("NaN") != std::string::npos);
      CHECK_MESSAGE(r.err.find("(row 6, column 4)") != std::string::npos, r.err);  // 100 = 6*16+4
      CHECK_FALSE(fs::exists(tmp / "o"));
      std::vector<float> w(32 * 16, 0.5f);
      w[7] = INFINITY;
      WriteShard(tmp / "inf/model.safetensors",
                 {{"c.weight", DType::kBF16, {32, 16}, Bf16Bytes(w)}});
      auto r2 = convert({(tmp / "inf").string(), (tmp / "o").string(), "--scheme", "FP8_DYNAMIC"});
      CHECK(r2.exit_code == 3);
      CHECK(r2.err.find("c.weight") != std::string::npos);
      CHECK_FALSE(fs::exists(tmp / "o"));
    }
    SUBCASE("targeted tensor that is not 2-D") {
      WriteShard(tmp / "moe/model.safetensors",
                 {{"experts.w.weight", DType::kBF16, {2, 4, 8}, std::string(2 * 4 * 8 * 2, '\0')}});
      auto r = convert({(tmp / "moe").string(), (tmp / "o").string(), "--scheme", "FP8_DYNAMIC"});
      CHECK(r.exit_code == 3);
      CHECK(r.err.find("experts.w.weight") != std::string::npos);
      CHECK(r.err.find("2-D") != std::string::npos);
      // Ignoring it makes the same checkpoint convertible.
      auto ok = convert({(tmp / "moe").string(), (tmp / "o").string(), "--scheme", "FP8_DYNAMIC",
                         "--ignore", "experts.w", "-q"});
      CHECK(ok.exit_code == 0);
    }
    SUBCASE("1-D weights (BERT-style LayerNorm) are copied, not refused") {
      const std::string ones = Bf16Bytes(std::vector<float>(16, 1.f));
      const std::string quarters = Bf16Bytes(std::vector<float>(256, 0.25f));
      WriteShard(tmp / "bert/model.safetensors",
                 {{"enc.LayerNorm.weight", DType::kBF16, {16}, ones},
                  {"enc.dense.weight", DType::kBF16, {16, 16}, quarters},
                  {"enc.layer.0.LayerNorm.weight", DType::kBF16, {16}, ones},
                  {"enc.layer.1.LayerNorm.weight", DType::kBF16, {16}, ones},
                  {"enc.layer.0.out.weight", DType::kBF16, {16}, ones},
                  {"enc.layer.1.out.weight", DType::kBF16, {16, 16}, quarters}});
      qt::WriteBytes(tmp / "bert/config.json", "{\"architectures\": [\"BertModel\"]}");
      auto r = convert({(tmp / "bert").string(), (tmp / "o").string(), "--scheme", "FP8_DYNAMIC"});
      CHECK(r.exit_code == 0);
      CHECK(r.err.find("fewer than 2 dimensions") != std::string::npos);
      auto out = LoadAll(tmp / "o");
      CHECK(FindTensor(out, "enc.LayerNorm.weight").second->dtype == DType::kBF16);
      CHECK(FindTensor(out, "enc.dense.weight").second->dtype == DType::kF8E4M3);
      // The copied modules are written to ignore, so that compressed-tensors (whose "Linear"
      // target means every module) does not look for their scales: one regex over the layer
      // index where no quantized module has that shape (layer.N.LayerNorm), the exact name
      // where one has (layer.0.out is 1-D, layer.1.out is quantized), and names without an
      // index as they are.
      auto cfg = quench::ReadJsonFile((tmp / "o" / "config.json").string());
      REQUIRE(cfg.ok());
      std::vector<std::string> ignore;
      for (const auto& e : cfg->Find("quantization_config")->Find("ignore")->as_array()) {
        ignore.push_back(e.as_string());
      }
      CHECK(ignore == std::vector<std::string>{"enc.LayerNorm",
                                               "re:enc\\.layer\\.[0-9]+\\.LayerNorm$",
                                               "enc.layer.0.out"});
    }
  }

  TEST_CASE("every malformed fixture is refused by convert and inspect with its message") {
    const fs::path dir = qt::DataDir() / "malformed";
    auto expected = quench::ReadJsonFile((dir / "expected.json").string());
    REQUIRE(expected.ok());
    REQUIRE(expected->is_object());
    REQUIRE(expected->as_object().size() >= 15);
    for (const auto& [file, want] : expected->as_object()) {
      CAPTURE(file);
      const std::string needle = want.Find("message_contains")->as_string();
      qt::TempDir tmp;
      fs::create_directories(tmp / "src");
      fs::copy_file(dir / file, tmp / "src" / file);
      auto r = qt::RunQuench({"convert", (tmp / "src").string(), (tmp / "out").string(),
                              "--scheme", "FP8_DYNAMIC"});
      CHECK(r.exit_code == 3);
      CHECK(r.err.find(needle) != std::string::npos);
      CHECK(r.err.find(file) != std::string::npos);
      CHECK_FALSE(fs::exists(tmp / "out"));
      auto i = qt::RunQuench({"inspect", (dir / file).string()});
      CHECK(i.exit_code == 3);
      CHECK(i.err.find(needle) != std::string::npos);
    }
  }

  TEST_CASE("every malformed folder fixture is refused with its message, nothing written") {
    const fs::path dir = qt::DataDir() / "malformed_folders";
    auto expected = quench::ReadJsonFile((dir / "expected.json").string());
    REQUIRE(expected.ok());
    REQUIRE(expected->as_object().size() >= 7);
    for (const auto& [name, want] : expected->as_object()) {
      CAPTURE(name);
      qt::TempDir tmp;
      auto r = qt::RunQuench({"convert", (dir / name).string(), (tmp / "out").string(),
                              "--scheme", "FP8_DYNAMIC"});
      CHECK(r.exit_code == 3);
      CHECK(r.err.find(want.Find("message_contains")->as_string()) != std::string::npos);
      // The category: invalid-input (the folder contradicts itself) or unsupported (valid,
      // but a layout quench does not read). Bad scale values are found while the weight
      // streams, after the source's note.
      CHECK(r.err.find("quench: error: " + want.Find("code")->as_string() + ": ") !=
            std::string::npos);
      CHECK_FALSE(fs::exists(tmp / "out"));
    }
  }

  TEST_CASE("--dry-run plans without writing and lists every error; sizes match a real run") {
    qt::TempDir tmp;
    const fs::path out = tmp / "out";
    // Every planning error is listed (two down_proj tensors in two shards), nothing written.
    auto bad = qt::RunQuench({"convert", kTiny.string(), out.string(), "--scheme", "W4A16",
                              "--dry-run", "--report", (tmp / "plan.json").string()});
    CHECK(bad.exit_code == 3);
    CHECK(bad.err.find("model.layers.0.mlp.down_proj.weight") != std::string::npos);
    CHECK(bad.err.find("model.layers.1.mlp.down_proj.weight") != std::string::npos);
    CHECK(bad.err.find("2 error(s)") != std::string::npos);
    CHECK_FALSE(fs::exists(out));
    auto plan = quench::ReadJsonFile((tmp / "plan.json").string());
    REQUIRE(plan.ok());
    CHECK(plan->Find("dry_run")->as_bool());
    CHECK(plan->Find("errors")->as_array().size() == 2);
    CHECK(plan->Find("status")->as_string() == "unsupported");
    // A destination problem is reported along with the plan.
    qt::WriteBytes(tmp / "busy/x", "x");
    auto busy = qt::RunQuench({"convert", kTiny.string(), (tmp / "busy").string(), "--scheme",
                               "FP8_DYNAMIC", "--dry-run"});
    CHECK(busy.exit_code == 2);
    CHECK(busy.err.find("--overwrite") != std::string::npos);

    // A clean plan: every tensor listed, and the planned shard sizes are the real ones.
    auto good = qt::RunQuench({"convert", kTiny.string(), out.string(), "--scheme", "FP8_BLOCK",
                               "--dry-run"});
    CHECK(good.exit_code == 0);
    CHECK_FALSE(fs::exists(out));
    for (const auto& [_, l] : qt::LoadAll(kTiny)) {
      for (const auto& t : l.shard.header.tensors)
        CHECK(good.out.find(t.name) != std::string::npos);
    }
    auto real = qt::RunQuench({"convert", kTiny.string(), out.string(), "--scheme", "FP8_BLOCK",
                               "-q", "--report", (tmp / "run.json").string()});
    REQUIRE(real.exit_code == 0);
    for (const char* shard :
         {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}) {
      CHECK(good.out.find(std::string(shard) + " " ) != std::string::npos);
      CHECK(good.out.find(std::to_string(fs::file_size(out / shard)) + " bytes") !=
            std::string::npos);
    }
    // The run's report accounts for every tensor and byte actually written.
    auto rep = quench::ReadJsonFile((tmp / "run.json").string());
    REQUIRE(rep.ok());
    CHECK(rep->Find("status")->as_string() == "ok");
    CHECK_FALSE(rep->Find("dry_run")->as_bool());
    CHECK(rep->Find("tensors")->as_array().size() == 21);
    CHECK(rep->Find("totals")->Find("tensors_quantized")->as_uint() == 14);
    uint64_t files = 0;
    for (const auto& sh : rep->Find("shards")->as_array()) {
      CHECK(sh.Find("bytes")->as_uint() == fs::file_size(out / sh.Find("name")->as_string()));
      files += sh.Find("bytes")->as_uint();
    }
    CHECK(rep->Find("totals")->Find("bytes_out")->as_uint() == files);
    CHECK(rep->Find("peak_rss_bytes")->as_uint() > 0);
    CHECK(rep->Find("wall_seconds")->as_double() > 0);
    const quench::JsonValue& group = rep->Find("recipe")->Find("groups")->as_array()[0];
    CHECK(group.Find("weights")->Find("strategy")->as_string() == "block");
  }

  TEST_CASE("a failed run still writes its report, with the error") {
    qt::TempDir tmp;
    std::vector<float> v(32 * 16, 0.5f);
    v[3] = std::nanf("");
    WriteShard(tmp / "src/model.safetensors",
               {{"b.proj.weight", DType::kBF16, {32, 16}, Bf16Bytes(v)}});
    auto r = qt::RunQuench({"convert", (tmp / "src").string(), (tmp / "o").string(), "--scheme",
                            "FP8_DYNAMIC", "--report", (tmp / "r.json").string()});
    CHECK(r.exit_code == 3);
    auto rep = quench::ReadJsonFile((tmp / "r.json").string());
    REQUIRE(rep.ok());
    CHECK(rep->Find("status")->as_string() == "non-finite");
    CHECK(rep->Find("error")->as_string().find("b.proj.weight") != std::string::npos);
    // --report inside the source is refused like any write into it.
    auto in_src =
        qt::RunQuench({"convert", (tmp / "src").string(), (tmp / "o").string(), "--scheme",
                       "FP8_DYNAMIC", "--report", (tmp / "src/r.json").string()});
    CHECK(in_src.exit_code == 2);
    CHECK_FALSE(fs::exists(tmp / "src/r.json"));
  }

  TEST_CASE("inspect lists tensors and the quantization_config") {
    qt::TempDir tmp;
    REQUIRE(ConvertDir(kTiny, tmp / "o", "FP8_DYNAMIC").ok());
    auto r = qt::RunQuench({"inspect", (tmp / "o").string(), "--json"});
    REQUIRE(r.exit_code == 0);
    auto j = quench::ParseJson("inspect", r.out);
    REQUIRE(j.ok());
    CHECK(j->Find("files")->as_array().size() == 2);
    CHECK(j->Find("quantization_config")->Find("format")->as_string() == "float-quantized");
    uint64_t bytes = 0;
    for (const auto& f : j->Find("files")->as_array()) {
      for (const auto& t : f.Find("tensors")->as_array()) bytes += t.Find("bytes")->as_uint();
    }
    CHECK(j->Find("totals")->Find("bytes")->as_uint() == bytes);
    auto text = qt::RunQuench({"inspect", (tmp / "o/model-00001-of-00002.safetensors").string()});
    CHECK(text.exit_code == 0);
    CHECK(text.out.find("F8_E4M3") != std::string::npos);
  }

  TEST_CASE("weights in other formats are copied as the reference copies them, with a note") {
    // model_free_ptq copies every file but the shards byte for byte, .bin included (warning
    // that it skips them); Llama's repositories ship original/*.pth, as large as the model.
    qt::TempDir tmp;
    const fs::path src = tmp / "src";
    fs::copy(kTiny, src, fs::copy_options::recursive);
    fs::create_directories(src / "original");
    std::string pth(2u << 20, '\0');
    for (size_t i = 0; i < pth.size(); ++i) pth[i] = static_cast<char>(i * 131 % 251);
    qt::WriteBytes(src / "original/consolidated.00.pth", pth);
    qt::WriteBytes(src / "pytorch_model.bin", pth.substr(0, 1u << 20));  // the least noted
    qt::WriteBytes(src / "training_args.bin", pth.substr(0, 4096));  // not weights: no note
    const std::string note =
        "quench: copied unchanged, not quantized (weights in a format quench does not read; "
        "vLLM and transformers load the safetensors shards): original/consolidated.00.pth, "
        "pytorch_model.bin (3 MiB); leave them out of SRC";
    for (bool dry : {true, false}) {
      CAPTURE(dry);
      std::vector<std::string> argv = {"convert", src.string(), (tmp / "out").string(),
                                       "--scheme", "FP8_DYNAMIC"};
      if (dry) argv.push_back("--dry-run");
      auto r = qt::RunQuench(argv);
      REQUIRE_MESSAGE(r.exit_code == 0, r.err);
      CHECK_MESSAGE(r.err.find(note) != std::string::npos, r.err);
      CHECK(r.err.find("training_args") == std::string::npos);
    }
    for (const char* f : {"original/consolidated.00.pth", "pytorch_model.bin",
                          "training_args.bin"}) {
      CHECK_MESSAGE(qt::ReadBytes(tmp / "out" / f) == qt::ReadBytes(src / f), f);
    }
    // -q: no note.
    auto q = qt::RunQuench(
        {"convert", src.string(), (tmp / "q").string(), "--scheme", "FP8_DYNAMIC", "-q"});
    REQUIRE(q.exit_code == 0);
    CHECK(q.err.empty());
  }

  TEST_CASE("a shard the index does not name is converted with the others, with a note") {
    // Mistral's repositories ship consolidated.safetensors (the model again, under its own
    // names) beside the indexed shards; model_free_ptq converts every .safetensors file.
    qt::TempDir tmp;
    const fs::path src = tmp / "src";
    fs::copy(kTiny, src, fs::copy_options::recursive);
    const auto all = qt::LoadAll(kTiny);
    std::vector<qt::RawTensor> copy;
    for (const auto& t : all.at("model-00001-of-00002.safetensors").shard.header.tensors) {
      copy.push_back({"native." + t.name, t.dtype, t.shape, qt::TensorBytes(all, t.name)});
    }
    qt::WriteShard(src / "consolidated.safetensors", copy);
    auto r = qt::RunQuench({"convert", src.string(), (tmp / "out").string(), "--scheme",
                            "FP8_DYNAMIC"});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    CHECK_MESSAGE(r.err.find("quench: consolidated.safetensors: model.safetensors.index.json "
                             "names none of its tensors; converted and indexed with the other "
                             "shards") != std::string::npos,
                  r.err);
    CHECK(fs::exists(tmp / "out/consolidated.safetensors"));
    auto index = quench::ReadJsonFile((tmp / "out/model.safetensors.index.json").string());
    REQUIRE(index.ok());
    CHECK(index->Find("weight_map")->Find("native.model.layers.0.mlp.down_proj.weight")
              ->as_string() == "consolidated.safetensors");
    // Every shard indexed, or no index at all: no note.
    for (const fs::path& folder : {kTiny, qt::DataDir() / "golden/edge-bf16/src"}) {
      CAPTURE(folder);
      REQUIRE(fs::exists(folder));
      auto plain = qt::RunQuench({"convert", folder.string(), (tmp / "plain").string(),
                                  "--scheme", "FP8_DYNAMIC", "--dry-run"});
      CHECK(plain.err.find("names none of") == std::string::npos);
    }
  }

  TEST_CASE("a Hugging Face model ID reads the model's snapshot in the local cache") {
    // The cache as huggingface_hub lays it out: models--ORG--NAME/{blobs,refs/main,
    // snapshots/REVISION/FILE -> ../../blobs/HASH}.
    qt::TempDir tmp;
    const fs::path cache = tmp / "hub", repo = cache / "models--acme--tiny";
    auto snapshot = [&](const std::string& rev) {
      fs::create_directories(repo / "snapshots" / rev);
      for (const std::string& f : qt::ListFiles(kTiny)) {
        const std::string blob = rev + "-" + std::to_string(std::hash<std::string>()(f));
        fs::create_directories(repo / "blobs");
        fs::copy_file(kTiny / f, repo / "blobs" / blob);
        fs::create_symlink("../../blobs/" + blob, repo / "snapshots" / rev / f);
      }
    };
    snapshot("0123abc");
    qt::WriteBytes(repo / "refs/main", "0123abc");
    const std::string bin = qt::QuenchBin().string();
    const std::vector<std::pair<std::string, std::string>> env = {{"HF_HUB_CACHE", cache.string()}};
    REQUIRE(qt::RunQuench({"convert", kTiny.string(), (tmp / "want").string(), "--scheme",
                           "FP8_DYNAMIC", "-q"})
                .exit_code == 0);

    auto r = qt::RunCommand({bin, "convert", "acme/tiny", (tmp / "out").string(), "--scheme",
                             "FP8_DYNAMIC"}, env);
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    CHECK(r.err.find("quench: acme/tiny: the Hugging Face cache's snapshot " +
                     (repo / "snapshots/0123abc").string() + " (refs/main)\n") == 0);
    CHECK(qt::CheckSameFiles(tmp / "want", tmp / "out") > 0);
    auto v = qt::RunCommand({bin, "verify", (tmp / "out").string(), "acme/tiny", "-q"}, env);
    CHECK_MESSAGE(v.exit_code == 0, v.err);
    CHECK(v.err.empty());  // -q: no note
    auto i = qt::RunCommand({bin, "inspect", "acme/tiny", "--json"}, env);
    CHECK_MESSAGE(i.exit_code == 0, i.err);

    // $HF_HOME/hub when HF_HUB_CACHE is not set; no refs/main: the only snapshot.
    fs::remove(repo / "refs/main");
    fs::create_directories(tmp / "home");
    fs::rename(cache, tmp / "home/hub");
    auto home = qt::RunCommand({bin, "convert", "acme/tiny", (tmp / "out2").string(), "--scheme",
                                "FP8_DYNAMIC", "-q"},
                               {{"HF_HUB_CACHE", ""}, {"HUGGINGFACE_HUB_CACHE", ""},
                                {"HF_HOME", (tmp / "home").string()}});
    CHECK_MESSAGE(home.exit_code == 0, home.err);
    CHECK(qt::CheckSameFiles(tmp / "want", tmp / "out2") > 0);
    fs::rename(tmp / "home/hub", cache);

    // Two snapshots and no refs/main, an ID the cache lacks: exit 2, saying what to do.
    snapshot("4567def");
    auto two = qt::RunCommand({bin, "convert", "acme/tiny", (tmp / "o3").string(), "--scheme",
                               "FP8_DYNAMIC"}, env);
    CHECK(two.exit_code == 2);
    CHECK_MESSAGE(two.err.find("has 2 snapshots and no refs/main naming one; pass the snapshot's "
                               "folder") != std::string::npos, two.err);
    auto missing = qt::RunCommand({bin, "convert", "acme/huge", (tmp / "o4").string(),
                                   "--scheme", "FP8_DYNAMIC"}, env);
    CHECK(missing.exit_code == 2);
    CHECK_MESSAGE(missing.err == "quench: error: usage: acme/huge: no such folder; as a Hugging "
                                 "Face model ID it is not in the cache " + cache.string() +
                                 "; quench reads local files only: download it first (`hf "
                                 "download acme/huge`), then pass the ID again or the folder\n",
                  missing.err);
    CHECK_FALSE(fs::exists(tmp / "o3"));
    CHECK_FALSE(fs::exists(tmp / "o4"));

    // A folder of that relative name on this machine comes first.
    const fs::path cwd = fs::current_path();
    fs::create_directories(tmp / "work/acme");
    fs::create_directory_symlink(fs::absolute(kTiny), tmp / "work/acme/huge");
    fs::current_path(tmp / "work");
    auto local = qt::RunCommand({bin, "convert", "acme/huge", (tmp / "o5").string(), "--scheme",
                                 "FP8_DYNAMIC"}, env);
    fs::current_path(cwd);
    CHECK_MESSAGE(local.exit_code == 0, local.err);
    CHECK(local.err.find("Hugging Face") == std::string::npos);
  }

  TEST_CASE("progress: plain lines when not a terminal, nothing with --quiet, dry runs alike") {
    qt::TempDir tmp;
    // The tests' stderr is a file, so the display must use plain lines (no carriage returns),
    // ending with the 100% line and the summary.
    auto r =
        qt::RunQuench({"convert", kTiny.string(), (tmp / "a").string(), "--scheme", "FP8_DYNAMIC"});
    REQUIRE(r.exit_code == 0);
    CHECK(r.err.find("100.0%") != std::string::npos);
    CHECK(r.err.find('\r') == std::string::npos);
    CHECK(r.err.find("quench: wrote") != std::string::npos);
    auto q = qt::RunQuench(
        {"convert", kTiny.string(), (tmp / "b").string(), "--scheme", "FP8_DYNAMIC", "-q"});
    REQUIRE(q.exit_code == 0);
    CHECK(q.err.empty());
    CHECK(q.out.empty());
    // A dry run prints the same notes as a run (tiny-llama's embeddings and output head are
    // left unquantized by default), and -q silences them there too: its table on stdout only.
    auto d = qt::RunQuench({"convert", kTiny.string(), (tmp / "c").string(), "--scheme",
                            "FP8_DYNAMIC", "--dry-run"});
    REQUIRE(d.exit_code == 0);
    CHECK(d.err.find("quench: left unquantized by default") != std::string::npos);
    auto dq = qt::RunQuench({"convert", kTiny.string(), (tmp / "c").string(), "--scheme",
                             "FP8_DYNAMIC", "--dry-run", "-q"});
    REQUIRE(dq.exit_code == 0);
    CHECK(dq.err.empty());
    CHECK(dq.out == d.out);
  }

  TEST_CASE("help and version describe what exists") {
    auto h = qt::RunQuench({"--help"});
    CHECK(h.exit_code == 0);
    for (const char* cmd : {"convert", "inspect", "schemes"})
      CHECK(h.out.find(cmd) != std::string::npos);
    auto c = qt::RunQuench({"convert", "--help"});
    CHECK(c.exit_code == 0);
    for (const char* flag : {"--scheme", "--targets", "--ignore", "--no-default-ignore",
                             "--memory-limit", "--threads", "--overwrite", "--quiet",
                             "--dry-run", "--report", "--group-size", "--asymmetric",
                             "--recipe", "--resume", "--prune", "--prune-granularity",
                             "FP8_DYNAMIC", "FP8_BLOCK", "(--scheme NAME | --recipe FILE)",
                             "from --stats: NVFP4 FP8", "none: with --prune", "BF16:"}) {
      CHECK_MESSAGE(c.out.find(flag) != std::string::npos, flag);
    }
    auto v = qt::RunQuench({"--version"});
    CHECK(v.exit_code == 0);
    CHECK(v.out.find("quench ") == 0);
    // The SIMD paths line: Highway's target (every build compiles at least one) and the
    // hand-written kernels' checks.
    CHECK(v.out.find("\nkernels: Highway ") != std::string::npos);
    CHECK(v.out.find("hand-written AVX-512 BF16 ") != std::string::npos);
    CHECK(qt::RunQuench({"frobnicate"}).exit_code == 2);
  }

  TEST_CASE("--version's kernels line says what /proc/cpuinfo's flags allow") {
    // The hand-written kernels' checks against the kernel's own report of the CPU (an
    // independent source): AVX-512 BF16 needs AVX-512 F/BW/VL/DQ, VBMI, BF16 and BMI2; VBMI
    // the same less BF16; AVX2 needs AVX2, BMI2 and POPCNT.
    const qt::RunResult v = qt::RunQuench({"--version"});
    REQUIRE(v.exit_code == 0);
    const size_t at = v.out.find("\nkernels: Highway ");
    REQUIRE(at != std::string::npos);
    const std::string line = v.out.substr(at + 1, v.out.find('\n', at + 1) - at - 1);
    CAPTURE(line);
#if defined(__linux__) && defined(__x86_64__)
    const std::string info = qt::ReadBytes("/proc/cpuinfo");
    const size_t flags_at = info.find("\nflags");
    REQUIRE(flags_at != std::string::npos);
    std::set<std::string> flags;
    {
      const std::string row = info.substr(flags_at, info.find('\n', flags_at + 1) - flags_at);
      std::istringstream words(row.substr(row.find(':') + 1));
      for (std::string w; words >> w;) flags.insert(w);
    }
    auto all = [&](std::initializer_list<const char*> names) {
      for (const char* n : names) {
        if (flags.count(n) == 0) return false;
      }
      return true;
    };
    const bool vbmi = all({"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512vbmi", "bmi2"});
    const bool bf16 = vbmi && all({"avx512_bf16"});
    const bool avx2 = all({"avx2", "bmi2", "popcnt"});
    auto says = [&](const std::string& name, bool yes) {
      return line.find(name + (yes ? " yes" : " no")) != std::string::npos;
    };
    CHECK(says("AVX-512 BF16", bf16));
    CHECK(says("AVX-512 VBMI", vbmi));
    CHECK(says("AVX2", avx2));
    // Highway's target (hwy/targets.cc, 1.0): AVX2 needs AVX, AVX2, BMI1/2, F16C, FMA, LZCNT
    // and MOVBE; AVX3 those and AVX-512 F/BW/DQ/VL; else an older target.
    const bool hwy_avx2 =
        all({"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe"});
    const bool avx3 = hwy_avx2 && all({"avx512f", "avx512bw", "avx512dq", "avx512vl"});
    CHECK((line.find("Highway AVX3") != std::string::npos) == avx3);
    if (!avx3) CHECK((line.find("Highway AVX2") != std::string::npos) == hwy_avx2);
#else
    CHECK(line.find("; hand-written AVX-512 BF16 ") != std::string::npos);
#endif
  }

  TEST_CASE("README's CLI reference and the commands' help name the same options") {
    // The options of every command's --help, and those README.md's "CLI reference" names
    // (from its heading to the next level-2 heading): the same set, so that neither
    // documents a flag the other lacks.
    const auto options = [](const std::string& text) {
      std::set<std::string> out;
      for (size_t i = text.find("--"); i != std::string::npos; i = text.find("--", i + 2)) {
        size_t j = i + 2;
        if (j >= text.size() || text[j] < 'a' || text[j] > 'z') continue;
        if (i > 0 &&
            (std::isalnum(static_cast<unsigned char>(text[i - 1])) || text[i - 1] == '-')) {
          continue;  // inside a word or a longer run of dashes
        }
        while (j < text.size() && (std::islower(static_cast<unsigned char>(text[j])) ||
                                   std::isdigit(static_cast<unsigned char>(text[j])) ||
                                   text[j] == '-')) {
          ++j;
        }
        std::string flag = text.substr(i, j - i);
        while (flag.back() == '-') flag.pop_back();
        out.insert(flag);
      }
      return out;
    };
    std::string help;
    for (const std::vector<std::string>& cmd : std::vector<std::vector<std::string>>{
             {"--help"}, {"convert", "--help"}, {"inspect", "--help"}, {"verify", "--help"},
             {"finalize", "--help"}, {"schemes", "--help"}, {"stats", "--help"}}) {
      auto r = qt::RunQuench(cmd);
      REQUIRE_MESSAGE(r.exit_code == 0, cmd[0]);
      help += r.out;
    }
    const std::string readme = qt::ReadBytes(qt::DataDir() / "../README.md");
    const size_t begin = readme.find("\n## CLI reference\n");
    REQUIRE(begin != std::string::npos);
    const size_t end = readme.find("\n## ", begin + 1);
    REQUIRE(end != std::string::npos);
    const std::set<std::string> in_help = options(help);
    const std::set<std::string> in_readme = options(readme.substr(begin, end - begin));
    REQUIRE(in_help.size() > 40);
    for (const std::string& f : in_help) CHECK_MESSAGE(in_readme.count(f) == 1, f);
    for (const std::string& f : in_readme) CHECK_MESSAGE(in_help.count(f) == 1, f);
  }

  TEST_CASE("every command's error line names its category as its exit code does") {
    // exit code -> the categories Status::ToString names for it (include/quench/status.h).
    const auto categories = [](int code) -> std::vector<std::string> {
      if (code == 2) return {"usage"};
      if (code == 3) return {"invalid-input", "unsupported", "non-finite"};
      if (code == 4) return {"io"};
      return {};
    };
    const std::string absent = (qt::TempDir().path() / "absent").string();
    const std::vector<std::vector<std::string>> runs = {
        {"frobnicate"},
        {"convert", "--bogus"},
        {"convert", kTiny.string(), absent, "--scheme", "W4A16", "--group-size", "abc"},
        {"convert", kTiny.string(), absent, "--scheme", "NO_SUCH_SCHEME"},
        {"convert", absent, absent + "-out", "--scheme", "W4A16"},
        {"inspect", absent},
        {"verify", absent},
        {"finalize"},
        {"stats", "merge", absent},
        {"stats", "inspect", absent},
        {"stats", "import-imatrix", absent}};
    for (const auto& args : runs) {
      std::string what;
      for (const std::string& a : args) what += a + " ";
      CAPTURE(what);
      const qt::RunResult r = qt::RunQuench(args);
      CAPTURE(r.err);
      const std::vector<std::string> names = categories(r.exit_code);
      REQUIRE_FALSE(names.empty());
      // One error line (an unknown command's is followed by the help).
      size_t lines = 0;
      for (size_t at = 0; (at = r.err.find("quench: error: ", at)) != std::string::npos; ++at) {
        ++lines;
      }
      CHECK(lines == 1);
      std::string rest = r.err.substr(0, r.err.find('\n'));
      const std::string lead = "quench: error: ";
      REQUIRE(rest.starts_with(lead));
      rest = rest.substr(lead.size());
      if (rest.starts_with("verify: ")) rest = rest.substr(8);  // verify names itself first
      bool named = false;
      for (const std::string& n : names) named = named || rest.starts_with(n + ": ");
      CHECK(named);
    }
  }
}
