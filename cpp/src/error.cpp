#include "isthmus/error.hpp"

namespace isthmus {
namespace {

class Category final : public std::error_category {
 public:
  const char* name() const noexcept override { return "isthmus"; }
  std::string message(int ev) const override {
    switch (static_cast<errc>(ev)) {
      case errc::ok: return "ok";
      case errc::invalid_url: return "invalid URL";
      case errc::unsupported_scheme: return "unsupported URL scheme";
      case errc::resolve_failed: return "could not resolve host";
      case errc::connect_failed: return "could not connect";
      case errc::tls_error: return "TLS error";
      case errc::timeout: return "timed out";
      case errc::transport_error: return "connection broken during transfer";
      case errc::protocol_error: return "invalid HTTP from peer";
      case errc::decoding_error: return "could not decode response body";
      case errc::too_many_redirects: return "too many redirects";
      case errc::invalid_header: return "invalid header";
      case errc::body_too_large: return "response body too large";
      case errc::cancelled: return "cancelled";
      case errc::shutting_down: return "shutting down";
      case errc::invalid_argument: return "invalid argument";
      case errc::token_request_failed: return "token request failed";
      case errc::token_request_lost: return "token request got no answer";
      case errc::token_store_error: return "token store error";
      case errc::token_store_tampered: return "stored token failed authentication";
      case errc::webhook_invalid: return "webhook verification failed";
      case errc::crypto_error: return "cryptographic operation failed";
      case errc::quota_exhausted: return "quota exhausted";
      case errc::rate_limited: return "rate limited";
      case errc::circuit_open: return "circuit open";
      case errc::retry_deadline: return "retry deadline passed";
      case errc::access_refused: return "access refused";
      case errc::state_error: return "state file error";
      case errc::internal: return "internal error";
    }
    return "unknown isthmus error";
  }
};

}  // namespace

const std::error_category& category() noexcept {
  static const Category instance;
  return instance;
}

std::error_code make_error_code(errc e) noexcept { return {static_cast<int>(e), category()}; }

std::string_view name(errc e) noexcept {
  // No default: -Wswitch names a code added to the enum and not here.
  switch (e) {
#define ISTHMUS_ERRC_NAME(code) \
  case errc::code: return #code;
    ISTHMUS_ERRC_NAME(ok)
    ISTHMUS_ERRC_NAME(invalid_url)
    ISTHMUS_ERRC_NAME(unsupported_scheme)
    ISTHMUS_ERRC_NAME(resolve_failed)
    ISTHMUS_ERRC_NAME(connect_failed)
    ISTHMUS_ERRC_NAME(tls_error)
    ISTHMUS_ERRC_NAME(timeout)
    ISTHMUS_ERRC_NAME(transport_error)
    ISTHMUS_ERRC_NAME(protocol_error)
    ISTHMUS_ERRC_NAME(decoding_error)
    ISTHMUS_ERRC_NAME(too_many_redirects)
    ISTHMUS_ERRC_NAME(invalid_header)
    ISTHMUS_ERRC_NAME(body_too_large)
    ISTHMUS_ERRC_NAME(cancelled)
    ISTHMUS_ERRC_NAME(shutting_down)
    ISTHMUS_ERRC_NAME(invalid_argument)
    ISTHMUS_ERRC_NAME(token_request_failed)
    ISTHMUS_ERRC_NAME(token_request_lost)
    ISTHMUS_ERRC_NAME(token_store_error)
    ISTHMUS_ERRC_NAME(token_store_tampered)
    ISTHMUS_ERRC_NAME(webhook_invalid)
    ISTHMUS_ERRC_NAME(crypto_error)
    ISTHMUS_ERRC_NAME(quota_exhausted)
    ISTHMUS_ERRC_NAME(rate_limited)
    ISTHMUS_ERRC_NAME(circuit_open)
    ISTHMUS_ERRC_NAME(retry_deadline)
    ISTHMUS_ERRC_NAME(access_refused)
    ISTHMUS_ERRC_NAME(state_error)
    ISTHMUS_ERRC_NAME(internal)
#undef ISTHMUS_ERRC_NAME
  }
  return {};
}

std::string printable(std::string_view bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size());
  for (char ch : bytes) {
    const auto c = static_cast<unsigned char>(ch);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out.push_back(ch);
    } else {
      out += "\\x";
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 0xf]);
    }
  }
  return out;
}

}  // namespace isthmus
