// Just enough URL handling for signing: split an absolute URL and append a query parameter.
// Private to the auth area; percent-encoding is the HTTP client's, so signed text and wire
// text agree.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "isthmus/http/url.hpp"

namespace isthmus::auth {

using http::percent_decode;
using http::percent_encode;
using http::split_query;

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

// The URL with "name=value" (both percent-encoded) added to its query, before any fragment.
std::string url_with_query_param(const std::string& url, std::string_view name,
                                 std::string_view value);

}  // namespace isthmus::auth
