#include "isthmus/auth/credential.hpp"

#include <gtest/gtest.h>

#include "isthmus/auth/crypto.hpp"
#include "isthmus/auth/jwt.hpp"
#include "isthmus/error.hpp"

namespace isthmus::auth {
namespace {

http::Request authorized(Credential& c, std::string url = "https://api.example.com/v1/x?a=1") {
  http::Request r;
  r.url = std::move(url);
  http::Request out;
  c.authorize(r, nullptr, [&](std::error_code ec, http::Request got) {
    EXPECT_FALSE(ec);
    out = std::move(got);
  });
  return out;
}

TEST(StaticCredentials, ApiKeyInAHeaderIsMarkedSensitive) {
  ApiKey k("key-value", "X-Api-Key", "");
  auto r = authorized(k);
  EXPECT_EQ(*http::find_header(r.headers, "x-api-key"), "key-value");
  EXPECT_EQ(r.sensitive_headers, std::vector<std::string>{"X-Api-Key"});
}

TEST(StaticCredentials, ApiKeyInTheQuery) {
  ApiKey k("a b&c", "", "api_key");
  EXPECT_EQ(authorized(k).url, "https://api.example.com/v1/x?a=1&api_key=a%20b%26c");
  EXPECT_EQ(authorized(k, "https://h/p#frag").url, "https://h/p?api_key=a%20b%26c#frag");
  EXPECT_THROW(ApiKey("v", "X", "q"), Error);
  EXPECT_THROW(ApiKey("v\r\n", "X", ""), Error);
}

TEST(StaticCredentials, BasicAndBearer) {
  BasicAuth b("Aladdin", "open sesame");  // RFC 7617 section 2's example
  EXPECT_EQ(*http::find_header(authorized(b).headers, "authorization"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
  BearerToken t("tok");
  auto r = authorized(t);
  EXPECT_EQ(*http::find_header(r.headers, "authorization"), "Bearer tok");
  EXPECT_THROW(BasicAuth("a:b", "c"), Error);
}

TEST(Jwt, Hs256HasTheExpectedShape) {
  const std::string jwt = sign_jwt("HS256", "secret", R"({"sub":"1234567890"})");
  const auto dot1 = jwt.find('.'), dot2 = jwt.rfind('.');
  EXPECT_EQ(unbase64(jwt.substr(0, dot1)), R"({"alg":"HS256","typ":"JWT"})");
  EXPECT_EQ(unbase64(jwt.substr(dot1 + 1, dot2 - dot1 - 1)), R"({"sub":"1234567890"})");
  EXPECT_EQ(unbase64(jwt.substr(dot2 + 1)), hmac(Digest::sha256, "secret", jwt.substr(0, dot2)));
  EXPECT_THROW(sign_jwt("none", "k", "{}"), Error);
  EXPECT_THROW(sign_jwt("RS256", "not pem", "{}"), Error);
}

TEST(Jwt, AssertionsAreFreshEachTime) {
  auto make = jwt_assertion_signer({.algorithm = "HS256", .key = "k", .issuer = "me",
                                    .audience = "https://x/token", .clock = [] { return 1000.0; }});
  EXPECT_NE(make(), make());  // a new jti each time
  EXPECT_THROW(jwt_assertion_signer({.algorithm = "HS256", .key = "k", .issuer = "", .audience = "a"}), Error);
}

}  // namespace
}  // namespace isthmus::auth
