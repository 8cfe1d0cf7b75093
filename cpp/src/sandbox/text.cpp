#include "sandbox/text.hpp"

#include <algorithm>

#include "isthmus/http/url.hpp"

// Percent-decoding and query splitting are the core's (http/url): the client encodes with the
// same module's percent_encode, whose tests pin it to RFC 3986, and a server-side decoder
// of its own would only be a second copy to keep right.
namespace isthmus::sandbox {

std::string percent_decode(std::string_view in, bool plus_is_space) {
  if (!plus_is_space) return http::percent_decode(in);
  // '+' first: an encoded "%2B" must still decode to a literal plus.
  std::string spaced(in);
  std::replace(spaced.begin(), spaced.end(), '+', ' ');
  return http::percent_decode(spaced);
}

std::vector<std::pair<std::string, std::string>> parse_query(std::string_view q) {
  auto out = http::split_query(q);
  for (auto& [name, value] : out) {
    name = percent_decode(name, true);
    value = percent_decode(value, true);
  }
  return out;
}

std::string to_lower(std::string_view in) {
  std::string out(in);
  for (auto& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

}  // namespace isthmus::sandbox
