#include "plan/matcher.h"

#include <algorithm>
#include <bit>
#include <cctype>
#include <string>

namespace quench {
namespace {

// One unit of a regex as RequiredSuffixes reads it: a character that stands for itself (a
// plain character or an escaped punctuation mark), `|`, `(`, `)`, or anything else.
struct Token {
  enum Kind { kLiteral, kBar, kOpen, kClose, kOther } kind = kOther;
  char c = 0;
};

// Splits an ECMAScript pattern into tokens; a character class is one kOther token.
std::vector<Token> Tokenize(std::string_view p) {
  std::vector<Token> out;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\') {
      // Escaped punctuation is itself; escaped letters and digits are classes, anchors or
      // back-references.
      const bool literal = i + 1 < p.size() && !std::isalnum(static_cast<unsigned char>(p[i + 1]));
      out.push_back({literal ? Token::kLiteral : Token::kOther, i + 1 < p.size() ? p[i + 1] : c});
      ++i;
    } else if (c == '[') {
      size_t j = i + 1;
      if (j < p.size() && p[j] == '^') ++j;
      for (; j < p.size() && p[j] != ']'; ++j) {
        if (p[j] == '\\') ++j;
      }
      out.push_back({Token::kOther, c});
      i = j;
    } else if (c == '|') {
      out.push_back({Token::kBar, c});
    } else if (c == '(') {
      out.push_back({Token::kOpen, c});
    } else if (c == ')') {
      out.push_back({Token::kClose, c});
    } else if (std::string_view(".*+?{}^$]").find(c) != std::string_view::npos) {
      out.push_back({Token::kOther, c});
    } else {
      out.push_back({Token::kLiteral, c});
    }
  }
  return out;
}

// The endings one of which every name matched by `pattern` must have, read from a pattern of
// the form `...LITERAL$` or `...LITERAL(ALT1|ALT2|...)LITERAL$` (plain characters only in the
// alternatives; either literal may be empty) with no `|` outside parentheses; empty when the
// pattern has another form.
// Python's re.match anchors only the start, so the `$` is what ties the match to the end.
std::vector<std::string> RequiredSuffixes(std::string_view pattern) {
  const std::vector<Token> t = Tokenize(pattern);
  // An escaped `\$` is a kLiteral token, so only the anchor passes this test.
  if (t.empty() || t.back().kind != Token::kOther || t.back().c != '$') return {};
  int depth = 0;
  for (const Token& k : t) {
    if (k.kind == Token::kOpen) ++depth;
    if (k.kind == Token::kClose) --depth;
    if (depth < 0 || (depth == 0 && k.kind == Token::kBar)) return {};
  }
  if (depth != 0) return {};
  size_t i = t.size() - 1;  // the `$`
  std::string tail;
  while (i > 0 && t[i - 1].kind == Token::kLiteral) tail.insert(tail.begin(), t[--i].c);
  // A group of plain alternatives just before the literal tail.
  if (i > 0 && t[i - 1].kind == Token::kClose) {
    std::vector<std::string> alts(1);
    size_t j = i - 1;
    while (j > 0 && (t[j - 1].kind == Token::kLiteral || t[j - 1].kind == Token::kBar)) {
      --j;
      if (t[j].kind == Token::kBar) {
        alts.emplace_back();
      } else {
        alts.back().insert(alts.back().begin(), t[j].c);
      }
    }
    const bool plain = j > 0 && t[j - 1].kind == Token::kOpen &&
                       std::none_of(alts.begin(), alts.end(),
                                    [](const std::string& a) { return a.empty(); });
    if (plain) {
      // And the plain characters just before the group: `router\.(layer|proj)$` ends in
      // "router.layer" or "router.proj", not in any "proj".
      std::string head;
      for (size_t k = j - 1; k > 0 && t[k - 1].kind == Token::kLiteral; --k) {
        head.insert(head.begin(), t[k - 1].c);
      }
      for (std::string& a : alts) a = head + a + tail;
      return alts;
    }
  }
  if (tail.empty()) return {};
  return {tail};
}

// The plain names A, B, ... of a pattern `([^.]+\.)?(A|B|...)\..*` (the `.*` optional), each
// of letters, digits and `_`; empty for any other pattern. Under Python's re.match such a
// pattern matches a name when the name's first component is one of them and a dot follows,
// or when its first component is not empty and its second is one of them and a dot
// follows: `[^.]+\.` can only take a whole first component with its dot, and a name
// cannot contain a dot.
std::vector<std::string> LeadingComponents(std::string_view p) {
  constexpr std::string_view kHead = "([^.]+\\.)?(";
  if (!p.starts_with(kHead)) return {};
  p.remove_prefix(kHead.size());
  if (p.ends_with(".*")) p.remove_suffix(2);
  constexpr std::string_view kTail = ")\\.";
  if (!p.ends_with(kTail)) return {};
  p.remove_suffix(kTail.size());
  std::vector<std::string> names(1);
  for (const char c : p) {
    if (c == '|') {
      if (names.back().empty()) return {};
      names.emplace_back();
    } else if (std::isalnum(static_cast<unsigned char>(c)) || c == '_') {
      names.back() += c;
    } else {
      return {};
    }
  }
  if (names.back().empty()) return {};
  return names;
}

// Bit n set when one of `names` is n characters long (every bit for a name of 64 or more).
uint64_t NameLengths(const std::vector<std::string>& names) {
  uint64_t mask = 0;
  for (const std::string& n : names) mask |= n.size() < 64 ? uint64_t{1} << n.size() : ~uint64_t{0};
  return mask;
}

// Whether `module`'s first component, or (after a non-empty first) its second, is one of
// `names` (whose lengths are `lengths`, NameLengths) and is followed by a dot: what
// LeadingComponents' patterns match. Tried on every module of a plan, so the components are
// found by hand (a module name's first components are a few characters) and a length no name
// has ends the test.
bool LeadingComponentMatches(const std::vector<std::string>& names, uint64_t lengths,
                             std::string_view module) {
  const auto named = [&](size_t begin, size_t end) {
    const size_t n = end - begin;
    if (n < 64 && (lengths >> n & 1) == 0) return false;
    const std::string_view c = module.substr(begin, n);
    return std::find(names.begin(), names.end(), c) != names.end();
  };
  size_t d0 = 0;
  while (d0 < module.size() && module[d0] != '.') ++d0;
  if (d0 == module.size()) return false;
  if (named(0, d0)) return true;
  if (d0 == 0) return false;
  size_t d1 = d0 + 1;
  while (d1 < module.size() && module[d1] != '.') ++d1;
  return d1 < module.size() && named(d0 + 1, d1);
}

// The length of a brace quantifier `{m}`, `{m,}` or `{m,n}` starting at p[i] (0 when the
// brace is a literal, as Python reads one that is not a quantifier).
size_t BraceQuantifier(std::string_view p, size_t i) {
  size_t j = i + 1;
  bool any = false;  // `{}` is a literal; `{,}` is {0,} (Python's sre_parse)
  while (j < p.size() && std::isdigit(static_cast<unsigned char>(p[j]))) ++j, any = true;
  if (j < p.size() && p[j] == ',') {
    ++j;
    any = true;
    while (j < p.size() && std::isdigit(static_cast<unsigned char>(p[j]))) ++j;
  }
  return j < p.size() && p[j] == '}' && any ? j - i + 1 : 0;
}

// Groups nested deeper than this are refused: libstdc++ compiles (and matches) a pattern by
// recursion, a level per group, and 30,000 nested groups overflowed the stack (SIGSEGV).
// Python's own parser gives up near its recursion limit (1,000) too; a name pattern nests a
// few levels.
constexpr int kMaxGroupDepth = 200;

// Python's re refuses a quantifier on a quantifier ("multiple repeat": `.**`, `a{2}*`) and
// reads `*+` as possessive; libstdc++'s ECMAScript grammar accepts both as nested repeats,
// whose backtracking can take exponential time on a module name (a recipe's `re:.**x` once
// hung a run). Groups nested deeper than kMaxGroupDepth are refused too. Returns what is
// wrong, or "".
std::string PatternProblem(std::string_view p) {
  bool after_quantifier = false, after_lazy = false;
  int depth = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '(' && ++depth > kMaxGroupDepth) {
      return "groups nested more than " + std::to_string(kMaxGroupDepth) +
             " deep at position " + std::to_string(i);
    }
    if (c == ')') --depth;
    const size_t brace = c == '{' ? BraceQuantifier(p, i) : 0;
    const bool quantifier = c == '*' || c == '+' || c == '?' || brace > 0;
    if (quantifier && (after_quantifier || after_lazy)) {
      if (c == '?' && !after_lazy) {  // lazy: *? +? ?? {m,n}?
        after_quantifier = false;
        after_lazy = true;
        continue;
      }
      if (c == '+' && !after_lazy) {
        return "possessive quantifier at position " + std::to_string(i) +
               " (Python 3.11's *+, ++, ?+) is not supported";
      }
      return "multiple repeat at position " + std::to_string(i);
    }
    after_lazy = false;
    after_quantifier = quantifier;
    if (brace > 0) i += brace - 1;
    if (c == '\\') {
      ++i;
    } else if (c == '[') {
      // A class ends at the first ']' after its first member (which may itself be ']').
      size_t j = i + 1;
      if (j < p.size() && p[j] == '^') ++j;
      if (j < p.size() && p[j] == ']') ++j;
      while (j < p.size() && p[j] != ']') j += p[j] == '\\' ? 2 : 1;
      i = j;
    }
  }
  return "";
}

}  // namespace

Result<NameMatcher> NameMatcher::Compile(const std::vector<std::string>& entries,
                                         std::string_view what) {
  NameMatcher m;
  m.entries_ = entries;
  for (const std::string& e : entries) {
    Entry c;
    if (e.starts_with("re:")) {
      c.is_regex = true;
      if (const std::string bad = PatternProblem(std::string_view(e).substr(3)); !bad.empty()) {
        return Error(ErrorCode::kUsage, std::string(what) + " entry '" + e +
                                            "': invalid regular expression: " + bad);
      }
      try {
        // ECMAScript grammar covers the Python syntax these patterns use in practice
        // (., *, +, ?, |, groups, (?:), classes, \d \w \s, anchors).
        c.re = std::regex(e.substr(3), std::regex::ECMAScript | std::regex::optimize);
        c.suffixes = RequiredSuffixes(std::string_view(e).substr(3));
        c.leading = LeadingComponents(std::string_view(e).substr(3));
        c.leading_lengths = NameLengths(c.leading);
      } catch (const std::regex_error& err) {
        return Error(ErrorCode::kUsage, std::string(what) + " entry '" + e +
                                            "': invalid regular expression: " + err.what());
      }
    } else {
      c.exact = e;
    }
    m.compiled_.push_back(std::move(c));
  }
  m.use_candidates_ = m.compiled_.size() <= 64;
  for (size_t i = 0; m.use_candidates_ && i < m.compiled_.size(); ++i) {
    const Entry& c = m.compiled_[i];
    const uint64_t bit = uint64_t{1} << i;
    if (c.is_regex && c.suffixes.empty()) {
      for (uint64_t& mask : m.candidates_) mask |= bit;
      continue;
    }
    // A name matching the entry ends as the exact name, or as one of the required
    // suffixes (never empty: RequiredSuffixes returns none rather than an empty one).
    for (const std::string& s : c.is_regex ? c.suffixes : std::vector<std::string>{c.exact}) {
      m.candidates_[s.empty() ? 256 : static_cast<unsigned char>(s.back())] |= bit;
    }
  }
  return m;
}

bool NameMatcher::EntryMatches(size_t i, std::string_view module) const {
  const Entry& e = compiled_[i];
  if (e.is_regex) {
    if (!e.leading.empty()) return LeadingComponentMatches(e.leading, e.leading_lengths, module);
    if (!e.suffixes.empty() &&
        std::none_of(e.suffixes.begin(), e.suffixes.end(),
                     [&](const std::string& s) { return module.ends_with(s); })) {
      return false;
    }
    // Python re.match: the match must start at position 0 but may end anywhere.
    return std::regex_search(module.begin(), module.end(), e.re,
                             std::regex_constants::match_continuous);
  }
  return module == e.exact;
}

int NameMatcher::FirstMatch(std::string_view module) const {
  if (use_candidates_) {
    uint64_t mask =
        candidates_[module.empty() ? 256 : static_cast<unsigned char>(module.back())];
    for (; mask != 0; mask &= mask - 1) {
      const int i = std::countr_zero(mask);
      if (EntryMatches(static_cast<size_t>(i), module)) return i;
    }
    return -1;
  }
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
