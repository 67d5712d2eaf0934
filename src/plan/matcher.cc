#include "plan/matcher.h"

namespace quench {

Result<NameMatcher> NameMatcher::Compile(const std::vector<std::string>& entries,
                                         std::string_view what) {
  NameMatcher m;
  m.entries_ = entries;
  for (const std::string& e : entries) {
    Entry c;
    if (e.starts_with("re:")) {
      c.is_regex = true;
      try {
        // ECMAScript grammar covers the Python syntax these patterns use in practice
        // (., *, +, ?, |, groups, (?:), classes, \d \w \s, anchors).
        c.re = std::regex(e.substr(3), std::regex::ECMAScript | std::regex::optimize);
      } catch (const std::regex_error& err) {
        return Error(ErrorCode::kUsage, std::string(what) + " entry '" + e +
                                            "': invalid regular expression: " + err.what());
      }
    } else {
      c.exact = e;
    }
    m.compiled_.push_back(std::move(c));
  }
  return m;
}

bool NameMatcher::EntryMatches(size_t i, std::string_view module) const {
  const Entry& e = compiled_[i];
  if (e.is_regex) {
    // Python re.match: the match must start at position 0 but may end anywhere.
    return std::regex_search(module.begin(), module.end(), e.re,
                             std::regex_constants::match_continuous);
  }
  return module == e.exact;
}

int NameMatcher::FirstMatch(std::string_view module) const {
  for (size_t i = 0; i < compiled_.size(); ++i) {
    if (EntryMatches(i, module)) return static_cast<int>(i);
  }
  return -1;
}

std::pair<std::string_view, std::string_view> SplitModuleParam(std::string_view name) {
  const size_t dot = name.rfind('.');
  if (dot == std::string_view::npos) return {std::string_view(), name};
  return {name.substr(0, dot), name.substr(dot + 1)};
}

}  // namespace quench
