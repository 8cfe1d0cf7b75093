// Link header (RFC 8288). The input is one or more field values, one per line.
// Properties: a target is a substring of its field; relation types and parameter names are
// lower-case and well-formed; writing the links back out and parsing them again gives the
// same links; find_link agrees with parse_link_header; UTF-8 in gives UTF-8 out.
#include <algorithm>
#include <cstdint>
#include <string>

#include "check.hpp"
#include "isthmus/http/link.hpp"

namespace {

using isthmus::http::Link;

bool has_upper(std::string_view s) {
  return std::any_of(s.begin(), s.end(), [](char c) { return c >= 'A' && c <= 'Z'; });
}

std::string quote(std::string_view v) {
  std::string out = "\"";
  for (char c : v) {
    if (c == '"' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  return out + "\"";
}

// The links as a canonical field value: every parameter value quoted.
std::string write(const std::vector<Link>& links) {
  std::string out;
  for (const auto& l : links) {
    if (!out.empty()) out += ", ";
    out += "<" + l.target + ">";
    for (const auto& [name, value] : l.params) out += "; " + name + "=" + quote(value);
  }
  return out;
}

bool same(const std::vector<Link>& a, const std::vector<Link>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (a[i].target != b[i].target || a[i].rel != b[i].rel || a[i].params != b[i].params) return false;
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace isthmus;
  const std::string_view input = fuzz::as_text(data, size);
  const bool utf8 = fuzz::valid_utf8(input);

  http::Headers headers;
  std::optional<std::string> first_next;
  for (std::string_view field : fuzz::split(input, '\n')) {
    headers.emplace_back("Link", std::string(field));
    const auto links = http::parse_link_header(field);
    FUZZ_CHECK(links.size() <= static_cast<std::size_t>(std::count(field.begin(), field.end(), '<')),
               "every link starts at its own '<'");
    for (const auto& l : links) {
      FUZZ_CHECK(field.find(l.target) != std::string_view::npos, "a target is a substring of its field");
      FUZZ_CHECK(l.target.find('>') == std::string::npos, "a target ends at the first '>'");
      FUZZ_CHECK(!utf8 || fuzz::valid_utf8(l.target), "UTF-8 in gives a UTF-8 target");
      for (const auto& r : l.rel) {
        FUZZ_CHECK(!r.empty() && r.find(' ') == std::string::npos && r.find('\t') == std::string::npos,
                   "a relation type is one non-empty word");
        FUZZ_CHECK(!has_upper(r), "relation types are lower-cased");
        if (!first_next && r == "next") first_next = l.target;
      }
      bool rel_param = false;
      for (const auto& [name, value] : l.params) {
        FUZZ_CHECK(!name.empty() && !has_upper(name), "parameter names are non-empty and lower-cased");
        FUZZ_CHECK(name.find_first_of(" \t;,=\"<>") == std::string::npos, "parameter names are tokens");
        FUZZ_CHECK(!utf8 || fuzz::valid_utf8(value), "UTF-8 in gives UTF-8 parameter values");
        rel_param |= name == "rel";
      }
      FUZZ_CHECK(rel_param || l.rel.empty(), "relation types come from a rel parameter");
    }
    const std::string written = write(links);
    FUZZ_CHECK(same(http::parse_link_header(written), links), "written links parse back the same");
  }
  FUZZ_CHECK(http::find_link(headers, "next") == first_next, "find_link returns the first rel=next");
  FUZZ_CHECK(http::find_link(headers, "NeXt") == first_next, "rel compares case-insensitively");
  return 0;
}
