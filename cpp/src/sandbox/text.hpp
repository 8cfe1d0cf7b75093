// Request text for the sandbox's router: form decoding over the core's URL helpers.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace isthmus::sandbox {

// http::percent_decode, with '+' read as a space when `plus_is_space` (form bodies, queries).
std::string percent_decode(std::string_view in, bool plus_is_space);
// A query string or form body as decoded (name, value) pairs, empty members skipped.
std::vector<std::pair<std::string, std::string>> parse_query(std::string_view query);
std::string to_lower(std::string_view in);

}  // namespace isthmus::sandbox
