#include "isthmus/http/client.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <nlohmann/json.hpp>
#include <thread>

#include "isthmus/error.hpp"
#include "isthmus/runtime/engine.hpp"
#include "isthmus/sandbox/server.hpp"
#include "support/loopback_server.hpp"

namespace isthmus::http {
namespace {

using testing::BlackholeListener;
using testing::CannedServer;

// The sandbox's httpbin-like endpoints, with its counters read back as numbers.
class Sandbox {
 public:
  explicit Sandbox(std::string host = "127.0.0.1", std::uint16_t port = 0)
      : server_(sandbox::Options{.host = std::move(host), .port = port}) {
    server_.start();
  }
  std::string url(std::string_view path = "") const { return server_.url() + std::string(path); }
  std::uint16_t port() const { return server_.port(); }
  std::uint64_t requests() const { return stats()["requests"]["total"]; }
  std::uint64_t connections_accepted() const { return stats()["connections"]["accepted"]; }
  std::uint64_t max_open() const { return stats()["connections"]["max_open"]; }

 private:
  nlohmann::json stats() const { return nlohmann::json::parse(server_.stats_json()); }
  sandbox::Server server_;
};

struct Outcome {
  std::error_code ec;
  Response response;
};

// Sends one request and waits for its completion, checking it arrives exactly once and never
// inline on the calling thread.
Outcome fetch(Client& client, Request request) {
  auto calls = std::make_shared<std::atomic<int>>(0);
  std::promise<Outcome> promise;
  auto future = promise.get_future();
  const auto caller = std::this_thread::get_id();
  client.send(std::move(request), [&promise, calls, caller](std::error_code ec, Response r) {
    EXPECT_NE(std::this_thread::get_id(), caller);
    if (calls->fetch_add(1) == 0) promise.set_value({ec, std::move(r)});
  });
  auto out = future.get();
  EXPECT_EQ(out.response.error, out.ec);
  return out;
}

Request get(std::string url) {
  Request r;
  r.url = std::move(url);
  return r;
}

Request with_body(std::string method, std::string url, std::string body) {
  Request r;
  r.method = std::move(method);
  r.url = std::move(url);
  r.body = std::make_shared<const std::string>(std::move(body));
  return r;
}

nlohmann::json json_of(const Response& r) { return nlohmann::json::parse(r.body); }

class ClientTest : public ::testing::Test {
 protected:
  std::shared_ptr<Engine> engine_ = Engine::create();
  Sandbox server_;
};

TEST_F(ClientTest, Get) {
  Client client(engine_);
  auto [ec, r] = fetch(client, get(server_.url("/json")));
  ASSERT_FALSE(ec) << r.error_message;
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(json_of(r)["ok"].get<bool>());
  EXPECT_EQ(r.http_version, "1.1");
  EXPECT_EQ(r.url, server_.url("/json"));
  EXPECT_EQ(r.redirects, 0);
  ASSERT_NE(r.header("content-type"), nullptr);
  EXPECT_EQ(*r.header("Content-Type"), "application/json");
  EXPECT_GT(r.elapsed, 0);
}

// The last owner of a client may be a completion: dropping it there, on the I/O thread, must
// neither deadlock (the client waiting for the handler that is running) nor free what that
// handler still uses.
TEST_F(ClientTest, TheLastOwnerMayLetGoInsideACompletion) {
  for (int round = 0; round < 20; ++round) {
    auto owner = std::make_shared<std::shared_ptr<Client>>(std::make_shared<Client>(engine_));
    Client& client = **owner;
    std::promise<std::error_code> done;
    client.send(get(server_.url("/json")), [owner, &done](std::error_code ec, Response) mutable {
      owner->reset();  // the last reference: ~Client runs here, on an I/O thread
      done.set_value(ec);
    });
    owner.reset();
    auto answer = done.get_future();
    ASSERT_EQ(answer.wait_for(std::chrono::seconds(30)), std::future_status::ready)
        << "round " << round << ": ~Client inside its own completion did not return";
    EXPECT_FALSE(answer.get());
  }
}

TEST_F(ClientTest, HttpErrorStatusIsAResponseNotAnError) {
  Client client(engine_);
  auto [ec, r] = fetch(client, get(server_.url("/status/503")));
  EXPECT_FALSE(ec);
  EXPECT_EQ(r.status, 503);
}

TEST_F(ClientTest, PostEchoesBodyWithoutInventingAContentType) {
  Client client(engine_);
  auto [ec, r] = fetch(client, with_body("POST", server_.url("/echo"), "hello"));
  ASSERT_FALSE(ec) << r.error_message;
  auto j = json_of(r);
  EXPECT_EQ(j["method"], "POST");
  EXPECT_EQ(j["body"], "hello");
  EXPECT_FALSE(j["headers"].contains("content-type"));
  EXPECT_FALSE(j["headers"].contains("expect"));
  EXPECT_EQ(j["headers"]["user-agent"], "isthmus/0.1");
}

TEST_F(ClientTest, BinaryBodyAndHeadersArriveIntact) {
  Client client(engine_);
  std::string body("a\0b\r\nc", 6);
  auto req = with_body("PUT", server_.url("/echo?x=1"), body);
  req.headers = {{"Content-Type", "application/json"}, {"X-Empty", ""}, {"X-Trace", "abc"}};
  auto [ec, r] = fetch(client, req);
  ASSERT_FALSE(ec) << r.error_message;
  auto j = json_of(r);
  EXPECT_EQ(j["method"], "PUT");
  EXPECT_EQ(j["query"]["x"], "1");
  EXPECT_EQ(j["body"].get<std::string>(), body);
  EXPECT_EQ(j["headers"]["content-type"], "application/json");
  EXPECT_EQ(j["headers"]["x-empty"], "");
  EXPECT_EQ(j["headers"]["x-trace"], "abc");
}

TEST_F(ClientTest, EveryMethod) {
  Client client(engine_);
  for (std::string m : {"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}) {
    Request req = get(server_.url("/echo"));
    req.method = m;
    auto [ec, r] = fetch(client, req);
    ASSERT_FALSE(ec) << m << ": " << r.error_message;
    EXPECT_EQ(json_of(r)["method"], m);
  }
  Request head = get(server_.url("/echo"));
  head.method = "HEAD";
  auto [ec, r] = fetch(client, head);
  ASSERT_FALSE(ec) << r.error_message;
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(r.body.empty());
}

TEST_F(ClientTest, SequentialRequestsReuseOneConnection) {
  Client client(engine_);
  for (int i = 0; i < 20; ++i) ASSERT_FALSE(fetch(client, get(server_.url("/json"))).ec);
  EXPECT_EQ(client.connections_opened(), 1u);
  EXPECT_EQ(server_.connections_accepted(), 1u);
}

TEST_F(ClientTest, ManyRequestsFewConnections) {
  Client client(engine_);
  std::vector<Request> requests(400, get(server_.url("/json")));
  auto results = send_all(client, std::move(requests), 4);
  for (const auto& r : results) ASSERT_EQ(r.status, 200) << r.error_message;
  EXPECT_LE(client.connections_opened(), 8u);
  EXPECT_EQ(server_.requests(), 400u);
  EXPECT_EQ(server_.connections_accepted(), client.connections_opened());
}

TEST_F(ClientTest, PerHostConnectionCap) {
  ClientOptions options;
  options.max_connections_per_host = 2;
  Client client(engine_, options);
  std::vector<Request> requests(16, get(server_.url("/delay/20")));
  auto results = send_all(client, std::move(requests), 16);
  for (const auto& r : results) ASSERT_EQ(r.status, 200) << r.error_message;
  EXPECT_LE(server_.max_open(), 2u);
  EXPECT_LE(client.connections_opened(), 2u);
}

TEST_F(ClientTest, ConnectTimeout) {
  BlackholeListener blackhole;
  ClientOptions options;
  options.connect_timeout = 0.3;
  Client client(engine_, options);
  auto [ec, r] = fetch(client, get("http://127.0.0.1:" + std::to_string(blackhole.port()) + "/"));
  EXPECT_EQ(ec, errc::timeout) << r.error_message;
  EXPECT_EQ(r.status, 0);
}

TEST_F(ClientTest, TotalTimeoutFromRequestOverridesClientDefault) {
  Client client(engine_);  // 30 s default
  Request req = get(server_.url("/stall"));
  req.timeout = 0.3;
  auto [ec, r] = fetch(client, req);
  EXPECT_EQ(ec, errc::timeout) << r.error_message;
  EXPECT_LT(r.elapsed, 10.0);
}

TEST_F(ClientTest, TimeoutCoversWaitingForAConnection) {
  ClientOptions options;
  options.max_connections_per_host = 1;
  Client client(engine_, options);
  std::promise<std::error_code> first_done;
  Request slow = get(server_.url("/stall"));
  slow.timeout = 20;
  const auto slow_id = client.send(slow, [&](std::error_code ec, Response) { first_done.set_value(ec); });
  while (server_.requests() == 0) std::this_thread::yield();
  // Queued behind the stalled request for the only connection: its own deadline must still hold.
  Request queued = get(server_.url("/json"));
  queued.timeout = 0.3;
  auto [ec, r] = fetch(client, queued);
  EXPECT_EQ(ec, errc::timeout) << r.error_message;
  auto first = first_done.get_future();
  EXPECT_EQ(first.wait_for(std::chrono::seconds(0)), std::future_status::timeout)
      << "the queued request only timed out once the connection came free";
  client.cancel(slow_id);
  EXPECT_EQ(first.get(), errc::cancelled);
}

TEST_F(ClientTest, RefusedConnection) {
  Client client(engine_);
  auto [ec, r] = fetch(client, get("http://127.0.0.1:" + std::to_string(testing::closed_port()) + "/"));
  EXPECT_EQ(ec, errc::connect_failed) << r.error_message;
}

TEST_F(ClientTest, UnresolvableHostWithRedactedMessage) {
  Client client(engine_);
  auto [ec, r] = fetch(client, get("http://user:hunter2@no-such-host.invalid/x?access_token=abc123&n=1"));
  EXPECT_EQ(ec, errc::resolve_failed) << r.error_message;
  EXPECT_EQ(r.error_message.find("hunter2"), std::string::npos) << r.error_message;
  EXPECT_EQ(r.error_message.find("abc123"), std::string::npos) << r.error_message;
  EXPECT_NE(r.error_message.find("access_token=***"), std::string::npos) << r.error_message;
}

TEST_F(ClientTest, InvalidUrls) {
  Client client(engine_);
  for (std::string url : std::initializer_list<std::string>{
           "", "not a url", "http://", "127.0.0.1/x", "http://exa mple.com/", "http://h/a\r\nb",
           std::string("http://h/?q=\0x", 14)}) {
    auto [ec, r] = fetch(client, get(url));
    EXPECT_EQ(ec, errc::invalid_url) << "'" << url << "': " << r.error_message;
  }
}

TEST_F(ClientTest, UnsupportedSchemes) {
  Client client(engine_);
  for (std::string url : {"ftp://127.0.0.1/x", "file:///etc/passwd", "gopher://h/", "ws://127.0.0.1/"}) {
    auto [ec, r] = fetch(client, get(url));
    EXPECT_EQ(ec, errc::unsupported_scheme) << url << ": " << r.error_message;
  }
}

TEST_F(ClientTest, HeadersWithCrLfOrEmptyNamesAreRefused) {
  Client client(engine_);
  const Headers bad[] = {{{"X-Evil", "a\r\nInjected: 1"}},
                         {{"X-Evil", "a\nb"}},
                         {{"X-Evil", "a\rb"}},
                         {{"", "value"}},
                         {{"Bad\r\nName", "v"}},
                         {{"Bad Name", "v"}},
                         {{"Bad:Name", "v"}}};
  for (const auto& headers : bad) {
    Request req = get(server_.url("/json"));
    req.headers = headers;
    req.headers.emplace_back("Authorization", "Bearer topsecret");
    auto [ec, r] = fetch(client, req);
    EXPECT_EQ(ec, errc::invalid_header) << headers[0].first;
    EXPECT_EQ(r.error_message.find("topsecret"), std::string::npos);
    EXPECT_EQ(r.error_message.find("Injected"), std::string::npos);
  }
  EXPECT_EQ(server_.requests(), 0u);
}

TEST_F(ClientTest, RelativeRedirects) {
  Client client(engine_);
  auto [ec, r] = fetch(client, get(server_.url("/redirect/3")));
  ASSERT_FALSE(ec) << r.error_message;
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.redirects, 3);
  EXPECT_EQ(r.url, server_.url("/redirect/0"));
  EXPECT_TRUE(json_of(r)["redirected"].get<bool>());
}

TEST_F(ClientTest, AbsoluteRedirect) {
  Client client(engine_);
  auto [ec, r] = fetch(client, get(server_.url("/redirect-to?url=" + server_.url("/json"))));
  ASSERT_FALSE(ec) << r.error_message;
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.redirects, 1);
  EXPECT_EQ(r.url, server_.url("/json"));
}

TEST_F(ClientTest, TooManyRedirects) {
  ClientOptions options;
  options.max_redirects = 2;
  Client client(engine_, options);
  EXPECT_FALSE(fetch(client, get(server_.url("/redirect/2"))).ec);
  auto [ec, r] = fetch(client, get(server_.url("/redirect/3")));
  EXPECT_EQ(ec, errc::too_many_redirects) << r.error_message;
}

TEST_F(ClientTest, RedirectsNotFollowedWhenDisabled) {
  Client client(engine_);
  Request req = get(server_.url("/redirect/1"));
  req.follow_redirects = 0;
  auto [ec, r] = fetch(client, req);
  ASSERT_FALSE(ec);
  EXPECT_EQ(r.status, 302);
  EXPECT_EQ(*r.header("Location"), "/redirect/0");
}

TEST_F(ClientTest, RedirectToUnsupportedSchemeIsRefused) {
  Client client(engine_);
  auto [ec, r] = fetch(client, get(server_.url("/redirect-to?url=file:///etc/passwd")));
  EXPECT_EQ(ec, errc::unsupported_scheme) << r.error_message;
}

TEST_F(ClientTest, MethodRewritingOnRedirect) {
  Client client(engine_);
  struct Case {
    std::string status;
    std::string method;
    std::string expect_method;
    std::string expect_body;
  };
  for (const auto& c : {Case{"303", "POST", "GET", ""}, Case{"303", "PUT", "GET", ""},
                        Case{"302", "POST", "GET", ""}, Case{"301", "POST", "GET", ""},
                        Case{"307", "POST", "POST", "payload"}, Case{"308", "PUT", "PUT", "payload"},
                        Case{"302", "PUT", "PUT", "payload"}}) {
    auto req = with_body(c.method, server_.url("/redirect-to?status=" + c.status + "&url=/echo"), "payload");
    req.headers = {{"Content-Type", "text/plain"}};
    auto [ec, r] = fetch(client, req);
    ASSERT_FALSE(ec) << r.error_message;
    auto j = json_of(r);
    EXPECT_EQ(j["method"], c.expect_method) << c.status << " " << c.method;
    EXPECT_EQ(j["body"], c.expect_body) << c.status << " " << c.method;
    EXPECT_EQ(j["headers"].contains("content-type"), !c.expect_body.empty());
  }
}

Request with_credentials(std::string url) {
  Request req = get(std::move(url));
  req.headers = {{"Authorization", "Bearer t0ken"}, {"Cookie", "sid=1"},
                 {"X-Api-Key", "k3y"}, {"X-Trace", "keep-me"}};
  req.sensitive_headers = {"x-api-key"};
  return req;
}

TEST_F(ClientTest, CredentialsDroppedOnCrossHostRedirect) {
  // Same port on another loopback address: only the host differs.
  std::unique_ptr<Sandbox> other;
  try {
    other = std::make_unique<Sandbox>("127.0.0.2", server_.port());
  } catch (const std::exception& e) {
    GTEST_SKIP() << "127.0.0.2:" << server_.port() << " not bindable: " << e.what();
  }
  Client client(engine_);
  auto [ec, r] = fetch(client, with_credentials(server_.url("/redirect-to?url=" + other->url("/echo"))));
  ASSERT_FALSE(ec) << r.error_message;
  EXPECT_EQ(r.url, other->url("/echo"));
  auto headers = json_of(r)["headers"];
  EXPECT_FALSE(headers.contains("authorization"));
  EXPECT_FALSE(headers.contains("cookie"));
  EXPECT_FALSE(headers.contains("x-api-key"));
  EXPECT_EQ(headers["x-trace"], "keep-me");
}

TEST_F(ClientTest, CredentialsKeptOnSameOriginRedirect) {
  Client client(engine_);
  auto [ec, r] = fetch(client, with_credentials(server_.url("/redirect-to?url=/echo")));
  ASSERT_FALSE(ec) << r.error_message;
  auto headers = json_of(r)["headers"];
  EXPECT_EQ(headers["authorization"], "Bearer t0ken");
  EXPECT_EQ(headers["cookie"], "sid=1");
  EXPECT_EQ(headers["x-api-key"], "k3y");
}

TEST_F(ClientTest, CredentialsDroppedWhenOnlyThePortChanges) {
  Sandbox other;
  Client client(engine_);
  auto [ec, r] = fetch(client, with_credentials(server_.url("/redirect-to?url=" + other.url("/echo"))));
  ASSERT_FALSE(ec) << r.error_message;
  EXPECT_FALSE(json_of(r)["headers"].contains("authorization"));
}

TEST_F(ClientTest, GzipIsDecoded) {
  Client client(engine_);
  auto [ec, r] = fetch(client, get(server_.url("/gzip")));
  ASSERT_FALSE(ec) << r.error_message;
  EXPECT_EQ(*r.header("Content-Encoding"), "gzip");
  EXPECT_TRUE(json_of(r)["gzipped"].get<bool>());
}

TEST_F(ClientTest, UndecodableBodyIsADecodingError) {
  Client client(engine_);
  CannedServer bad("HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 8\r\n\r\nnot gzip");
  auto [ec, r] = fetch(client, get(bad.url()));
  EXPECT_EQ(ec, errc::decoding_error) << r.error_message;
}

TEST_F(ClientTest, OnlyTheFinalResponsesHeadersAreKept) {
  Client client(engine_);
  CannedServer interim(
      "HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n"
      "HTTP/1.1 200 OK\r\nX-Final: 1\r\nContent-Length: 2\r\n\r\nok");
  auto [ec, r] = fetch(client, get(interim.url()));
  ASSERT_FALSE(ec) << r.error_message;
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "ok");
  EXPECT_EQ(r.header("X-Interim"), nullptr);
  ASSERT_NE(r.header("X-Final"), nullptr);
  EXPECT_EQ(r.headers.size(), 2u);
}

TEST_F(ClientTest, GarbageInsteadOfHttpIsAProtocolError) {
  Client client(engine_);
  CannedServer garbage("SSH-2.0-OpenSSH_9.2\r\n\r\n");
  auto [ec, r] = fetch(client, get(garbage.url()));
  EXPECT_EQ(ec, errc::protocol_error) << r.error_message;
}

TEST_F(ClientTest, LargeBody) {
  Client client(engine_);
  constexpr std::size_t kSize = 100u << 20;
  auto [ec, r] = fetch(client, get(server_.url("/bytes/" + std::to_string(kSize))));
  ASSERT_FALSE(ec) << r.error_message;
  ASSERT_EQ(r.body.size(), kSize);
  EXPECT_EQ(r.body.capacity(), kSize);  // reserved once from Content-Length, never regrown
}

TEST_F(ClientTest, BodyLimit) {
  std::size_t decoded = 0;
  {
    Client unlimited(engine_);
    decoded = fetch(unlimited, get(server_.url("/gzip"))).response.body.size();
  }
  ClientOptions options;
  options.max_body_bytes = 1000;
  Client client(engine_, options);
  EXPECT_FALSE(fetch(client, get(server_.url("/bytes/1000"))).ec);
  auto [ec, r] = fetch(client, get(server_.url("/bytes/1001")));
  EXPECT_EQ(ec, errc::body_too_large) << r.error_message;
  // The limit applies to the decoded body: a gzip body small on the wire still trips it.
  ClientOptions tight;
  tight.max_body_bytes = static_cast<std::int64_t>(decoded) - 1;
  Client gz(engine_, tight);
  auto [ec2, r2] = fetch(gz, get(server_.url("/gzip")));
  EXPECT_EQ(ec2, errc::body_too_large) << r2.error_message;
}

TEST_F(ClientTest, ServerClosesMidBody) {
  Client client(engine_);
  auto [ec, r] = fetch(client, get(server_.url("/truncated")));
  EXPECT_EQ(ec, errc::transport_error) << r.error_message;
  EXPECT_EQ(r.status, 200);
  // The client recovers: the next request on a fresh connection works.
  EXPECT_FALSE(fetch(client, get(server_.url("/json"))).ec);
}

TEST_F(ClientTest, ServerResetsConnection) {
  Client client(engine_);
  auto [ec, r] = fetch(client, get(server_.url("/reset")));
  EXPECT_EQ(ec, errc::transport_error) << r.error_message;
}

TEST_F(ClientTest, Cancel) {
  Client client(engine_);
  std::promise<Outcome> promise;
  auto calls = std::make_shared<std::atomic<int>>(0);
  const auto id = client.send(get(server_.url("/stall")), [&, calls](std::error_code ec, Response r) {
    if (calls->fetch_add(1) == 0) promise.set_value({ec, std::move(r)});
  });
  // Wait until the server holds the request, so the cancel hits a transfer on the wire.
  while (server_.requests() == 0) std::this_thread::yield();
  client.cancel(id);
  client.cancel(id);  // twice: still one completion
  auto out = promise.get_future().get();
  EXPECT_EQ(out.ec, errc::cancelled);
  EXPECT_FALSE(fetch(client, get(server_.url("/json"))).ec);
  client.cancel(id);  // long done: a no-op
  EXPECT_EQ(calls->load(), 1);
  client.cancel(987654);  // unknown id: a no-op
}

TEST_F(ClientTest, CloseCancelsInFlightAndRefusesNewSends) {
  Client client(engine_);
  std::atomic<int> cancelled{0}, other{0};
  std::promise<void> all;
  constexpr int kCount = 5;
  for (int i = 0; i < kCount; ++i)
    client.send(get(server_.url("/stall")), [&](std::error_code ec, Response) {
      (ec == errc::cancelled ? cancelled : other)++;
      if (cancelled + other == kCount) all.set_value();
    });
  while (server_.requests() < kCount) std::this_thread::yield();
  client.close();
  client.close();  // idempotent
  all.get_future().get();
  EXPECT_EQ(cancelled.load(), kCount);
  EXPECT_EQ(other.load(), 0);
  auto [ec, r] = fetch(client, get(server_.url("/json")));
  EXPECT_EQ(ec, errc::shutting_down);
}

TEST_F(ClientTest, DestructorCompletesEverythingBeforeReturning) {
  std::atomic<int> completions{0};
  {
    Client client(engine_);
    for (int i = 0; i < 3; ++i)
      client.send(get(server_.url("/stall")), [&](std::error_code ec, Response) {
        EXPECT_EQ(ec, errc::cancelled);
        ++completions;
      });
    for (int i = 0; i < 3; ++i)
      client.send(get(server_.url("/json")), [&](std::error_code ec, Response) { ++completions; });
    while (server_.requests() < 3) std::this_thread::yield();
  }
  EXPECT_EQ(completions.load(), 6);
}

TEST_F(ClientTest, DestructorRightAfterSendAndOnAStoppedEngine) {
  std::atomic<int> completions{0};
  {
    Client client(engine_);
    client.send(get(server_.url("/json")), [&](std::error_code, Response) { ++completions; });
  }
  EXPECT_EQ(completions.load(), 1);
  auto engine = Engine::create();
  {
    Client client(engine);
    client.send(get(server_.url("/stall")), [&](std::error_code, Response) { ++completions; });
    engine->stop();
  }
  EXPECT_LE(completions.load(), 2);
}

TEST_F(ClientTest, SendAllKeepsRequestOrder) {
  Client client(engine_);
  std::vector<Request> requests;
  for (int i = 0; i < 300; ++i) requests.push_back(get(server_.url("/echo?i=" + std::to_string(i))));
  requests.push_back(get("ftp://127.0.0.1/nope"));  // each result carries its own error
  auto results = send_all(client, std::move(requests), 16);
  ASSERT_EQ(results.size(), 301u);
  for (int i = 0; i < 300; ++i) {
    ASSERT_EQ(results[i].status, 200) << results[i].error_message;
    EXPECT_EQ(json_of(results[i])["query"]["i"], std::to_string(i));
  }
  EXPECT_EQ(results[300].error, errc::unsupported_scheme);
}

TEST_F(ClientTest, SeveralIoThreads) {
  auto engine = Engine::create({.io_threads = 2});
  Client client(engine);
  std::vector<Request> requests;
  for (int i = 0; i < 500; ++i) requests.push_back(get(server_.url(i % 5 ? "/json" : "/gzip")));
  auto results = send_all(client, std::move(requests), 32);
  for (const auto& r : results) ASSERT_EQ(r.status, 200) << r.error_message;
}

TEST(ClientOptionsTest, BadValuesNameTheField) {
  auto engine = Engine::create();
  ClientOptions options;
  options.timeout = -1;
  try {
    Client client(engine, options);
    FAIL() << "accepted a negative timeout";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), errc::invalid_argument);
    EXPECT_NE(std::string(e.what()).find("timeout"), std::string::npos);
  }
}

// A transport that answers inline, inside send(): send_all must not recurse per request.
class InlineTransport final : public Transport {
 public:
  std::uint64_t send(Request request, Completion done) override {
    Response r;
    r.status = 200;
    r.url = std::move(request.url);
    done({}, std::move(r));
    return ++sent;
  }
  void cancel(std::uint64_t) override {}
  std::uint64_t sent = 0;
};

TEST(SendAllTest, HundredThousandInlineCompletionsInOrder) {
  InlineTransport transport;
  std::vector<Request> requests(100'000);
  for (std::size_t i = 0; i < requests.size(); ++i) requests[i].url = std::to_string(i);
  auto results = send_all(transport, std::move(requests), 64);
  ASSERT_EQ(results.size(), 100'000u);
  for (std::size_t i = 0; i < results.size(); ++i) ASSERT_EQ(results[i].url, std::to_string(i));
  EXPECT_EQ(transport.sent, 100'000u);
  EXPECT_TRUE(send_all(transport, {}, 4).empty());
}

// A transport completing from another thread, at most `limit` at a time.
class ThreadedTransport final : public Transport {
 public:
  std::uint64_t send(Request request, Completion done) override {
    const int now = ++in_flight;
    int prev = peak.load();
    while (now > prev && !peak.compare_exchange_weak(prev, now)) {
    }
    std::thread([this, request = std::move(request), done = std::move(done)]() mutable {
      Response r;
      r.url = request.url;
      --in_flight;
      done(errc::timeout, std::move(r));
    }).detach();
    return 0;
  }
  void cancel(std::uint64_t) override {}
  std::atomic<int> in_flight{0}, peak{0};
};

TEST(SendAllTest, WindowIsRespectedAndErrorsAreKept) {
  ThreadedTransport transport;
  std::vector<Request> requests(200);
  auto results = send_all(transport, std::move(requests), 3);
  EXPECT_LE(transport.peak.load(), 3);
  for (const auto& r : results) EXPECT_EQ(r.error, errc::timeout);
}

}  // namespace
}  // namespace isthmus::http
