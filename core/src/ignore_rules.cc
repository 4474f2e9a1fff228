// gitignore-style matching with fnmatch(3); see ignore_rules.h.
#include "ignore_rules.h"

#include <fnmatch.h>

#include <fstream>
#include <sstream>

namespace intersync {

const std::vector<std::string>& IgnoreRules::defaults() {
  // Editor swap and lock files, desktop metadata, NFS silly-renames.
  static const std::vector<std::string> list = {"*.swp",     "*.swo",     "*.swx",       "*~",
                                                ".#*",       "#*#",       ".~lock.*#",   "4913",
                                                ".DS_Store", "Thumbs.db", "desktop.ini", ".nfs*"};
  return list;
}

IgnoreRules::IgnoreRules() {
  load({});
}

IgnoreRules::Rule IgnoreRules::parse(std::string_view line) {
  Rule r;
  if (!line.empty() && line.front() == '!') {
    r.negate = true;
    line.remove_prefix(1);
  }
  if (!line.empty() && line.back() == '/') {
    r.dir_only = true;
    line.remove_suffix(1);
  }
  if (line.find('/') != std::string_view::npos) r.anchored = true;
  if (!line.empty() && line.front() == '/') line.remove_prefix(1);
  r.deep = line.find("**") != std::string_view::npos;
  r.pattern = std::string(line);
  return r;
}

void IgnoreRules::load(std::string_view text) {
  rules_.clear();
  for (const auto& d : defaults()) rules_.push_back(parse(d));
  std::istringstream in{std::string(text)};
  std::string line;
  while (std::getline(in, line)) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    if (line.empty() || line.front() == '#') continue;
    Rule r = parse(line);
    if (!r.pattern.empty()) rules_.push_back(std::move(r));
  }
}

void IgnoreRules::load_file(const std::string& root) {
  std::ifstream in(root + "/" + std::string(kIgnoreFile));
  std::stringstream text;
  if (in) text << in.rdbuf();
  load(text.str());
}

int IgnoreRules::verdict(std::string_view rel, bool is_dir) const {
  std::string path(rel);
  size_t slash = path.rfind('/');
  std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  int result = -1;
  for (const auto& r : rules_) {
    if (r.dir_only && !is_dir) continue;
    bool match = r.anchored
                     ? fnmatch(r.pattern.c_str(), path.c_str(), r.deep ? 0 : FNM_PATHNAME) == 0
                     : fnmatch(r.pattern.c_str(), name.c_str(), 0) == 0;
    if (match) result = r.negate ? 0 : 1;
  }
  return result;
}

bool IgnoreRules::ignored(std::string_view rel, bool is_dir) const {
  if (rel.empty()) return false;
  // A parent directory that is ignored hides everything beneath it.
  for (size_t pos = rel.find('/'); pos != std::string_view::npos; pos = rel.find('/', pos + 1)) {
    if (verdict(rel.substr(0, pos), true) == 1) return true;
  }
  return verdict(rel, is_dir) == 1;
}

}  // namespace intersync
