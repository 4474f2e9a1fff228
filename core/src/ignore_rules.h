// What stays out of replication in both directions: the patterns of the
// fileset's `.intersyncignore` (gitignore style: `*.o`, `/build/`, `logs/**`,
// `!keep.o` to re-include; a pattern with a slash is anchored at the root,
// one without matches a name at any depth, a trailing slash matches only
// directories; the last matching pattern decides; nothing inside an ignored
// directory can be re-included), after a default list of editor and
// desktop droppings. `.intersyncignore` itself replicates, so every side
// shares the same rules.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace intersync {

inline constexpr std::string_view kIgnoreFile = ".intersyncignore";

class IgnoreRules {
 public:
  IgnoreRules();  // the defaults only
  // Replaces the fileset's own patterns (the defaults stay).
  void load(std::string_view text);
  // Reads <root>/.intersyncignore (missing file: no own patterns).
  void load_file(const std::string& root);
  bool ignored(std::string_view rel_path, bool is_dir) const;

  static const std::vector<std::string>& defaults();

 private:
  struct Rule {
    std::string pattern;
    bool negate = false, dir_only = false, anchored = false, deep = false;
  };
  static Rule parse(std::string_view line);
  // The verdict of the rules for this one path (not its parents), or -1
  // when no rule matches.
  int verdict(std::string_view rel, bool is_dir) const;
  std::vector<Rule> rules_;
};

}  // namespace intersync
