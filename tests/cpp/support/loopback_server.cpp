#include <utility>  // before Asio: Boost 1.74 + GCC 12 in C++20

#include "support/loopback_server.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <charconv>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <thread>
#include <vector>

namespace isthmus::testing {
namespace {

namespace asio = boost::asio;
using asio::awaitable;
using asio::use_awaitable;
using asio::ip::tcp;

struct Parsed {
  std::string method, target, path, query, body;
  std::vector<std::pair<std::string, std::string>> headers;
  bool keep_alive = true;
};

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

std::string percent_decode(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size()) {
      int v = 0;
      std::from_chars(s.data() + i + 1, s.data() + i + 3, v, 16);
      out.push_back(static_cast<char>(v));
      i += 2;
    } else {
      out.push_back(s[i] == '+' ? ' ' : s[i]);
    }
  }
  return out;
}

std::string query_param(std::string_view query, std::string_view name) {
  while (!query.empty()) {
    auto amp = query.find('&');
    auto pair = query.substr(0, amp);
    auto eq = pair.find('=');
    if (pair.substr(0, eq) == name) return eq == std::string_view::npos ? "" : percent_decode(pair.substr(eq + 1));
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return {};
}

std::int64_t number_after(std::string_view path, std::string_view prefix) {
  std::int64_t n = 0;
  auto rest = path.substr(prefix.size());
  std::from_chars(rest.data(), rest.data() + rest.size(), n);
  return n;
}

std::string gzip(std::string_view data) {
  z_stream z{};
  deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
  std::string out(deflateBound(&z, data.size()) + 32, '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  z.avail_in = static_cast<uInt>(data.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  deflate(&z, Z_FINISH);
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

std::string response(int status, std::string_view body, std::string_view content_type = "application/json",
                     std::string_view extra = {}) {
  std::string r = "HTTP/1.1 " + std::to_string(status) + " X\r\nContent-Length: " +
                  std::to_string(body.size()) + "\r\nContent-Type: " + std::string(content_type) + "\r\n";
  r += extra;
  r += "\r\n";
  r += body;
  return r;
}

}  // namespace

struct LoopbackServer::Impl {
  asio::io_context io{1};
  std::vector<std::unique_ptr<tcp::acceptor>> acceptors;
  std::thread thread;
  std::atomic<std::uint64_t> accepted{0}, open{0}, max_open{0}, requests{0};
  std::uint16_t port = 0;
  bool second_host = false;

  struct OpenGuard {
    Impl* s;
    explicit OpenGuard(Impl* s) : s(s) {
      auto now = ++s->open;
      auto prev = s->max_open.load();
      while (now > prev && !s->max_open.compare_exchange_weak(prev, now)) {
      }
    }
    ~OpenGuard() { --s->open; }
  };

  awaitable<void> accept_loop(tcp::acceptor& acceptor) {
    for (;;) {
      tcp::socket socket = co_await acceptor.async_accept(use_awaitable);
      ++accepted;
      asio::co_spawn(io, session(std::move(socket)), [](std::exception_ptr) {});
    }
  }

  awaitable<void> session(tcp::socket s) {
    OpenGuard guard(this);
    std::string buf;
    for (;;) {
      std::size_t head = co_await asio::async_read_until(s, asio::dynamic_buffer(buf), "\r\n\r\n", use_awaitable);
      Parsed req;
      std::string_view text(buf.data(), head);
      auto line_end = text.find("\r\n");
      std::string_view line = text.substr(0, line_end);
      auto sp1 = line.find(' ');
      auto sp2 = line.rfind(' ');
      req.method = std::string(line.substr(0, sp1));
      req.target = std::string(line.substr(sp1 + 1, sp2 - sp1 - 1));
      auto q = req.target.find('?');
      req.path = req.target.substr(0, q);
      if (q != std::string::npos) req.query = req.target.substr(q + 1);
      std::size_t content_length = 0;
      for (auto pos = line_end + 2; pos < head - 2;) {
        auto end = text.find("\r\n", pos);
        auto h = text.substr(pos, end - pos);
        auto colon = h.find(':');
        std::string name(h.substr(0, colon));
        std::string value(h.substr(colon + 1));
        value.erase(0, value.find_first_not_of(' '));
        if (lower(name) == "content-length") content_length = std::stoul(value);
        if (lower(name) == "connection" && lower(value) == "close") req.keep_alive = false;
        req.headers.emplace_back(std::move(name), std::move(value));
        pos = end + 2;
      }
      if (buf.size() < head + content_length)
        co_await asio::async_read(s, asio::dynamic_buffer(buf),
                                  asio::transfer_exactly(head + content_length - buf.size()), use_awaitable);
      req.body = buf.substr(head, content_length);
      buf.erase(0, head + content_length);
      ++requests;
      if (!co_await respond(s, req) || !req.keep_alive) co_return;
    }
  }

  // Returns whether the connection stays usable.
  awaitable<bool> respond(tcp::socket& s, const Parsed& req) {
    const std::string& p = req.path;
    std::string out;
    if (p == "/json") {
      out = response(200, R"({"ok":true})");
    } else if (p.rfind("/status/", 0) == 0) {
      out = response(static_cast<int>(number_after(p, "/status/")), "");
    } else if (p == "/echo") {
      nlohmann::json headers = nlohmann::json::object();
      for (const auto& [k, v] : req.headers) headers[lower(k)] = v;
      nlohmann::json j = {{"method", req.method}, {"path", req.path}, {"query", req.query},
                          {"headers", headers}, {"body", req.body}};
      out = req.method == "HEAD" ? "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
                                 : response(200, j.dump());
    } else if (p.rfind("/delay/", 0) == 0) {
      asio::steady_timer t(io, std::chrono::milliseconds(number_after(p, "/delay/")));
      co_await t.async_wait(use_awaitable);
      out = response(200, R"({"delayed":true})");
    } else if (p == "/gzip") {
      std::string body = R"({"gzipped":true,"pad":")" + std::string(5000, 'z') + "\"}";
      out = response(200, gzip(body), "application/json", "Content-Encoding: gzip\r\n");
    } else if (p == "/bad-gzip") {
      out = response(200, "this is not gzip", "application/json", "Content-Encoding: gzip\r\n");
    } else if (p.rfind("/redirect/", 0) == 0) {
      auto n = number_after(p, "/redirect/");
      out = n <= 0 ? response(200, R"({"redirected":true})")
                   : response(302, "", "text/plain", "Location: /redirect/" + std::to_string(n - 1) + "\r\n");
    } else if (p == "/redirect-to") {
      std::string status = query_param(req.query, "status");
      out = response(status.empty() ? 302 : std::stoi(status), "", "text/plain",
                     "Location: " + query_param(req.query, "url") + "\r\n");
    } else if (p.rfind("/bytes/", 0) == 0) {
      co_return co_await send_bytes(s, number_after(p, "/bytes/"));
    } else if (p == "/truncated") {
      out = "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + std::string(100, 't');
      co_await asio::async_write(s, asio::buffer(out), use_awaitable);
      co_return false;
    } else if (p == "/stall") {
      // Hold the connection open without a word until the server stops.
      asio::steady_timer t(io, std::chrono::hours(1));
      co_await t.async_wait(use_awaitable);
      co_return false;
    } else if (p == "/reset") {
      s.set_option(asio::socket_base::linger(true, 0));
      s.close();
      co_return false;
    } else {
      out = response(404, R"({"error":"not found"})");
    }
    co_await asio::async_write(s, asio::buffer(out), use_awaitable);
    co_return true;
  }

  awaitable<bool> send_bytes(tcp::socket& s, std::int64_t n) {
    static const std::string chunk(1 << 20, 'b');
    std::string head = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: " +
                       std::to_string(n) + "\r\n\r\n";
    co_await asio::async_write(s, asio::buffer(head), use_awaitable);
    while (n > 0) {
      auto len = static_cast<std::size_t>(std::min<std::int64_t>(n, chunk.size()));
      co_await asio::async_write(s, asio::buffer(chunk.data(), len), use_awaitable);
      n -= static_cast<std::int64_t>(len);
    }
    co_return true;
  }
};

LoopbackServer::LoopbackServer() : impl_(std::make_unique<Impl>()) {
  auto first = std::make_unique<tcp::acceptor>(
      impl_->io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  impl_->port = first->local_endpoint().port();
  impl_->acceptors.push_back(std::move(first));
  try {
    impl_->acceptors.push_back(std::make_unique<tcp::acceptor>(
        impl_->io, tcp::endpoint(asio::ip::make_address("127.0.0.2"), impl_->port)));
    impl_->second_host = true;
  } catch (const std::exception&) {
    // Another process holds the port on 127.0.0.2; cross-host tests skip.
  }
  for (auto& a : impl_->acceptors)
    asio::co_spawn(impl_->io, impl_->accept_loop(*a), [](std::exception_ptr) {});
  impl_->thread = std::thread([this] { impl_->io.run(); });
}

LoopbackServer::~LoopbackServer() {
  impl_->io.stop();
  impl_->thread.join();
}

std::uint16_t LoopbackServer::port() const { return impl_->port; }
bool LoopbackServer::has_second_host() const { return impl_->second_host; }
std::string LoopbackServer::url(std::string_view path, std::string_view host) const {
  return "http://" + std::string(host) + ":" + std::to_string(impl_->port) + std::string(path);
}
std::uint64_t LoopbackServer::connections_accepted() const { return impl_->accepted.load(); }
std::uint64_t LoopbackServer::max_open() const { return impl_->max_open.load(); }
std::uint64_t LoopbackServer::requests() const { return impl_->requests.load(); }

namespace {
sockaddr_in loopback(std::uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}
}  // namespace

BlackholeListener::BlackholeListener() {
  listener_ = ::socket(AF_INET, SOCK_STREAM, 0);
  auto a = loopback(0);
  if (::bind(listener_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(listener_, 0) != 0)
    throw std::runtime_error("blackhole listener");
  socklen_t len = sizeof a;
  ::getsockname(listener_, reinterpret_cast<sockaddr*>(&a), &len);
  port_ = ntohs(a.sin_port);
  // Never accept, and fill the queue: later SYNs are dropped and connects hang.
  for (auto& f : fillers_) {
    f = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    ::connect(f, reinterpret_cast<sockaddr*>(&a), sizeof a);
    ++filler_count_;
  }
}

BlackholeListener::~BlackholeListener() {
  for (int i = 0; i < filler_count_; ++i) ::close(fillers_[i]);
  ::close(listener_);
}

std::uint16_t closed_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  auto a = loopback(0);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

}  // namespace isthmus::testing
