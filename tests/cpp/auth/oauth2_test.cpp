#include "isthmus/auth/oauth2.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <thread>

#include "isthmus/auth/crypto.hpp"
#include "isthmus/error.hpp"

namespace isthmus::auth {
namespace {

// A Transport double: token requests wait until the test answers them; API requests are
// answered at once (inside send) by `api`, which sees the Authorization header sent.
class FakeTransport final : public http::Transport {
 public:
  std::function<int(const std::string& authorization)> api = [](const std::string&) { return 200; };

  std::uint64_t send(http::Request r, http::Completion done) override {
    const auto id = ++next_;
    if (r.url.find("/token") != std::string::npos) {
      std::lock_guard lock(m_);
      token_bodies_.push_back(r.body ? *r.body : "");
      pending_.emplace_back(std::move(r), std::move(done));
      return id;
    }
    ++api_requests;
    const auto* h = http::find_header(r.headers, "Authorization");
    http::Response resp;
    resp.status = api(h ? *h : "");
    done({}, std::move(resp));
    return id;
  }
  void cancel(std::uint64_t) override {}

  std::size_t token_requests() {
    std::lock_guard lock(m_);
    return token_bodies_.size();
  }
  std::string token_body(std::size_t i) {
    std::lock_guard lock(m_);
    return token_bodies_.at(i);
  }
  std::size_t pending() {
    std::lock_guard lock(m_);
    return pending_.size();
  }
  // Answers the oldest pending token request.
  void answer(int status, std::string body) {
    std::pair<http::Request, http::Completion> p;
    {
      std::lock_guard lock(m_);
      ASSERT_FALSE(pending_.empty());
      p = std::move(pending_.front());
      pending_.erase(pending_.begin());
    }
    http::Response resp;
    resp.status = status;
    resp.body = std::move(body);
    p.second({}, std::move(resp));
  }

  std::atomic<int> api_requests{0};

 private:
  std::mutex m_;
  std::atomic<std::uint64_t> next_{0};
  std::vector<std::string> token_bodies_;
  std::vector<std::pair<http::Request, http::Completion>> pending_;
};

struct Clock {
  std::atomic<double> t{1'000'000};
  std::function<double()> fn() {
    return [this] { return t.load(); };
  }
};

OAuth2Options client_credentials(Clock& clock) {
  OAuth2Options o;
  o.token_url = "https://auth.example.com/oauth/token";
  o.client_id = "client-1";
  o.client_secret = "s3cret-value";
  o.clock = clock.fn();
  return o;
}

// Authorizes n requests from several threads; returns the Authorization headers they got.
std::vector<std::string> authorize_many(Credential& c, std::shared_ptr<http::Transport> via, int n,
                                        std::atomic<int>& completed) {
  auto got = std::make_shared<std::vector<std::string>>(n);
  auto m = std::make_shared<std::mutex>();
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int i = t; i < n; i += 4) {
        http::Request r;
        r.url = "https://api.example.com/v1/x";
        c.authorize(std::move(r), via, [got, m, i, &completed](std::error_code ec, http::Request r) {
          const auto* h = http::find_header(r.headers, "Authorization");
          std::lock_guard lock(*m);
          (*got)[i] = ec ? "error:" + ec.message() : (h ? *h : "none");
          ++completed;
        });
      }
    });
  for (auto& t : threads) t.join();
  return *got;
}

TEST(OAuth2, ConcurrentRequestsShareOneTokenRequest) {
  Clock clock;
  auto transport = std::make_shared<FakeTransport>();
  auto cred = OAuth2::create(client_credentials(clock));
  std::atomic<int> completed{0};
  authorize_many(*cred, transport, 200, completed);
  EXPECT_EQ(completed, 0);  // all waiting for the one fetch
  EXPECT_EQ(transport->token_requests(), 1u);
  transport->answer(200, R"({"access_token":"tok-1","token_type":"bearer","expires_in":600})");
  EXPECT_EQ(completed, 200);

  // Across the expiry: 200 more make exactly one more token request, and all get the new token.
  clock.t = clock.t + 601;
  completed = 0;
  auto first_wave = std::make_shared<std::vector<std::string>>();
  std::thread answerer([&] {
    while (transport->pending() == 0) std::this_thread::yield();
    transport->answer(200, R"({"access_token":"tok-2","expires_in":600})");
  });
  std::atomic<int> completed2{0};
  auto headers = authorize_many(*cred, transport, 200, completed2);
  answerer.join();
  // Requests authorized after the answer find the token cached; all end with tok-2.
  while (completed2 < 200) std::this_thread::yield();
  EXPECT_EQ(transport->token_requests(), 2u);
  EXPECT_EQ(cred->token_requests(), 2u);
  EXPECT_NE(transport->token_body(0).find("grant_type=client_credentials"), std::string::npos);
}

TEST(OAuth2, AllWaitersGetTheNewToken) {
  Clock clock;
  auto transport = std::make_shared<FakeTransport>();
  auto cred = OAuth2::create(client_credentials(clock));
  std::atomic<int> completed{0};
  std::vector<std::string> got(50);
  for (int i = 0; i < 50; ++i) {
    http::Request r;
    r.url = "https://api.example.com/";
    cred->authorize(r, transport, [&, i](std::error_code ec, http::Request r) {
      got[i] = *http::find_header(r.headers, "authorization");
      ++completed;
    });
  }
  transport->answer(200, R"({"access_token":"tok-1","expires_in":600})");
  ASSERT_EQ(completed, 50);
  for (const auto& h : got) EXPECT_EQ(h, "Bearer tok-1");
}

TEST(OAuth2, RefreshesEarlyInTheBackground) {
  Clock clock;
  auto transport = std::make_shared<FakeTransport>();
  auto o = client_credentials(clock);
  o.refresh_before = 60;
  auto cred = OAuth2::create(o);
  std::atomic<int> completed{0};
  authorize_many(*cred, transport, 1, completed);
  transport->answer(200, R"({"access_token":"tok-1","expires_in":600})");
  clock.t = clock.t + 550;  // inside the 60 s window, still valid
  completed = 0;
  auto got = authorize_many(*cred, transport, 20, completed);
  EXPECT_EQ(completed, 20);  // nobody waited
  for (const auto& h : got) EXPECT_EQ(h, "Bearer tok-1");
  EXPECT_EQ(transport->token_requests(), 2u);  // one background refresh, not twenty
  transport->answer(200, R"({"access_token":"tok-2","expires_in":600})");
  completed = 0;
  got = authorize_many(*cred, transport, 1, completed);
  EXPECT_EQ(got[0], "Bearer tok-2");
}

TEST(OAuth2, ShortLivedTokensAreNotRefreshedOnEveryRequest) {
  Clock clock;
  auto transport = std::make_shared<FakeTransport>();
  auto cred = OAuth2::create(client_credentials(clock));  // refresh_before 60 s
  std::atomic<int> completed{0};
  authorize_many(*cred, transport, 1, completed);
  transport->answer(200, R"({"access_token":"tok-1","expires_in":10})");
  clock.t = clock.t + 2;
  authorize_many(*cred, transport, 10, completed);
  EXPECT_EQ(transport->token_requests(), 1u);
}

TEST(OAuth2, A401ForTheCurrentTokenRefreshesOnceAndResendsOnce) {
  Clock clock;
  auto transport = std::make_shared<FakeTransport>();
  auto cred = OAuth2::create(client_credentials(clock));
  AuthenticatedTransport at(transport, cred);
  std::atomic<int> done{0};
  std::vector<int> statuses(100);
  // The server revoked tok-1 early: it answers 401 for it and 200 for tok-2.
  transport->api = [](const std::string& h) { return h == "Bearer tok-2" ? 200 : 401; };
  at.send({.url = "https://api.example.com/first"}, [&](std::error_code, http::Response r) {
    statuses[0] = r.status;
    ++done;
  });
  transport->answer(200, R"({"access_token":"tok-1","expires_in":600})");
  // The first request got 401 with tok-1, dropped it and is waiting for the new token; 99 more
  // arrive meanwhile.
  for (int i = 1; i < 100; ++i)
    at.send({.url = "https://api.example.com/more"}, [&, i](std::error_code, http::Response r) {
      statuses[i] = r.status;
      ++done;
    });
  EXPECT_EQ(transport->token_requests(), 2u);
  transport->answer(200, R"({"access_token":"tok-2","expires_in":600})");
  ASSERT_EQ(done, 100);
  for (int s : statuses) EXPECT_EQ(s, 200);
  EXPECT_EQ(transport->token_requests(), 2u);
}

TEST(OAuth2, A401ThatPersistsIsReturnedAfterOneResendNeverLoops) {
  Clock clock;
  auto transport = std::make_shared<FakeTransport>();
  auto cred = OAuth2::create(client_credentials(clock));
  AuthenticatedTransport at(transport, cred);
  transport->api = [](const std::string&) { return 401; };
  int status = 0;
  at.send({.url = "https://api.example.com/"}, [&](std::error_code, http::Response r) { status = r.status; });
  transport->answer(200, R"({"access_token":"tok-1","expires_in":600})");
  transport->answer(200, R"({"access_token":"tok-2","expires_in":600})");
  EXPECT_EQ(status, 401);
  EXPECT_EQ(transport->api_requests, 2);
  EXPECT_EQ(transport->pending(), 0u);
}

TEST(OAuth2, TokenEndpointErrorsFailEveryWaiterWithoutLeakingTheSecret) {
  Clock clock;
  auto transport = std::make_shared<FakeTransport>();
  auto cred = OAuth2::create(client_credentials(clock));
  AuthenticatedTransport at(transport, cred);
  std::vector<http::Response> got;
  for (int i = 0; i < 3; ++i)
    at.send({.url = "https://api.example.com/"},
            [&](std::error_code ec, http::Response r) { got.push_back(r); });
  transport->answer(401, R"({"error":"invalid_client","error_description":"bad secret"})");
  ASSERT_EQ(got.size(), 3u);
  for (const auto& r : got) {
    EXPECT_EQ(r.error, make_error_code(errc::token_request_failed));
    EXPECT_NE(r.error_message.find("invalid_client"), std::string::npos) << r.error_message;
    EXPECT_NE(r.error_message.find("401"), std::string::npos);
    EXPECT_EQ(r.error_message.find("s3cret-value"), std::string::npos);
  }
  EXPECT_EQ(transport->api_requests, 0);
}

TEST(OAuth2, ClientSecretPostAndBasic) {
  Clock clock;
  auto transport = std::make_shared<FakeTransport>();
  auto o = client_credentials(clock);
  o.client_auth = ClientAuth::post;
  o.scopes = {"read", "write"};
  o.audience = "https://api.example.com";
  auto cred = OAuth2::create(o);
  std::atomic<int> completed{0};
  authorize_many(*cred, transport, 1, completed);
  const auto body = transport->token_body(0);
  EXPECT_NE(body.find("client_secret=s3cret-value"), std::string::npos);
  EXPECT_NE(body.find("scope=read%20write"), std::string::npos);
  EXPECT_NE(body.find("audience=https%3A%2F%2Fapi.example.com"), std::string::npos);
}

TEST(OAuth2, RotatedRefreshTokenIsStoredBeforeItIsUsed) {
  Clock clock;
  auto transport = std::make_shared<FakeTransport>();
  auto store = make_memory_token_store();
  OAuth2Options o = client_credentials(clock);
  o.grant = Grant::refresh_token;
  o.refresh_token = "rt-0";
  o.store = store;
  std::string stored_when_hook_ran;
  o.on_token = [&](const TokenEvent& ev) {
    stored_when_hook_ran = store->load("oauth2:client-1@https://auth.example.com/oauth/token")->refresh_token;
    EXPECT_TRUE(ev.rotated);
  };
  auto cred = OAuth2::create(o);
  std::string seen_by_request;
  http::Request r;
  r.url = "https://api.example.com/";
  cred->authorize(r, transport, [&](std::error_code, http::Request) {
    // When the request may use the new token, the new refresh token is already durable.
    seen_by_request = store->load(cred->store_id())->refresh_token;
  });
  EXPECT_NE(transport->token_body(0).find("grant_type=refresh_token&refresh_token=rt-0"), std::string::npos);
  transport->answer(200, R"({"access_token":"a1","expires_in":600,"refresh_token":"rt-1"})");
  EXPECT_EQ(stored_when_hook_ran, "rt-1");
  EXPECT_EQ(seen_by_request, "rt-1");

  // A new credential over the same store resumes from rt-1, not the rt-0 in its options.
  clock.t = clock.t + 1000;
  auto resumed = OAuth2::create(o);
  resumed->authorize(r, transport, [](std::error_code, http::Request) {});
  EXPECT_NE(transport->token_body(1).find("refresh_token=rt-1"), std::string::npos);
}

TEST(OAuth2, AuthorizationCodeIsExchangedOnceThenRefreshed) {
  Clock clock;
  auto transport = std::make_shared<FakeTransport>();
  OAuth2Options o = client_credentials(clock);
  o.grant = Grant::authorization_code;
  o.code = "code-123";
  o.code_verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
  o.redirect_uri = "http://127.0.0.1:5000/callback";
  auto cred = OAuth2::create(o);
  std::error_code got = make_error_code(errc::internal);
  cred->ensure_token(transport, [&](std::error_code ec) { got = ec; });
  const auto body = transport->token_body(0);
  EXPECT_NE(body.find("grant_type=authorization_code&code=code-123"), std::string::npos);
  EXPECT_NE(body.find("code_verifier=dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"), std::string::npos);
  EXPECT_NE(body.find("redirect_uri=http%3A%2F%2F127.0.0.1%3A5000%2Fcallback"), std::string::npos);
  transport->answer(200, R"({"access_token":"a1","expires_in":60,"refresh_token":"rt-1"})");
  EXPECT_FALSE(got);
  clock.t = clock.t + 61;
  cred->ensure_token(transport, [&](std::error_code ec) { got = ec; });
  EXPECT_NE(transport->token_body(1).find("grant_type=refresh_token&refresh_token=rt-1"), std::string::npos);
}

TEST(AuthenticatedTransport, CancelWhileWaitingForATokenSendsNothing) {
  Clock clock;
  auto transport = std::make_shared<FakeTransport>();
  auto cred = OAuth2::create(client_credentials(clock));
  AuthenticatedTransport at(transport, cred);
  std::error_code got;
  const auto id = at.send({.url = "https://api.example.com/"},
                          [&](std::error_code ec, http::Response) { got = ec; });
  at.cancel(id);
  transport->answer(200, R"({"access_token":"tok-1","expires_in":600})");
  EXPECT_EQ(got, make_error_code(errc::cancelled));
  EXPECT_EQ(transport->api_requests, 0);
}

TEST(AuthenticatedTransport, DestroyedWhileWaitingForATokenCompletesWithShuttingDown) {
  Clock clock;
  auto transport = std::make_shared<FakeTransport>();
  auto cred = OAuth2::create(client_credentials(clock));
  std::error_code got;
  {
    AuthenticatedTransport at(transport, cred);
    at.send({.url = "https://api.example.com/"}, [&](std::error_code ec, http::Response) { got = ec; });
  }
  // The token arrives after the authenticated transport is gone: nothing is sent through it.
  transport->answer(200, R"({"access_token":"tok-1","expires_in":600})");
  EXPECT_EQ(got, make_error_code(errc::shutting_down));
  EXPECT_EQ(transport->api_requests, 0);
}

TEST(OAuth2, ValidatesOptions) {
  OAuth2Options o;
  o.client_id = "c";
  o.client_secret = "s";
  EXPECT_THROW(OAuth2::create(o), Error);  // no token_url
  o.token_url = "/relative";
  EXPECT_THROW(OAuth2::create(o), Error);
  o.token_url = "https://x/token";
  o.grant = Grant::refresh_token;
  EXPECT_THROW(OAuth2::create(o), Error);  // no refresh token anywhere
}

}  // namespace
}  // namespace isthmus::auth
