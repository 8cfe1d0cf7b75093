#include "isthmus/auth/webhook.hpp"

#include <gtest/gtest.h>

#include "isthmus/auth/crypto.hpp"
#include "isthmus/error.hpp"

namespace isthmus::auth {
namespace {

constexpr double kNow = 1700000000;

TEST(Webhook, EachSchemeVerifiesWhatItSigned) {
  const std::string secrets[] = {"whsec_" + base64("standard-key-bytes"), "whsec_stripe", "gh-secret"};
  const WebhookScheme schemes[] = {WebhookScheme::standard, WebhookScheme::stripe, WebhookScheme::github};
  for (int i = 0; i < 3; ++i) {
    auto h = sign_webhook(schemes[i], secrets[i], "msg_1", kNow - 10, R"({"a":1})");
    auto v = verify_webhook(schemes[i], secrets[i], h, R"({"a":1})", 300, kNow);
    EXPECT_TRUE(v.ok()) << i << " " << v.message;
    auto bad = verify_webhook(schemes[i], secrets[i], h, R"({"a":2})", 300, kNow);
    EXPECT_EQ(bad.failed_check, "signature") << i;
    auto wrong = verify_webhook(schemes[i], secrets[i] + "x", h, R"({"a":1})", 300, kNow);
    EXPECT_FALSE(wrong.ok()) << i;
    auto none = verify_webhook(schemes[i], secrets[i], {}, R"({"a":1})", 300, kNow);
    EXPECT_EQ(none.failed_check, "header") << i;
  }
}

TEST(Webhook, ReplayWindow) {
  const std::string secret = "whsec_" + base64("k");
  auto old = sign_webhook(WebhookScheme::standard, secret, "m", kNow - 301, "b");
  EXPECT_EQ(verify_webhook(WebhookScheme::standard, secret, old, "b", 300, kNow).failed_check, "timestamp");
  auto future = sign_webhook(WebhookScheme::stripe, "s", "m", kNow + 301, "b");
  EXPECT_EQ(verify_webhook(WebhookScheme::stripe, "s", future, "b", 300, kNow).failed_check, "timestamp");
  // GitHub signatures carry no timestamp: nothing to check.
  auto gh = sign_webhook(WebhookScheme::github, "s", "m", 0, "b");
  EXPECT_TRUE(verify_webhook(WebhookScheme::github, "s", gh, "b", 300, kNow).ok());
}

TEST(Webhook, AcceptsAnyOfSeveralSignatures) {
  const std::string secret = "whsec_" + base64("k");
  auto h = sign_webhook(WebhookScheme::standard, secret, "m", kNow, "b");
  h[2].second = "v1,AAAA " + h[2].second + " v2,zzz";
  EXPECT_TRUE(verify_webhook(WebhookScheme::standard, secret, h, "b", 300, kNow).ok());
  auto s = sign_webhook(WebhookScheme::stripe, "s", "m", kNow, "b");
  s[0].second += ",v1=00ff,v0=abc";
  EXPECT_TRUE(verify_webhook(WebhookScheme::stripe, "s", s, "b", 300, kNow).ok());
}

TEST(Webhook, MalformedInputNamesTheCheck) {
  EXPECT_EQ(verify_webhook(WebhookScheme::standard, "whsec_***", {}, "b", 300, kNow).failed_check, "secret");
  http::Headers h = {{"Stripe-Signature", "v1=abc"}};
  EXPECT_EQ(verify_webhook(WebhookScheme::stripe, "s", h, "b", 300, kNow).failed_check, "header");
  h = {{"X-Hub-Signature-256", "sha1=abc"}};
  EXPECT_EQ(verify_webhook(WebhookScheme::github, "s", h, "b", 300, kNow).failed_check, "header");
  EXPECT_THROW(parse_webhook_scheme("paypal"), Error);
}

}  // namespace
}  // namespace isthmus::auth
