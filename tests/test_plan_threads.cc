// Planning a checkpoint of many tensors on several threads (shards' headers read and shards
// planned at once) gives the plan of one thread: the same dry-run listing, notes, errors in
// source order, report and output bytes.
#include <doctest/doctest.h>

#include <algorithm>
#include <map>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "format/json.h"
#include "format/model_folder.h"
#include "format/safetensors.h"
#include "pipeline/resume.h"
#include "plan/fused_plan.h"
#include "plan/fused_sets.h"
#include "plan/matcher.h"
#include "plan/planner.h"
#include "test_util.h"

namespace qt = quench::testing;
namespace fs = std::filesystem;
using quench::DType;

namespace {

// A shard of `tensors` (small BF16 values), laid out as safetensors writes it.
void WriteShardFast(const fs::path& file, const std::vector<qt::RawTensor>& tensors) {
  std::vector<quench::TensorSpec> specs;
  for (const auto& t : tensors) specs.push_back({t.name, t.dtype, t.shape, t.bytes.size()});
  auto layout = quench::LayOutSafetensors(specs);
  std::string out = layout.header;
  out.resize(layout.file_size);
  // LayOutSafetensors lists tensors by name; `position` maps each spec to its place there.
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& ti = layout.tensors[layout.position[i]];
    std::memcpy(out.data() + layout.data_start + ti.begin, tensors[i].bytes.data(),
                tensors[i].bytes.size());
  }
  qt::WriteBytes(file, out);
}

std::string Values(size_t n, size_t seed) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) {
    v[i] = 0.01f * static_cast<float>((seed * 131 + i * 7919) % 199) - 1.0f;
  }
  return qt::Bf16Bytes(v);
}

constexpr int kShards = 4;
constexpr int kLayersPerShard = 8;
constexpr int kExperts = 128;  // 3 projections each: 3,072 expert weights per shard

// Four shards of a MoE-shaped checkpoint, 12,500 tensors: per layer 128 experts x 3
// projections of [2, 16], a router gate (default-ignored), a norm; shard 1 and shard 3 each
// hold one 3-D ".weight" (a planning error), shard 2 a 1-D "LayerNorm.weight" (copied,
// noted).
void WriteCheckpoint(const fs::path& dir, bool with_errors) {
  for (int s = 0; s < kShards; ++s) {
    std::vector<qt::RawTensor> ts;
    for (int l = s * kLayersPerShard; l < (s + 1) * kLayersPerShard; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      ts.push_back({p + "post_attention_layernorm.weight", DType::kBF16, {16}, Values(16, l)});
      ts.push_back({p + "mlp.gate.weight", DType::kBF16, {kExperts, 16}, Values(kExperts * 16, l)});
      for (int e = 0; e < kExperts; ++e) {
        for (const char* m : {"gate_proj", "up_proj", "down_proj"}) {
          ts.push_back({p + "mlp.experts." + std::to_string(e) + "." + m + ".weight",
                        DType::kBF16, {2, 16}, Values(32, l * 1000 + e)});
        }
      }
    }
    if (with_errors && (s == 1 || s == 3)) {
      ts.push_back({"model.layers." + std::to_string(s * kLayersPerShard) + ".mlp.stack.weight",
                    DType::kBF16, {2, 2, 16}, Values(64, s)});
    }
    if (s == 2) {
      ts.push_back(
          {"model.layers.16.attention.LayerNorm.weight", DType::kBF16, {16}, Values(16, 9)});
    }
    WriteShardFast(dir / ("model-0000" + std::to_string(s + 1) + "-of-0000" +
                          std::to_string(kShards) + ".safetensors"),
                   ts);
  }
  qt::WriteBytes(dir / "config.json", R"({"model_type": "llama", "hidden_size": 16})");
}

qt::RunResult Run(const fs::path& src, const fs::path& out, int threads,
                  const std::vector<std::string>& extra) {
  std::vector<std::string> args = {"convert", src.string(), out.string(), "--scheme",
                                   "FP8_DYNAMIC", "--threads", std::to_string(threads),
                                   "--ignore", "re:model\\.layers\\.2[0-3]\\..*",
                                   "--ignore", "model.nowhere.proj"};
  args.insert(args.end(), extra.begin(), extra.end());
  return qt::RunQuench(args);
}

// The report without what differs from run to run (times, memory, the command line).
std::string StableReport(const fs::path& file) {
  auto r = quench::ReadJsonFile(file.string());
  REQUIRE(r.ok());
  quench::JsonValue::Object kept;
  for (const auto& [key, value] : r->as_object()) {
    if (key.find("seconds") == std::string::npos && key.find("rss") == std::string::npos &&
        key != "command" && key != "started" && key != "finished") {
      kept.emplace_back(key, value);
    }
  }
  return quench::DumpPythonJson(quench::JsonValue(std::move(kept)));
}

// Each fused-set error of `p` as "A|B" from its message ("fused set of 'A': 'A' is ... but
// 'B' is ..."): the set's first member and the member that differs.
std::vector<std::string> MixedSetsNamed(const quench::Plan& p) {
  std::vector<std::string> out;
  for (const quench::Status& e : p.errors) {
    const std::string& m = e.message();
    const size_t a = m.find('\'') + 1, a_end = m.find('\'', a);
    const size_t b = m.find("but '") + 5, b_end = m.find('\'', b);
    out.push_back(m.substr(a, a_end - a) + "|" + m.substr(b, b_end - b));
  }
  return out;
}

}  // namespace

TEST_SUITE("plan_threads") {
  TEST_CASE("a plan made on several threads is the plan of one: listing, notes, errors") {
    qt::TempDir tmp;
    WriteCheckpoint(tmp / "src", /*with_errors=*/true);
    qt::RunResult one = Run(tmp / "src", tmp / "out", 1,
                            {"--dry-run", "--report", (tmp / "one.json").string()});
    qt::RunResult four = Run(tmp / "src", tmp / "out", 4,
                             {"--dry-run", "--report", (tmp / "four.json").string()});
    // Both 3-D weights are refused, shard 1's before shard 3's (source order), and nothing
    // is written.
    CHECK(one.exit_code == 3);
    const size_t first = one.err.find("model.layers.8.mlp.stack.weight");
    const size_t second = one.err.find("model.layers.24.mlp.stack.weight");
    CHECK(first != std::string::npos);
    CHECK(second != std::string::npos);
    CHECK(first < second);
    CHECK(one.err.find("2 error(s)") != std::string::npos);
    // The notes gather what every shard selected: the routers of the 28 layers not ignored,
    // the 1-D weight of shard 2, the ignore entry that matched nothing.
    CHECK(one.err.find("(28 in all)") != std::string::npos);
    CHECK(one.err.find("1 targeted .weight tensor(s) with fewer than 2 dimensions") !=
          std::string::npos);
    CHECK(one.err.find("'model.nowhere.proj' matches no targeted weight") != std::string::npos);
    // 32 layers x 384 expert weights, less the 4 layers (20-23) ignored.
    CHECK(one.out.find(": " + std::to_string(28 * 3 * kExperts) + " tensors") != std::string::npos);
    CHECK_FALSE(fs::exists(tmp / "out"));
    CHECK(four.exit_code == one.exit_code);
    CHECK(four.out == one.out);
    CHECK(four.err == one.err);
    CHECK(StableReport(tmp / "four.json") == StableReport(tmp / "one.json"));
  }

  TEST_CASE("the tensor array made from the headers' count gives the plan made without it") {
    // LoadModelFolder's headers_read gets every shard's tensor count once; BuildPlan given
    // value-initialised entries of any number (none, too few, exactly, a few too many, twice
    // as many) makes the plan it makes alone: the same fingerprint (shards, headers, every
    // tensor's plan, the files' contents), errors and tensor count.
    qt::TempDir tmp;
    WriteCheckpoint(tmp / "src", /*with_errors=*/true);
    size_t calls = 0, counted = 0;
    auto folder = quench::LoadModelFolder(tmp / "src", [&](size_t n) {
      ++calls;
      counted = n;
    });
    REQUIRE(folder.ok());
    size_t in_headers = 0;
    for (const quench::Shard& s : folder->shards) in_headers += s.header.tensors.size();
    CHECK(calls == 1);
    CHECK(counted == in_headers);
    CHECK(in_headers == static_cast<size_t>(kShards * kLayersPerShard * (2 + 3 * kExperts) + 3));
    quench::PlanOptions o;
    o.dst = tmp / "out";
    o.scheme = "FP8_DYNAMIC";
    auto alone = quench::BuildPlan(*folder, o, 2);
    REQUIRE(alone.ok());
    const size_t n = alone->tensors.size();
    for (size_t made : {size_t{0}, n / 2, n, n + n / 8, n + n / 8 + 1, 2 * n}) {
      CAPTURE(made);
      auto plan = quench::BuildPlan(*folder, o, 2, std::vector<quench::PlannedTensor>(made));
      REQUIRE(plan.ok());
      CHECK(plan->tensors.size() == n);
      CHECK(quench::PlanFingerprint(*plan) == quench::PlanFingerprint(*alone));
      REQUIRE(plan->errors.size() == alone->errors.size());
      for (size_t i = 0; i < plan->errors.size(); ++i) {
        CHECK(plan->errors[i].message() == alone->errors[i].message());
      }
    }
    // A header that cannot be read: no count.
    qt::WriteBytes(tmp / "src" / "model-00002-of-00004.safetensors", "not a header");
    calls = 0;
    CHECK_FALSE(quench::LoadModelFolder(tmp / "src", [&](size_t) { ++calls; }).ok());
    CHECK(calls == 0);
  }

  TEST_CASE("a shard's outputs are in its file's order, each tensor's outputs its own") {
    // The planner plans a shard's outputs in plan order and LayOutShard lists them in file
    // order, linking each tensor to its own. Each shard's header, parsed back by the reader,
    // must list exactly the outputs in the order given (name, dtype, shape, offset, size);
    // each planned tensor's outputs must be its module's, in the scheme's slot order
    // (FP8_DYNAMIC: weight, weight_scale; W4A16: weight_packed, weight_scale, weight_shape,
    // the last holding the shape's bytes), each output taken by one tensor; on 1 and 3
    // threads.
    qt::TempDir tmp;
    WriteCheckpoint(tmp / "src", /*with_errors=*/false);
    auto folder = quench::LoadModelFolder(tmp / "src");
    REQUIRE(folder.ok());
    const std::map<std::string, std::vector<std::string>> slots = {
        {"FP8_DYNAMIC", {"weight", "weight_scale"}},
        {"W4A16", {"weight_packed", "weight_scale", "weight_shape"}}};
    for (const auto& [scheme, suffixes] : slots) {
      for (int threads : {1, 3}) {
        CAPTURE(scheme);
        CAPTURE(threads);
        quench::PlanOptions o;
        o.dst = tmp / "out";
        o.scheme = scheme;
        if (scheme == "W4A16") o.group_size = 16;  // the experts' rows have 16 columns
        auto plan = quench::BuildPlan(*folder, o, threads);
        REQUIRE(plan.ok());
        REQUIRE(plan->errors.empty());
        std::vector<std::vector<int>> taken(plan->shards.size());
        for (size_t si = 0; si < plan->shards.size(); ++si) {
          const quench::PlannedShard& ps = plan->shards[si];
          taken[si].assign(ps.outputs.size(), 0);
          auto h = quench::ParseSafetensorsHeader(
              ps.rel_name, std::string_view(ps.header).substr(8), ps.file_size);
          REQUIRE(h.ok());
          std::vector<quench::TensorInfo> listed = h->tensors;
          std::sort(listed.begin(), listed.end(),
                    [](const auto& a, const auto& b) { return a.begin < b.begin; });
          REQUIRE(listed.size() == ps.outputs.size());
          for (size_t k = 0; k < listed.size(); ++k) {
            const quench::PlannedOutput& out = ps.outputs[k];
            CHECK(out.name == listed[k].name);
            CHECK(out.dtype == listed[k].dtype);
            CHECK(out.shape == listed[k].shape);
            CHECK(out.file_offset == h->data_start + listed[k].begin);
            CHECK(out.nbytes == listed[k].nbytes());
          }
        }
        size_t quantized = 0;
        for (const quench::PlannedTensor& t : plan->tensors) {
          const std::string module = t.name.substr(0, t.name.rfind('.'));
          const std::vector<quench::PlannedOutput>& outs = plan->shards[t.shard].outputs;
          if (t.action != quench::TensorAction::kQuantize) {
            REQUIRE(t.outputs.size() == 1);
            CHECK(outs[t.outputs[0]].name == t.name);
            ++taken[t.shard][t.outputs[0]];
            continue;
          }
          ++quantized;
          REQUIRE(t.outputs.size() == suffixes.size());
          for (size_t j = 0; j < suffixes.size(); ++j) {
            const quench::PlannedOutput& out = outs[t.outputs[j]];
            CHECK(out.name == module + "." + suffixes[j]);
            ++taken[t.shard][t.outputs[j]];
            if (suffixes[j] == "weight_shape") {
              std::string bytes;
              for (uint64_t d : t.shape) {
                for (int b = 0; b < 8; ++b) bytes.push_back(static_cast<char>(d >> (8 * b)));
              }
              CHECK(out.constant == bytes);
            }
          }
        }
        // Every expert weight of the 32 layers (nothing ignored here; routers and norms are
        // copied).
        CHECK(quantized == static_cast<size_t>(kShards * kLayersPerShard * 3 * kExperts));
        for (const auto& shard : taken) {
          CHECK(std::all_of(shard.begin(), shard.end(), [](int n) { return n == 1; }));
        }
      }
    }
  }

  TEST_CASE("the index made after planning is the plan's own, its length known before") {
    // BuildPlan given late_index leaves that plan.files entry empty and the rest of the plan
    // as it is; PlanIndexJson then makes the text BuildPlan makes, and BuildPlan (as
    // PlanIndexJsonSize) gives its length without it: the 4-shard checkpoint, and one shard whose
    // names need escapes (a quote, a backslash, a control character, non-ASCII: Python's
    // ensure_ascii).
    qt::TempDir tmp;
    WriteCheckpoint(tmp / "many", /*with_errors=*/false);
    WriteShardFast(tmp / "odd" / "model.safetensors",
                   {{"a.\"q\".weight", DType::kBF16, {2, 16}, Values(32, 1)},
                    {"b.back\\slash.bias", DType::kBF16, {16}, Values(16, 2)},
                    {"c.tab\t.bias", DType::kBF16, {16}, Values(16, 3)},
                    {"d.caf\xc3\xa9.weight", DType::kBF16, {2, 16}, Values(32, 4)},
                    {"e.plain.weight", DType::kBF16, {2, 16}, Values(32, 5)}});
    qt::WriteBytes(tmp / "odd" / "config.json", R"({"model_type": "llama", "hidden_size": 16})");
    for (const char* name : {"many", "odd"}) {
      CAPTURE(name);
      auto folder = quench::LoadModelFolder(tmp / name);
      REQUIRE(folder.ok());
      quench::PlanOptions o;
      o.dst = tmp / "out";
      o.scheme = "FP8_DYNAMIC";
      auto alone = quench::BuildPlan(*folder, o, 2);
      REQUIRE(alone.ok());
      quench::LateIndex late_index;
      auto late = quench::BuildPlan(*folder, o, 2, {}, &late_index);
      REQUIRE(late.ok());
      const size_t index_file = late_index.file;
      REQUIRE(index_file < late->files.size());
      REQUIRE(late->files.size() == alone->files.size());
      CHECK(late->files[index_file].rel_name == "model.safetensors.index.json");
      CHECK(late->files[index_file].contents.empty());
      for (size_t i = 0; i < late->files.size(); ++i) {
        if (i == index_file) continue;
        CHECK(late->files[i].rel_name == alone->files[i].rel_name);
        CHECK(late->files[i].contents == alone->files[i].contents);
      }
      const std::string& index = alone->files[index_file].contents;
      // The text has an entry for every output of every shard.
      auto parsed = quench::ParseJson("index", index);
      REQUIRE(parsed.ok());
      size_t outputs = 0;
      for (const quench::PlannedShard& ps : alone->shards) outputs += ps.outputs.size();
      const quench::JsonValue* map = parsed->Find("weight_map");
      REQUIRE(map != nullptr);
      CHECK(map->as_object().size() == outputs);
      CHECK(quench::PlanIndexJson(*late) == index);
      CHECK(quench::PlanIndexJsonSize(*late) == index.size());
      CHECK(late_index.size == index.size());
      if (std::string(name) == "odd") {
        CHECK(index.find("a.\\\"q\\\".weight") != std::string::npos);
        CHECK(index.find("d.caf\\u00e9.weight") != std::string::npos);
      }
      late->files[index_file].contents = quench::PlanIndexJson(*late);
      CHECK(quench::PlanFingerprint(*late) == quench::PlanFingerprint(*alone));
    }
  }

  TEST_CASE("the fused-set check in parts, merged, reports what one pass reports") {
    // Modules of fused sets (q/k/v, gate/up of experts) in plan order, some split across
    // parts, with groups drawn so that sets are uniform, mixed in one part, mixed only across
    // parts, or start unquantized; plus tensors no set takes. Expected: each set's first
    // member and its first member of another group, from a map of every set's members
    // (independent of the table and the parts), reported in key order.
    quench::Plan plan;
    plan.groups.resize(2);
    plan.groups[0].key = "group_0";
    plan.groups[1].key = "group_1";
    uint64_t state = 12345;
    const auto draw = [&state](uint64_t n) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      return (state >> 33) % n;
    };
    const auto add = [&](const std::string& name, std::vector<uint64_t> shape) {
      quench::PlannedTensor t;
      t.name = name;
      t.shape = std::move(shape);
      const uint64_t g = draw(8);
      t.group = g < 6 ? 0 : g == 6 ? 1 : -1;
      if (t.group < 0) t.why = "ignored";
      plan.tensors.push_back(std::move(t));
    };
    for (int l = 0; l < 6; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      for (const char* m : {"q_proj", "k_proj", "v_proj", "o_proj"}) {
        add(p + "self_attn." + m + ".weight", {2, 16});
      }
      add(p + "input_layernorm.weight", {16});
      for (int e = 0; e < 12; ++e) {
        const std::string x = p + "mlp.experts." + std::to_string(e) + ".";
        add(x + "gate_proj.weight", {2, 16});
        add(x + "down_proj.weight", {16, 2});
        add(x + "up_proj.weight", {2, 16});
        add(x + "up_proj.bias", {2});
      }
    }
    // A layer's k_proj far from its q_proj (a set across the parts) and a 1-D member.
    add("model.layers.0.self_attn.k_proj.weight", {2, 16});
    add("model.layers.1.self_attn.v_proj.weight", {16});
    const size_t n = plan.tensors.size();

    std::map<std::string, std::vector<size_t>> members;
    for (size_t i = 0; i < n; ++i) {
      const quench::PlannedTensor& t = plan.tensors[i];
      const auto [module, param] = quench::SplitModuleParam(t.name);
      const std::string key = quench::FusedSetKey(module);
      if (param == "weight" && t.shape.size() == 2 && !key.empty()) members[key].push_back(i);
    }
    std::vector<std::string> expected;
    size_t mixed_sets = 0;
    for (const auto& [key, m] : members) {
      for (size_t i : m) {
        if (plan.tensors[i].group == plan.tensors[m.front()].group) continue;
        ++mixed_sets;
        expected.push_back(plan.tensors[m.front()].name + "|" + plan.tensors[i].name);
        break;
      }
    }
    REQUIRE(mixed_sets > 10);
    REQUIRE(mixed_sets < members.size());
    quench::Plan whole = plan;
    quench::CheckFusedConsistency(whole);
    CHECK(MixedSetsNamed(whole) == expected);
    for (size_t m = 0; m <= n; ++m) {
      CAPTURE(m);
      quench::Plan two = plan;
      quench::FusedSetScan first(two, 0, m);
      first.Merge(quench::FusedSetScan(two, m, n));
      first.Report(two);
      CHECK(MixedSetsNamed(two) == expected);
      REQUIRE(two.errors.size() == whole.errors.size());
      for (size_t i = 0; i < two.errors.size(); ++i) {
        CHECK(two.errors[i].message() == whole.errors[i].message());
      }
      // Three parts, merged in order.
      const size_t k = m + (n - m) / 3;
      quench::Plan three = plan;
      quench::FusedSetScan a(three, 0, m);
      a.Merge(quench::FusedSetScan(three, m, k));
      a.Merge(quench::FusedSetScan(three, k, n));
      a.Report(three);
      CHECK(MixedSetsNamed(three) == expected);
      // The same three parts kept in a vector that grows as each is added (as Finish keeps
      // them), then merged into the first: the parts are moved, never copied (a copy's table
      // would point into the original's keys).
      quench::Plan kept = plan;
      std::vector<std::optional<quench::FusedSetScan>> parts;
      parts.emplace_back(std::in_place, kept, 0, m);
      parts.emplace_back(std::in_place, kept, m, k);
      parts.emplace_back(std::in_place, kept, k, n);
      parts.front()->Merge(std::move(*parts[1]));
      parts.front()->Merge(std::move(*parts[2]));
      parts.front()->Report(kept);
      CHECK(MixedSetsNamed(kept) == expected);
    }
    static_assert(!std::is_copy_constructible_v<quench::FusedSetScan>);
  }

  TEST_CASE("mixed fused sets in every shard, planned on several threads: one pass's errors") {
    // A thread left without a shard to plan scans its last shard for the fused-set check
    // while another still plans (Planner::PlanShards); Finish scans the rest and merges all
    // in plan order. Which shards are scanned early depends on timing, the errors must not.
    // The gate_proj of experts 1 and 5 ignored in every layer: each such expert's gate/up
    // set is mixed, named by its gate_proj (its first member) and its up_proj, in key order
    // (which is the gate_proj names' order here).
    qt::TempDir tmp;
    WriteCheckpoint(tmp / "src", /*with_errors=*/false);
    auto folder = quench::LoadModelFolder(tmp / "src");
    REQUIRE(folder.ok());
    quench::PlanOptions o;
    o.dst = tmp / "out";
    o.scheme = "FP8_DYNAMIC";
    o.ignore = {"re:.*\\.experts\\.(1|5)\\.gate_proj$"};
    std::vector<std::string> expected;
    for (int l = 0; l < kShards * kLayersPerShard; ++l) {
      for (int e : {1, 5}) {
        const std::string x = "model.layers." + std::to_string(l) + ".mlp.experts." +
                              std::to_string(e) + ".";
        expected.push_back(x + "gate_proj.weight|" + x + "up_proj.weight");
      }
    }
    std::sort(expected.begin(), expected.end());
    auto one = quench::BuildPlan(*folder, o, 1);
    REQUIRE(one.ok());
    CHECK(MixedSetsNamed(*one) == expected);
    for (int threads : {2, 3, 4}) {
      for (int round = 0; round < 8; ++round) {
        CAPTURE(threads);
        CAPTURE(round);
        auto plan = quench::BuildPlan(*folder, o, threads);
        REQUIRE(plan.ok());
        REQUIRE(plan->errors.size() == one->errors.size());
        for (size_t i = 0; i < plan->errors.size(); ++i) {
          CHECK(plan->errors[i].message() == one->errors[i].message());
        }
        quench::LateIndex late;
        auto later = quench::BuildPlan(*folder, o, threads, {}, &late);
        REQUIRE(later.ok());
        REQUIRE(later->errors.size() == one->errors.size());
        for (size_t i = 0; i < later->errors.size(); ++i) {
          CHECK(later->errors[i].message() == one->errors[i].message());
        }
      }
    }
  }

  TEST_CASE("a conversion planned on several threads writes the same bytes") {
    qt::TempDir tmp;
    WriteCheckpoint(tmp / "src", /*with_errors=*/false);
    qt::RunResult one = Run(tmp / "src", tmp / "out", 1, {"-q"});
    REQUIRE(one.exit_code == 0);
    fs::rename(tmp / "out", tmp / "out1");
    qt::RunResult four = Run(tmp / "src", tmp / "out", 4, {"-q"});
    REQUIRE(four.exit_code == 0);
    fs::rename(tmp / "out", tmp / "out4");
    const std::vector<std::string> files = qt::ListFiles(tmp / "out1");
    CHECK(files.size() == kShards + 2);  // the shards, the index, config.json
    CHECK(qt::ListFiles(tmp / "out4") == files);
    for (const std::string& f : files) {
      CAPTURE(f);
      CHECK(qt::ReadBytes(tmp / "out4" / f) == qt::ReadBytes(tmp / "out1" / f));
    }
  }
}
