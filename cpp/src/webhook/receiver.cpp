// The receiver's network side and its queue writer. Sessions (one per connection, on a strand)
// read a request, ask webhook/request.hpp what it is, and hand accepted events to the Intake,
// which dedupes them and groups them into puts on its writer thread; the answer is posted back
// to the session once the put completed.
#include <utility>  // Boost 1.74 + GCC 12 in C++20: before any Asio header

// Beast 1.74's parser trips a false -Wmaybe-uninitialized in GCC 12.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "isthmus/webhook/receiver.hpp"

#include <boost/asio/dispatch.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/bind_handler.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/string.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <limits>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>

#include "isthmus/error.hpp"

namespace isthmus::webhook {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;
using tcp = net::ip::tcp;

namespace {

constexpr std::chrono::seconds kReadTimeout{30};
constexpr std::chrono::seconds kDrainTimeout{2};
// Puts in flight at once: LocalQueue completes each before the next starts anyway; a broker's
// confirms take a round trip, which a second and third put overlap.
constexpr int kMaxPutsInFlight = 4;

double system_now() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

enum class Answer { accepted, duplicate, queue_full, queue_error, stopping };

struct Counters {
  std::atomic<std::uint64_t> requests{0}, accepted{0}, duplicates{0}, bad_signature{0}, stale{0},
      unknown_route{0}, method_not_allowed{0}, too_large{0}, bad_json{0}, bad_headers{0}, queue_full{0},
      queue_errors{0}, puts{0};
  std::vector<std::atomic<std::uint64_t>> by_route;

  explicit Counters(std::size_t routes) : by_route(routes) {}

  void rejected(Outcome o) {
    switch (o) {
      case Outcome::unknown_route: ++unknown_route; break;
      case Outcome::method_not_allowed: ++method_not_allowed; break;
      case Outcome::too_large: ++too_large; break;
      case Outcome::bad_headers: ++bad_headers; break;
      case Outcome::bad_signature: ++bad_signature; break;
      case Outcome::stale: ++stale; break;
      case Outcome::bad_json: ++bad_json; break;
      case Outcome::ok: break;
    }
  }
};

using Reply = std::function<void(Answer)>;

// Deduplication and group commit. Every accepted id is remembered per route (bounded by count
// and by the replay window); an id being written collects the copies that arrive meanwhile.
class Intake {
 public:
  Intake(const ReceiverOptions& o, Counters& c) : options_(o), counters_(c), routes_(o.routes.size()) {}

  void start() { writer_ = std::thread([this] { run(); }); }

  // Writes what was handed in already, waits for the puts in flight, ends the writer.
  void stop() {
    {
      std::lock_guard lock(m_);
      stopping_ = true;
    }
    cv_.notify_all();
    if (writer_.joinable()) writer_.join();
  }

  void submit(std::size_t route, std::string id, std::string message, Reply reply) {
    std::unique_lock lock(m_);
    const double now = clock();
    RouteIds& ids = routes_[route];
    forget_old(route, now);
    if (auto it = ids.entries.find(id); it != ids.entries.end()) {
      if (it->second.pending) {
        it->second.waiters.push_back(std::move(reply));
        return;
      }
      lock.unlock();
      ++counters_.duplicates;
      return reply(Answer::duplicate);
    }
    if (stopping_) {
      lock.unlock();
      return reply(Answer::stopping);
    }
    if (depth_locked() >= options_.max_depth) {
      lock.unlock();
      ++counters_.queue_full;
      return reply(Answer::queue_full);
    }
    Entry& e = ids.entries[id];
    e.pending = true;
    batch_.push_back({route, std::move(id), std::move(message), std::move(reply)});
    lock.unlock();
    cv_.notify_one();
  }

  std::int64_t depth() const {
    std::lock_guard lock(m_);
    return depth_locked();
  }

 private:
  struct Entry {
    bool pending = false;
    std::vector<Reply> waiters;  // copies that arrived while the first was being written
  };
  struct RouteIds {
    std::unordered_map<std::string, Entry> entries;
    std::deque<std::pair<double, std::string>> accepted;  // oldest first, for forgetting
  };
  struct Pending {
    std::size_t route;
    std::string id;
    std::string message;
    Reply reply;
  };

  double clock() const { return options_.clock ? options_.clock() : system_now(); }

  std::int64_t depth_locked() const {
    return depth_base_ + put_since_refresh_ + static_cast<std::int64_t>(batch_.size()) + writing_;
  }

  void forget_old(std::size_t route, double now) {
    RouteIds& ids = routes_[route];
    const double window = options_.routes[route].tolerance;
    while (!ids.accepted.empty() &&
           (ids.accepted.size() > options_.dedupe_ids || (window > 0 && now - ids.accepted.front().first > window))) {
      ids.entries.erase(ids.accepted.front().second);
      ids.accepted.pop_front();
    }
  }

  void run() {
    std::unique_lock lock(m_);
    auto last_refresh = std::chrono::steady_clock::now() - std::chrono::hours(1);
    for (;;) {
      const auto now = std::chrono::steady_clock::now();
      // The depth is our own puts plus, now and then, what the queue says (a consumer drains it).
      const bool active = put_since_refresh_ > 0 || depth_locked() >= options_.max_depth;
      const auto period = active ? std::chrono::seconds(1) : std::chrono::seconds(10);
      if (!refreshing_ && now - last_refresh >= period) {
        last_refresh = now;
        refreshing_ = true;
        lock.unlock();
        options_.queue->async_stats([this](queue::Status s, queue::Stats st) {
          std::lock_guard l(m_);
          refreshing_ = false;
          if (s) {
            depth_base_ = st.ready;
            put_since_refresh_ = 0;
          }
          cv_.notify_all();
        });
        lock.lock();
        continue;
      }
      cv_.wait_until(lock, last_refresh + period, [&] {
        return (!batch_.empty() && in_flight_ < kMaxPutsInFlight) ||
               (stopping_ && batch_.empty() && in_flight_ == 0 && !refreshing_);
      });
      if (batch_.empty()) {
        if (stopping_ && in_flight_ == 0 && !refreshing_) return;
        continue;
      }
      if (in_flight_ >= kMaxPutsInFlight) continue;
      auto taken = std::make_shared<std::vector<Pending>>();
      const std::size_t n = std::min(batch_.size(), options_.max_batch);
      taken->reserve(n);
      for (std::size_t i = 0; i < n; ++i) {
        taken->push_back(std::move(batch_.front()));
        batch_.pop_front();
      }
      ++in_flight_;
      writing_ += static_cast<std::int64_t>(n);
      lock.unlock();
      std::vector<queue::Item> items;
      items.reserve(n);
      for (auto& p : *taken) items.push_back({std::move(p.message), true});
      ++counters_.puts;
      options_.queue->async_put(std::move(items),
                                [this, taken](queue::Status s, std::size_t) { written(*taken, s); });
      lock.lock();
    }
  }

  // On the writer thread (LocalQueue) or the queue's own thread (a broker's confirms).
  void written(std::vector<Pending>& done, const queue::Status& status) {
    std::vector<std::pair<Reply, Answer>> replies;
    replies.reserve(done.size());
    {
      std::lock_guard lock(m_);
      const double now = clock();
      const bool ok = static_cast<bool>(status);
      for (auto& p : done) {
        RouteIds& ids = routes_[p.route];
        auto it = ids.entries.find(p.id);
        std::vector<Reply> waiters;
        if (it != ids.entries.end()) waiters = std::move(it->second.waiters);
        if (ok) {
          if (it != ids.entries.end()) it->second.pending = false;
          ids.accepted.emplace_back(now, p.id);
          ++counters_.accepted;
          ++counters_.by_route[p.route];
          replies.emplace_back(std::move(p.reply), Answer::accepted);
          for (auto& w : waiters) {
            ++counters_.duplicates;
            replies.emplace_back(std::move(w), Answer::duplicate);
          }
        } else {
          // Not acknowledged: forget the id so the sender's retry is written afresh.
          if (it != ids.entries.end()) ids.entries.erase(it);
          ++counters_.queue_errors;
          replies.emplace_back(std::move(p.reply), Answer::queue_error);
          for (auto& w : waiters) {
            ++counters_.queue_errors;
            replies.emplace_back(std::move(w), Answer::queue_error);
          }
        }
      }
      if (ok) put_since_refresh_ += static_cast<std::int64_t>(done.size());
      writing_ -= static_cast<std::int64_t>(done.size());
      --in_flight_;
    }
    cv_.notify_all();
    for (auto& [reply, answer] : replies) reply(answer);
  }

  const ReceiverOptions& options_;
  Counters& counters_;
  mutable std::mutex m_;
  std::condition_variable cv_;
  std::vector<RouteIds> routes_;
  std::deque<Pending> batch_;
  int in_flight_ = 0;
  std::int64_t writing_ = 0;
  std::int64_t depth_base_ = 0;
  std::int64_t put_since_refresh_ = 0;
  bool refreshing_ = false;
  bool stopping_ = false;
  std::thread writer_;
};

struct Shared {
  const ReceiverOptions& options;
  Counters& counters;
  Intake& intake;
};

const char* reason(int status) {
  switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Payload Too Large";
    case 503: return "Service Unavailable";
    default: return "Error";
  }
}

bool is_parse_error(const beast::error_code& ec) {
  return &ec.category() == &bhttp::make_error_code(bhttp::error::bad_target).category() &&
         ec != bhttp::error::end_of_stream && ec != bhttp::error::partial_message;
}

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, Shared shared) : stream_(std::move(socket)), s_(shared) {}

  void start() {
    net::dispatch(stream_.get_executor(), beast::bind_front_handler(&Session::do_read, shared_from_this()));
  }

 private:
  void do_read() {
    parser_.emplace();
    parser_->header_limit(16 * 1024);
    // The declared length is checked against max_body_bytes after the route (check_head);
    // a chunked body is held to it while it is read.
    parser_->body_limit(std::numeric_limits<std::uint64_t>::max());
    stream_.expires_after(kReadTimeout);
    bhttp::async_read_header(stream_, buffer_, *parser_,
                             beast::bind_front_handler(&Session::on_header, shared_from_this()));
  }

  void on_header(beast::error_code ec, std::size_t) {
    if (ec) return fail(ec);
    auto& m = parser_->get();
    keep_alive_ = m.keep_alive();
    std::optional<std::uint64_t> length;
    if (auto declared = parser_->content_length()) length = *declared;
    Verdict head = check_head(s_.options.routes, m.method_string(), m.target(), length, s_.options.max_body_bytes);
    if (!head.ok()) {
      // The body is left unread: answer and close.
      keep_alive_ = false;
      return reject(head);
    }
    route_ = head.route;
    parser_->body_limit(s_.options.max_body_bytes);
    if (parser_->is_done()) return on_read({}, 0);
    auto expect = m[bhttp::field::expect];
    if (expect.size() == 12 && beast::iequals(expect, "100-continue")) {
      static const std::string kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
      net::async_write(stream_, net::buffer(kContinue), [self = shared_from_this()](beast::error_code ec, std::size_t) {
        if (ec) return;
        bhttp::async_read(self->stream_, self->buffer_, *self->parser_,
                          beast::bind_front_handler(&Session::on_read, self));
      });
      return;
    }
    bhttp::async_read(stream_, buffer_, *parser_, beast::bind_front_handler(&Session::on_read, shared_from_this()));
  }

  void fail(beast::error_code ec) {
    if (!is_parse_error(ec)) return;  // the peer went away or timed out: nothing to answer
    keep_alive_ = false;
    if (ec == bhttp::error::body_limit) {
      Verdict v;
      v.outcome = Outcome::too_large;
      v.check = "size";
      v.message = "the body exceeds " + std::to_string(s_.options.max_body_bytes) + " bytes";
      return reject(v);
    }
    ++s_.counters.requests;
    ++s_.counters.bad_headers;
    respond(400, error_body("http", "malformed HTTP request"));
  }

  void on_read(beast::error_code ec, std::size_t) {
    if (ec) return fail(ec);
    auto& m = parser_->get();
    http::Headers headers;
    headers.reserve(12);
    for (const auto& f : m) headers.emplace_back(std::string(f.name_string()), std::string(f.value()));
    const double now = s_.options.clock ? s_.options.clock() : system_now();
    const Route& route = s_.options.routes[route_];
    Verdict v = check_body(route, route_, headers, m.body(), now);
    if (!v.ok()) return reject(v);
    ++s_.counters.requests;
    std::string message = event_message(route, v, now, m.body());
    s_.intake.submit(route_, std::move(v.event_id), std::move(message), [self = shared_from_this()](Answer a) {
      net::post(self->stream_.get_executor(), [self, a] { self->on_answer(a); });
    });
  }

  void on_answer(Answer a) {
    switch (a) {
      case Answer::accepted: return respond(200, "{\"accepted\": true}");
      case Answer::duplicate: return respond(200, "{\"duplicate\": true}");
      case Answer::queue_full:
        return respond(503, error_body("queue_full", "the queue is full; retry later"), true);
      case Answer::queue_error:
        return respond(503, error_body("queue", "the event could not be written; retry later"), true);
      case Answer::stopping:
        keep_alive_ = false;
        return respond(503, error_body("stopping", "the receiver is stopping; retry later"), true);
    }
  }

  void reject(const Verdict& v) {
    ++s_.counters.requests;
    s_.counters.rejected(v.outcome);
    respond(outcome_status(v.outcome), error_body(v.check, v.message));
  }

  void respond(int status, const std::string& body, bool retry_after = false) {
    out_ = "HTTP/1.1 " + std::to_string(status) + " " + reason(status) +
           "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
    if (retry_after) out_ += "Retry-After: " + std::to_string(s_.options.retry_after_seconds) + "\r\n";
    if (!keep_alive_) out_ += "Connection: close\r\n";
    out_ += "\r\n";
    out_ += body;
    stream_.expires_after(kReadTimeout);
    net::async_write(stream_, net::buffer(out_), beast::bind_front_handler(&Session::on_written, shared_from_this()));
  }

  void on_written(beast::error_code ec, std::size_t) {
    if (ec) return;
    if (!keep_alive_) {
      stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
      // Discard what the peer still sends for a moment, so the close is not a reset that
      // destroys the answer before the peer read it; then close.
      stream_.expires_after(kDrainTimeout);
      return drain();
    }
    do_read();
  }

  void drain() {
    stream_.async_read_some(net::buffer(sink_), [self = shared_from_this()](beast::error_code ec, std::size_t) {
      if (!ec) self->drain();
    });
  }

  beast::tcp_stream stream_;
  Shared s_;
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  std::size_t route_ = 0;
  bool keep_alive_ = true;
  std::string out_;
  char sink_[8192];
};

}  // namespace

class Receiver::Impl {
 public:
  explicit Impl(ReceiverOptions o) : options(std::move(o)), counters(options.routes.size()), intake(options, counters) {
    validate_routes(options.routes);
    if (!options.queue) throw Error(errc::invalid_argument, "queue: missing; expected a queue to write events to");
    if (options.threads < 1 || options.threads > 64)
      throw Error(errc::invalid_argument, "threads: " + std::to_string(options.threads) +
                                              " is not valid; expected an integer from 1 to 64");
    if (options.max_body_bytes < 1 || options.max_body_bytes > (std::size_t{1} << 30))
      throw Error(errc::invalid_argument, "max_body_bytes: " + std::to_string(options.max_body_bytes) +
                                              " is not valid; expected from 1 to 1073741824");
    if (options.max_depth < 1)
      throw Error(errc::invalid_argument, "max_depth: " + std::to_string(options.max_depth) +
                                              " is not valid; expected an integer >= 1");
    if (options.dedupe_ids < 1)
      throw Error(errc::invalid_argument, "dedupe_ids: 0 is not valid; expected an integer >= 1");
    if (options.max_batch < 1) options.max_batch = 1;
  }

  void start() {
    std::lock_guard lock(mutex);
    if (started) throw Error(errc::invalid_argument, "the webhook receiver is already started");
    boost::system::error_code ec;
    auto address = net::ip::make_address(options.host, ec);
    if (ec)
      throw Error(errc::invalid_argument, "host: '" + printable(options.host) +
                                              "' is not valid; expected an IP address such as 127.0.0.1");
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
      throw Error(errc::invalid_argument, "the webhook receiver cannot listen on " + options.host + ":" +
                                              std::to_string(options.port) + ": " + ec.message());
    }
    bound_port = acceptor->local_endpoint().port();
    intake.start();
    do_accept();
    started = true;
    for (int i = 0; i < options.threads; ++i) threads.emplace_back([this] { ioc->run(); });
  }

  void stop() {
    std::lock_guard lock(mutex);
    if (!started || stopped) return;
    stopped = true;
    net::post(acceptor->get_executor(), [this] {
      beast::error_code ec;
      acceptor->close(ec);
    });
    // Events handed in are written and answered while the sessions still run.
    intake.stop();
    ioc->stop();
    for (auto& t : threads) t.join();
    threads.clear();
    acceptor.reset();
    ioc.reset();  // destroys the pending handlers and with them every session
  }

  void do_accept() {
    acceptor->async_accept(net::make_strand(*ioc), [this](beast::error_code ec, tcp::socket socket) {
      if (ec == net::error::operation_aborted || !acceptor->is_open()) return;
      if (!ec) {
        socket.set_option(tcp::no_delay(true), ec);
        std::make_shared<Session>(std::move(socket), Shared{options, counters, intake})->start();
      }
      do_accept();
    });
  }

  ReceiverOptions options;
  Counters counters;
  Intake intake;
  std::mutex mutex;
  bool started = false;
  bool stopped = false;
  std::uint16_t bound_port = 0;
  std::unique_ptr<net::io_context> ioc;
  std::optional<tcp::acceptor> acceptor;
  std::vector<std::thread> threads;
};

Receiver::Receiver(ReceiverOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}
Receiver::~Receiver() { stop(); }
void Receiver::start() { impl_->start(); }
void Receiver::stop() { impl_->stop(); }
std::uint16_t Receiver::port() const { return impl_->bound_port; }
std::string Receiver::url() const { return "http://" + impl_->options.host + ":" + std::to_string(impl_->bound_port); }

ReceiverStats Receiver::stats() const {
  const Counters& c = impl_->counters;
  ReceiverStats s;
  s.requests = c.requests;
  s.accepted = c.accepted;
  s.duplicates = c.duplicates;
  s.bad_signature = c.bad_signature;
  s.stale = c.stale;
  s.unknown_route = c.unknown_route;
  s.method_not_allowed = c.method_not_allowed;
  s.too_large = c.too_large;
  s.bad_json = c.bad_json;
  s.bad_headers = c.bad_headers;
  s.queue_full = c.queue_full;
  s.queue_errors = c.queue_errors;
  s.puts = c.puts;
  s.depth = impl_->intake.depth();
  for (std::size_t i = 0; i < impl_->options.routes.size(); ++i)
    s.accepted_by_route[impl_->options.routes[i].path] = c.by_route[i];
  return s;
}

}  // namespace isthmus::webhook
