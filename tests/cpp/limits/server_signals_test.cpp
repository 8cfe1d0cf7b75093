#include "isthmus/limits/server_signals.hpp"

#include <gtest/gtest.h>

#include <string>

namespace isthmus::limits {
namespace {

constexpr double kNow = 784111777;  // Sun, 06 Nov 1994 08:49:37 GMT

TEST(RetryAfter, DelaySeconds) {
  EXPECT_EQ(parse_retry_after("2", kNow), 2.0);
  EXPECT_EQ(parse_retry_after(" 120 ", kNow), 120.0);
  EXPECT_EQ(parse_retry_after("0", kNow), 0.0);
  EXPECT_EQ(parse_retry_after("1.5", kNow), 1.5);  // not in the RFC, but sent in the wild
}

TEST(RetryAfter, HttpDatesInAllThreeFormats) {
  EXPECT_EQ(parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", kNow), 10.0);
  EXPECT_EQ(parse_retry_after("Sunday, 06-Nov-94 08:49:47 GMT", kNow), 10.0);
  EXPECT_EQ(parse_retry_after("Sun Nov  6 08:49:47 1994", kNow), 10.0);
  EXPECT_EQ(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), 0.0);
  EXPECT_EQ(parse_http_date("Tue, 29 Feb 2000 12:00:00 GMT"), 951825600.0);
}

TEST(RetryAfter, DateInThePastMeansNow) {
  EXPECT_EQ(parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", kNow), 0.0);
}

TEST(RetryAfter, GarbageGivesNothing) {
  for (const char* bad : {"", "-1", "soon", "1e3", "0x10", "inf", "nan", "2 s", "Sun, 06 Nov 1994",
                          "Sun, 32 Nov 1994 08:49:37 GMT", "Sun, 06 Foo 1994 08:49:37 GMT",
                          "Sun, 06 Nov 1994 25:49:37 GMT", "Sun, 06 Nov 1994 08:49:37 PST",
                          "\x01\x02", "99999999999999999999999999999999999999"}) {
    EXPECT_FALSE(parse_retry_after(bad, kNow).has_value()) << bad;
  }
}

TEST(RetryAfter, AbsurdButWellFormedIsReturnedForTheCallerToBound) {
  auto v = parse_retry_after("Fri, 01 Jan 2100 00:00:00 GMT", kNow);
  ASSERT_TRUE(v);
  EXPECT_GT(*v, 3e9);
}

TEST(Reset, DeltaEpochSecondsAndEpochMillis) {
  const double now = 1'700'000'000;
  EXPECT_EQ(parse_reset("30", now), 30.0);
  EXPECT_EQ(parse_reset("1700000030", now), 30.0);
  EXPECT_EQ(parse_reset("1700000030000", now), 30.0);
  EXPECT_EQ(parse_reset("1600000000", now), 0.0);  // in the past: refilled already
  EXPECT_FALSE(parse_reset("-5", now));
  EXPECT_FALSE(parse_reset("tomorrow", now));
}

TEST(XRateLimit, ReadsTheTrio) {
  http::Headers h = {{"x-ratelimit-limit", "100"}, {"X-RateLimit-Remaining", "0"}, {"X-RateLimit-Reset", "7"}};
  auto q = parse_x_ratelimit(h, 0);
  EXPECT_EQ(q.limit, 100.0);
  EXPECT_EQ(q.remaining, 0.0);
  EXPECT_EQ(q.reset_after, 7.0);
}

TEST(XRateLimit, EarlyDraftLimitWithWindow) {
  http::Headers h = {{"RateLimit-Limit", "10, 10;w=1, 50;w=60"}, {"RateLimit-Remaining", "4"}};
  auto q = parse_x_ratelimit(h, 0);
  EXPECT_EQ(q.limit, 10.0);
  EXPECT_EQ(q.window, 1.0);
  EXPECT_EQ(q.remaining, 4.0);
}

TEST(RateLimitField, DictionaryForm) {
  auto items = parse_ratelimit_field("limit=100, remaining=50, reset=30");
  ASSERT_EQ(items.size(), 1u);
  EXPECT_EQ(items[0].quota, 100.0);
  EXPECT_EQ(items[0].remaining, 50.0);
  EXPECT_EQ(items[0].reset_after, 30.0);
}

TEST(RateLimitField, ItemFormWithPolicies) {
  http::Headers h = {{"RateLimit-Policy", "\"burst\";q=100;w=60, \"daily\";q=1000;w=86400"},
                     {"RateLimit", "\"burst\";r=40;t=20, \"daily\";r=3;t=3600"}};
  auto q = parse_server_quota(h, 0);
  EXPECT_EQ(q.remaining, 3.0);  // the most restrictive policy
  EXPECT_EQ(q.reset_after, 3600.0);
  EXPECT_EQ(q.limit, 1000.0);
  EXPECT_EQ(q.window, 86400.0);
  EXPECT_EQ(q.slot, 86.4);  // the window over the quota of the same policy
}

TEST(RateLimitField, TheSlotComesFromOnePolicyNotFromMixedSources) {
  // The sandbox's form: X-RateLimit-Limit is the burst, the policy the rate (40/s).
  http::Headers h = {{"X-RateLimit-Limit", "5"}, {"X-RateLimit-Remaining", "0"}, {"X-RateLimit-Reset", "0.025"},
                     {"RateLimit-Policy", "\"burst\";q=40;w=1"}, {"RateLimit", "\"burst\";r=0;t=1"}};
  auto q = parse_server_quota(h, 0);
  EXPECT_EQ(q.limit, 5.0);
  EXPECT_EQ(q.reset_after, 0.025);
  EXPECT_EQ(q.slot, 1.0 / 40);
  EXPECT_FALSE(parse_server_quota({{"RateLimit-Policy", "\"p\";q=0;w=1"}}, 0).slot);
}

TEST(RateLimitField, GarbageIsHarmless) {
  for (const char* bad : {"", ",,,", "\"unterminated;r=1", "=;=;=", "r=abc", ";;;q=", "\"a\";r=-1;t=1e9"}) {
    auto items = parse_ratelimit_field(bad);
    for (const auto& i : items) {
      if (i.remaining) EXPECT_GE(*i.remaining, 0) << bad;
    }
  }
  EXPECT_TRUE(parse_ratelimit_field(std::string(5000, ',')).empty());
}

}  // namespace
}  // namespace isthmus::limits
