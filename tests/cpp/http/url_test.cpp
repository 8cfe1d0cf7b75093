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

}  // namespace
}  // namespace isthmus::http
