// The sandbox's network side: Asio acceptor, one session per connection on its own strand,
// timers for delays, and the byte-level tricks (truncation, RST, stalls, streamed bodies).
// Every decision about what to answer is made by the Router on plain structs.
#include <utility>  // Boost 1.74 + GCC 12 in C++20: before any Asio header

// Beast 1.74's parser trips a false -Wmaybe-uninitialized in GCC 12.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/bind_handler.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>
#include <array>
#include <nlohmann/json.hpp>
#include <chrono>
#include <cmath>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "isthmus/error.hpp"
#include "isthmus/sandbox/server.hpp"
#include "sandbox/router.hpp"
#include "sandbox/text.hpp"

namespace isthmus::sandbox {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;

namespace {

double unix_now() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

bool is_parse_error(const boost::system::error_code& ec) {
  return &ec.category() == &http::make_error_code(http::error::bad_target).category() &&
         ec != http::error::end_of_stream && ec != http::error::partial_message;
}

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, Router& router)
      : socket_(std::move(socket)), timer_(socket_.get_executor()), router_(router) {
    router_.stats().connection_opened();
  }
  ~Session() { router_.stats().connection_closed(); }

  void start() {
    net::dispatch(socket_.get_executor(), beast::bind_front_handler(&Session::do_read, shared_from_this()));
  }

 private:
  void do_read() {
    parser_.emplace();
    parser_->header_limit(16 * 1024);
    parser_->body_limit(router_.config().max_body_bytes);
    http::async_read_header(socket_, buffer_, *parser_,
                            beast::bind_front_handler(&Session::on_header, shared_from_this()));
  }

  void on_header(beast::error_code ec, std::size_t) {
    if (ec) return fail(ec);
    if (parser_->is_done()) return on_read({}, 0);
    auto& m = parser_->get();
    auto expect = m[http::field::expect];
    if (expect.size() == 12 && to_lower(expect) == "100-continue") {
      static const std::string kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
      net::async_write(socket_, net::buffer(kContinue),
                       [self = shared_from_this()](beast::error_code ec, std::size_t) {
                         if (ec) return;
                         http::async_read(self->socket_, self->buffer_, *self->parser_,
                                          beast::bind_front_handler(&Session::on_read, self));
                       });
      return;
    }
    http::async_read(socket_, buffer_, *parser_, beast::bind_front_handler(&Session::on_read, shared_from_this()));
  }

  void fail(beast::error_code ec) {
    if (!is_parse_error(ec)) return;  // the peer went away: nothing to answer
    std::string reason = ec == http::error::body_limit ? "request body exceeds max_body_bytes" : ec.message();
    reply_ = router_.bad_request("malformed HTTP request: " + reason);
    if (ec == http::error::body_limit) reply_.status = 413;
    router_.stats().request(reply_.endpoint, reply_.status, unix_now());
    keep_alive_ = false;
    version_ = 11;
    head_only_ = false;
    send();
  }

  void on_read(beast::error_code ec, std::size_t) {
    if (ec) return fail(ec);
    auto& m = parser_->get();
    Request req;
    req.arrival = unix_now();
    req.method = std::string(m.method_string());
    req.target = std::string(m.target());
    std::string_view target = req.target;
    auto q = target.find('?');
    req.path = percent_decode(target.substr(0, q), false);
    if (q != std::string_view::npos) req.query = parse_query(target.substr(q + 1));
    req.headers.reserve(8);
    for (const auto& f : m) req.headers.emplace_back(to_lower(f.name_string()), std::string(f.value()));
    req.body = std::move(m.body());
    req.version = m.version() == 10 ? 10 : 11;
    req.keep_alive = m.keep_alive();
    beast::error_code pec;
    auto remote = socket_.remote_endpoint(pec);
    if (!pec) req.peer = remote.address().to_string() + ":" + std::to_string(remote.port());

    reply_ = router_.handle(req);
    router_.stats().request(reply_.endpoint, reply_.status, req.arrival, reply_.credential, reply_.tenant);
    keep_alive_ = req.keep_alive && !reply_.close;
    version_ = req.version;
    head_only_ = req.method == "HEAD";
    if (reply_.delay_ms > 0) {
      timer_.expires_after(std::chrono::milliseconds(reply_.delay_ms));
      timer_.async_wait([self = shared_from_this()](beast::error_code ec) {
        if (!ec) self->send();
      });
      return;
    }
    send();
  }

  void send() {
    switch (reply_.kind) {
      case Reply::Kind::stall: return drain();
      case Reply::Kind::reset: {
        beast::error_code ec;
        socket_.set_option(net::socket_base::linger(true, 0), ec);
        socket_.close(ec);
        return;
      }
      case Reply::Kind::truncated:
        keep_alive_ = false;
        out_ = serialize_head(reply_, reply_.declared_length, false, version_) + reply_.body;
        return write_out();
      case Reply::Kind::stream:
        out_ = serialize_head(reply_, reply_.stream_length, keep_alive_, version_);
        remaining_ = head_only_ ? 0 : reply_.stream_length;
        net::async_write(socket_, net::buffer(out_),
                         beast::bind_front_handler(&Session::on_stream, shared_from_this()));
        return;
      case Reply::Kind::normal:
        if (reply_.wire) {
          net::async_write(socket_, net::buffer(*reply_.wire),
                           beast::bind_front_handler(&Session::on_written, shared_from_this()));
          return;
        }
        // Head and body go out as two buffers: no copy of the body.
        out_ = serialize_head(reply_, reply_.body.size(), keep_alive_, version_);
        if (head_only_) return write_out();
        {
          std::array<net::const_buffer, 2> parts{net::buffer(out_), net::buffer(reply_.body)};
          net::async_write(socket_, parts, beast::bind_front_handler(&Session::on_written, shared_from_this()));
        }
        return;
    }
  }

  void write_out() {
    net::async_write(socket_, net::buffer(out_), beast::bind_front_handler(&Session::on_written, shared_from_this()));
  }

  void on_stream(beast::error_code ec, std::size_t) {
    if (ec) return;
    if (remaining_ == 0) return on_written({}, 0);
    const std::string& block = pattern_block();
    std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(remaining_, block.size()));
    remaining_ -= n;
    net::async_write(socket_, net::buffer(block.data(), n),
                     beast::bind_front_handler(&Session::on_stream, shared_from_this()));
  }

  void on_written(beast::error_code ec, std::size_t) {
    if (ec) return;
    if (!keep_alive_) {
      socket_.shutdown(tcp::socket::shutdown_send, ec);
      // Read until the peer closes so the close is graceful (no RST on unread data).
      return drain();
    }
    out_.clear();
    reply_ = Reply{};
    do_read();
  }

  // Reads and discards until the peer closes or the server stops.
  void drain() {
    socket_.async_read_some(net::buffer(sink_), [self = shared_from_this()](beast::error_code ec, std::size_t) {
      if (!ec) self->drain();
    });
  }

  tcp::socket socket_;
  net::steady_timer timer_;
  Router& router_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  Reply reply_;
  std::string out_;
  std::uint64_t remaining_ = 0;
  bool keep_alive_ = true;
  bool head_only_ = false;
  int version_ = 11;
  char sink_[4096];
};

// One webhook delivery attempt: connect, POST, read the status; retries are scheduled by the
// caller with exponential backoff.
class WebhookCall : public std::enable_shared_from_this<WebhookCall> {
 public:
  using Done = std::function<void(bool ok, WebhookDelivery delivery)>;
  WebhookCall(net::io_context& ioc, WebhookDelivery d, Done done)
      : stream_(net::make_strand(ioc)), delivery_(std::move(d)), done_(std::move(done)) {}

  void start() {
    boost::system::error_code ec;
    auto address = net::ip::make_address(delivery_.host, ec);
    if (ec) return finish(false);
    out_ = "POST " + delivery_.path + " HTTP/1.1\r\nHost: " + delivery_.host + ":" + std::to_string(delivery_.port) +
           "\r\nUser-Agent: isthmus-sandbox-webhooks\r\nConnection: close\r\n";
    for (const auto& [k, v] : delivery_.headers) out_ += k + ": " + v + "\r\n";
    out_ += "Content-Length: " + std::to_string(delivery_.body.size()) + "\r\n\r\n" + delivery_.body;
    stream_.expires_after(std::chrono::seconds(5));
    stream_.async_connect(tcp::endpoint(address, delivery_.port), [self = shared_from_this()](beast::error_code ec) {
      if (ec) return self->finish(false);
      net::async_write(self->stream_, net::buffer(self->out_), [self](beast::error_code ec, std::size_t) {
        if (ec) return self->finish(false);
        self->parser_.emplace();
        self->parser_->skip(false);
        http::async_read(self->stream_, self->buffer_, *self->parser_, [self](beast::error_code ec, std::size_t) {
          if (ec) return self->finish(false);
          auto status = self->parser_->get().result_int();
          self->finish(status >= 200 && status < 300);
        });
      });
    });
  }

 private:
  void finish(bool ok) {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    if (done_) done_(ok, std::move(delivery_));
    done_ = nullptr;
  }

  beast::tcp_stream stream_;
  WebhookDelivery delivery_;
  Done done_;
  std::string out_;
  beast::flat_buffer buffer_;
  std::optional<http::response_parser<http::string_body>> parser_;
};

}  // namespace

class Server::Impl {
 public:
  explicit Impl(Options o) : options(std::move(o)) {}

  void start() {
    std::lock_guard lock(mutex);
    if (started) throw Error(errc::invalid_argument, "sandbox server already started");
    if (options.threads < 1 || options.threads > 256)
      throw Error(errc::invalid_argument, "sandbox option threads=" + std::to_string(options.threads) +
                                              " is invalid: expected an integer from 1 to 256");
    router = std::make_unique<Router>(parse_config(options.config_json));
    boost::system::error_code ec;
    auto address = net::ip::make_address(options.host, ec);
    if (ec)
      throw Error(errc::invalid_argument,
                  "sandbox option host=\"" + options.host + "\" is invalid: expected an IP address such as 127.0.0.1");
    ioc = std::make_unique<net::io_context>(options.threads);
    acceptor.emplace(net::make_strand(*ioc));
    tcp::endpoint endpoint(address, options.port);
    acceptor->open(endpoint.protocol(), ec);
    if (!ec) acceptor->set_option(net::socket_base::reuse_address(true), ec);
    if (!ec) acceptor->bind(endpoint, ec);
    if (!ec) acceptor->listen(net::socket_base::max_listen_connections, ec);
    if (ec) {
      acceptor.reset();
      ioc.reset();
      router.reset();
      throw Error(errc::invalid_argument, "sandbox cannot listen on " + options.host + ":" +
                                              std::to_string(options.port) + ": " + ec.message());
    }
    bound_port = acceptor->local_endpoint().port();
    ticker.emplace(*ioc);
    router->set_webhook_sender([this](WebhookDelivery d) {
      net::post(*ioc, [this, d = std::move(d)]() mutable { send_webhook(std::move(d)); });
    });
    do_accept();
    schedule_tick();
    started = true;
    for (int i = 0; i < options.threads; ++i) threads.emplace_back([this] { ioc->run(); });
  }

  void stop() {
    std::lock_guard lock(mutex);
    if (!started || stopped) return;
    stopped = true;
    ioc->stop();
    for (auto& t : threads) t.join();
    threads.clear();
    ticker.reset();
    acceptor.reset();
    // Destroying the io_context destroys the pending handlers and with them every session.
    ioc.reset();
  }

  void do_accept() {
    acceptor->async_accept(net::make_strand(*ioc), [this](beast::error_code ec, tcp::socket socket) {
      if (ec == net::error::operation_aborted) return;
      if (!ec) {
        socket.set_option(tcp::no_delay(true), ec);
        std::make_shared<Session>(std::move(socket), *router)->start();
      }
      do_accept();
    });
  }

  void send_webhook(WebhookDelivery d) {
    auto call = std::make_shared<WebhookCall>(*ioc, std::move(d), [this](bool ok, WebhookDelivery d) {
      if (ok) return router->stats().webhook("delivered");
      router->stats().webhook("failed_attempts");
      if (static_cast<std::uint64_t>(d.attempt) >= router->config().webhook_max_attempts)
        return router->stats().webhook("gave_up");
      auto delay = router->config().webhook_backoff * std::pow(2.0, d.attempt - 1);
      ++d.attempt;
      auto timer = std::make_shared<net::steady_timer>(*ioc, std::chrono::milliseconds(static_cast<std::int64_t>(delay * 1000)));
      timer->async_wait([this, timer, d = std::move(d)](beast::error_code ec) mutable {
        if (!ec) send_webhook(std::move(d));
      });
    });
    call->start();
  }

  void schedule_tick() {
    ticker->expires_after(std::chrono::seconds(1));
    ticker->async_wait([this](beast::error_code ec) {
      if (ec) return;
      router->tick(unix_now());
      schedule_tick();
    });
  }

  Router& running_router();

  Options options;
  std::mutex mutex;
  bool started = false;
  bool stopped = false;
  std::uint16_t bound_port = 0;
  std::unique_ptr<Router> router;  // outlives the io_context: sessions report to its stats
  std::unique_ptr<net::io_context> ioc;
  std::optional<tcp::acceptor> acceptor;
  std::optional<net::steady_timer> ticker;
  std::vector<std::thread> threads;
};

Server::Server(Options options) : impl_(std::make_unique<Impl>(std::move(options))) {}
Server::~Server() { stop(); }
void Server::start() { impl_->start(); }
void Server::stop() { impl_->stop(); }
std::uint16_t Server::port() const { return impl_->bound_port; }
std::string Server::url() const { return "http://" + impl_->options.host + ":" + std::to_string(impl_->bound_port); }
std::string Server::stats_json() const {
  return impl_->router ? impl_->router->stats().json() : std::string(Stats().json());
}
void Server::reset_stats() {
  if (impl_->router) impl_->router->stats().reset();
}

std::string Server::tenants_json() const {
  const Config config = parse_config(impl_->options.config_json);
  nlohmann::json out = nlohmann::json::array();
  if (!config.tenants) return out.dump();
  const auto tenants = tenant_list(config);
  for (std::size_t i = 0; i < tenants.size(); ++i) {
    const Tenant& t = tenants[i];
    out.push_back({{"tenant", i}, {"client_id", t.client_id}, {"client_secret", t.client_secret},
                   {"api_key", t.api_key}, {"username", t.username}, {"password", t.password},
                   {"bearer_token", t.bearer_token}, {"records", t.records}});
  }
  return out.dump();
}

Router& Server::Impl::running_router() {
  if (!router) throw Error(errc::invalid_argument, "the sandbox is not started: call start() first");
  return *router;
}

std::uint64_t Server::revoke_tokens(std::size_t tenant) { return impl_->running_router().revoke_tokens(tenant); }

std::uint64_t Server::set_access(std::size_t tenant, bool allowed) {
  return impl_->running_router().set_access(tenant, allowed);
}

}  // namespace isthmus::sandbox
