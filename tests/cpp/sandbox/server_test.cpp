// The sandbox server over real loopback sockets, driven by a plain blocking client.
#include <utility>  // before Asio (Boost 1.74 + GCC 12 in C++20)

#include "isthmus/sandbox/server.hpp"

#include <gtest/gtest.h>
#include <zlib.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <chrono>
#include <future>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "isthmus/error.hpp"
#include "sandbox/router.hpp"

namespace isthmus::sandbox {
namespace {

namespace net = boost::asio;
using tcp = net::ip::tcp;
using nlohmann::json;

struct Response {
  int status = 0;
  std::map<std::string, std::string> headers;  // lowercase names
  std::string body;
  bool complete = false;  // got Content-Length bytes
};

// A minimal blocking HTTP/1.1 client over one connection, reading exactly one response.
class Conn {
 public:
  explicit Conn(std::uint16_t port) : socket_(io_) {
    socket_.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port));
  }
  void send(const std::string& raw) { net::write(socket_, net::buffer(raw)); }
  Response get(const std::string& target, const std::string& extra = "") {
    send("GET " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\n" + extra + "\r\n");
    return read_response();
  }
  // Reads one response; a body up to `keep_limit` bytes is kept, the rest only counted.
  Response read_response(std::uint64_t* body_bytes = nullptr, std::size_t keep_limit = 1 << 24) {
    Response r;
    std::size_t end;
    while ((end = buf_.find("\r\n\r\n")) == std::string::npos) {
      if (!fill()) return r;
    }
    std::string head = buf_.substr(0, end);
    buf_.erase(0, end + 4);
    r.status = std::stoi(head.substr(9, 3));
    std::size_t pos = head.find("\r\n");
    while (pos != std::string::npos) {
      std::size_t next = head.find("\r\n", pos + 2);
      std::string line = head.substr(pos + 2, next == std::string::npos ? std::string::npos : next - pos - 2);
      auto colon = line.find(':');
      std::string name = line.substr(0, colon);
      for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      r.headers[name] = line.substr(colon + 2);
      pos = next;
    }
    std::uint64_t length = r.headers.count("content-length") ? std::stoull(r.headers["content-length"]) : 0;
    std::uint64_t got = 0;
    while (got < length) {
      if (buf_.empty() && !fill()) break;
      std::size_t take = static_cast<std::size_t>(std::min<std::uint64_t>(buf_.size(), length - got));
      if (r.body.size() < keep_limit) r.body.append(buf_, 0, std::min(take, keep_limit - r.body.size()));
      buf_.erase(0, take);
      got += take;
    }
    r.complete = got == length;
    if (body_bytes) *body_bytes = got;
    return r;
  }
  // True when the peer closed (EOF); sets `reset` when it was a RST.
  bool closed(bool* reset = nullptr) {
    char c;
    boost::system::error_code ec;
    socket_.read_some(net::buffer(&c, 1), ec);
    if (reset) *reset = ec == net::error::connection_reset;
    return ec == net::error::eof || ec == net::error::connection_reset;
  }
  bool fill() {
    char tmp[65536];
    boost::system::error_code ec;
    std::size_t n = socket_.read_some(net::buffer(tmp), ec);
    if (ec) {
      last_error_ = ec;
      return false;
    }
    buf_.append(tmp, n);
    return true;
  }
  boost::system::error_code last_error_;
  tcp::socket& socket() { return socket_; }

 private:
  net::io_context io_;
  tcp::socket socket_;
  std::string buf_;
};

class SandboxServer : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = std::make_unique<Server>(Options{.threads = 2});
    server_->start();
    port_ = server_->port();
  }
  json stats() { return json::parse(server_->stats_json()); }
  std::unique_ptr<Server> server_;
  std::uint16_t port_ = 0;
};

TEST_F(SandboxServer, JsonOverKeepAliveConnection) {
  Conn c(port_);
  for (int i = 0; i < 3; ++i) {
    Response r = c.get("/json");
    ASSERT_EQ(r.status, 200);
    EXPECT_EQ(r.headers["content-type"], "application/json");
    json doc = json::parse(r.body);
    EXPECT_TRUE(doc["ok"].get<bool>());
    EXPECT_GT(r.body.size(), 300u);
    EXPECT_LT(r.body.size(), 600u);
  }
  json s = stats();
  EXPECT_EQ(s["connections"]["accepted"], 1);
  EXPECT_EQ(s["connections"]["open"], 1);
  EXPECT_EQ(s["requests"]["by_endpoint"]["GET /json"]["200"], 3);
  EXPECT_EQ(s["requests"]["total"], 3);
  EXPECT_EQ(server_->url(), "http://127.0.0.1:" + std::to_string(port_));
}

TEST_F(SandboxServer, PipelinedRequestsAnsweredInOrder) {
  Conn c(port_);
  c.send("GET /status/201 HTTP/1.1\r\nHost: x\r\n\r\nGET /status/202 HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(c.read_response().status, 201);
  EXPECT_EQ(c.read_response().status, 202);
}

TEST_F(SandboxServer, StatusCodes) {
  Conn c(port_);
  for (int code : {200, 404, 418, 429, 500, 503}) {
    Response r = c.get("/status/" + std::to_string(code));
    EXPECT_EQ(r.status, code);
    EXPECT_EQ(json::parse(r.body)["status"], code);
  }
  EXPECT_EQ(c.get("/status/abc").status, 400);
  EXPECT_EQ(c.get("/status/204").body, "");
  EXPECT_EQ(stats()["requests"]["by_endpoint"]["GET /status/{code}"]["503"], 1);
}

TEST_F(SandboxServer, DeterministicBytes) {
  Conn c(port_);
  Response r = c.get("/bytes/100000");
  ASSERT_EQ(r.status, 200);
  ASSERT_EQ(r.body.size(), 100000u);
  const std::string& block = pattern_block();
  for (std::size_t i = 0; i < r.body.size(); i += 997) ASSERT_EQ(r.body[i], block[i % block.size()]) << i;
  EXPECT_EQ(c.get("/bytes/100000").body, r.body);
  EXPECT_EQ(c.get("/bytes/0").body, "");
}

TEST_F(SandboxServer, TwoHundredMegabytesStreamed) {
  Conn c(port_);
  c.send("GET /bytes/200000000 HTTP/1.1\r\nHost: x\r\n\r\n");
  std::uint64_t n = 0;
  Response r = c.read_response(&n, 16);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(n, 200000000u);
  EXPECT_TRUE(r.complete);
  EXPECT_EQ(c.get("/json").status, 200);  // the connection is still usable
}

TEST_F(SandboxServer, EchoReportsTheRequest) {
  Conn c(port_);
  c.send("POST /echo?a=1&b=x%20y&a=2 HTTP/1.1\r\nHost: x\r\nX-Custom: Hello\r\nContent-Length: 5\r\n\r\nhello");
  Response r = c.read_response();
  ASSERT_EQ(r.status, 200);
  json e = json::parse(r.body);
  EXPECT_EQ(e["method"], "POST");
  EXPECT_EQ(e["path"], "/echo");
  EXPECT_EQ(e["query"]["b"], "x y");
  EXPECT_EQ(e["query"]["a"], json::array({"1", "2"}));
  EXPECT_EQ(e["headers"]["x-custom"], "Hello");
  EXPECT_EQ(e["body"], "hello");
  EXPECT_EQ(e["body_length"], 5);
  EXPECT_EQ(stats()["requests"]["by_endpoint"]["POST /echo"]["200"], 1);
}

TEST_F(SandboxServer, DelaysUseTimersNotThreads) {
  // Four concurrent delays on a one-thread server finish together, not one after another.
  Server one(Options{.threads = 1});
  one.start();
  auto t0 = std::chrono::steady_clock::now();
  std::vector<std::future<int>> done;
  for (int i = 0; i < 4; ++i)
    done.push_back(std::async(std::launch::async, [&] { return Conn(one.port()).get("/delay/300").status; }));
  for (auto& f : done) EXPECT_EQ(f.get(), 200);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_GE(ms, 300);
  EXPECT_LT(ms, 1100);
}

std::string inflate_any(const std::string& in) {
  z_stream zs{};
  inflateInit2(&zs, 15 + 32);  // zlib or gzip header, detected
  std::string out(1 << 16, '\0');
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  zs.avail_in = static_cast<uInt>(in.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  int rc = inflate(&zs, Z_FINISH);
  out.resize(zs.total_out);
  inflateEnd(&zs);
  return rc == Z_STREAM_END ? out : std::string();
}

TEST_F(SandboxServer, GzipAndDeflate) {
  Conn c(port_);
  Response g = c.get("/gzip");
  EXPECT_EQ(g.headers["content-encoding"], "gzip");
  ASSERT_GE(g.body.size(), 2u);
  EXPECT_EQ(static_cast<unsigned char>(g.body[0]), 0x1f);
  EXPECT_TRUE(json::parse(inflate_any(g.body))["gzipped"].get<bool>());
  Response d = c.get("/deflate");
  EXPECT_EQ(d.headers["content-encoding"], "deflate");
  EXPECT_TRUE(json::parse(inflate_any(d.body))["deflated"].get<bool>());
}

TEST_F(SandboxServer, Redirects) {
  Conn c(port_);
  Response r = c.get("/redirect/3");
  EXPECT_EQ(r.status, 302);
  EXPECT_EQ(r.headers["location"], "/redirect/2");
  EXPECT_EQ(c.get("/redirect/0").status, 200);
  Response to = c.get("/redirect-to?url=http%3A%2F%2F127.0.0.1%3A1%2Fx&status=307");
  EXPECT_EQ(to.status, 307);
  EXPECT_EQ(to.headers["location"], "http://127.0.0.1:1/x");
  EXPECT_EQ(c.get("/redirect-to?url=/json").status, 302);
  EXPECT_EQ(c.get("/redirect-to").status, 400);
}

TEST_F(SandboxServer, TruncatedBodyThenClose) {
  Conn c(port_);
  Response r = c.get("/truncated");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.headers["content-length"], "1000");
  EXPECT_EQ(r.body.size(), 100u);
  EXPECT_FALSE(r.complete);
}

TEST_F(SandboxServer, MalformedJson) {
  Conn c(port_);
  Response r = c.get("/malformed-json");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.headers["content-type"], "application/json");
  EXPECT_THROW({ json j = json::parse(r.body); }, json::parse_error);
}

TEST_F(SandboxServer, ResetSendsRst) {
  Conn c(port_);
  c.send("GET /reset HTTP/1.1\r\nHost: x\r\n\r\n");
  bool reset = false;
  EXPECT_TRUE(c.closed(&reset));
  EXPECT_TRUE(reset);
  EXPECT_EQ(stats()["requests"]["by_endpoint"]["GET /reset"]["0"], 1);
}

TEST_F(SandboxServer, StallAnswersNothingUntilStop) {
  Conn c(port_);
  c.send("GET /stall HTTP/1.1\r\nHost: x\r\n\r\n");
  auto closed = std::async(std::launch::async, [&] { return c.closed(); });
  EXPECT_EQ(closed.wait_for(std::chrono::milliseconds(300)), std::future_status::timeout);
  EXPECT_EQ(stats()["connections"]["open"], 1);
  server_->stop();
  ASSERT_EQ(closed.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_TRUE(closed.get());
}

TEST_F(SandboxServer, MalformedHttpGets400WithReason) {
  Conn c(port_);
  c.send("THIS IS NOT HTTP\r\n\r\n");
  Response r = c.read_response();
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(json::parse(r.body)["message"].get<std::string>().find("malformed"), std::string::npos);
  EXPECT_TRUE(c.closed());
  EXPECT_EQ(stats()["requests"]["by_endpoint"]["(malformed request)"]["400"], 1);
}

TEST_F(SandboxServer, UnknownPathIs404Json) {
  Conn c(port_);
  Response r = c.get("/nope");
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(json::parse(r.body)["error"], "not_found");
}

TEST_F(SandboxServer, StatsEndpointAndReset) {
  {
    Conn c(port_);
    c.get("/json");
    Response r = c.get("/stats");
    json s = json::parse(r.body);
    EXPECT_EQ(s["requests"]["by_endpoint"]["GET /json"]["200"], 1);
    EXPECT_EQ(s["arrivals"].size(), 1u);
  }
  server_->reset_stats();
  json s = stats();
  EXPECT_EQ(s["requests"]["total"], 0);
  EXPECT_EQ(s["connections"]["accepted"], 0);
}

TEST_F(SandboxServer, ConnectionCloseIsHonoured) {
  Conn c(port_);
  Response r = c.get("/json", "Connection: close\r\n");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.headers["connection"], "close");
  EXPECT_TRUE(c.closed());
}

TEST(SandboxOptions, BadConfigNamesTheField) {
  Server s(Options{.config_json = R"({"seed": "x"})"});
  try {
    s.start();
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("seed"), std::string::npos);
    EXPECT_EQ(e.code(), make_error_code(errc::invalid_argument));
  }
  Server t(Options{.threads = 0});
  EXPECT_THROW(t.start(), Error);
  Server u(Options{.config_json = R"({"no_such_option": 1})"});
  EXPECT_THROW(u.start(), Error);
}

TEST(SandboxFuzz, GarbageNeverCrashesTheServer) {
  Server server(Options{.threads = 2});
  server.start();
  std::mt19937_64 rng(1234);
  const std::string seeds[] = {
      "GET /json HTTP/1.1\r\nHost: x\r\n\r\n",
      "POST /echo?a=%zz&b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
      "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
      "GET /redirect-to?url=%0d%0aX:%20y HTTP/1.1\r\n\r\n",
  };
  for (int i = 0; i < 300; ++i) {
    std::string s = seeds[i % 4];
    int edits = 1 + static_cast<int>(rng() % 8);
    for (int e = 0; e < edits; ++e) {
      std::size_t at = rng() % (s.size() + 1);
      switch (rng() % 3) {
        case 0: s.insert(at, 1, static_cast<char>(rng() & 0xff)); break;
        case 1: if (at < s.size()) s.erase(at, 1); break;
        default: if (at < s.size()) s[at] = static_cast<char>(rng() & 0xff); break;
      }
    }
    Conn c(server.port());
    c.send(s);
    c.socket().shutdown(tcp::socket::shutdown_send);
    Response r = c.read_response();
    if (r.status) EXPECT_TRUE(r.status == 200 || (r.status >= 300 && r.status < 600)) << r.status;
  }
  Conn c(server.port());
  EXPECT_EQ(c.get("/json").status, 200);
}

}  // namespace
}  // namespace isthmus::sandbox
