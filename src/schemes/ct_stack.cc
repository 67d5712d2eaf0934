#include "schemes/ct_stack.h"

#include <algorithm>

namespace quench {
namespace {

// Names the source's expert (a stack sliced by expert pruning numbers its experts anew).
Status NameExpert(Status st, const CtWeight& w, uint64_t e) {
  if (st.ok() || st.code() != ErrorCode::kInvalidInput) return st;
  if (!w.kept.empty()) e = w.kept[e];
  return Error(st.code(), st.message() + " (expert " + std::to_string(e) + " of the stack)");
}

}  // namespace

Status DecodeCtStackRows(const CtWeight& w, int64_t expert, uint64_t row0, const CtReader& read,
                         const std::string& weight, const uint8_t* codes, uint64_t r0,
                         uint64_t r1, uint8_t* out, bool* finite) {
  *finite = true;
  if (r1 <= r0) return Status::Ok();
  if (w.experts == 0) {
    return DecodeCtWeightRows(w, read, weight, codes, row0 + r0, row0 + r1, out, finite);
  }
  if (expert >= 0) {
    const uint64_t e = static_cast<uint64_t>(expert);
    return NameExpert(DecodeCtWeightRows(CtExpertSlice(w, e), read, weight, codes, row0 + r0,
                                         row0 + r1, out, finite),
                      w, e);
  }
  // Across experts: expert e holds stack rows [e * rows, (e + 1) * rows).
  for (uint64_t r = r0; r < r1;) {
    const uint64_t e = r / w.rows, local = r % w.rows;
    const uint64_t n = std::min(r1 - r, w.rows - local);
    bool f = true;
    QUENCH_RETURN_IF_ERROR(NameExpert(
        DecodeCtWeightRows(CtExpertSlice(w, e), read, weight, codes + (r - r0) * w.code_row_bytes,
                           local, local + n, out + (r - r0) * w.cols * 2, &f),
        w, e));
    *finite = *finite && f;
    r += n;
  }
  return Status::Ok();
}

}  // namespace quench
