// URL encoding (http/url.hpp). The input is a URL, as a server's "next" link or a user's path
// may hand it to the client. Properties: encode_url is idempotent, changes nothing but the
// bytes it escapes (decoding before and after gives the same text), and leaves no space or
// non-ASCII byte past the authority; percent_encode round-trips through percent_decode and
// emits only unreserved characters and upper-case escapes; encode_query keeps its pairs apart.
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "check.hpp"
#include "isthmus/http/url.hpp"

namespace {

using namespace isthmus::http;

bool unreserved(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '.' || c == '_' || c == '~';
}

bool upper_hex(char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F'); }

// Where the path starts: after "scheme://authority" when the URL has them, else at 0.
std::size_t path_start(std::string_view url) {
  const auto scheme_end = url.find("://");
  if (scheme_end == std::string_view::npos || scheme_end >= url.find_first_of("/?#")) return 0;
  return std::min(url.find_first_of("/?#", scheme_end + 3), url.size());
}

void check_percent_encode(std::string_view in) {
  const std::string enc = percent_encode(in);
  for (std::size_t i = 0; i < enc.size(); ++i) {
    const auto c = static_cast<unsigned char>(enc[i]);
    if (c == '%') {
      FUZZ_CHECK(i + 2 < enc.size() && upper_hex(enc[i + 1]) && upper_hex(enc[i + 2]),
                 "percent_encode writes only complete upper-case escapes");
      i += 2;
    } else {
      FUZZ_CHECK(unreserved(c), "percent_encode leaves only unreserved characters raw");
    }
  }
  FUZZ_CHECK(percent_decode(enc) == in, "percent_decode(percent_encode(x)) == x");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view url = isthmus::fuzz::as_text(data, size);

  const std::string once = encode_url(url);
  FUZZ_CHECK(encode_url(once) == once, "encode_url is idempotent");
  FUZZ_CHECK(percent_decode(once) == percent_decode(url), "encode_url only escapes, never alters");
  const std::size_t start = path_start(url);
  FUZZ_CHECK(once.compare(0, start, url.substr(0, start)) == 0, "scheme and authority are kept");
  for (std::size_t i = start; i < once.size(); ++i) {
    const auto c = static_cast<unsigned char>(once[i]);
    FUZZ_CHECK(c != ' ' && c < 0x80, "no space or non-ASCII byte past the authority");
    const bool control = c < 0x20 || c == 0x7f;
    FUZZ_CHECK(!control || url.find(static_cast<char>(c)) != std::string_view::npos,
               "the only control bytes are those given (the client refuses them)");
  }

  check_percent_encode(url);

  // The input's lines as name=value pairs: encoding them and splitting on '&' and '=' again
  // gives back the same pairs.
  std::vector<std::pair<std::string, std::string>> params;
  for (auto line : isthmus::fuzz::split(url, '\n')) {
    const auto name = isthmus::fuzz::take(line, '=');
    params.emplace_back(std::string(name), std::string(line));
  }
  const std::string query = encode_query(params);
  const auto pieces = isthmus::fuzz::split(query, '&');
  FUZZ_CHECK(pieces.size() == params.size(), "encode_query writes one piece per pair");
  for (std::size_t i = 0; i < pieces.size(); ++i) {
    auto piece = pieces[i];
    const auto name = isthmus::fuzz::take(piece, '=');
    FUZZ_CHECK(percent_decode(name) == params[i].first && percent_decode(piece) == params[i].second,
               "encode_query pairs decode to what was given");
  }
  return 0;
}
