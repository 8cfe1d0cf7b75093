// Small text helpers for request parsing: percent-decoding and query strings.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace isthmus::sandbox {

// Decodes %XX (and '+' as space when `plus_is_space`); malformed escapes are kept verbatim.
std::string percent_decode(std::string_view in, bool plus_is_space);
std::string percent_encode(std::string_view in);
std::vector<std::pair<std::string, std::string>> parse_query(std::string_view query);
std::string to_lower(std::string_view in);

}  // namespace isthmus::sandbox
