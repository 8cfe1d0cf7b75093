#include "isthmus/http/url.hpp"

#include <algorithm>
#include <array>
#include <cctype>

namespace isthmus::http {
namespace {

constexpr std::string_view kMask = "***";

bool looks_secret(std::string_view name) {
  static constexpr std::array<std::string_view, 10> kWords = {
      "token", "key", "secret", "password", "passwd", "signature", "sig", "auth",
      "credential", "code"};
  std::string lower(name);
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  // Names arrive percent-encoded as often as not ("api%5Fkey"); matching the raw text still
  // catches the common spellings, and over-masking is the safe side to err on.
  return std::any_of(kWords.begin(), kWords.end(),
                     [&](std::string_view w) { return lower.find(w) != std::string::npos; });
}

// Masks the values of secret-looking "name=value" pairs in a '&'-separated list.
void append_params(std::string& out, std::string_view params) {
  while (true) {
    const auto amp = params.find('&');
    const auto pair = params.substr(0, amp);
    const auto eq = pair.find('=');
    if (eq != std::string_view::npos && looks_secret(pair.substr(0, eq))) {
      out.append(pair.substr(0, eq + 1));
      out.append(kMask);
    } else {
      out.append(pair);
    }
    if (amp == std::string_view::npos) return;
    out.push_back('&');
    params.remove_prefix(amp + 1);
  }
}

}  // namespace

std::string redact_url(std::string_view url) {
  std::string out;
  out.reserve(url.size() + 8);

  const auto scheme_end = url.find("://");
  const auto first_delim = url.find_first_of("/?#");
  if (scheme_end != std::string_view::npos && scheme_end < first_delim) {
    out.append(url.substr(0, scheme_end + 3));
    url.remove_prefix(scheme_end + 3);
    const auto authority_end = std::min(url.find_first_of("/?#"), url.size());
    const auto authority = url.substr(0, authority_end);
    // The last '@' ends the userinfo: a password may itself contain an unencoded '@'.
    const auto at = authority.rfind('@');
    if (at != std::string_view::npos) {
      const auto userinfo = authority.substr(0, at);
      const auto colon = userinfo.find(':');
      if (colon != std::string_view::npos) {
        out.append(userinfo.substr(0, colon + 1));
        out.append(kMask);
      } else {
        out.append(userinfo);
      }
      out.append(authority.substr(at));
    } else {
      out.append(authority);
    }
    url.remove_prefix(authority_end);
  }

  const auto query = url.find_first_of("?#");
  out.append(url.substr(0, query));
  if (query == std::string_view::npos) return out;
  url.remove_prefix(query);

  // What follows is "?query", "#fragment" or "?query#fragment"; tokens travel in fragments
  // too (OAuth implicit flow), so both get the same treatment.
  while (!url.empty()) {
    out.push_back(url.front());
    const bool in_query = url.front() == '?';
    url.remove_prefix(1);
    const auto end = in_query ? std::min(url.find('#'), url.size()) : url.size();
    append_params(out, url.substr(0, end));
    url.remove_prefix(end);
  }
  return out;
}

}  // namespace isthmus::http
