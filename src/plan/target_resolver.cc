#include "plan/target_resolver.h"

#include <algorithm>
#include <cctype>

namespace quench {

Result<TargetResolver> TargetResolver::Build(const std::vector<PlannedGroup>& groups) {
  TargetResolver r;
  std::vector<size_t> order(groups.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return groups[a].key < groups[b].key; });
  for (size_t gi : order) {
    for (const std::string& t : groups[gi].targets) {
      auto it = std::find(r.entries_.begin(), r.entries_.end(), t);
      if (it == r.entries_.end()) {
        r.entries_.push_back(t);
        r.group_.push_back(static_cast<int>(gi));
      } else {
        r.group_[static_cast<size_t>(it - r.entries_.begin())] = static_cast<int>(gi);
      }
    }
  }
  for (const std::string& t : r.entries_) {
    std::string lower = t;
    for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    r.is_class_.push_back(!t.starts_with("re:") && lower == "linear");
  }
  QUENCH_ASSIGN_OR_RETURN(r.names_, NameMatcher::Compile(r.entries_, "targets"));
  r.hits_.assign(r.entries_.size(), 0);
  return r;
}

int TargetResolver::Resolve(std::string_view module, std::vector<size_t>& hits) const {
  for (size_t i = 0; i < entries_.size(); ++i) {
    if (!is_class_[i] && names_.EntryMatches(i, module)) {
      ++hits[i];
      return group_[i];
    }
  }
  for (size_t i = 0; i < entries_.size(); ++i) {
    if (is_class_[i]) {
      ++hits[i];
      return group_[i];
    }
  }
  return -1;
}

}  // namespace quench
