// The project's error category. Core async operations complete with an std::error_code from
// it; the Python boundary (bindings/exceptions.cpp) maps each code to one exception class.
#pragma once

#include <string>
#include <string_view>
#include <system_error>

namespace isthmus {

enum class errc {
  ok = 0,
  invalid_url,         // the URL does not parse
  unsupported_scheme,  // not http or https
  resolve_failed,      // the host name did not resolve
  connect_failed,      // refused, unreachable
  tls_error,           // handshake or certificate verification failed
  timeout,             // connect or total deadline passed
  transport_error,     // connection broke mid-request or mid-body
  protocol_error,      // the peer spoke invalid HTTP
  decoding_error,      // content-encoding could not be decoded
  too_many_redirects,
  invalid_header,      // a header name or value the client refuses to send (CR/LF, empty name)
  body_too_large,      // response exceeded the configured maximum
  cancelled,           // the caller cancelled the operation
  shutting_down,       // the engine or client is closing
  invalid_argument,    // a configuration value is out of range
  // auth
  token_request_failed,  // the token endpoint refused us or answered something unusable
  token_request_lost,    // the token request got no answer (reset, timeout): worth retrying
  token_store_error,     // the token store could not be opened, read or written (or no key)
  token_store_tampered,  // a stored token failed authentication (wrong key or altered file)
  webhook_invalid,       // a webhook's signature, timestamp or headers did not verify
  crypto_error,          // OpenSSL refused an operation (bad key, unsupported algorithm)
  quota_exhausted,     // a quota is used up until its window resets
  rate_limited,        // a limit would make the call wait longer than allowed, or 429s outlasted retries
  circuit_open,        // the host's circuit breaker is open: the call was not sent
  retry_deadline,      // the retry deadline passed before an attempt succeeded
  access_refused,      // a server (a message broker) refused the credentials, the vhost or a permission
  // store, queue
  state_error,         // a state or queue file cannot be opened, read or written, or is damaged
  internal,            // a bug: reported, never swallowed (stays last: see kErrcCount)
};

// Every code is one of 0 .. kErrcCount - 1, so a table over the codes (the Python exception
// classes, their test) can walk them all and notice one that is missing.
inline constexpr int kErrcCount = static_cast<int>(errc::internal) + 1;

const std::error_category& category() noexcept;
std::error_code make_error_code(errc e) noexcept;

// The code's name as the enum spells it ("connect_failed"); "" for a value that is no code.
std::string_view name(errc e) noexcept;

// Untrusted bytes made safe to quote in an error message: printable ASCII is kept and every
// other byte is written as \xNN, so a message is one line of valid UTF-8 (it becomes a Python
// str) whatever the input held.
std::string printable(std::string_view bytes);

// Thrown only by synchronous facades (and translated to Python in one place).
// what() is the message as given (std::system_error would append the code's description).
class Error : public std::system_error {
 public:
  Error(std::error_code ec, std::string message)
      : std::system_error(ec), message_(std::move(message)) {}
  Error(errc e, std::string message) : Error(make_error_code(e), std::move(message)) {}
  const char* what() const noexcept override { return message_.c_str(); }

 private:
  std::string message_;
};

}  // namespace isthmus

template <>
struct std::is_error_code_enum<isthmus::errc> : std::true_type {};
