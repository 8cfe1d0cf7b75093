#include "http/curl_url.hpp"

#include <curl/curl.h>

#include <memory>

#include "isthmus/error.hpp"
#include "isthmus/http/message.hpp"
#include "isthmus/http/url.hpp"

namespace isthmus::http {
namespace {

struct UrlDeleter {
  void operator()(CURLU* u) const noexcept { curl_url_cleanup(u); }
};
using UrlHandle = std::unique_ptr<CURLU, UrlDeleter>;

std::string get_part(CURLU* u, CURLUPart part, unsigned flags = 0) {
  char* value = nullptr;
  if (curl_url_get(u, part, &value, flags) != CURLUE_OK || !value) return {};
  std::string out(value);
  curl_free(value);
  return out;
}

// Schemes outside http/https parse too, so that they are reported as unsupported rather
// than as malformed.
constexpr unsigned kParseFlags = CURLU_NON_SUPPORT_SCHEME;

// `url` is only for the message, redacted when (rarely) there is one.
std::pair<std::error_code, std::string> check_parsed(CURLU* u, std::string_view url) {
  const std::string scheme = get_part(u, CURLUPART_SCHEME);
  if (!iequals(scheme, "http") && !iequals(scheme, "https"))
    return {errc::unsupported_scheme, "scheme '" + scheme + "' is not http or https: " + redact_url(url)};
  if (get_part(u, CURLUPART_HOST).empty())
    return {errc::invalid_url, "URL has no host: " + redact_url(url)};
  return {};
}

}  // namespace

std::pair<std::error_code, std::string> check_url(const std::string& url) {
  // curl reads the URL as a C string: it would silently send what comes before a NUL.
  if (url.find('\0') != std::string::npos) return {errc::invalid_url, "URL contains a NUL byte"};
  UrlHandle u(curl_url());
  if (!u) return {errc::internal, "out of memory"};
  if (CURLUcode rc = curl_url_set(u.get(), CURLUPART_URL, url.c_str(), kParseFlags); rc != CURLUE_OK)
    return {errc::invalid_url,
            std::string("malformed URL (") + curl_url_strerror(rc) + "): " + redact_url(url)};
  return check_parsed(u.get(), url);
}

RedirectTarget resolve_redirect(const std::string& base, const std::string& location) {
  RedirectTarget out;
  UrlHandle from(curl_url());
  if (!from || curl_url_set(from.get(), CURLUPART_URL, base.c_str(), kParseFlags) != CURLUE_OK) {
    out.error = errc::invalid_url;
    out.message = "base URL does not parse";
    return out;
  }
  UrlHandle to(curl_url_dup(from.get()));
  // With a base already set, a relative reference is resolved against it.
  if (CURLUcode rc = curl_url_set(to.get(), CURLUPART_URL, location.c_str(), kParseFlags);
      rc != CURLUE_OK) {
    out.error = errc::invalid_url;
    out.message = curl_url_strerror(rc);
    return out;
  }
  out.url = get_part(to.get(), CURLUPART_URL);
  if (auto [ec, msg] = check_parsed(to.get(), out.url); ec) {
    out.error = ec;
    out.message = std::move(msg);
    return out;
  }
  out.cross_origin =
      !iequals(get_part(from.get(), CURLUPART_SCHEME), get_part(to.get(), CURLUPART_SCHEME)) ||
      !iequals(get_part(from.get(), CURLUPART_HOST), get_part(to.get(), CURLUPART_HOST)) ||
      get_part(from.get(), CURLUPART_PORT, CURLU_DEFAULT_PORT) !=
          get_part(to.get(), CURLUPART_PORT, CURLU_DEFAULT_PORT);
  return out;
}

}  // namespace isthmus::http
