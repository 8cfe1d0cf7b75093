// HTTP requests and responses as plain data. No curl or Asio types here.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

namespace isthmus::http {

// Ordered, duplicates allowed; names compared case-insensitively.
using Headers = std::vector<std::pair<std::string, std::string>>;

bool iequals(std::string_view a, std::string_view b) noexcept;
// First value of a header, or nullptr.
const std::string* find_header(const Headers& headers, std::string_view name) noexcept;

struct Request {
  std::string method = "GET";
  std::string url;  // absolute http:// or https:// URL
  Headers headers;
  // Shared so that retries and redirects never copy a large body.
  std::shared_ptr<const std::string> body;
  double timeout = 0;          // seconds for the whole exchange; 0 = the client's default
  int follow_redirects = -1;   // -1 = the client's default, 0 = no, 1 = yes
  // Extra header names that carry credentials (e.g. "X-Api-Key"): dropped, like
  // Authorization and Cookie, when a redirect leaves the original scheme, host and port.
  std::vector<std::string> sensitive_headers;
};

struct Response {
  int status = 0;  // 0 when the exchange failed before a status line
  std::string http_version;  // "1.1", "2"
  Headers headers;           // of the final response
  std::string body;          // decoded (gzip, deflate, br)
  std::string url;           // final URL, after redirects
  double elapsed = 0;        // seconds from send() to completion
  int redirects = 0;
  // Set when the exchange failed; the HTTP status (if any) is kept apart from it.
  std::error_code error;
  std::string error_message;  // human detail; never contains credentials
  // The whole call, when a retrying transport (limits::GovernedTransport) made it: requests
  // sent (0 when refused before sending), the 429 answers and body bytes of the attempts it
  // retried past, and seconds held back by the limiter and backing off between attempts.
  int attempts = 1;
  int retried_429 = 0;
  std::uint64_t retried_bytes = 0;
  double waited = 0;

  const std::string* header(std::string_view name) const noexcept {
    return find_header(headers, name);
  }
};

}  // namespace isthmus::http
