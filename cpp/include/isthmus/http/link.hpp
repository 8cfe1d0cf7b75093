// The Link header field (RFC 8288): how many APIs say where the next page is
// (`Link: <https://api.example.com/v1/items?page=3>; rel="next", <...>; rel="last"`).
// The parser takes untrusted header text and never throws: a malformed member is skipped and
// the well-formed ones around it are still returned.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "isthmus/http/message.hpp"

namespace isthmus::http {

struct Link {
  std::string target;            // the URI reference between '<' and '>', exactly as sent
  std::vector<std::string> rel;  // relation types of the first rel parameter, lower-cased
  // Every parameter in order: names lower-cased (they are case-insensitive), values with
  // quoting and backslash escapes removed; a parameter without '=' has an empty value.
  std::vector<std::pair<std::string, std::string>> params;
};

// The links of one field value, in the order they appear.
std::vector<Link> parse_link_header(std::string_view value);

// The target of the first link, across every Link field of `headers` in order, whose relation
// types include `rel` (compared case-insensitively); nullopt when there is none.
std::optional<std::string> find_link(const Headers& headers, std::string_view rel);

}  // namespace isthmus::http
