#include "isthmus/http/url.hpp"

#include <gtest/gtest.h>

namespace isthmus::http {
namespace {

TEST(RedactUrl, LeavesPlainUrlsAlone) {
  EXPECT_EQ(redact_url("https://api.example.com/v1/contacts?limit=5&page=2"),
            "https://api.example.com/v1/contacts?limit=5&page=2");
  EXPECT_EQ(redact_url("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
  EXPECT_EQ(redact_url(""), "");
}

TEST(RedactUrl, MasksUserinfoPasswordOnly) {
  EXPECT_EQ(redact_url("https://alice:s3cret@example.com/x"), "https://alice:***@example.com/x");
  EXPECT_EQ(redact_url("https://alice@example.com/x"), "https://alice@example.com/x");
  // An unencoded '@' inside the password: the last '@' ends the userinfo.
  EXPECT_EQ(redact_url("https://u:p@ss@example.com/"), "https://u:***@example.com/");
  // An '@' in the path is not userinfo.
  EXPECT_EQ(redact_url("https://example.com/users/@me?x=1"), "https://example.com/users/@me?x=1");
}

TEST(RedactUrl, MasksSecretLookingQueryValues) {
  EXPECT_EQ(redact_url("https://h/p?access_token=abc&limit=5"), "https://h/p?access_token=***&limit=5");
  EXPECT_EQ(redact_url("https://h/p?API_KEY=abc"), "https://h/p?API_KEY=***");
  EXPECT_EQ(redact_url("https://h/p?client_secret=a&Password=b&passwd=c"),
            "https://h/p?client_secret=***&Password=***&passwd=***");
  EXPECT_EQ(redact_url("https://h/p?X-Amz-Signature=ab&sig=cd&auth=ef&credential=gh&code=ij"),
            "https://h/p?X-Amz-Signature=***&sig=***&auth=***&credential=***&code=***");
  EXPECT_EQ(redact_url("https://h/p?token"), "https://h/p?token");  // no value to hide
  EXPECT_EQ(redact_url("https://h/p?a=1&&token=x&"), "https://h/p?a=1&&token=***&");
}

TEST(RedactUrl, MasksFragmentParametersToo) {
  EXPECT_EQ(redact_url("https://h/cb?state=1#access_token=abc&type=bearer"),
            "https://h/cb?state=1#access_token=***&type=bearer");
  EXPECT_EQ(redact_url("https://h/cb#token=abc"), "https://h/cb#token=***");
}

TEST(RedactUrl, ToleratesMalformedInput) {
  EXPECT_EQ(redact_url("not a url ?token=x"), "not a url ?token=***");
  EXPECT_EQ(redact_url("//u:pw@host/?key=1"), "//u:pw@host/?key=***");  // no scheme: no userinfo parsing
  EXPECT_EQ(redact_url("?"), "?");
  EXPECT_EQ(redact_url("http://a:b@"), "http://a:***@");
}

TEST(PercentEncode, KeepsUnreservedAndEncodesTheRestInUpperCase) {
  EXPECT_EQ(percent_encode("AZaz09-._~"), "AZaz09-._~");
  EXPECT_EQ(percent_encode("a b+c&d=e%f/g?"), "a%20b%2Bc%26d%3De%25f%2Fg%3F");
  EXPECT_EQ(percent_encode("caf\xC3\xA9"), "caf%C3%A9");
  EXPECT_EQ(percent_encode(std::string_view("\0\xff", 2)), "%00%FF");
  EXPECT_EQ(percent_encode("/a b/", "/"), "/a%20b/");
}

TEST(PercentDecode, UndoesEncodingAndKeepsWhatIsNoEscape) {
  EXPECT_EQ(percent_decode("a%20b%2Bc%c3%A9"), "a b+c\xC3\xA9");
  EXPECT_EQ(percent_decode("1+1"), "1+1");
  EXPECT_EQ(percent_decode("100%"), "100%");
  EXPECT_EQ(percent_decode("%2"), "%2");
  EXPECT_EQ(percent_decode("%zz%4"), "%zz%4");
  const std::string all = [] {
    std::string s;
    for (int c = 0; c < 256; ++c) s.push_back(static_cast<char>(c));
    return s;
  }();
  EXPECT_EQ(percent_decode(percent_encode(all)), all);
}

TEST(SplitQuery, SplitsOnAmpersandAndTheFirstEqualsAndKeepsTheEncoding) {
  using Pairs = std::vector<std::pair<std::string, std::string>>;
  EXPECT_EQ(split_query("a=1&b&&c=x=y&d=%20"), (Pairs{{"a", "1"}, {"b", ""}, {"c", "x=y"}, {"d", "%20"}}));
  EXPECT_EQ(split_query(""), Pairs{});
  EXPECT_EQ(split_query("&&"), Pairs{});
  EXPECT_EQ(split_query("=v"), (Pairs{{"", "v"}}));
}

TEST(EncodeQuery, JoinsEncodedPairs) {
  EXPECT_EQ(encode_query({}), "");
  EXPECT_EQ(encode_query({{"q", "a b"}, {"tag", "x&y=z"}, {"e", "\xC3\xA9"}, {"empty", ""}}),
            "q=a%20b&tag=x%26y%3Dz&e=%C3%A9&empty=");
}

TEST(EncodeUrl, EncodesNonAsciiAndUnsafeBytesAsUtf8) {
  EXPECT_EQ(encode_url("https://h.example/caf\xC3\xA9?x=\xC3\xA9"),
            "https://h.example/caf%C3%A9?x=%C3%A9");
  EXPECT_EQ(encode_url("http://h/a b?q=a b&r=<\"{|}>`^\\"),
            "http://h/a%20b?q=a%20b&r=%3C%22%7B%7C%7D%3E%60%5E%5C");
  // Controls are not encoded away: the client refuses them (a CR LF in a URL is an attack).
  EXPECT_EQ(encode_url("http://h/p?a=1\r\n2\t\x7f"), "http://h/p?a=1\r\n2\t\x7f");
}

TEST(EncodeUrl, KeepsEscapesAndDelimitersAsWritten) {
  EXPECT_EQ(encode_url("http://h/caf%C3%A9?x=%c3%a9&y=%2F"), "http://h/caf%C3%A9?x=%c3%a9&y=%2F");
  EXPECT_EQ(encode_url("http://h/p?a=1&b=2;c=3&f[x]=1&s=/?:@!$'()*+,"),
            "http://h/p?a=1&b=2;c=3&f[x]=1&s=/?:@!$'()*+,");
  // A '%' that starts no escape is data.
  EXPECT_EQ(encode_url("http://h/100%?a=%&b=%4&c=%zz"), "http://h/100%25?a=%25&b=%254&c=%25zz");
  EXPECT_EQ(encode_url("http://h/p#frag#more"), "http://h/p#frag%23more");
}

TEST(EncodeUrl, LeavesSchemeAndAuthorityAlone) {
  EXPECT_EQ(encode_url("http://user:p%40ss@h:8080"), "http://user:p%40ss@h:8080");
  EXPECT_EQ(encode_url("http://[::1]:80/a b"), "http://[::1]:80/a%20b");
  EXPECT_EQ(encode_url("/relative/\xC3\xA9?x= "), "/relative/%C3%A9?x=%20");
  EXPECT_EQ(encode_url(""), "");
}

TEST(EncodeUrl, IsIdempotent) {
  for (std::string_view url : {"https://h/caf\xC3\xA9 x?q=100%&r=a b#f#g", "http://h/%%%41",
                               "http://h/?\x80\xff%"}) {
    const std::string once = encode_url(url);
    EXPECT_EQ(encode_url(once), once) << url;
    for (unsigned char c : once) EXPECT_TRUE(c > 0x20 && c < 0x7f) << url;  // no controls given
  }
}

}  // namespace
}  // namespace isthmus::http
