#include "isthmus/retry/policy.hpp"

#include <gtest/gtest.h>

#include "isthmus/error.hpp"

namespace isthmus::retry {
namespace {

http::Request get() {
  http::Request r;
  r.method = "GET";
  r.url = "http://127.0.0.1/x";
  return r;
}

http::Request post(bool with_key) {
  http::Request r;
  r.method = "POST";
  r.url = "http://127.0.0.1/x";
  if (with_key) r.headers.emplace_back("Idempotency-Key", "k-1");
  return r;
}

TEST(Backoff, FullJitterUnderAnExponentialCeilingAndTheCap) {
  Policy p;
  p.base = 0.5;
  p.cap = 4;
  EXPECT_DOUBLE_EQ(backoff(p, 1, 0.999999), 0.5 * 0.999999);
  EXPECT_DOUBLE_EQ(backoff(p, 3, 0.5), 1.0);    // ceiling 2
  EXPECT_DOUBLE_EQ(backoff(p, 10, 0.5), 2.0);   // ceiling capped at 4
  EXPECT_DOUBLE_EQ(backoff(p, 1000, 1.0), 4.0); // no overflow
  EXPECT_DOUBLE_EQ(backoff(p, 2, 0.0), 0.0);
}

TEST(Decide, RetriesListedStatusesUntilAttemptsRunOut) {
  Policy p;
  p.attempts = 3;
  EXPECT_TRUE(decide(p, get(), {}, 503, 1, 0, std::nullopt, 0.5).retry);
  EXPECT_TRUE(decide(p, get(), {}, 503, 2, 0, std::nullopt, 0.5).retry);
  EXPECT_FALSE(decide(p, get(), {}, 503, 3, 0, std::nullopt, 0.5).retry);
  EXPECT_FALSE(decide(p, get(), {}, 404, 1, 0, std::nullopt, 0.5).retry);
  EXPECT_FALSE(decide(p, get(), {}, 200, 1, 0, std::nullopt, 0.5).retry);
}

TEST(Decide, HonoursTheServersWait) {
  Policy p;
  auto d = decide(p, get(), {}, 429, 1, 0, 2.0, 0.1);
  EXPECT_TRUE(d.retry);
  EXPECT_DOUBLE_EQ(d.delay, 2.0);
  p.max_server_wait = 60;
  EXPECT_DOUBLE_EQ(decide(p, get(), {}, 429, 1, 0, 1e9, 0.1).delay, 60.0);
}

TEST(Decide, StopsBeforeTheDeadline) {
  Policy p;
  p.deadline = 5;
  EXPECT_TRUE(decide(p, get(), {}, 429, 1, 2.5, 2.0, 0.0).retry);
  auto d = decide(p, get(), {}, 429, 1, 3.5, 2.0, 0.0);
  EXPECT_FALSE(d.retry);
  EXPECT_NE(d.reason.find("deadline"), std::string::npos);
}

TEST(Decide, NonIdempotentOnlyWithAKeyOrWhenItNeverLeft) {
  Policy p;
  EXPECT_FALSE(decide(p, post(false), {}, 503, 1, 0, std::nullopt, 0.5).retry);
  EXPECT_FALSE(decide(p, post(false), make_error_code(errc::timeout), 0, 1, 0, std::nullopt, 0.5).retry);
  EXPECT_FALSE(decide(p, post(false), make_error_code(errc::transport_error), 0, 1, 0, std::nullopt, 0.5).retry);
  EXPECT_TRUE(decide(p, post(false), make_error_code(errc::connect_failed), 0, 1, 0, std::nullopt, 0.5).retry);
  EXPECT_TRUE(decide(p, post(false), {}, 429, 1, 0, std::nullopt, 0.5).retry);  // refused, not applied
  EXPECT_TRUE(decide(p, post(true), {}, 503, 1, 0, std::nullopt, 0.5).retry);
}

TEST(Decide, NeverRetriesCancellation) {
  Policy p;
  EXPECT_FALSE(decide(p, get(), make_error_code(errc::cancelled), 0, 1, 0, std::nullopt, 0.5).retry);
}

TEST(Validate, NamesTheField) {
  Policy p;
  p.attempts = 0;
  try {
    validate(p);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("attempts"), std::string::npos);
  }
  Policy q;
  q.retry_on_status = {700};
  EXPECT_THROW(validate(q), Error);
}

}  // namespace
}  // namespace isthmus::retry
