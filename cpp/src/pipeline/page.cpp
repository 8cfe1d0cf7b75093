#include "isthmus/pipeline/page.hpp"

#include <nlohmann/json.hpp>

#include "isthmus/error.hpp"

namespace isthmus::pipeline {

using json = nlohmann::json;

struct Page::Impl {
  json doc;
};

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
  if (const auto at = too_deep_at(body); at != std::string_view::npos) {
    error = "JSON nested deeper than " + std::to_string(kMaxDepth) + " levels at byte " + std::to_string(at);
    return nullptr;
  }
  auto impl = std::make_unique<Impl>();
  try {
    impl->doc = json::parse(body.begin(), body.end());
  } catch (const json::exception& e) {
    // A syntax error names the byte offset and what was expected there; a number too large
    // for a double is an out_of_range error. Either quotes bytes of the body.
    error = printable(e.what());
    return nullptr;
  }
  return std::unique_ptr<Page>(new Page(std::move(impl)));
}

namespace {

// Follows "a.b.c" through objects (and numeric steps through arrays); nullptr if absent.
const json* walk_path(const json& doc, std::string_view path) {
  const json* at = &doc;
  while (!path.empty()) {
    const auto dot = path.find('.');
    const std::string_view step = path.substr(0, dot);
    path = dot == std::string_view::npos ? std::string_view{} : path.substr(dot + 1);
    if (at->is_object()) {
      auto it = at->find(step);
      if (it == at->end()) return nullptr;
      at = &*it;
    } else if (at->is_array()) {
      std::size_t index = 0;
      for (char c : step) {
        if (c < '0' || c > '9') return nullptr;
        index = index * 10 + static_cast<std::size_t>(c - '0');
      }
      if (step.empty() || index >= at->size()) return nullptr;
      at = &(*at)[index];
    } else {
      return nullptr;
    }
  }
  return at;
}

void visit(const json& j, JsonVisitor& v) {
  switch (j.type()) {
    case json::value_t::null: v.null(); break;
    case json::value_t::boolean: v.boolean(j.get<bool>()); break;
    case json::value_t::number_integer: v.integer(j.get<std::int64_t>()); break;
    case json::value_t::number_unsigned: v.unsigned_integer(j.get<std::uint64_t>()); break;
    case json::value_t::number_float: v.number(j.get<double>()); break;
    case json::value_t::string: v.string(j.get_ref<const std::string&>()); break;
    case json::value_t::array:
      v.begin_array(j.size());
      for (const auto& e : j) visit(e, v);
      v.end_array();
      break;
    case json::value_t::object:
      v.begin_object(j.size());
      for (auto it = j.begin(); it != j.end(); ++it) {
        v.key(it.key());
        visit(it.value(), v);
      }
      v.end_object();
      break;
    default:  // binary and discarded values never come out of a text parse
      v.null();
      break;
  }
}

}  // namespace

Page::Records Page::find_records(std::string_view path, std::size_t& count) const {
  const json* at = walk_path(impl_->doc, path);
  if (!at) return Records::missing;
  if (!at->is_array()) return Records::not_an_array;
  count = at->size();
  return Records::ok;
}

void Page::visit_records(std::string_view path, JsonVisitor& visitor) const {
  const json* at = walk_path(impl_->doc, path);
  if (at && at->is_array()) visit(*at, visitor);
}

std::optional<std::string> Page::text(std::string_view path) const {
  const json* at = walk_path(impl_->doc, path);
  if (!at) return std::nullopt;
  switch (at->type()) {
    case json::value_t::string: return at->get<std::string>();
    case json::value_t::boolean: return std::string(at->get<bool>() ? "true" : "false");
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
    case json::value_t::number_float: return at->dump();
    default: return std::nullopt;
  }
}

}  // namespace isthmus::pipeline
