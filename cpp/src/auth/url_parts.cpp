#include "auth/url_parts.hpp"

#include <cctype>

#include "isthmus/error.hpp"

namespace isthmus::auth {
namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

}  // namespace

std::string UrlParts::host_header() const {
  const bool default_port = port.empty() || (scheme == "http" && port == "80") ||
                            (scheme == "https" && port == "443");
  return default_port ? host : host + ":" + port;
}

UrlParts split_url(std::string_view url) {
  UrlParts p;
  const auto colon = url.find("://");
  if (colon == std::string_view::npos || colon == 0)
    throw Error(errc::invalid_url, "the URL is not absolute");
  p.scheme = lower(url.substr(0, colon));
  std::string_view rest = url.substr(colon + 3);
  if (auto hash = rest.find('#'); hash != std::string_view::npos) rest = rest.substr(0, hash);
  const auto path_start = rest.find_first_of("/?");
  std::string_view authority = rest.substr(0, path_start);
  rest = path_start == std::string_view::npos ? std::string_view{} : rest.substr(path_start);
  if (auto at = authority.rfind('@'); at != std::string_view::npos) authority.remove_prefix(at + 1);
  // The port is what follows the last ':' unless that ':' sits inside an IPv6 literal.
  const auto close = authority.rfind(']');
  const auto pc = authority.rfind(':');
  if (pc != std::string_view::npos && (close == std::string_view::npos || pc > close)) {
    p.host = lower(authority.substr(0, pc));
    p.port = std::string(authority.substr(pc + 1));
  } else {
    p.host = lower(authority);
  }
  if (p.host.empty()) throw Error(errc::invalid_url, "the URL has no host");
  const auto q = rest.find('?');
  p.path = std::string(rest.substr(0, q));
  if (p.path.empty()) p.path = "/";
  if (q != std::string_view::npos) p.query = std::string(rest.substr(q + 1));
  return p;
}

std::string url_with_query_param(const std::string& url, std::string_view name,
                                 std::string_view value) {
  const auto hash = url.find('#');
  std::string base = url.substr(0, hash);
  const std::string fragment = hash == std::string::npos ? "" : url.substr(hash);
  const auto q = base.find('?');
  if (q == std::string::npos)
    base.push_back('?');
  else if (q + 1 != base.size() && base.back() != '&')
    base.push_back('&');
  base += percent_encode(name) + "=" + percent_encode(value);
  return base + fragment;
}

}  // namespace isthmus::auth
