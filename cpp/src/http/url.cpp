#include "isthmus/http/url.hpp"

#include <algorithm>
#include <array>
#include <cctype>

namespace isthmus::http {
namespace {

constexpr std::string_view kMask = "***";
constexpr char kHex[] = "0123456789ABCDEF";

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool is_escape(std::string_view s, std::size_t i) {
  return i + 2 < s.size() && s[i] == '%' && hex_value(s[i + 1]) >= 0 && hex_value(s[i + 2]) >= 0;
}

bool unreserved(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '.' || c == '_' || c == '~';
}

// Bytes never valid raw in a path, query or fragment. '[' and ']' are left alone: APIs use
// them unencoded in queries ("filter[name]=x") and servers accept them. Control bytes are
// left too, so that the URL check refuses them: a CR or LF in a URL is a bug or an attack.
bool needs_escape(unsigned char c) {
  constexpr std::string_view kUnsafe = " \"<>\\^`{|}";
  return c > 0x7f || kUnsafe.find(static_cast<char>(c)) != std::string_view::npos;
}

void append_escape(std::string& out, unsigned char c) {
  out += {'%', kHex[c >> 4], kHex[c & 15]};
}

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

std::string percent_encode(std::string_view in, std::string_view keep) {
  std::string out;
  out.reserve(in.size() * 3 / 2);
  for (unsigned char c : in) {
    if (unreserved(c) || keep.find(static_cast<char>(c)) != std::string_view::npos)
      out.push_back(static_cast<char>(c));
    else
      append_escape(out, c);
  }
  return out;
}

std::string percent_decode(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  for (std::size_t i = 0; i < in.size(); ++i) {
    if (is_escape(in, i)) {
      out.push_back(static_cast<char>(hex_value(in[i + 1]) << 4 | hex_value(in[i + 2])));
      i += 2;
    } else {
      out.push_back(in[i]);
    }
  }
  return out;
}

std::vector<std::pair<std::string, std::string>> split_query(std::string_view query) {
  std::vector<std::pair<std::string, std::string>> out;
  while (!query.empty()) {
    const auto amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    if (!pair.empty()) {
      const auto eq = pair.find('=');
      if (eq == std::string_view::npos)
        out.emplace_back(std::string(pair), std::string());
      else
        out.emplace_back(std::string(pair.substr(0, eq)), std::string(pair.substr(eq + 1)));
    }
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return out;
}

std::string encode_query(const std::vector<std::pair<std::string, std::string>>& params) {
  std::string out;
  for (const auto& [name, value] : params) {
    if (!out.empty()) out.push_back('&');
    out += percent_encode(name);
    out.push_back('=');
    out += percent_encode(value);
  }
  return out;
}

std::string encode_url(std::string_view url) {
  std::string out;
  out.reserve(url.size() + 16);
  // Scheme and authority (host names are IDNA's business, not percent-encoding's).
  const auto scheme_end = url.find("://");
  if (scheme_end != std::string_view::npos && scheme_end < url.find_first_of("/?#")) {
    const auto authority_end = std::min(url.find_first_of("/?#", scheme_end + 3), url.size());
    out.append(url.substr(0, authority_end));
    url.remove_prefix(authority_end);
  }
  bool in_fragment = false;
  for (std::size_t i = 0; i < url.size(); ++i) {
    const auto c = static_cast<unsigned char>(url[i]);
    if (c == '%') {
      if (is_escape(url, i)) {
        out.append(url.substr(i, 3));
        i += 2;
      } else {
        append_escape(out, c);
      }
    } else if (c == '#') {
      // The first '#' starts the fragment; one inside it can only be data.
      if (in_fragment) append_escape(out, c);
      else out.push_back('#');
      in_fragment = true;
    } else if (needs_escape(c)) {
      append_escape(out, c);
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

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
