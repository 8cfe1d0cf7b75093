// The seam between the Limiter and a shared counter, with a test double for the counter.
#include <gtest/gtest.h>

#include "isthmus/error.hpp"
#include "isthmus/limits/limiter.hpp"

namespace isthmus::limits {
namespace {

struct NoCounter final : SharedCounter {
  void reserve(std::vector<SharedRule>, double, double, TimePoint, std::function<void(SharedGrant)>) override {}
};

TEST(SharedRules, RatesAndQuotasAreCountedElsewhereTheRestStaysHere) {
  LimiterOptions o;
  o.rules.push_back({RateSpec{100, 1, 5}, kDefaultScope, ""});
  o.rules.push_back({QuotaSpec{1000, 3600}, kDefaultScope, "hourly"});
  o.rules.push_back({ConcurrencySpec{1}, kDefaultScope, ""});
  o.shared = std::make_shared<NoCounter>();
  o.shared_name = "crm";
  o.clock = std::make_shared<ManualClock>();
  Limiter l(o);
  const Key k{"api.example.com", "cred", "t1", "contacts"};

  auto rules = l.shared_rules(k);
  ASSERT_EQ(rules.size(), 2u);
  EXPECT_FALSE(rules[0].quota);
  EXPECT_DOUBLE_EQ(rules[0].a, 0.01);
  // burst * interval less the margin: 25% of the tolerance (4 intervals), as a local rate keeps.
  EXPECT_NEAR(rules[0].b, 0.05 - 0.01, 1e-12);
  EXPECT_EQ(rules[0].bucket, "crm:rate 100 per 1s (burst 5):api.example.com/cred/t1/");
  EXPECT_TRUE(rules[1].quota);
  EXPECT_EQ(rules[1].bucket, "crm:hourly:api.example.com/cred/t1/");

  // Locally no rate waits: a burst far beyond 5 goes at once (Redis would have spaced it),
  // while the in-flight cap still holds here.
  auto first = l.reserve(k, 1);
  EXPECT_TRUE(first.granted);
  EXPECT_TRUE(l.reserve(k, 1).blocked);
  l.release(first.ticket);
  for (int i = 0; i < 20; ++i) {
    auto r = l.reserve(k, 1);
    EXPECT_TRUE(r.granted);
    EXPECT_EQ(r.wait, Duration::zero());
    l.release(r.ticket);
  }
  // A cost no quota window can hold is refused here, without asking anyone.
  EXPECT_EQ(l.reserve(k, 5000).error, make_error_code(errc::invalid_argument));
}

TEST(SharedRules, NoneWithoutACounter) {
  LimiterOptions o;
  o.rules.push_back({RateSpec{100, 1, 5}, kDefaultScope, ""});
  Limiter l(o);
  EXPECT_TRUE(l.shared_rules(Key{}).empty());
}

}  // namespace
}  // namespace isthmus::limits
