#include "isthmus/limits/fair_queue.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>

#include "isthmus/error.hpp"

namespace isthmus::limits {
namespace {

// Tenants sharing one app allowance, on a manual clock: the test plays the Governor's part
// (pump, then move the clock to the next wake-up) and counts who was let go.
struct FairQueueTest : ::testing::Test {
  std::shared_ptr<ManualClock> clock = std::make_shared<ManualClock>();
  std::shared_ptr<Limiter> limiter;
  std::unique_ptr<FairQueue> queue;
  std::uint64_t next_id = 1;
  std::map<std::string, int> granted;
  std::vector<std::string> order;  // tenants in grant order
  std::vector<Priority> priorities;  // ... and their priorities
  std::map<std::string, std::vector<double>> times;  // seconds from the start, per tenant

  // 100/s across tenants (scope without the tenant), no burst.
  void make(std::map<std::string, ShareSpec> shares = {}, std::vector<Rule> rules = {}) {
    LimiterOptions o;
    o.rules = rules.empty() ? std::vector<Rule>{Rule{RateSpec{100, 1, 1}, kProvider | kCredential}} : std::move(rules);
    o.shares = std::move(shares);
    o.clock = clock;
    o.probe_timeout = 0;
    o.margin = 0;
    o.margin_fraction = 0;
    limiter = std::make_shared<Limiter>(std::move(o));
    queue = std::make_unique<FairQueue>(limiter);
  }

  void push(const std::string& tenant, Priority p = Priority::normal) {
    queue->push(FairQueue::Call{next_id++, Key{"api", "app", tenant, ""}, 1, p, std::nullopt});
  }

  // `rounds` calls for each tenant, interleaved.
  void push_each(const std::vector<std::string>& tenants, int rounds) {
    for (int i = 0; i < rounds; ++i)
      for (const auto& t : tenants) push(t);
  }

  // Runs until `grants` more calls went; `busy` tenants get a new call for each one let go, so
  // they are never without a waiting call.
  void run(int grants, const std::vector<std::string>& busy) {
    for (int n = 0; n < grants;) {
      auto pass = queue->pump();
      for (auto& d : pass.done) {
        ASSERT_FALSE(d.error) << d.reservation.reason;
        const auto& t = d.call.key.tenant;
        ++granted[t];
        order.push_back(t);
        priorities.push_back(d.call.priority);
        times[t].push_back(to_seconds(clock->now() - ManualClock().now()));
        ++n;
        if (std::find(busy.begin(), busy.end(), t) != busy.end()) push(t);
      }
      if (pass.done.empty()) {
        ASSERT_TRUE(pass.next.has_value()) << "nothing waits for a time";
        clock->advance(*pass.next - clock->now());
      }
    }
  }
};

TEST_F(FairQueueTest, TwoToOneWeightsGiveTwoThirdsOfTheGrants) {
  make({{"acme", ShareSpec{2, {}}}});
  push_each({"acme", "big"}, 4);
  run(3000, {"acme", "big"});
  const double share = granted["acme"] / 3000.0;
  EXPECT_NEAR(share, 2.0 / 3.0, 0.02) << granted["acme"] << " vs " << granted["big"];
  // The app's rate is kept: 3000 calls at 100/s without burst span 29.99 s.
  EXPECT_GE(to_seconds(clock->now() - ManualClock().now()), 29.98);
}

TEST_F(FairQueueTest, EqualWeightsAlternate) {
  make();
  push_each({"a", "b"}, 3);
  run(200, {"a", "b"});
  EXPECT_EQ(granted["a"], 100);
  EXPECT_EQ(granted["b"], 100);
}

TEST_F(FairQueueTest, ANestedShareLimitKeepsItsRateAndTheOthersGetTheRest) {
  // 10/s for "capped" inside 100/s for everyone.
  make({{"capped", ShareSpec{1, {Rule{RateSpec{10, 1, 1}}}}}});
  push_each({"capped", "a", "b"}, 4);
  run(3000, {"capped", "a", "b"});
  const double seconds_run = to_seconds(clock->now() - ManualClock().now());
  EXPECT_NEAR(granted["capped"] / seconds_run, 10.0, 0.2);
  EXPECT_NEAR((granted["a"] + granted["b"]) / seconds_run, 90.0, 0.5);
  EXPECT_NEAR(granted["a"], granted["b"], 2);
  // Never more than the share's rate (burst 1): any 11 of its calls span at least a second.
  const auto& at = times["capped"];
  for (std::size_t i = 10; i < at.size(); ++i) EXPECT_GE(at[i] - at[i - 10], 1.0 - 1e-9) << i;
}

TEST_F(FairQueueTest, AnIdleTenantBanksNoCredit) {
  make();
  push_each({"busy"}, 2);
  run(1000, {"busy"});  // "late" idles meanwhile
  push_each({"late"}, 2);
  order.clear();
  granted.clear();
  run(200, {"busy", "late"});
  // Back from idle it takes half, from the first grant on: not 1000 grants in a row.
  EXPECT_NEAR(granted["late"], 100, 1);
  int run_of_late = 0, longest = 0;
  for (const auto& t : order) {
    run_of_late = t == "late" ? run_of_late + 1 : 0;
    longest = std::max(longest, run_of_late);
  }
  EXPECT_LE(longest, 2);
}

TEST_F(FairQueueTest, HighPriorityGoesFirstWhateverTheTags) {
  make({{"heavy", ShareSpec{10, {}}}});
  push_each({"heavy", "light"}, 3);
  run(50, {"heavy", "light"});
  // "light" is far behind in virtual time's terms; its urgent call still goes next.
  push("light", Priority::high);
  order.clear();
  run(1, {});
  EXPECT_EQ(order.front(), "light");
  // And low-priority calls go only when no normal one can.
  push("heavy", Priority::low);
  push("light", Priority::low);
  priorities.clear();
  run(8, {});
  ASSERT_EQ(priorities.size(), 8u);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(priorities[i], Priority::normal) << i;  // those waiting before
  EXPECT_EQ(priorities[6], Priority::low);
  EXPECT_EQ(queue->size(), 0u);
}

TEST_F(FairQueueTest, ACallBlockedByItsShareCapLetsOthersGo) {
  make({{"one", ShareSpec{5, {Rule{ConcurrencySpec{1}}}}}}, {Rule{RateSpec{1000, 1, 10}, kProvider}});
  push("one");
  push("one");
  push("other");
  auto pass = queue->pump();
  // "one" has the best tag, but its second call waits for its first to end; "other" goes.
  ASSERT_EQ(pass.done.size(), 2u);
  EXPECT_EQ(pass.done[0].call.key.tenant, "one");
  EXPECT_EQ(pass.done[1].call.key.tenant, "other");
  EXPECT_TRUE(queue->blocked());
  EXPECT_EQ(queue->size(), 1u);
  limiter->release(pass.done[0].reservation.ticket);
  pass = queue->pump();
  ASSERT_EQ(pass.done.size(), 1u);
  EXPECT_EQ(pass.done[0].call.key.tenant, "one");
}

TEST_F(FairQueueTest, WeightsChangeAtRunTime) {
  make();
  push_each({"a", "b"}, 3);
  run(300, {"a", "b"});
  EXPECT_EQ(granted["a"], 150);
  limiter->set_share("a", ShareSpec{3, {}});
  granted.clear();
  run(400, {"a", "b"});
  EXPECT_NEAR(granted["a"], 300, 3);
  ASSERT_TRUE(limiter->remove_share("a"));
  EXPECT_FALSE(limiter->remove_share("a"));
  EXPECT_EQ(limiter->weight("a"), 1);
}

TEST_F(FairQueueTest, CancelledCallsLeaveTheQueue) {
  make({}, {Rule{RateSpec{1, 10, 1}, kProvider}});
  push("a");
  push("a");
  auto pass = queue->pump();
  ASSERT_EQ(pass.done.size(), 1u);
  EXPECT_EQ(queue->size(), 1u);
  EXPECT_TRUE(queue->cancel(2));
  EXPECT_FALSE(queue->cancel(2));
  EXPECT_EQ(queue->size(), 0u);
  EXPECT_TRUE(queue->pump().done.empty());
}

TEST_F(FairQueueTest, ADeadlineThatWouldPassFailsTheCall) {
  make({}, {Rule{RateSpec{1, 10, 1}, kProvider}});
  push("a");
  queue->push(FairQueue::Call{next_id++, Key{"api", "app", "a", ""}, 1, Priority::normal, clock->now() + seconds(1)});
  auto pass = queue->pump();
  ASSERT_EQ(pass.done.size(), 2u);
  EXPECT_FALSE(pass.done[0].error);
  EXPECT_EQ(pass.done[1].error, make_error_code(errc::retry_deadline));
}

}  // namespace
}  // namespace isthmus::limits
