#include "plan/ignore_cover.h"

#include <algorithm>
#include <set>
#include <string_view>

namespace quench {
namespace {

std::vector<std::string_view> Parts(std::string_view name) {
  std::vector<std::string_view> parts;
  size_t start = 0;
  for (size_t dot; (dot = name.find('.', start)) != std::string_view::npos; start = dot + 1) {
    parts.push_back(name.substr(start, dot - start));
  }
  parts.push_back(name.substr(start));
  return parts;
}

bool AllDigits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// The shape of a name: its parts, with every all-digit part replaced by "#".
std::string Shape(std::string_view name) {
  std::string out;
  for (std::string_view p : Parts(name)) {
    if (!out.empty()) out += '.';
    out += AllDigits(p) ? std::string_view("#") : p;
  }
  return out;
}

// Python re syntax for `shape`: "#" parts become [0-9]+, everything else is escaped; the
// names under it too where `children`.
std::string ShapeRegex(std::string_view shape, bool children) {
  std::string re = "re:";
  for (std::string_view p : Parts(shape)) {
    if (re.size() > 3) re += "\\.";
    if (p == "#") {
      re += "[0-9]+";
      continue;
    }
    for (char c : p) {
      const bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                         (c >= '0' && c <= '9') || c == '_';
      if (!plain) re += '\\';
      re += c;
    }
  }
  return re + (children ? "(\\..*)?$" : "$");
}

}  // namespace

std::vector<std::string> CoverWithIgnore(const std::vector<std::string>& unquantized,
                                         const std::vector<std::string>& quantized,
                                         const std::set<std::string>& with_children) {
  std::set<std::string> taken;  // shapes a quantized module has
  // Names and shapes a quantized module lies under: a module's children are covered only
  // where none of them is quantized.
  std::set<std::string> above;
  for (const std::string& m : quantized) {
    for (const std::string& name : {m, Shape(m)}) {
      for (size_t dot = name.find('.'); dot != std::string::npos; dot = name.find('.', dot + 1)) {
        above.insert(name.substr(0, dot));
      }
    }
    taken.insert(Shape(m));
  }
  std::vector<std::string> out;
  std::set<std::string> seen;
  for (const std::string& m : unquantized) {
    const std::string shape = Shape(m);
    const bool indexed = shape != m, children = with_children.contains(m);
    // (An exact name is no regex; with its children it becomes one, of that name alone.)
    std::string entry =
        indexed && !taken.contains(shape) && !(children && above.contains(shape))
            ? ShapeRegex(shape, children)
        : children && !above.contains(m) ? ShapeRegex(m, true)
                                         : m;
    if (seen.insert(entry).second) out.push_back(std::move(entry));
  }
  return out;
}

}  // namespace quench
