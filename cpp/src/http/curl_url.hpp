// Private: URL checks and redirect resolution on top of curl's URL API (CURLU).
#pragma once

#include <string>
#include <system_error>
#include <utility>

namespace isthmus::http {

// An empty code when `url` is an absolute http(s) URL with a host; otherwise invalid_url or
// unsupported_scheme and a message that shows the URL redacted.
std::pair<std::error_code, std::string> check_url(const std::string& url);

struct RedirectTarget {
  std::string url;            // absolute
  bool cross_origin = false;  // scheme, host or port differ from the base
  std::error_code error;      // invalid_url or unsupported_scheme
  std::string message;
};

// Resolves a Location header against the URL that answered with it.
RedirectTarget resolve_redirect(const std::string& base, const std::string& location);

}  // namespace isthmus::http
