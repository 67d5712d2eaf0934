// A compressed-tensors SRC (format/source_ct.h): verify compares DST against the source as the
// conversion read it, each weight decoded to BF16 by the same definition
// (schemes/ct_decode.h, CompressedTensorsDequantizer's arithmetic), a chunk of rows at a time.
#include <cstring>
#include <set>
#include <string>

#include "format/source_ct.h"
#include "schemes/ct_decode.h"
#include "schemes/ct_stack.h"
#include "verify/verifier.h"

namespace quench::verify {

void Verifier::LogicalCtSource() {
  const std::set<std::string> consumed(src_quant_.consumed.begin(), src_quant_.consumed.end());
  for (Shard& s : src_->folder.shards) {
    std::vector<TensorInfo> kept;
    for (TensorInfo& t : s.header.tensors) {
      if (consumed.contains(t.name)) continue;
      auto r = src_quant_.renamed.find(t.name);
      const std::string name = r != src_quant_.renamed.end() ? r->second : t.name;
      if (auto it = src_quant_.scales.find(name); it != src_quant_.scales.end() && it->second.ct) {
        t.name = name;
        const CtWeight& w = *it->second.ct;
        // As the planner sees it (plan/planner.cc LogicalTensor): a piece of a 3-D stack has
        // its codes' rows; a stack decoded whole is 3-D.
        t.shape = it->second.ct_expert >= 0 ? std::vector<uint64_t>{t.shape[0], w.cols}
                  : w.experts > 0           ? std::vector<uint64_t>{w.experts, w.rows, w.cols}
                                            : std::vector<uint64_t>{w.rows, w.cols};
      }
      kept.push_back(std::move(t));
    }
    s.header.tensors = std::move(kept);
  }
  scale_of_weight_.clear();  // the scales are gone from the headers: nothing to account for
}

bool Verifier::DecodeCtSourceRows(const std::string& weight, const SourceScale& sc,
                                  const uint8_t* codes, uint64_t r0, uint64_t r1, uint8_t* out) {
  auto read = [&](const CtTensor& x, uint64_t off, uint64_t len, uint8_t* dst) {
    std::memcpy(dst, src_->maps[x.shard].data() + x.offset + off, len);
    return Status::Ok();
  };
  bool finite = true;
  Status st = DecodeCtStackRows(*sc.ct, sc.ct_expert, sc.ct_row0, read, weight, codes, r0, r1,
                                out, &finite);
  if (!st.ok()) {
    Problem("SRC:" + src_->folder.shards[sc.ct->codes.shard].rel_name, weight, "scale",
            st.message());
    return false;
  }
  if (!finite) {
    Problem("SRC:" + src_->FileOf(weight), weight, "code",
            "the compressed-tensors source decodes to NaN or Inf in rows " + std::to_string(r0) +
                ".." + std::to_string(r1 - 1));
    return false;
  }
  return true;
}

}  // namespace quench::verify
