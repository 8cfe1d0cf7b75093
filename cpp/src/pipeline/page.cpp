#include "isthmus/pipeline/page.hpp"

#include <algorithm>
#include <charconv>
#include <cstring>
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

// Copies the part of a parsed document that the parse wrote into `out`, sized to fit. A page
// waiting in the reader's window or channel then weighs about its tape and strings (1-2x the
// body) instead of the parser's worst-case reservation; with a window of 16 pages this was
// most of a run's memory. The tape layout is simdjson's documented one (doc/tape.md): word 0
// is the root, whose payload is the tape's length; a string word's payload is the offset of a
// 4-byte length, the bytes and a NUL in the string buffer, written in tape order; a number
// word is followed by one word of raw value.
void keep_used(const simdjson::dom::document& from, simdjson::dom::document& out) {
  constexpr std::uint64_t kPayload = 0x00FFFFFFFFFFFFFFull;
  const std::size_t words = static_cast<std::size_t>(from.tape[0] & kPayload);
  std::size_t strings = 0;
  for (std::size_t i = 1; i < words; ++i) {
    const auto type = static_cast<char>(from.tape[i] >> 56);
    if (type == '"') {
      const std::size_t at = static_cast<std::size_t>(from.tape[i] & kPayload);
      std::uint32_t len = 0;
      std::memcpy(&len, from.string_buf.get() + at, sizeof len);
      strings = at + sizeof len + len + 1;
    } else if (type == 'l' || type == 'u' || type == 'd') {
      ++i;
    }
  }
  out.tape.reset(new uint64_t[words]);
  std::memcpy(out.tape.get(), from.tape.get(), words * sizeof(std::uint64_t));
  out.string_buf.reset(new uint8_t[std::max<std::size_t>(strings, 1)]);
  if (strings) std::memcpy(out.string_buf.get(), from.string_buf.get(), strings);
}

// A thread's parser keeps the buffers of the largest page it has read; past a few megabytes
// of body they are let go after each page, so one huge page does not pin them for good.
void release_if_large(simdjson::dom::parser& parser) {
  constexpr std::size_t kKeep = 4u << 20;
  if (parser.capacity() > kKeep) parser = simdjson::dom::parser{};
}

}  // namespace

std::unique_ptr<Page> Page::parse(std::string_view body, std::string& error) {
  if (body.empty()) {
    // Also keeps simdjson from copying zero bytes from a null pointer (undefined behaviour).
    error = "parse error: the body is empty";
    return nullptr;
  }
  // One parser per thread, reused: its buffers (a padded copy of the body, the structural
  // indexes, a tape and string buffer reserved for the worst case: about 14 bytes per body
  // byte) are allocated once, not per page. Its depth limit is ours (walking records recurses
  // once per level): it refuses exactly the bodies nested more than kMaxDepth deep.
  thread_local simdjson::dom::parser parser;
  if (parser.capacity() < body.size() || parser.max_depth() != kMaxDepth) {
    if (auto e = parser.allocate(std::max(body.size(), parser.capacity()), kMaxDepth); e) {
      error = std::string("parse error: ") + simdjson::error_message(e);
      return nullptr;
    }
  }
  // The body is not padded for SIMD loads, so simdjson copies it into its padded buffer first.
  auto result = parser.parse(body.data(), body.size(), /*realloc_if_needed=*/true);
  if (result.error()) {
    const auto deep = result.error() == simdjson::DEPTH_ERROR ? too_deep_at(body) : std::string_view::npos;
    if (deep != std::string_view::npos) {
      // Scanned for only now, to say where: the scan costs a fifth of a good page's parse.
      error = "JSON nested deeper than " + std::to_string(kMaxDepth) + " levels at byte " + std::to_string(deep);
    } else {
      // simdjson's messages name the kind of error and never quote the body.
      error = std::string("parse error: ") + simdjson::error_message(result.error());
    }
    release_if_large(parser);
    return nullptr;
  }
  auto impl = std::make_unique<Impl>();
  keep_used(parser.doc, impl->doc);
  release_if_large(parser);
  impl->root = impl->doc.root();
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
