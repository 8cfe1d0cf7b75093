// The parsed page as the core's own units see it: the simdjson document behind Page and the
// one dotted-path walker over it. Private to cpp/src/pipeline (page.cpp, field_map.cpp), so
// the JSON library never shows in a public header.
#pragma once

#include <string_view>

#include <simdjson.h>

#include "isthmus/pipeline/page.hpp"

namespace isthmus::pipeline {

// Each Page owns a document of its own, sized to what the parse wrote (see Page::parse).
struct Page::Impl {
  simdjson::dom::document doc;
  simdjson::dom::element root;
};

// Follows "a.b.c" through objects (and numeric steps through arrays); false if absent.
// "" is the element itself.
bool walk_path(simdjson::dom::element at, std::string_view path, simdjson::dom::element& found);

// The document a parsed Page holds, for the core's units that walk it themselves.
struct PageAccess {
  static simdjson::dom::element root(const Page& page) { return page.impl_->root; }
};

}  // namespace isthmus::pipeline
