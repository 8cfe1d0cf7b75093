#include "isthmus/pipeline/page.hpp"

#include <algorithm>
#include <charconv>
#include <vector>

#include "page_impl.hpp"

namespace isthmus::pipeline {

// simdjson: a page of 500 records parses about ten times faster than with a tree of maps,
// and its tape keeps keys and strings as views into one buffer, so walking it allocates
// nothing.

Page::Page(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Page::~Page() = default;

namespace {

// The offset of the first '[' or '{' that opens level kMaxDepth + 1, outside strings; npos
// when the body nests no deeper than that. Unbalanced input is left for the parser to report.
std::size_t too_deep_at(std::string_view body) {
  std::size_t depth = 0;
  bool in_string = false;
  for (std::size_t i = 0; i < body.size(); ++i) {
    const char c = body[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > Page::kMaxDepth) return i;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return std::string_view::npos;
}

}  // namespace

std::unique_ptr<Page> Page::parse(std::string_view body, std::string& error) {
  // Refused up front with the offset: walking records recurses once per level.
  if (const auto at = too_deep_at(body); at != std::string_view::npos) {
    error = "JSON nested deeper than " + std::to_string(kMaxDepth) + " levels at byte " + std::to_string(at);
    return nullptr;
  }
  if (body.empty()) {
    // Also keeps simdjson from copying zero bytes from a null pointer (undefined behaviour).
    error = "parse error: the body is empty";
    return nullptr;
  }
  auto impl = std::make_unique<Impl>();
  // The body is not padded for SIMD loads, so simdjson copies it into a padded buffer first.
  // Its own depth limit sits above ours, which the scan above has already enforced.
  if (auto e = impl->parser.allocate(body.size(), kMaxDepth + 2); e) {
    error = std::string("parse error: ") + simdjson::error_message(e);
    return nullptr;
  }
  auto result = impl->parser.parse(body.data(), body.size(), /*realloc_if_needed=*/true);
  if (result.error()) {
    // simdjson's messages name the kind of error and never quote the body.
    error = std::string("parse error: ") + simdjson::error_message(result.error());
    return nullptr;
  }
  impl->root = result.value_unsafe();
  return std::unique_ptr<Page>(new Page(std::move(impl)));
}

using simdjson::dom::element;
using simdjson::dom::element_type;

bool walk_path(element at, std::string_view path, element& found) {
  while (!path.empty()) {
    const auto dot = path.find('.');
    const std::string_view step = path.substr(0, dot);
    path = dot == std::string_view::npos ? std::string_view{} : path.substr(dot + 1);
    if (at.is_object()) {
      // at_key is an exact match; the object's first field with this name wins.
      auto next = at.get_object().value_unsafe().at_key(step);
      if (next.error()) return false;
      at = next.value_unsafe();
    } else if (at.is_array()) {
      std::size_t index = 0;
      auto [end, ec] = std::from_chars(step.data(), step.data() + step.size(), index);
      if (step.empty() || ec != std::errc{} || end != step.data() + step.size()) return false;
      auto next = at.get_array().value_unsafe().at(index);
      if (next.error()) return false;
      at = next.value_unsafe();
    } else {
      return false;
    }
  }
  found = at;
  return true;
}

namespace {

void visit(element j, JsonVisitor& v) {
  switch (j.type()) {
    case element_type::NULL_VALUE: v.null(); break;
    case element_type::BOOL: v.boolean(j.get_bool().value_unsafe()); break;
    case element_type::INT64: v.integer(j.get_int64().value_unsafe()); break;
    case element_type::UINT64: v.unsigned_integer(j.get_uint64().value_unsafe()); break;
    case element_type::DOUBLE: v.number(j.get_double().value_unsafe()); break;
    case element_type::STRING: v.string(j.get_string().value_unsafe()); break;
    case element_type::ARRAY: {
      auto a = j.get_array().value_unsafe();
      v.begin_array(a.size());
      for (element e : a) visit(e, v);
      v.end_array();
      break;
    }
    case element_type::OBJECT: {
      auto o = j.get_object().value_unsafe();
      v.begin_object(o.size());
      for (auto field : o) {
        v.key(field.key);
        visit(field.value, v);
      }
      v.end_object();
      break;
    }
  }
}

}  // namespace

Page::Records Page::find_records(std::string_view path, std::size_t& count) const {
  element at;
  if (!walk_path(impl_->root, path, at)) return Records::missing;
  if (!at.is_array()) return Records::not_an_array;
  count = at.get_array().value_unsafe().size();
  return Records::ok;
}

void Page::visit_records(std::string_view path, JsonVisitor& visitor) const {
  element at;
  if (walk_path(impl_->root, path, at) && at.is_array()) visit(at, visitor);
}

std::optional<std::string> Page::text(std::string_view path) const {
  element at;
  if (!walk_path(impl_->root, path, at)) return std::nullopt;
  char buf[64];
  switch (at.type()) {
    case element_type::STRING: return std::string(at.get_string().value_unsafe());
    case element_type::BOOL: return std::string(at.get_bool().value_unsafe() ? "true" : "false");
    case element_type::INT64: return std::to_string(at.get_int64().value_unsafe());
    case element_type::UINT64: return std::to_string(at.get_uint64().value_unsafe());
    case element_type::DOUBLE: {
      // Shortest text that reads back as the same double.
      auto [end, ec] = std::to_chars(buf, buf + sizeof buf, at.get_double().value_unsafe());
      return std::string(buf, end);
    }
    default: return std::nullopt;
  }
}

std::string Page::shape() const {
  const element root = impl_->root;
  if (root.is_object()) {
    std::vector<std::string_view> keys;
    // A copy of the object first: iterating the temporary result would outlive it.
    const auto object = root.get_object().value_unsafe();
    for (auto field : object) keys.push_back(field.key);
    std::sort(keys.begin(), keys.end());
    keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
    std::string out = "top-level keys: ";
    for (std::size_t i = 0; i < keys.size() && i < 20; ++i) {
      if (i) out += ", ";
      out += keys[i];
    }
    return out;
  }
  // Named as Python names the type, since the message is read by Python users.
  switch (root.type()) {
    case element_type::ARRAY: return "the body is a JSON list";
    case element_type::STRING: return "the body is a JSON str";
    case element_type::INT64:
    case element_type::UINT64: return "the body is a JSON int";
    case element_type::DOUBLE: return "the body is a JSON float";
    case element_type::BOOL: return "the body is a JSON bool";
    default: return "the body is a JSON NoneType";
  }
}

}  // namespace isthmus::pipeline
