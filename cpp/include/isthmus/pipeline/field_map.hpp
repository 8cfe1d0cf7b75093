// The declarative field mapping (isthmus.FieldMap) run over a parsed page: each record is read
// from the page's document, each rule reads a source path, casts (cast.hpp) and writes a target
// path, and the mapped record is written straight to JSON text in a MappedBatch. No Python
// object is made per record. The JSON written is byte for byte what the core's JSON writer
// makes of the same record mapped in Python (key order, escapes, float repr).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "isthmus/pipeline/cast.hpp"
#include "isthmus/pipeline/mapped.hpp"
#include "isthmus/pipeline/page.hpp"

namespace isthmus::pipeline {

struct FieldRule {
  std::vector<std::string> target;    // "owner.name" -> {"owner", "name"}
  std::optional<std::string> source;  // dotted path; none for a constant
  Cast cast = Cast::none;
  bool required = false;
  std::string fallback = "null";  // JSON text of the default (or the constant)
};

class FieldMap {
 public:
  // Rules as isthmus.FieldMap validated and worded them; a target that is both a value and
  // an object throws std::invalid_argument all the same.
  explicit FieldMap(std::vector<FieldRule> rules);

  // Maps the records array at `records_path` into `out` (appending); `key_path` is where a
  // record's identity is (Stream(key=)). Returns what find_records() would; out is untouched
  // unless ok.
  Page::Records map_page(const Page& page, std::string_view records_path, std::string_view key_path,
                         MappedBatch& out) const;

  // The same without a mapping: every record copied as it is.
  static Page::Records copy_page(const Page& page, std::string_view records_path, std::string_view key_path,
                                 MappedBatch& out);

  struct Node;  // the target tree, in the order fields first appear

 private:
  std::vector<FieldRule> rules_;
  std::vector<std::string> target_texts_;
  std::vector<Node> nodes_;
};

struct FieldMap::Node {
  std::string quoted_name;     // "\"name\":", ready to write
  int rule = -1;               // the rule whose value this is, for a leaf
  std::vector<int> children;   // for an object
};

}  // namespace isthmus::pipeline
