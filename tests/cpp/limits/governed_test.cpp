#include "isthmus/limits/governed.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <thread>

#include "isthmus/error.hpp"
#include "isthmus/runtime/engine.hpp"

namespace isthmus::limits {
namespace {

using namespace std::chrono_literals;

// A Transport double: answers with `respond` on its own thread, or holds requests until the
// test completes them (`hold = true`).
class FakeTransport : public http::Transport {
 public:
  std::function<http::Response(const http::Request&, int n)> respond = [](const http::Request&, int) {
    http::Response r;
    r.status = 200;
    return r;
  };
  bool hold = false;

  std::uint64_t send(http::Request request, http::Completion done) override {
    std::unique_lock lock(m_);
    const auto id = ++next_;
    sent_.push_back({request, std::chrono::steady_clock::now()});
    if (hold) {
      held_.emplace_back(id, std::move(done));
      cv_.notify_all();
      return id;
    }
    const int n = static_cast<int>(sent_.size());
    http::Response r = respond(request, n);
    lock.unlock();
    std::thread([done = std::move(done), r]() mutable { done(r.error, std::move(r)); }).detach();
    return id;
  }

  void cancel(std::uint64_t id) override {
    http::Completion done;
    {
      std::lock_guard lock(m_);
      for (auto it = held_.begin(); it != held_.end(); ++it)
        if (it->first == id) {
          done = std::move(it->second);
          held_.erase(it);
          break;
        }
    }
    if (done) {
      http::Response r;
      r.error = make_error_code(errc::cancelled);
      done(r.error, r);
    }
  }

  // Completes the oldest held request with `status`.
  void complete_one(int status = 200) {
    http::Completion done;
    {
      std::unique_lock lock(m_);
      cv_.wait(lock, [&] { return !held_.empty(); });
      done = std::move(held_.front().second);
      held_.erase(held_.begin());
    }
    http::Response r;
    r.status = status;
    done({}, r);
  }

  void wait_held(std::size_t n) {
    std::unique_lock lock(m_);
    cv_.wait(lock, [&] { return held_.size() >= n; });
  }

  std::vector<std::pair<http::Request, std::chrono::steady_clock::time_point>> sent() {
    std::lock_guard lock(m_);
    return sent_;
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  std::uint64_t next_ = 0;
  std::vector<std::pair<http::Request, std::chrono::steady_clock::time_point>> sent_;
  std::vector<std::pair<std::uint64_t, http::Completion>> held_;
};

struct Result {
  std::promise<std::pair<std::error_code, http::Response>> promise;
  http::Completion completion() {
    auto calls = std::make_shared<std::atomic<int>>(0);
    return [this, calls](std::error_code ec, http::Response r) {
      ASSERT_EQ(++*calls, 1) << "completed twice";
      promise.set_value({ec, std::move(r)});
    };
  }
  std::pair<std::error_code, http::Response> get() { return promise.get_future().get(); }
};

http::Request request(std::string method = "GET", std::string path = "/v1/x") {
  http::Request r;
  r.method = std::move(method);
  r.url = "http://127.0.0.1:9/" + path.substr(1);
  return r;
}

struct GovernedTest : ::testing::Test {
  std::shared_ptr<Engine> engine = Engine::create();
  std::shared_ptr<FakeTransport> fake = std::make_shared<FakeTransport>();

  std::shared_ptr<GovernedTransport> make(std::vector<Rule> rules, std::optional<retry::Policy> retry = {},
                                          std::optional<retry::BreakerOptions> breaker = {}) {
    LimiterOptions o;
    o.rules = std::move(rules);
    o.max_wait = 30;
    auto governor = std::make_shared<Governor>(engine, std::make_shared<Limiter>(std::move(o)));
    GovernedOptions g;
    g.retry = retry;
    g.breaker = breaker;
    return std::make_shared<GovernedTransport>(engine, governor, fake, g);
  }
};

TEST_F(GovernedTest, RetriesA503ThenCompletesOnce) {
  fake->respond = [](const http::Request&, int n) {
    http::Response r;
    r.status = n == 1 ? 503 : 200;
    return r;
  };
  retry::Policy p;
  p.base = 0.001;
  auto t = make({}, p);
  Result res;
  t->send(request(), res.completion());
  auto [ec, r] = res.get();
  EXPECT_FALSE(ec);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(fake->sent().size(), 2u);
  EXPECT_EQ(r.attempts, 2);  // the answer says what it took
  EXPECT_EQ(r.retried_429, 0);
  auto snap = t->governor()->limiter().snapshot();
  ASSERT_EQ(snap.size(), 1u);
  EXPECT_EQ(snap[0].retries, 1u);
  EXPECT_EQ(snap[0].status_5xx, 1u);
  EXPECT_EQ(snap[0].in_flight, 0);
}

TEST_F(GovernedTest, RetryAfterHoldsTheNextAttemptBack) {
  fake->respond = [](const http::Request&, int n) {
    http::Response r;
    r.status = n == 1 ? 429 : 200;
    r.body = n == 1 ? "slow down" : "ok";
    if (n == 1) r.headers = {{"Retry-After", "1"}};
    return r;
  };
  retry::Policy p;
  p.base = 0.001;
  auto t = make({Rule{RateSpec{1000, 1, 10}}}, p);
  Result res;
  t->send(request(), res.completion());
  auto r = res.get().second;
  EXPECT_EQ(r.status, 200);
  auto sent = fake->sent();
  ASSERT_EQ(sent.size(), 2u);
  EXPECT_GE(sent[1].second - sent[0].second, 1s);
  // The answer carries what the retried attempts cost; its own status and body are its own.
  EXPECT_EQ(r.body, "ok");
  EXPECT_EQ(r.attempts, 2);
  EXPECT_EQ(r.retried_429, 1);
  EXPECT_EQ(r.retried_bytes, std::string("slow down").size());
  EXPECT_GE(r.waited, 1.0);  // the Retry-After, plus a backoff of at most 1 ms
  EXPECT_LT(r.waited, 1.5);
}

TEST_F(GovernedTest, TheAnswerCountsTimeHeldBackByTheLimiter) {
  auto t = make({Rule{RateSpec{5, 1, 1}}});  // one call every 200 ms
  Result first, second;
  t->send(request(), first.completion());
  auto a = first.get().second;
  t->send(request(), second.completion());
  auto b = second.get().second;
  EXPECT_EQ(a.attempts, 1);
  EXPECT_EQ(b.attempts, 1);
  EXPECT_LT(a.waited, 0.05);
  EXPECT_GT(b.waited, 0.1);
  EXPECT_LT(b.waited, 0.5);
  auto snap = t->governor()->limiter().snapshot();
  ASSERT_EQ(snap.size(), 1u);
  EXPECT_NEAR(snap[0].wait_seconds, a.waited + b.waited, 0.01);
}

TEST_F(GovernedTest, PostIsNotRetriedWithoutAnIdempotencyKey) {
  fake->respond = [](const http::Request&, int) {
    http::Response r;
    r.status = 503;
    return r;
  };
  retry::Policy p;
  p.base = 0.001;
  auto t = make({}, p);
  Result res;
  t->send(request("POST"), res.completion());
  EXPECT_EQ(res.get().second.status, 503);
  EXPECT_EQ(fake->sent().size(), 1u);
}

TEST_F(GovernedTest, QuotaExhaustedSaysWhenItResets) {
  auto t = make({Rule{QuotaSpec{2, 86400}}});
  for (int i = 0; i < 2; ++i) {
    Result ok;
    t->send(request(), ok.completion());
    EXPECT_FALSE(ok.get().first);
  }
  Result res;
  t->send(request(), res.completion());
  auto [ec, r] = res.get();
  EXPECT_EQ(ec, make_error_code(errc::quota_exhausted));
  ASSERT_NE(r.header(kResetsAtHeader), nullptr);
  EXPECT_NE(r.error_message.find("resets at"), std::string::npos);
  EXPECT_EQ(r.attempts, 0);  // refused before anything was sent
  EXPECT_EQ(fake->sent().size(), 2u);
}

TEST_F(GovernedTest, CancelWhileWaitingForTheLimiter) {
  auto t = make({Rule{RateSpec{1, 10, 1}}});  // one call per 10 s
  Result first, second;
  t->send(request(), first.completion());
  EXPECT_FALSE(first.get().first);
  const auto id = t->send(request(), second.completion());
  t->cancel(id);
  EXPECT_EQ(second.get().first, make_error_code(errc::cancelled));
  EXPECT_EQ(fake->sent().size(), 1u);
}

TEST_F(GovernedTest, CancelInFlight) {
  fake->hold = true;
  auto t = make({});
  Result res;
  const auto id = t->send(request(), res.completion());
  fake->wait_held(1);
  t->cancel(id);
  EXPECT_EQ(res.get().first, make_error_code(errc::cancelled));
}

TEST_F(GovernedTest, HighPriorityGoesAheadOfWaitingBulk) {
  fake->hold = true;
  auto t = make({Rule{ConcurrencySpec{1}}});
  Result a, b, c, d;
  t->send(request("GET", "/first"), a.completion());
  fake->wait_held(1);
  auto bulk = request("GET", "/bulk");
  bulk.headers.emplace_back(kPriorityHeader, "low");
  t->send(bulk, b.completion());
  t->send(bulk, c.completion());
  auto urgent = request("GET", "/urgent");
  urgent.headers.emplace_back(kPriorityHeader, "high");
  t->send(urgent, d.completion());
  for (int i = 0; i < 4; ++i) fake->complete_one();
  for (auto* r : {&a, &b, &c, &d}) EXPECT_FALSE(r->get().first);
  auto sent = fake->sent();
  ASSERT_EQ(sent.size(), 4u);
  EXPECT_NE(sent[1].first.url.find("/urgent"), std::string::npos);
  EXPECT_EQ(http::find_header(sent[1].first.headers, kPriorityHeader), nullptr);  // stripped
}

TEST_F(GovernedTest, CircuitOpensAndFailsFast) {
  fake->respond = [](const http::Request&, int) {
    http::Response r;
    r.status = 500;
    return r;
  };
  auto t = make({}, std::nullopt, retry::BreakerOptions{.failure_ratio = 0.5, .min_calls = 3, .window = 10, .open_for = 60, .probes = 1});
  for (int i = 0; i < 3; ++i) {
    Result r;
    t->send(request(), r.completion());
    EXPECT_EQ(r.get().second.status, 500);
  }
  Result res;
  t->send(request(), res.completion());
  EXPECT_EQ(res.get().first, make_error_code(errc::circuit_open));
  EXPECT_EQ(fake->sent().size(), 3u);
  EXPECT_EQ(t->circuit("127.0.0.1:9"), retry::CircuitBreaker::State::open);
}

TEST_F(GovernedTest, ThreeTransportsSharingOneGovernorKeepItsRate) {
  LimiterOptions o;
  o.rules = {Rule{RateSpec{200, 1, 1}}};
  auto governor = std::make_shared<Governor>(engine, std::make_shared<Limiter>(std::move(o)));
  std::vector<std::shared_ptr<GovernedTransport>> ts;
  for (int i = 0; i < 3; ++i) ts.push_back(std::make_shared<GovernedTransport>(engine, governor, fake, GovernedOptions{}));
  std::vector<std::unique_ptr<Result>> results;
  for (int i = 0; i < 60; ++i) {
    results.push_back(std::make_unique<Result>());
    ts[i % 3]->send(request(), results.back()->completion());
  }
  for (auto& r : results) EXPECT_FALSE(r->get().first);
  auto sent = fake->sent();
  ASSERT_EQ(sent.size(), 60u);
  std::vector<std::chrono::steady_clock::time_point> at;
  for (auto& s : sent) at.push_back(s.second);
  std::sort(at.begin(), at.end());
  // 60 calls at 200/s with no burst take at least 59 intervals of 5 ms.
  EXPECT_GE(at.back() - at.front(), 59 * 5ms - 1ms);
}

TEST(HostAndPath, SplitsUrls) {
  EXPECT_EQ(host_and_path("https://u:p@API.example.com:8443/v1/x?y=1#f"),
            (std::pair<std::string, std::string>{"api.example.com:8443", "/v1/x"}));
  EXPECT_EQ(host_and_path("http://h"), (std::pair<std::string, std::string>{"h", "/"}));
  EXPECT_EQ(host_and_path("http://h?q"), (std::pair<std::string, std::string>{"h", "/"}));
}

}  // namespace
}  // namespace isthmus::limits
