#include "isthmus/retry/circuit_breaker.hpp"

#include <gtest/gtest.h>

namespace isthmus::retry {
namespace {

using namespace std::chrono_literals;
using State = CircuitBreaker::State;

TEST(CircuitBreaker, OpensOnTheFailureRatioThenProbes) {
  auto clock = std::make_shared<limits::ManualClock>();
  CircuitBreaker b({.failure_ratio = 0.5, .min_calls = 4, .window = 10, .open_for = 5, .probes = 1}, clock);
  const std::string h = "api";
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(b.allow(h));
    b.record(h, true);
  }
  EXPECT_EQ(b.state(h), State::closed);  // too few calls to judge
  ASSERT_TRUE(b.allow(h));
  b.record(h, false);
  EXPECT_EQ(b.state(h), State::open);  // 3 of 4 failed
  EXPECT_FALSE(b.allow(h));
  EXPECT_DOUBLE_EQ(b.retry_in(h), 5.0);
  clock->advance(5s);
  EXPECT_TRUE(b.allow(h));   // the probe
  EXPECT_FALSE(b.allow(h));  // only one at a time
  b.record(h, true);
  EXPECT_EQ(b.state(h), State::open);
  clock->advance(5s);
  EXPECT_TRUE(b.allow(h));
  b.record(h, false);
  EXPECT_EQ(b.state(h), State::closed);
  EXPECT_TRUE(b.allow(h));
}

TEST(CircuitBreaker, OldFailuresLeaveTheWindow) {
  auto clock = std::make_shared<limits::ManualClock>();
  CircuitBreaker b({.failure_ratio = 0.5, .min_calls = 4, .window = 10, .open_for = 5, .probes = 1}, clock);
  for (int i = 0; i < 3; ++i) b.record("h", true);
  clock->advance(11s);
  for (int i = 0; i < 3; ++i) b.record("h", false);
  b.record("h", true);
  EXPECT_EQ(b.state("h"), State::closed);  // 1 of 4 in the window
}

TEST(CircuitBreaker, HostsAreIndependent) {
  auto clock = std::make_shared<limits::ManualClock>();
  CircuitBreaker b({.failure_ratio = 0.5, .min_calls = 1, .window = 10, .open_for = 5, .probes = 1}, clock);
  b.record("a", true);
  EXPECT_EQ(b.state("a"), State::open);
  EXPECT_EQ(b.state("b"), State::closed);
}

}  // namespace
}  // namespace isthmus::retry
