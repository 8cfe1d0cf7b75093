// Just enough URL handling for signing: split an absolute URL, percent-encode and -decode,
// and append a query parameter. Private to the auth area.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace isthmus::auth {

struct UrlParts {
  std::string scheme;  // lower case
  std::string host;    // as written, lower-cased; IPv6 keeps its brackets
  std::string port;    // empty when absent
  std::string path;    // as written (still percent-encoded); "/" when absent
  std::string query;   // without '?', as written
  // "host" or "host:port" with the port only when it is not the scheme's default.
  std::string host_header() const;
};

// Throws errc::invalid_url when the URL is not absolute.
UrlParts split_url(std::string_view url);

// RFC 3986 unreserved characters stay; every other byte becomes %XX (upper-case hex).
// `keep` lists extra characters left as they are (e.g. "/" for paths).
std::string percent_encode(std::string_view in, std::string_view keep = {});
// Decodes %XX (invalid escapes are kept literally); '+' stays '+'.
std::string percent_decode(std::string_view in);

// "a=1&b" -> {("a","1"), ("b","")}, still encoded.
std::vector<std::pair<std::string, std::string>> split_query(std::string_view query);

// The URL with "name=value" (both percent-encoded) added to its query, before any fragment.
std::string url_with_query_param(const std::string& url, std::string_view name,
                                 std::string_view value);

}  // namespace isthmus::auth
