#include "isthmus/auth/signing.hpp"

#include <gtest/gtest.h>

#include "isthmus/error.hpp"

namespace isthmus::auth {
namespace {

constexpr std::int64_t k20150830T123600Z = 1440938160;

http::Request get(std::string url) {
  http::Request r;
  r.url = std::move(url);
  return r;
}

TEST(AwsSigV4, MatchesTheIamListUsersExample) {
  // The worked example of the AWS SigV4 documentation (IAM ListUsers, 2015-08-30).
  AwsSigV4 signer({.access_key = "AKIDEXAMPLE",
                   .secret_key = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                   .region = "us-east-1",
                   .service = "iam"});
  auto r = get("https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08");
  r.headers = {{"Content-Type", "application/x-www-form-urlencoded; charset=utf-8"}};
  const std::string canonical = signer.sign(r, k20150830T123600Z);
  EXPECT_EQ(hex(sha256(canonical)),
            "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59");
  EXPECT_EQ(*http::find_header(r.headers, "authorization"),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, "
            "SignedHeaders=content-type;host;x-amz-date, "
            "Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7");
  EXPECT_EQ(*http::find_header(r.headers, "x-amz-date"), "20150830T123600Z");
}

TEST(AwsSigV4, CanonicalFormRules) {
  AwsSigV4 signer({.access_key = "AK", .secret_key = "SK", .region = "eu-west-1",
                   .service = "execute-api", .session_token = "TOKEN"});
  auto r = get("https://Example.com:8443/a/./b/../c%20d//e/?b=2&a=%7e&a=1&flag");
  r.headers = {{"X-Custom", "  two   spaces \t here "}, {"x-custom", "second"},
               {"User-Agent", "not signed"}};
  const std::string c = signer.sign(r, k20150830T123600Z);
  EXPECT_EQ(c,
            "GET\n"
            "/a/c%2520d/e/\n"
            "a=1&a=~&b=2&flag=\n"
            "host:example.com:8443\n"
            "x-amz-date:20150830T123600Z\n"
            "x-amz-security-token:TOKEN\n"
            "x-custom:two spaces here,second\n"
            "\n"
            "host;x-amz-date;x-amz-security-token;x-custom\n"
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(*http::find_header(r.headers, "x-amz-security-token"), "TOKEN");
}

TEST(AwsSigV4, ReSigningReplacesTheOldSignature) {
  AwsSigV4 signer({.access_key = "AK", .secret_key = "SK", .region = "r", .service = "s"});
  auto r = get("https://h/");
  signer.sign(r, k20150830T123600Z);
  signer.sign(r, k20150830T123600Z + 60);
  int auths = 0, dates = 0;
  for (const auto& [k, v] : r.headers) {
    auths += http::iequals(k, "authorization");
    dates += http::iequals(k, "x-amz-date");
  }
  EXPECT_EQ(auths, 1);
  EXPECT_EQ(dates, 1);
  EXPECT_EQ(*http::find_header(r.headers, "x-amz-date"), "20150830T123700Z");
}

TEST(AwsSigV4, S3SignsThePayloadHashHeaderAndEncodesThePathOnce) {
  AwsSigV4 signer({.access_key = "AK", .secret_key = "SK", .region = "us-east-1", .service = "s3"});
  auto r = get("https://bucket.s3.amazonaws.com/caf%C3%A9.txt");
  r.method = "PUT";
  r.body = std::make_shared<const std::string>("hello");
  const std::string c = signer.sign(r, k20150830T123600Z);
  EXPECT_EQ(c.substr(0, c.find('\n', 4)), "PUT\n/caf%C3%A9.txt");
  EXPECT_EQ(*http::find_header(r.headers, "x-amz-content-sha256"), hex(sha256("hello")));
}

TEST(AwsSigV4, RejectsMissingFields) {
  EXPECT_THROW(AwsSigV4({.access_key = "AK", .secret_key = "", .region = "r", .service = "s"}), Error);
}

TEST(HmacSigner, SignsTheTemplate) {
  HmacSigner s({.key = "k", .canonical = "{method} {path_query} {timestamp} {header:X-Tenant} {body_sha256}",
                .signature_header = "X-Sig", .signature_prefix = "v1=",
                .timestamp_header = "X-Ts"});
  auto r = get("https://api.example.com/v1/items?x=1");
  r.method = "POST";
  r.headers = {{"X-Tenant", "42"}};
  r.body = std::make_shared<const std::string>("{}");
  const std::string canonical = s.sign(r, 1700000000);
  EXPECT_EQ(canonical, "POST /v1/items?x=1 1700000000 42 " + hex(sha256("{}")));
  EXPECT_EQ(*http::find_header(r.headers, "x-sig"), "v1=" + hex(hmac(Digest::sha256, "k", canonical)));
  EXPECT_EQ(*http::find_header(r.headers, "x-ts"), "1700000000");
}

TEST(HmacSigner, Base64AndOtherDigests) {
  HmacSigner s({.key = "k", .digest = Digest::sha512, .canonical = "{method}", .base64 = true});
  auto r = get("https://h/");
  s.sign(r, 0);
  EXPECT_EQ(*http::find_header(r.headers, "x-signature"), base64(hmac(Digest::sha512, "k", "GET")));
}

TEST(HmacSigner, RejectsUnknownPlaceholders) {
  try {
    HmacSigner s({.key = "k", .canonical = "{method}{bogus}"});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("{bogus}"), std::string::npos);
  }
}

}  // namespace
}  // namespace isthmus::auth
