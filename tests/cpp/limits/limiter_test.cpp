#include "isthmus/limits/limiter.hpp"

#include <gtest/gtest.h>

#include <cmath>

#include "isthmus/error.hpp"

namespace isthmus::limits {
namespace {

using namespace std::chrono_literals;

struct Fixture : ::testing::Test {
  std::shared_ptr<ManualClock> clock = std::make_shared<ManualClock>(1'700'000'000.0);
  Key key{"api.example.com", "app", "t1", ""};

  Limiter make(std::vector<Rule> rules) {
    LimiterOptions o;
    o.rules = std::move(rules);
    o.clock = clock;
  o.probe_timeout = 0;
    return Limiter(std::move(o));
  }
};

using LimiterTest = Fixture;

TEST_F(LimiterTest, GcraAllowsTheBurstThenPacesAtTheRate) {
  LimiterOptions o;
  o.rules = {Rule{RateSpec{10, 1, 3}}};
  o.clock = clock;
  o.probe_timeout = 0;
  o.margin = 0;
  o.margin_fraction = 0;
  Limiter l(std::move(o));
  for (int i = 0; i < 3; ++i) EXPECT_EQ(l.reserve(key, 1).wait, 0ns) << i;
  EXPECT_EQ(l.reserve(key, 1).wait, 100ms);
  EXPECT_EQ(l.reserve(key, 1).wait, 200ms);
  clock->advance(1s);  // everything promised so far has gone; the burst is back
  for (int i = 0; i < 3; ++i) EXPECT_EQ(l.reserve(key, 1).wait, 0ns) << i;
}

TEST_F(LimiterTest, OverAnyIntervalNoMoreThanRateTimesIntervalPlusBurst) {
  LimiterOptions o;
  o.rules = {Rule{RateSpec{100, 1, 10}}};
  o.clock = clock;
  o.probe_timeout = 0;
  o.margin = 0;
  o.margin_fraction = 0;
  Limiter l(std::move(o));
  std::vector<Duration> at;
  for (int i = 0; i < 2000; ++i) at.push_back((clock->now() - TimePoint{}) + l.reserve(key, 1).wait);
  // The 2000 slots span at least (2000 - 10) / 100 seconds.
  EXPECT_GE(to_seconds(at.back() - at.front()), 19.9 - 1e-9);
  for (std::size_t i = 110; i < at.size(); ++i) EXPECT_GE(to_seconds(at[i] - at[i - 110]), 1.0 - 1e-9);
}

TEST_F(LimiterTest, TryAcquireTakesNothingWhenItWouldWait) {
  LimiterOptions o;
  o.rules = {Rule{RateSpec{1, 1, 1}}};
  o.clock = clock;
  o.probe_timeout = 0;
  Limiter l(std::move(o));
  EXPECT_TRUE(l.try_acquire(key, 1).granted);
  auto r = l.try_acquire(key, 1);
  EXPECT_FALSE(r.granted);
  EXPECT_EQ(r.wait, 1s);
  EXPECT_EQ(l.try_acquire(key, 1).wait, 1s);  // unchanged: nothing was taken
  clock->advance(1s);
  EXPECT_TRUE(l.try_acquire(key, 1).granted);
}

TEST_F(LimiterTest, CostsComeFromTheEndpointTable) {
  LimiterOptions o;
  o.rules = {Rule{RateSpec{10, 1, 10}}};
  o.costs = {{"/v1/search", 5}, {"POST /v1/import", 10}, {"/v1", 2}};
  o.clock = clock;
  o.probe_timeout = 0;
  o.margin = 0;
  o.margin_fraction = 0;
  Limiter l(std::move(o));
  EXPECT_EQ(l.endpoint_cost("GET", "/v1/search/x"), (std::pair<std::string, double>{"/v1/search", 5}));
  EXPECT_EQ(l.endpoint_cost("POST", "/v1/import"), (std::pair<std::string, double>{"POST /v1/import", 10}));
  EXPECT_EQ(l.endpoint_cost("GET", "/v1/import"), (std::pair<std::string, double>{"/v1", 2}));
  EXPECT_EQ(l.endpoint_cost("GET", "/v1/searches"), (std::pair<std::string, double>{"/v1", 2}));
  EXPECT_EQ(l.endpoint_cost("GET", "/v2"), (std::pair<std::string, double>{"", 1}));
  EXPECT_EQ(l.reserve(key, 10).wait, 0ns);
  EXPECT_EQ(l.reserve(key, 5).wait, 500ms);
}

TEST_F(LimiterTest, QuotaStopsAtNAndSaysWhenItResets) {
  LimiterOptions o;
  o.rules = {Rule{QuotaSpec{3, 86400}}};
  o.clock = clock;
  o.probe_timeout = 0;
  o.max_wait = 60;
  Limiter l(std::move(o));
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(l.reserve(key, 1).granted);
  auto r = l.reserve(key, 1);
  EXPECT_FALSE(r.granted);
  EXPECT_EQ(r.error, make_error_code(errc::quota_exhausted));
  EXPECT_DOUBLE_EQ(r.resets_at, 1'700'006'400.0);  // next midnight UTC
  EXPECT_EQ(l.snapshot().front().refused, 1u);
}

TEST_F(LimiterTest, ShortQuotaWindowsWaitForTheNextWindow) {
  LimiterOptions o;
  o.rules = {Rule{QuotaSpec{2, 1}}};
  o.clock = clock;
  o.probe_timeout = 0;
  Limiter l(std::move(o));
  EXPECT_EQ(l.reserve(key, 1).wait, 0ns);
  EXPECT_EQ(l.reserve(key, 1).wait, 0ns);
  auto r = l.reserve(key, 1);
  EXPECT_TRUE(r.granted);
  EXPECT_EQ(r.wait, 1s);  // the clock starts on a whole second
  EXPECT_EQ(l.reserve(key, 1).wait, 1s);
  EXPECT_EQ(l.reserve(key, 1).wait, 2s);
}

TEST_F(LimiterTest, ComposedRulesAllHold) {
  LimiterOptions o;
  o.rules = {Rule{RateSpec{10, 1, 1}}, Rule{QuotaSpec{5, 60}}, Rule{ConcurrencySpec{8}}};
  o.clock = clock;
  o.probe_timeout = 0;
  o.max_wait = 120;
  Limiter l(std::move(o));
  std::vector<Reservation> rs;
  for (int i = 0; i < 5; ++i) rs.push_back(l.reserve(key, 1));
  EXPECT_EQ(rs[4].wait, 400ms);
  auto sixth = l.reserve(key, 1);
  EXPECT_EQ(sixth.wait, 60s - 20s);  // the minute window ends at :00 (clock starts at :20)
  EXPECT_EQ(l.snapshot().front().in_flight, 6);
}

TEST_F(LimiterTest, ConcurrencyBlocksUntilRelease) {
  LimiterOptions o;
  o.rules = {Rule{ConcurrencySpec{2}}};
  o.clock = clock;
  o.probe_timeout = 0;
  Limiter l(std::move(o));
  auto a = l.reserve(key, 1);
  auto b = l.reserve(key, 1);
  auto c = l.reserve(key, 1);
  EXPECT_TRUE(c.blocked);
  EXPECT_FALSE(c.granted);
  l.release(a.ticket);
  l.release(a.ticket);  // idempotent
  EXPECT_TRUE(l.reserve(key, 1).granted);
  EXPECT_TRUE(l.reserve(key, 1).blocked);
  (void)b;
}

TEST_F(LimiterTest, ScopesSeparateOrShareBuckets) {
  LimiterOptions o;
  o.rules = {Rule{RateSpec{1, 1, 1}, kProvider}, Rule{RateSpec{1, 1, 1}, kDefaultScope | kEndpoint}};
  o.clock = clock;
  o.probe_timeout = 0;
  Limiter l(std::move(o));
  Key other_tenant = key;
  other_tenant.tenant = "t2";
  EXPECT_EQ(l.reserve(key, 1).wait, 0ns);
  EXPECT_EQ(l.reserve(other_tenant, 1).wait, 1s);  // the provider-wide rule is shared
}

TEST_F(LimiterTest, RetryAfterPausesTheWholeKey) {
  LimiterOptions o;
  o.rules = {Rule{RateSpec{100, 1, 10}}};
  o.clock = clock;
  o.probe_timeout = 0;
  Limiter l(std::move(o));
  Observation obs;
  obs.status = 429;
  obs.retry_after = 2.0;
  l.observe(key, obs);
  Key other_endpoint = key;
  other_endpoint.endpoint = "/v1/search";
  EXPECT_EQ(l.reserve(key, 1).wait, 2s);
  EXPECT_EQ(l.reserve(other_endpoint, 1).wait, 2s);
  auto s = l.snapshot();
  EXPECT_EQ(s.front().status_429, 1u);
  EXPECT_NEAR(s.front().paused_for, 2.0, 1e-9);
}

TEST_F(LimiterTest, MarginHoldsBackPartOfTheBurstButNotTheRate) {
  LimiterOptions o;
  o.rules = {Rule{RateSpec{100, 1, 10}}};
  o.clock = clock;
  o.probe_timeout = 0;
  o.margin = 0.002;
  o.margin_fraction = 0;
  Limiter l(std::move(o));
  for (int i = 0; i < 9; ++i) EXPECT_EQ(l.reserve(key, 1).wait, 0ns);
  EXPECT_EQ(l.reserve(key, 1).wait, 2ms);   // the tenth waits out the margin
  EXPECT_EQ(l.reserve(key, 1).wait, 12ms);  // then one every 10 ms, as before
  EXPECT_EQ(l.reserve(key, 1).wait, 22ms);
}

TEST_F(LimiterTest, AProbeToAnIdleBucketAnchorsOurClockToItsAnswer) {
  LimiterOptions o;
  o.rules = {Rule{RateSpec{100, 1, 10}}};
  o.clock = clock;
  o.margin = 0;
  o.margin_fraction = 0;
  o.probe_timeout = 0.25;
  Limiter l(std::move(o));
  auto probe = l.reserve(key, 1);
  EXPECT_EQ(probe.wait, 0ns);
  ASSERT_NE(probe.ticket, 0u);
  auto held = l.try_acquire(key, 1);
  EXPECT_FALSE(held.granted);
  EXPECT_EQ(held.wait, 250ms);  // at most: the answer usually comes much sooner
  clock->advance(5ms);
  EXPECT_TRUE(l.release(probe.ticket));
  // The server's clock started at most 5 ms late; ours now starts at the answer.
  for (int i = 0; i < 9; ++i) EXPECT_EQ(l.reserve(key, 1).wait, 0ns) << i;
  EXPECT_EQ(l.reserve(key, 1).wait, 10ms);
}

TEST_F(LimiterTest, AnUnansweredProbeHoldsTheBucketOnlyUntilItsTimeout) {
  LimiterOptions o;
  o.rules = {Rule{RateSpec{100, 1, 10}}};
  o.clock = clock;
  o.probe_timeout = 0.25;
  Limiter l(std::move(o));
  l.reserve(key, 1);
  clock->advance(250ms);
  EXPECT_EQ(l.reserve(key, 1).wait, 0ns);
}

TEST_F(LimiterTest, RemainingZeroOnSuccessDoesNotStopAKeyThatPacesItself) {
  LimiterOptions o;
  o.rules = {Rule{RateSpec{100, 1, 10}}};
  o.clock = clock;
  o.probe_timeout = 0;
  Limiter l(std::move(o));
  Observation obs;
  obs.status = 200;
  obs.quota.remaining = 0;
  obs.quota.reset_after = 1;
  l.observe(key, obs);
  EXPECT_EQ(l.reserve(key, 1).wait, 0ns);
  obs.status = 429;  // ... but a refusal does, for Reset when there is no Retry-After
  l.observe(key, obs);
  EXPECT_EQ(l.reserve(key, 1).wait, 1s);
}

TEST_F(LimiterTest, RemainingZeroPausesUntilReset) {
  LimiterOptions o;
  o.clock = clock;
  o.probe_timeout = 0;
  Limiter l(std::move(o));
  Observation obs;
  obs.status = 200;
  obs.quota.remaining = 0;
  obs.quota.reset_after = 5;
  l.observe(key, obs);
  EXPECT_EQ(l.reserve(key, 1).wait, 5s);
}

TEST_F(LimiterTest, RemainingZeroWithAPolicyPacesOneSlotApartInsteadOfPausingForTheReset) {
  LimiterOptions o;
  o.clock = clock;
  o.probe_timeout = 0;
  Limiter l(std::move(o));
  Observation obs;
  obs.status = 200;
  obs.quota.remaining = 0;
  obs.quota.reset_after = 1;  // whole seconds, rounded up
  obs.quota.slot = 0.025;     // "q=40;w=1"
  l.observe(key, obs);
  EXPECT_EQ(l.reserve(key, 1).wait, 25ms);
  EXPECT_EQ(l.reserve(key, 1).wait, 50ms);  // the calls after it follow one slot apart
  clock->advance(50ms);
  obs.quota.remaining = 4;                  // room, but a paced call is still pending
  l.observe(key, obs);
  EXPECT_EQ(l.reserve(key, 1).wait, 25ms);
}

TEST_F(LimiterTest, AbsurdServerWaitsAreClampedAndCounted) {
  LimiterOptions o;
  o.clock = clock;
  o.probe_timeout = 0;
  o.max_server_wait = 60;
  o.max_wait = 3600;
  Limiter l(std::move(o));
  Observation obs;
  obs.status = 503;
  obs.retry_after = 10.0 * 365 * 86400;
  l.observe(key, obs);
  EXPECT_EQ(l.reserve(key, 1).wait, 60s);
  EXPECT_EQ(l.snapshot().front().server_waits_clamped, 1u);
}

TEST_F(LimiterTest, AdaptiveRateGrowsWhileBusyAndCutsOnCongestion) {
  LimiterOptions o;
  AdaptiveSpec a;
  a.min = 10;
  a.max = 1000;
  o.rules = {Rule{a}};
  o.clock = clock;
  o.probe_timeout = 0;
  Limiter l(std::move(o));
  Observation ok;
  ok.status = 200;
  ok.latency = 10ms;
  for (int i = 0; i < 200; ++i) {
    auto r = l.reserve(key, 1);
    clock->advance(r.wait);
    l.observe(key, ok);
  }
  const double grown = *l.snapshot().front().adaptive_limit;
  EXPECT_GT(grown, 50);
  Observation busy;
  busy.status = 429;
  clock->advance(1s);
  l.observe(key, busy);
  const double cut = *l.snapshot().front().adaptive_limit;
  EXPECT_NEAR(cut, grown * 0.85, 1e-6);
  l.observe(key, busy);  // within the cooldown: no second cut
  EXPECT_NEAR(*l.snapshot().front().adaptive_limit, cut, 1e-6);
}

TEST_F(LimiterTest, AdaptiveStaysWithinFloorAndCeiling) {
  LimiterOptions o;
  AdaptiveSpec a;
  a.target = AdaptiveSpec::Target::concurrency;
  a.min = 2;
  a.max = 4;
  o.rules = {Rule{a}};
  o.clock = clock;
  o.probe_timeout = 0;
  Limiter l(std::move(o));
  Observation ok;
  ok.status = 200;
  for (int i = 0; i < 100; ++i) {
    auto r = l.reserve(key, 1);
    if (r.granted) {
      l.observe(key, ok);
      l.release(r.ticket);
    }
  }
  EXPECT_LE(*l.snapshot().front().adaptive_limit, 4.0);
  Observation timeout;
  timeout.timeout = true;
  for (int i = 0; i < 20; ++i) {
    clock->advance(1s);
    l.observe(key, timeout);
  }
  EXPECT_GE(*l.snapshot().front().adaptive_limit, 2.0);
}

// nginx's limit_req: a leaky bucket counted in whole milliseconds, `burst` excess requests
// answered at once (nodelay), a refusal changing nothing.
struct LeakyBucket {
  double rate;      // requests per second
  double burst;     // excess requests tolerated
  long long last_ms = -1;
  double excess = 0;
  bool admit(TimePoint t) {
    const long long ms = std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
    const double drained = last_ms < 0 ? 0 : rate * static_cast<double>(ms - last_ms) / 1000.0;
    const double next = std::max(0.0, excess - drained) + 1;
    if (next > burst) return false;
    excess = next;
    last_ms = ms;
    return true;
  }
};

// A client that always has work, told nothing, against that bucket; a call is answered 2 ms
// after it is sent, and timers fire up to `late` late (deterministically pseudo-random), as on a
// busy machine.
struct AdaptiveRun {
  double accepted_per_second = 0;
  double refused_fraction = 0;
};
AdaptiveRun run_adaptive_against_bucket(std::shared_ptr<ManualClock> clock, double rate, double burst,
                                        double warmup_s, double measure_s, Duration late) {
  LimiterOptions o;
  AdaptiveSpec a;
  a.min = 1;
  a.max = 10'000;
  o.rules = {Rule{a}};
  o.clock = clock;
  o.probe_timeout = 0;
  Limiter l(std::move(o));
  LeakyBucket bucket{rate, burst};
  const Key key{"api.example.com", "", "", ""};
  const TimePoint start = clock->now();
  const TimePoint measure_from = start + seconds(warmup_s);
  const TimePoint end = measure_from + seconds(measure_s);
  std::uint64_t seed = 42, accepted = 0, sent = 0, refused = 0;
  while (clock->now() < end) {
    auto r = l.reserve(key, 1);
    seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    clock->advance(r.wait + Duration((seed >> 33) % static_cast<std::uint64_t>(late.count())));
    const bool measured = clock->now() >= measure_from;
    const bool ok = bucket.admit(clock->now());
    clock->advance(2ms);
    Observation obs;
    obs.status = ok ? 200 : 429;
    obs.latency = 2ms;
    l.observe(key, obs);
    if (measured) {
      ++sent;
      accepted += ok;
      refused += !ok;
    }
  }
  return {static_cast<double>(accepted) / measure_s, static_cast<double>(refused) / static_cast<double>(sent)};
}

TEST_F(LimiterTest, AdaptiveRateRegainsFastAfterACutThenCreepsNearWhereItWasRefused) {
  LimiterOptions o;
  AdaptiveSpec a;
  a.min = 1;
  a.max = 1000;
  a.start = 50;
  o.rules = {Rule{a}};
  o.clock = clock;
  o.probe_timeout = 0;
  Limiter l(std::move(o));
  auto busy_for = [&](Duration d) {
    const TimePoint until = clock->now() + d;
    Observation ok;
    ok.status = 200;
    ok.latency = 2ms;
    while (clock->now() < until) {
      clock->advance(l.reserve(key, 1).wait);
      l.observe(key, ok);
    }
    return *l.snapshot().front().adaptive_limit;
  };
  Observation refused;
  refused.status = 429;
  l.observe(key, refused);
  EXPECT_NEAR(*l.snapshot().front().adaptive_limit, 50 * 0.85, 1e-9);
  EXPECT_GE(busy_for(1s), 0.94 * 50);  // most of the gap back within a second
  const double near = busy_for(3s);
  EXPECT_LE(near, 1.0 * 50);           // ... then about 1% of the refused rate a second
  EXPECT_GE(near, 0.95 * 50);
}

TEST_F(LimiterTest, AdaptiveRateSettlesNearALeakyBucketsRateWithFewRefusals) {
  for (double rate : {50.0, 300.0}) {
    auto run = run_adaptive_against_bucket(clock, rate, 5, 20, 60, 2ms);
    // The goal on a real server is 0.9; an ideal one leaves room for what a busy machine costs.
    EXPECT_GE(run.accepted_per_second, 0.97 * rate) << "at " << rate << "/s";
    EXPECT_LE(run.refused_fraction, 0.01) << "at " << rate << "/s";
  }
}

TEST_F(LimiterTest, BadConfigurationNamesTheField) {
  auto field_of = [](LimiterOptions o) -> std::string {
    try {
      Limiter l(std::move(o));
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  LimiterOptions zero;
  zero.rules = {Rule{RateSpec{0, 1, 1}}};
  EXPECT_NE(field_of(zero).find("rules[0].rate"), std::string::npos);
  LimiterOptions burst;
  burst.rules = {Rule{RateSpec{5, 1, 0.5}}};
  EXPECT_NE(field_of(burst).find("burst"), std::string::npos);
  LimiterOptions adaptive;
  adaptive.rules = {Rule{AdaptiveSpec{AdaptiveSpec::Target::rate, 10, 5}}};
  EXPECT_NE(field_of(adaptive).find("max"), std::string::npos);
}

TEST_F(LimiterTest, BadSharesNameTheTenantAndTheField) {
  auto message_of = [](const std::string& tenant, ShareSpec share) -> std::string {
    LimiterOptions o;
    o.shares[tenant] = std::move(share);
    try {
      Limiter l(std::move(o));
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(message_of("acme", ShareSpec{0, {}}).find("shares[acme].weight"), std::string::npos);
  EXPECT_NE(message_of("acme", ShareSpec{-1, {}}).find("shares[acme].weight"), std::string::npos);
  EXPECT_NE(message_of("acme", ShareSpec{std::nan(""), {}}).find("shares[acme].weight"), std::string::npos);
  EXPECT_NE(message_of("acme", ShareSpec{1, {Rule{QuotaSpec{5, 86400}}}}).find("shares[acme].limit[0]"), std::string::npos);
  EXPECT_NE(message_of("acme", ShareSpec{1, {Rule{RateSpec{0, 1, 1}}}}).find("shares[acme].limit[0].rate"), std::string::npos);
  EXPECT_NE(message_of("", ShareSpec{}).find("shares"), std::string::npos);
  LimiterOptions o;
  Limiter l(std::move(o));
  EXPECT_THROW(l.set_share("acme", ShareSpec{0, {}}), Error);
  EXPECT_EQ(l.weight("acme"), 1);  // nothing was set
}

TEST_F(LimiterTest, AShareNestsInsideTheAppRulesAndTakesFromNeitherUnlessBoth) {
  LimiterOptions o;
  o.rules = {Rule{RateSpec{10, 1, 1}, kProvider}};  // the app: 10/s across tenants
  o.shares = {{"t1", ShareSpec{2, {Rule{RateSpec{1, 1, 1}}, Rule{ConcurrencySpec{1}}}}}};
  o.clock = clock;
  o.probe_timeout = 0;
  o.margin = 0;
  o.margin_fraction = 0;
  Limiter l(std::move(o));
  const Key other{"api.example.com", "app", "t2", ""};
  auto first = l.try_acquire(key, 1);  // key's tenant is t1
  ASSERT_TRUE(first.granted);
  clock->advance(100ms);  // the app has room again; t1's share has not
  l.release(first.ticket);
  auto r = l.try_acquire(key, 1);
  EXPECT_FALSE(r.granted);
  EXPECT_EQ(r.wait, 900ms);
  EXPECT_NE(r.reason.find("share 't1'"), std::string::npos) << r.reason;
  // The refused call took nothing from the app's bucket: another tenant goes now.
  EXPECT_TRUE(l.try_acquire(other, 1).granted);
  // A reservation waits for both and commits both.
  clock->advance(100ms);
  auto both = l.reserve(key, 1);
  EXPECT_TRUE(both.granted);
  EXPECT_EQ(both.wait, 800ms);
  EXPECT_EQ(l.reserve(other, 1).wait, 900ms);  // behind it in the app's bucket
  // The share's in-flight cap holds until the call ends.
  clock->advance(2s);
  EXPECT_TRUE(l.try_acquire(key, 1).blocked);
  l.release(both.ticket);
  EXPECT_TRUE(l.try_acquire(key, 1).granted);
  // Removing the share leaves the tenant with the app's rules only.
  EXPECT_TRUE(l.remove_share("t1"));
  clock->advance(2s);
  EXPECT_TRUE(l.try_acquire(key, 1).granted);
  clock->advance(100ms);
  EXPECT_TRUE(l.try_acquire(key, 1).granted);
  auto stats = l.share_stats();
  ASSERT_EQ(stats.size(), 2u);
  EXPECT_EQ(stats[0].tenant, "t1");
  EXPECT_FALSE(stats[0].configured);
  EXPECT_EQ(stats[0].granted, 5u);
  EXPECT_EQ(stats[1].granted, 2u);
}

TEST_F(LimiterTest, NonPositiveCostIsRefused) {
  LimiterOptions o;
  o.clock = clock;
  o.probe_timeout = 0;
  Limiter l(std::move(o));
  EXPECT_EQ(l.reserve(key, 0).error, make_error_code(errc::invalid_argument));
  EXPECT_EQ(l.reserve(key, -1).error, make_error_code(errc::invalid_argument));
}

}  // namespace
}  // namespace isthmus::limits
