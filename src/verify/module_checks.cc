// One module the config selects: is it quantized at all, what is its [out, in] weight shape,
// does it hold exactly the tensors its group's format writes (dtypes and shapes), and, when the
// structure is sound, its description for the walk over its values (module_walk.cc).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "schemes/float_formats.h"
#include "verify/messages.h"
#include "verify/verifier.h"

namespace quench::verify {

void Verifier::CheckModule(const std::string& module, const Group& g) {
  const std::string wname = module + ".weight";
  const bool packed = g.format == Format::kPack || g.format == Format::kNvfp4 ||
                      g.format == Format::kMxfp4;
  const std::string qname = module + (packed ? ".weight_packed" : ".weight");
  const TensorInfo* qt = dst_.Find(qname);
  const TensorInfo* st = src_ ? src_->Find(wname) : nullptr;
  const std::string& file = dst_.FileOf(qname).empty() ? dst_.FileOf(wname) : dst_.FileOf(qname);

  if (StoredUnquantized(module, g, packed, qt)) return;
  CountQuantizedModule();

  uint64_t out = 0, in = 0;
  bool have_shape = ResolveWeightShape(module, g, st, qt, &out, &in);
  std::vector<Expected> exp;
  // Scales are in the weight's dtype as the kernels saw it: BF16 for a decoded FP8 source.
  std::optional<DType> wdt;
  if (st) wdt = SourceScaleOf(wname) ? DType::kBF16 : st->dtype;
  // A lossless repack keeps the packed source's scales (AutoAWQ's F16).
  if (IsLosslessRepack(module, g)) wdt = opt_.packed_source->weight_dtype;
  if (have_shape) exp = ExpectedTensors(g, out, in, wdt);
  if (have_shape && g.group_size && in % g.group_size != 0) {
    Problem(file, module, "shape", "input dimension " + std::to_string(in) +
                                       " is not a multiple of the group size " +
                                       std::to_string(g.group_size));
    have_shape = false;
  }

  bool structure_ok = have_shape;
  if (!have_shape && qt == nullptr) {
    Problem(file.empty() ? dst_.FileOf(module + ".weight_scale") : file, qname, "missing",
            "quantization_config group '" + g.key + "' (" + g.format_name +
                ") selects this module; its quantized weight is absent");
    structure_ok = false;
  }
  std::set<std::string> expected_names;
  if (!CheckExpectedTensors(module, g, exp, file, out, in, &expected_names)) structure_ok = false;
  CheckUnwrittenQuantTensors(module, g, expected_names);
  if (!structure_ok || !g.decodable) return;

  ModuleView v;
  v.module = module;
  v.g = &g;
  v.out = out;
  v.in = in;
  std::vector<std::string> names;
  for (const Expected& e : exp) names.push_back(module + "." + e.suffix);
  if (!DescribeModule(module, g, qname, st, &v)) return;
  WalkModule(v, file, names);
  for (const std::string& n : names) ReleaseTensor(dst_, n);
  if (st) ReleaseTensor(*src_, wname);
}

// Selected but stored unquantized: the weight kept its float dtype and nothing else was
// written. Reported as not-quantized; true means there is nothing more to check.
bool Verifier::StoredUnquantized(const std::string& module, const Group& g, bool packed,
                                 const TensorInfo* qt) {
  const std::string wname = module + ".weight";
  const TensorInfo* w = dst_.Find(wname);
  bool any_quant = packed ? qt != nullptr : false;
  for (std::string_view sfx : kQuantSuffixes) {
    if (dst_.Find(module + "." + std::string(sfx))) any_quant = true;
  }
  if (any_quant || w == nullptr || !IsQuantizableFloat(w->dtype)) return false;
  Problem(dst_.FileOf(wname), wname, "not-quantized",
          "quantization_config group '" + g.key + "' (" + g.format_name +
              ") selects this module, but it is stored unquantized (" +
              std::string(DTypeName(w->dtype)) + ")");
  return true;
}

// The weight's [out, in]: from the source when there is one, else from pack-quantized's
// weight_shape, else from the stored weight (pack-quantized cannot tell `in` from its words).
// False when it cannot be known.
bool Verifier::ResolveWeightShape(const std::string& module, const Group& g,
                                  const TensorInfo* st, const TensorInfo* qt, uint64_t* out,
                                  uint64_t* in) {
  bool have_shape = false;
  if (st != nullptr && st->shape.size() == 2) {
    *out = st->shape[0];
    *in = st->shape[1];
    have_shape = true;
  }
  CheckPackedWeightShape(module, g, qt, &have_shape, out, in);
  if (!have_shape && qt != nullptr && qt->shape.size() == 2) {
    *out = qt->shape[0];
    *in = (g.format == Format::kNvfp4 || g.format == Format::kMxfp4) ? qt->shape[1] * 2
                                                                       : qt->shape[1];
    have_shape = g.format != Format::kPack;
  }
  return have_shape;
}

// pack-quantized's weight_shape (I64 [2]) must hold the weight's [out, in]: the source's when
// known, else it supplies them and must fit weight_packed's words.
void Verifier::CheckPackedWeightShape(const std::string& module, const Group& g,
                                      const TensorInfo* qt, bool* have_shape, uint64_t* out,
                                      uint64_t* in) {
  const std::string name = module + ".weight_shape";
  const TensorInfo* wshape = dst_.Find(name);
  if (g.format != Format::kPack || !wshape || wshape->dtype != DType::kI64 ||
      wshape->shape != std::vector<uint64_t>{2}) {
    return;
  }
  const uint8_t* p = dst_.Data(name);
  const std::vector<int64_t> ws = {LoadInt(p, DType::kI64, 0), LoadInt(p, DType::kI64, 1)};
  const std::string held = "holds [" + std::to_string(ws[0]) + ", " + std::to_string(ws[1]) + "]";
  if (*have_shape) {
    if (ws[0] != static_cast<int64_t>(*out) || ws[1] != static_cast<int64_t>(*in)) {
      Problem(dst_.FileOf(name), name, "weight-shape",
              held + ", the source weight is " + ShapeString({*out, *in}));
    }
  } else if (ws[0] > 0 && ws[1] > 0) {
    *out = static_cast<uint64_t>(ws[0]);
    *in = static_cast<uint64_t>(ws[1]);
    *have_shape = true;
    if (qt && qt->shape.size() == 2 &&
        (qt->shape[0] != *out ||
         qt->shape[1] != CeilDiv(*in * static_cast<uint64_t>(g.bits), 32))) {
      Problem(dst_.FileOf(name), name, "weight-shape",
              held + ", which does not fit weight_packed " + ShapeString(qt->shape));
    }
  } else {
    Problem(dst_.FileOf(name), name, "weight-shape", "holds non-positive dimensions");
  }
}

// Every tensor the format writes is present with an accepted dtype and the expected shape.
// Records them as quantization outputs; false when any is missing or wrong.
bool Verifier::CheckExpectedTensors(const std::string& module, const Group& g,
                                    const std::vector<Expected>& exp, const std::string& file,
                                    uint64_t out, uint64_t in,
                                    std::set<std::string>* expected_names) {
  bool ok = true;
  for (const Expected& e : exp) {
    const std::string name = module + "." + e.suffix;
    expected_names->insert(name);
    AddQuantOutput(name);
    const TensorInfo* t = dst_.Find(name);
    if (t == nullptr) {
      Problem(file, name, "missing",
              "required by " + g.format_name + " (group '" + g.key + "'), absent");
      ok = false;
      continue;
    }
    if (std::find(e.dtypes.begin(), e.dtypes.end(), t->dtype) == e.dtypes.end()) {
      std::string want;
      for (DType d : e.dtypes) want += (want.empty() ? "" : " or ") + std::string(DTypeName(d));
      Problem(dst_.FileOf(name), name, "dtype",
              "expected " + want + ", found " + std::string(DTypeName(t->dtype)));
      ok = false;
    }
    // A 0-dim tensor holds the one value a [1] one does: compressed-tensors'
    // ModelOptNvfp4Converter writes its global scales so, and vLLM loads either.
    const bool scalar = e.shape == std::vector<uint64_t>{1} && t->shape.empty();
    if (t->shape != e.shape && !scalar) {
      Problem(dst_.FileOf(name), name, "shape",
              "expected " + ShapeString(e.shape) + " for a " + ShapeString({out, in}) +
                  " weight, found " + ShapeString(t->shape));
      ok = false;
    }
  }
  return ok;
}

// Quantization tensors of the module that its format does not write: extra, unless the group
// allows them (weight_g_idx with actorder "group", input scales with static activations) or
// the source holds them too (then they are copies, checked with the source).
void Verifier::CheckUnwrittenQuantTensors(const std::string& module, const Group& g,
                                          const std::set<std::string>& expected_names) {
  for (std::string_view sfx : kQuantSuffixes) {
    const std::string name = module + "." + std::string(sfx);
    if (expected_names.count(name) || dst_.Find(name) == nullptr) continue;
    if (src_ && src_->Find(name)) continue;
    const bool optional = (sfx == "weight_g_idx" && g.g_idx) ||
                          (g.static_inputs && (sfx == "input_scale" || sfx == "input_zero_point" ||
                                               sfx == "input_global_scale"));
    AddQuantOutput(name);
    if (!optional) {
      Problem(dst_.FileOf(name), name, "extra",
              "not written by " + g.format_name + " for group '" + g.key + "'");
    }
  }
}

// Fills in the stored tensors, the grid's ends and the source weight for the walk. False (with
// the problem reported) when the values cannot be walked: an NVFP4 global scale that is not
// finite and positive, or a source weight of a dtype that cannot be compared.
bool Verifier::DescribeModule(const std::string& module, const Group& g,
                              const std::string& qname, const TensorInfo* st, ModuleView* v) {
  v->w = dst_.Data(qname);
  const std::string sname = module + ".weight_scale";
  v->scale = dst_.Data(sname);
  v->sdt = dst_.Find(sname)->dtype;
  v->sshape = dst_.Find(sname)->shape;
  if (const TensorInfo* z = dst_.Find(module + ".weight_zero_point"); z && !g.symmetric) {
    v->zp = dst_.Data(module + ".weight_zero_point");
    v->zdt = z->dtype;
  }
  if (g.format == Format::kNvfp4) {
    const std::string gname = module + ".weight_global_scale";
    float gs;
    std::memcpy(&gs, dst_.Data(gname), 4);
    v->gs = gs;
    SetGlobalScale(module, gs);
    if (!std::isfinite(gs) || gs <= 0) {
      Problem(dst_.FileOf(gname), gname, "scale",
              "weight_global_scale is " + Fmt("%g", gs) + " (must be finite and > 0)");
      return false;
    }
  }
  switch (g.format) {
    case Format::kFloat:
    case Format::kMxfp8: v->qmin = -448; v->qmax = 448; break;
    case Format::kNvfp4:
    case Format::kMxfp4: v->qmin = -6; v->qmax = 6; break;
    default:
      v->qmin = -std::ldexp(1.0, g.bits - 1);
      v->qmax = std::ldexp(1.0, g.bits - 1) - 1;
  }
  if (st != nullptr) {
    const std::string wname = module + ".weight";
    if (const SourceScale* sc = SourceScaleOf(wname); sc != nullptr && st->shape.size() == 2) {
      v->x = src_->Data(wname);  // E4M3 codes, decoded a chunk of rows at a time by the walk
      v->xdt = DType::kBF16;
      v->xscale = sc;
      return true;
    }
    if (!IsQuantizableFloat(st->dtype)) {
      Problem("SRC:" + src_->FileOf(wname), wname, "changed",
              "source weight dtype " + std::string(DTypeName(st->dtype)) + " cannot be compared");
      return false;
    }
    v->x = src_->Data(wname);
    v->xdt = st->dtype;
    v->lossless = IsLosslessRepack(module, g) && st->dtype == DType::kBF16;
  }
  return true;
}

}  // namespace quench::verify
