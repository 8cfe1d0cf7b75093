#include "isthmus/queue/amqp_queue.hpp"

#include <amqp.h>
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <openssl/ssl.h>
#include <poll.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <utility>

#include "isthmus/auth/crypto.hpp"
#include "isthmus/error.hpp"
#include "isthmus/http/url.hpp"

namespace isthmus::queue {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// One channel in confirm mode carries the work: publishes, basic.get, acks. Reading the dead
// letters holds them unacked until it returns them all at once (nack multiple), so it has its
// own channel: a multiple nack on the work channel would return the leases' messages too.
constexpr amqp_channel_t kWork = 1;
constexpr amqp_channel_t kPeek = 2;

// Headers the client writes. The broker's own count (x-delivery-count) restarts whenever the
// client republishes a message (nack with a delay, a lease that expired), so the deliveries
// before the republish travel with it.
constexpr const char* kId = "x-isthmus-id";
constexpr const char* kEnqueuedAt = "x-isthmus-enqueued-at";
constexpr const char* kPrior = "x-isthmus-deliveries";
constexpr const char* kDeadAt = "x-isthmus-dead-at";
constexpr const char* kReason = "x-isthmus-reason";
constexpr const char* kText = "text/plain; charset=utf-8";
constexpr const char* kBinary = "application/octet-stream";

const std::vector<milliseconds> kDelays = {milliseconds(1000), milliseconds(10000), milliseconds(60000),
                                           milliseconds(300000)};

constexpr milliseconds kFirstBackoff{100};
constexpr milliseconds kMaxBackoff{5000};
// While idle, the I/O thread looks this often for a broker that closed the connection.
constexpr milliseconds kIdlePoll{200};

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

timeval to_timeval(milliseconds ms) {
  if (ms.count() < 0) ms = milliseconds(0);
  timeval tv;
  tv.tv_sec = static_cast<time_t>(ms.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((ms.count() % 1000) * 1000);
  return tv;
}

std::string text_of(amqp_bytes_t b) { return std::string(static_cast<const char*>(b.bytes), b.len); }

amqp_bytes_t bytes_of(const std::string& s) {
  amqp_bytes_t b;
  b.len = s.size();
  b.bytes = const_cast<char*>(s.data());
  return b;
}

std::string delay_queue(const std::string& name, milliseconds step) {
  return name + ".delay." + std::to_string(step.count() / 1000) + "s";
}

// An AMQP field table whose strings live as long as it does.
class Table {
 public:
  Table& text(const char* key, std::string value) {
    auto& e = add(key);
    e.value.kind = AMQP_FIELD_KIND_UTF8;
    e.value.value.bytes = bytes_of(keep(std::move(value)));
    return *this;
  }
  Table& integer(const char* key, std::int64_t value) {
    auto& e = add(key);
    e.value.kind = AMQP_FIELD_KIND_I64;
    e.value.value.i64 = value;
    return *this;
  }
  Table& real(const char* key, double value) {
    auto& e = add(key);
    e.value.kind = AMQP_FIELD_KIND_F64;
    e.value.value.f64 = value;
    return *this;
  }
  amqp_table_t get() {
    amqp_table_t t;
    t.num_entries = static_cast<int>(entries_.size());
    t.entries = entries_.empty() ? nullptr : entries_.data();
    return t;
  }

 private:
  amqp_table_entry_t& add(const char* key) {
    entries_.emplace_back();
    entries_.back().key = bytes_of(keep(key));
    return entries_.back();
  }
  const std::string& keep(std::string s) {
    strings_.push_back(std::move(s));
    return strings_.back();
  }
  std::deque<std::string> strings_;  // a deque never moves what it holds
  std::vector<amqp_table_entry_t> entries_;
};

const amqp_field_value_t* find(const amqp_table_t& t, std::string_view key) {
  for (int i = 0; i < t.num_entries; ++i) {
    const auto& k = t.entries[i].key;
    if (std::string_view(static_cast<const char*>(k.bytes), k.len) == key) return &t.entries[i].value;
  }
  return nullptr;
}

std::optional<std::int64_t> as_integer(const amqp_field_value_t* v) {
  if (!v) return std::nullopt;
  switch (v->kind) {
    case AMQP_FIELD_KIND_I8: return v->value.i8;
    case AMQP_FIELD_KIND_U8: return v->value.u8;
    case AMQP_FIELD_KIND_I16: return v->value.i16;
    case AMQP_FIELD_KIND_U16: return v->value.u16;
    case AMQP_FIELD_KIND_I32: return v->value.i32;
    case AMQP_FIELD_KIND_U32: return v->value.u32;
    case AMQP_FIELD_KIND_I64: return v->value.i64;
    case AMQP_FIELD_KIND_U64:
    case AMQP_FIELD_KIND_TIMESTAMP: return static_cast<std::int64_t>(v->value.u64);
    default: return std::nullopt;
  }
}

std::optional<double> as_real(const amqp_field_value_t* v) {
  if (v && v->kind == AMQP_FIELD_KIND_F64) return v->value.f64;
  if (v && v->kind == AMQP_FIELD_KIND_F32) return v->value.f32;
  if (auto i = as_integer(v)) return static_cast<double>(*i);
  return std::nullopt;
}

std::optional<std::string> as_text(const amqp_field_value_t* v) {
  if (v && (v->kind == AMQP_FIELD_KIND_UTF8 || v->kind == AMQP_FIELD_KIND_BYTES)) return text_of(v->value.bytes);
  return std::nullopt;
}

// One message as basic.get handed it over, copied out of rabbitmq-c's buffers.
struct Delivery {
  std::uint64_t tag = 0;
  std::uint64_t id = 0;
  std::string body;
  bool text = false;
  int prior = 0;         // deliveries before the client last republished it
  int broker_count = 0;  // x-delivery-count: returns since then
  double enqueued_at = 0;
  std::optional<double> dead_at;
  std::optional<std::string> reason;
  std::string broker_reason;  // x-death's reason, when the broker dead-lettered it
  double broker_dead_at = 0;
};

struct Held {
  Delivery d;
  int deliveries = 0;
};

struct LeaseRecord {
  Clock::time_point expires;
  std::vector<Held> held;
};

// A message the client publishes: a put, a republish or a dead letter.
struct Outgoing {
  std::string routing_key;
  std::uint64_t id = 0;
  const std::string* body = nullptr;
  bool text = false;
  double enqueued_at = 0;
  int prior = 0;
  std::optional<double> dead_at;
  std::string reason;
};

std::uint64_t new_id() {
  std::uint64_t v = 0;
  while (v == 0) {
    const auto r = auth::random_bytes(8);
    std::memcpy(&v, r.data(), 8);
    v >>= 1;  // 63 bits: the header is a signed 64-bit integer
  }
  return v;
}

// Raised only on the I/O thread and turned into a Status at the operation's boundary.
struct Failed {
  errc code;
  std::string message;
  bool connection_lost;
};

}  // namespace

struct AmqpQueue::Impl {
  // Set before the thread starts, read-only afterwards.
  std::string url, redacted, name;
  AmqpQueueOptions options;
  std::string host, user, password, vhost;
  int port = 5672;
  bool tls = false;

  std::mutex m;
  std::condition_variable cv;
  std::deque<std::function<void(bool closed)>> jobs;
  bool stopping = false;
  std::thread thread;

  // Touched by the I/O thread only.
  amqp_connection_state_t conn = nullptr;
  std::uint64_t published = 0;  // publish sequence number of the work channel
  std::map<std::string, LeaseRecord> leases;
  std::size_t held = 0;
  // Consuming: what the broker pushed and no lease took yet (unacked on the broker).
  std::deque<Delivery> inbox;
  std::string consumer_tag;
  bool paused = false;  // consuming, but the consumer is cancelled until the next lease
  milliseconds backoff = kFirstBackoff;
  Clock::time_point next_attempt{};
  std::string last_failure;

  // ---- the I/O thread ---------------------------------------------------------------------

  void post(std::function<void(bool closed)> job) {
    {
      std::lock_guard lock(m);
      if (!stopping) {
        jobs.push_back(std::move(job));
        cv.notify_one();
        return;
      }
    }
    job(true);
  }

  void run() {
    for (;;) {
      std::function<void(bool)> job;
      {
        std::unique_lock lock(m);
        cv.wait_until(lock, next_wakeup(), [&] { return stopping || !jobs.empty(); });
        if (!jobs.empty()) {
          job = std::move(jobs.front());
          jobs.pop_front();
        } else if (stopping) {
          break;
        }
      }
      bool closed;
      {
        std::lock_guard lock(m);
        closed = stopping;
      }
      if (job) job(closed);
      // Closing: no reconnect attempt may hold up close().
      if (!closed) housekeeping();
    }
    drop(true);
  }

  Clock::time_point next_wakeup() const {
    auto t = Clock::now() + kIdlePoll;
    for (const auto& [_, rec] : leases) t = std::min(t, rec.expires);
    return t;
  }

  // Between operations: return expired leases, notice a broker that went away, reconnect.
  void housekeeping() {
    try {
      if (conn) {
        watch_socket();
        if (conn) expire_leases();
      } else if (Clock::now() >= next_attempt) {
        attempt();
      }
    } catch (const Failed&) {
      // Recorded in last_failure; the next operation reports it.
    }
  }

  void watch_socket() {
    while (conn && read_frame(milliseconds(0))) {
    }
  }

  // Reads one frame when one comes within `wait`: a delivery goes to the inbox, a close ends
  // the connection, anything else (a late confirm) is dropped. Whether a frame was read.
  bool read_frame(milliseconds wait) {
    if (wait.count() == 0 && !amqp_frames_enqueued(conn) && !amqp_data_in_buffer(conn)) {
      pollfd p{amqp_get_sockfd(conn), POLLIN, 0};
      if (::poll(&p, 1, 0) <= 0) return false;
    }
    amqp_frame_t frame;
    timeval tv = to_timeval(wait);
    const int rc = amqp_simple_wait_frame_noblock(conn, &frame, &tv);
    if (rc == AMQP_STATUS_TIMEOUT) return false;
    if (rc != AMQP_STATUS_OK) lost("the connection", rc);
    if (frame.frame_type == AMQP_FRAME_METHOD &&
        (frame.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD ||
         frame.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD))
      lost_with(errc::transport_error, "the broker closed the connection: " + close_text(frame.payload.method));
    absorb(frame);
    return true;
  }

  // A basic.deliver of the consumer: its message, read whole, joins the inbox.
  bool absorb(const amqp_frame_t& frame) {
    if (frame.frame_type != AMQP_FRAME_METHOD || frame.payload.method.id != AMQP_BASIC_DELIVER_METHOD) return false;
    Delivery d;
    d.tag = static_cast<amqp_basic_deliver_t*>(frame.payload.method.decoded)->delivery_tag;
    read_delivery(frame.channel, name, d);
    inbox.push_back(std::move(d));
    return true;
  }

  // Consuming: waits up to `wait` for a delivery, returning early when another operation is
  // posted (it should not queue behind an idle wait) or the queue closes.
  void await_delivery(milliseconds wait) {
    const auto deadline = Clock::now() + wait;
    while (conn && inbox.empty()) {
      {
        std::lock_guard lock(m);
        if (stopping || !jobs.empty()) return;
      }
      const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) return;
      read_frame(std::min(left, milliseconds(5)));
    }
  }

  void expire_leases() {
    const auto now = Clock::now();
    for (auto it = leases.begin(); it != leases.end();) {
      if (it->second.expires > now) {
        ++it;
        continue;
      }
      auto rec = std::move(it->second);
      it = leases.erase(it);
      held -= rec.held.size();
      try {
        return_messages(rec.held, milliseconds(0), "the last lease expired");
      } catch (const Failed& f) {
        if (f.connection_lost) throw;  // the broker returns them itself
        hold_for_retry(std::move(rec.held));
        throw;
      }
    }
  }

  // Messages the client failed to return while the connection lives: held by a lease no caller
  // knows, which expires after the back-off and is returned again.
  void hold_for_retry(std::vector<Held> messages) {
    if (messages.empty()) return;
    LeaseRecord rec;
    rec.expires = Clock::now() + backoff;
    held += messages.size();
    rec.held = std::move(messages);
    leases.emplace(auth::hex(auth::random_bytes(16)), std::move(rec));
  }

  // ---- connection ---------------------------------------------------------------------------

  [[noreturn]] void fail(errc code, const std::string& what) { throw Failed{code, redacted + ": " + what, false}; }

  // The connection is unusable: forget it (the broker requeues what it held) and report.
  [[noreturn]] void lost_with(errc code, const std::string& what) {
    drop(false);
    last_failure = redacted + ": " + what;
    throw Failed{code, last_failure, true};
  }

  [[noreturn]] void lost(const std::string& what, int status) {
    const errc code = status == AMQP_STATUS_TIMEOUT ? errc::timeout : errc::transport_error;
    lost_with(code, what + " failed: " + amqp_error_string2(status) +
                        (code == errc::timeout ? "" : " (the connection to the broker was lost)"));
  }

  static std::string close_text(const amqp_method_t& method) {
    if (method.id == AMQP_CONNECTION_CLOSE_METHOD) {
      auto* c = static_cast<amqp_connection_close_t*>(method.decoded);
      return std::to_string(c->reply_code) + " " + printable(text_of(c->reply_text));
    }
    auto* c = static_cast<amqp_channel_close_t*>(method.decoded);
    return std::to_string(c->reply_code) + " " + printable(text_of(c->reply_text));
  }

  static int close_code(const amqp_method_t& method) {
    if (method.id == AMQP_CONNECTION_CLOSE_METHOD)
      return static_cast<amqp_connection_close_t*>(method.decoded)->reply_code;
    return static_cast<amqp_channel_close_t*>(method.decoded)->reply_code;
  }

  // An RPC's reply: anything but success ends the connection (a channel the broker closed
  // would need reopening, and the declarations again: a reconnect does both).
  void check(const amqp_rpc_reply_t& r, const std::string& what, bool connecting = false) {
    if (r.reply_type == AMQP_RESPONSE_NORMAL) return;
    if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION) {
      if (connecting && r.library_error == AMQP_STATUS_CONNECTION_CLOSED)
        lost_with(errc::access_refused, what + ": the broker closed the connection (wrong credentials?)");
      lost(what, r.library_error);
    }
    if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
        (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD || r.reply.id == AMQP_CHANNEL_CLOSE_METHOD)) {
      const int code = close_code(r.reply);
      const std::string text = close_text(r.reply);
      if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
        amqp_connection_close_ok_t ok{};
        amqp_send_method(conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
      }
      // 403 ACCESS_REFUSED, 530 NOT_ALLOWED (a vhost the user may not open); 406
      // PRECONDITION_FAILED (a queue declared before with other arguments), 404 NOT_FOUND.
      const errc e = (code == 403 || code == 530) ? errc::access_refused
                     : (code == 406 || code == 404) ? errc::invalid_argument
                                                    : errc::transport_error;
      lost_with(e, what + ": the broker refused it: " + text);
    }
    lost_with(errc::protocol_error, what + ": unexpected reply from the broker");
  }

  // Opens the connection and declares everything; bounded by connect_timeout as a whole.
  void connect() {
    drop(false);
    const auto deadline = Clock::now() + options.connect_timeout;
    auto left = [&] { return std::chrono::duration_cast<milliseconds>(deadline - Clock::now()); };
    conn = amqp_new_connection();
    if (!conn) fail(errc::internal, "out of memory");
    published = 0;
    amqp_socket_t* socket = tls ? amqp_ssl_socket_new(conn) : amqp_tcp_socket_new(conn);
    if (!socket) lost_with(errc::internal, "cannot create a socket");
    if (tls) {
      amqp_ssl_socket_set_verify_peer(socket, 1);
      amqp_ssl_socket_set_verify_hostname(socket, 1);
      // The system's trust store, as the HTTP client uses.
      SSL_CTX_set_default_verify_paths(static_cast<SSL_CTX*>(amqp_ssl_socket_get_context(socket)));
    }
    timeval tv = to_timeval(left());
    const int rc = amqp_socket_open_noblock(socket, host.c_str(), port, &tv);
    if (rc != AMQP_STATUS_OK) {
      const std::string why = amqp_error_string2(rc);
      if (rc == AMQP_STATUS_HOSTNAME_RESOLUTION_FAILED) lost_with(errc::resolve_failed, "cannot resolve " + host + ": " + why);
      if (rc == AMQP_STATUS_TIMEOUT)
        lost_with(errc::timeout, "no connection within the connect timeout (" +
                                     std::to_string(options.connect_timeout.count()) + " ms)");
      if (rc <= AMQP_STATUS_SSL_ERROR && rc > _AMQP_STATUS_SSL_NEXT_VALUE) lost_with(errc::tls_error, "TLS: " + why);
      lost_with(errc::connect_failed, "cannot connect: " + why);
    }
    tv = to_timeval(left());
    amqp_set_handshake_timeout(conn, &tv);
    amqp_set_rpc_timeout(conn, &tv);
    // Heartbeats off: rabbitmq-c serves them only inside its calls. A broker that goes away
    // closes the socket, which the idle poll notices; a silent peer hits operation_timeout.
    check(amqp_login(conn, vhost.c_str(), 0, AMQP_DEFAULT_FRAME_SIZE, 0, AMQP_SASL_METHOD_PLAIN, user.c_str(),
                     password.c_str()),
          "login as " + printable(user) + " to vhost " + printable(vhost), true);
    amqp_channel_open(conn, kWork);
    check(amqp_get_rpc_reply(conn), "opening a channel");
    amqp_confirm_select(conn, kWork);
    check(amqp_get_rpc_reply(conn), "enabling publisher confirms");
    amqp_channel_open(conn, kPeek);
    check(amqp_get_rpc_reply(conn), "opening a channel");
    declare();
    if (options.consume) {
      amqp_basic_qos(conn, kWork, 0, static_cast<std::uint16_t>(options.prefetch), 0);
      check(amqp_get_rpc_reply(conn), "setting the prefetch window");
      if (!paused) subscribe();
    }
    tv = to_timeval(options.operation_timeout);
    amqp_set_rpc_timeout(conn, &tv);
    backoff = kFirstBackoff;
    last_failure.clear();
  }

  void declare_queue(const std::string& queue, Table args) {
    amqp_queue_declare(conn, kWork, bytes_of(queue), 0, 1, 0, 0, args.get());
    check(amqp_get_rpc_reply(conn), "declaring queue " + queue);
  }

  // Quorum queues are the durable, replicated type. RabbitMQ 3.10 gives them no delivery limit
  // unless one is set; 4.0 sets 20 by default (and 4.3 counts only failed deliveries, where 3.x
  // counted every return, a closed connection's too). An explicit x-delivery-limit makes every
  // version dead-letter at the same count;
  // the client also counts deliveries itself (the x-isthmus-deliveries header plus the broker's
  // x-delivery-count) and dead-letters at max_deliveries, so the broker's limit is a backstop
  // for messages that keep coming back without a client living to count them.
  void declare() {
    const std::string dlx = name + ".dlx", dead = name + ".dead";
    amqp_exchange_declare(conn, kWork, bytes_of(dlx), amqp_cstring_bytes("fanout"), 0, 1, 0, 0, amqp_empty_table);
    check(amqp_get_rpc_reply(conn), "declaring exchange " + dlx);
    // Classic, not quorum: reading the dead letters returns them unacked, which would count as
    // deliveries in a quorum queue, and 4.x's default limit would drop them after 20 reads.
    declare_queue(dead, std::move(Table().text("x-queue-type", "classic")));
    amqp_queue_bind(conn, kWork, bytes_of(dead), bytes_of(dlx), amqp_empty_bytes, amqp_empty_table);
    check(amqp_get_rpc_reply(conn), "binding " + dead + " to " + dlx);
    declare_queue(name, std::move(Table()
                                      .text("x-queue-type", "quorum")
                                      .integer("x-delivery-limit", options.max_deliveries)
                                      .text("x-dead-letter-exchange", dlx)
                                      // Dead-lettering that survives a crash (3.10+) needs
                                      // reject-publish overflow.
                                      .text("x-dead-letter-strategy", "at-least-once")
                                      .text("x-overflow", "reject-publish")));
    // A fixed TTL per queue: messages expire in the order they were parked, at the queue's head.
    for (auto step : kDelays)
      declare_queue(delay_queue(name, step), std::move(Table()
                                                           .text("x-queue-type", "quorum")
                                                           .integer("x-message-ttl", step.count())
                                                           .text("x-dead-letter-exchange", "")
                                                           .text("x-dead-letter-routing-key", name)
                                                           .text("x-dead-letter-strategy", "at-least-once")
                                                           .text("x-overflow", "reject-publish")));
  }

  void subscribe() {
    auto* ok = amqp_basic_consume(conn, kWork, bytes_of(name), amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
    check(amqp_get_rpc_reply(conn), "consuming from queue " + name);
    consumer_tag = ok ? text_of(ok->consumer_tag) : "";
    paused = false;
  }

  // Cancels the consumer and returns what it held unleased: republished with the deliveries it
  // had (an unleased message was not delivered to anyone), then acked. The next lease
  // subscribes again.
  std::size_t do_pause() {
    if (!options.consume || paused) return 0;
    paused = true;
    if (!conn) return 0;  // a reconnect leaves it paused
    amqp_basic_cancel(conn, kWork, bytes_of(consumer_tag));
    check(amqp_get_rpc_reply(conn), "cancelling the consumer of queue " + name);
    watch_socket();  // what the broker pushed before the cancel took effect
    std::vector<Held> back;
    for (auto& d : inbox) {
      const int so_far = d.prior + d.broker_count;
      back.push_back(Held{std::move(d), so_far});
    }
    inbox.clear();
    return_messages(back, milliseconds(0), "its consumer paused");
    return back.size();
  }

  void attempt() {
    try {
      connect();
    } catch (const Failed& f) {
      last_failure = f.message;
      next_attempt = Clock::now() + backoff;
      backoff = std::min(backoff * 2, kMaxBackoff);
      throw;
    }
  }

  // Connected, or one attempt when the back-off allows it within connect_timeout; otherwise the
  // last failure. Operations never retry faster than the back-off.
  void ensure_connected() {
    if (conn) return;
    const auto now = Clock::now();
    if (next_attempt > now) {
      if (next_attempt - now > options.connect_timeout)
        throw Failed{errc::connect_failed, last_failure.empty() ? redacted + ": not connected" : last_failure, true};
      std::unique_lock lock(m);
      cv.wait_until(lock, next_attempt, [&] { return stopping; });
      if (stopping) throw Failed{errc::state_error, redacted + ": queue " + name + " is closed", false};
    }
    attempt();
  }

  void drop(bool polite) {
    if (!conn) return;
    if (polite) {
      timeval tv = to_timeval(milliseconds(1000));
      amqp_set_rpc_timeout(conn, &tv);
      amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
    }
    amqp_destroy_connection(conn);
    conn = nullptr;
    // The broker requeues what the connection held: those leases are gone.
    leases.clear();
    held = 0;
    inbox.clear();
    if (!polite) next_attempt = Clock::now() + backoff;
  }

  // ---- messages -----------------------------------------------------------------------------

  void publish(const Outgoing& o) {
    Table headers;
    headers.integer(kId, static_cast<std::int64_t>(o.id)).real(kEnqueuedAt, o.enqueued_at);
    if (o.prior > 0) headers.integer(kPrior, o.prior);
    if (o.dead_at) headers.real(kDeadAt, *o.dead_at).text(kReason, o.reason);
    amqp_basic_properties_t props{};
    props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_HEADERS_FLAG;
    props.content_type = amqp_cstring_bytes(o.text ? kText : kBinary);
    props.delivery_mode = 2;  // persistent
    props.headers = headers.get();
    // mandatory: a message no queue takes (a deleted queue) comes back instead of vanishing.
    const int rc = amqp_basic_publish(conn, kWork, amqp_empty_bytes, bytes_of(o.routing_key), 1, 0, &props,
                                      bytes_of(*o.body));
    if (rc != AMQP_STATUS_OK) lost("publishing to " + o.routing_key, rc);
    ++published;
  }

  // Waits until the broker confirmed every publish up to `last`; a nack or a returned message
  // fails the operation, a lost connection or the deadline ends the connection.
  void await_confirms(std::uint64_t first, std::uint64_t last, const std::string& what) {
    std::set<std::uint64_t> pending;
    for (auto s = first; s <= last; ++s) pending.insert(s);
    std::string refused;
    const auto deadline = Clock::now() + options.operation_timeout;
    while (!pending.empty()) {
      timeval tv = to_timeval(std::chrono::duration_cast<milliseconds>(deadline - Clock::now()));
      amqp_frame_t frame;
      const int rc = amqp_simple_wait_frame_noblock(conn, &frame, &tv);
      if (rc == AMQP_STATUS_TIMEOUT)
        lost_with(errc::timeout, what + ": the broker confirmed nothing within " +
                                     std::to_string(options.operation_timeout.count()) +
                                     " ms; the items may or may not be in the queue");
      if (rc != AMQP_STATUS_OK)
        lost_with(errc::transport_error, what + ": the connection to the broker was lost before it confirmed (" +
                                             amqp_error_string2(rc) + "); the items may or may not be in the queue");
      if (frame.frame_type != AMQP_FRAME_METHOD || absorb(frame)) continue;
      const auto id = frame.payload.method.id;
      if (id == AMQP_BASIC_ACK_METHOD || id == AMQP_BASIC_NACK_METHOD) {
        std::uint64_t tag;
        bool multiple;
        if (id == AMQP_BASIC_ACK_METHOD) {
          auto* a = static_cast<amqp_basic_ack_t*>(frame.payload.method.decoded);
          tag = a->delivery_tag;
          multiple = a->multiple;
        } else {
          auto* n = static_cast<amqp_basic_nack_t*>(frame.payload.method.decoded);
          tag = n->delivery_tag;
          multiple = n->multiple;
          refused = "the broker refused to store it (nack)";
        }
        if (multiple)
          pending.erase(pending.begin(), pending.upper_bound(tag));
        else
          pending.erase(tag);
      } else if (id == AMQP_BASIC_RETURN_METHOD) {
        auto* r = static_cast<amqp_basic_return_t*>(frame.payload.method.decoded);
        refused = "the broker routed it to no queue (" + printable(text_of(r->reply_text)) + ")";
        amqp_message_t returned;
        const auto rr = amqp_read_message(conn, frame.channel, &returned, 0);
        if (rr.reply_type != AMQP_RESPONSE_NORMAL) check(rr, what);
        amqp_destroy_message(&returned);
      } else if (id == AMQP_CHANNEL_CLOSE_METHOD || id == AMQP_CONNECTION_CLOSE_METHOD) {
        lost_with(errc::transport_error, what + ": the broker closed the connection before it confirmed (" +
                                             close_text(frame.payload.method) + ")");
      }
    }
    amqp_maybe_release_buffers(conn);
    if (!refused.empty()) fail(errc::state_error, what + ": " + refused);
  }

  bool get_one(const std::string& queue, amqp_channel_t channel, Delivery& out) {
    const auto r = amqp_basic_get(conn, channel, bytes_of(queue), 0);
    check(r, "basic.get from " + queue);
    if (r.reply.id != AMQP_BASIC_GET_OK_METHOD) return false;
    out.tag = static_cast<amqp_basic_get_ok_t*>(r.reply.decoded)->delivery_tag;
    read_delivery(channel, queue, out);
    return true;
  }

  // The content of the message whose method frame was just read (basic.get-ok or deliver).
  void read_delivery(amqp_channel_t channel, const std::string& queue, Delivery& out) {
    amqp_message_t msg;
    check(amqp_read_message(conn, channel, &msg, 0), "reading a message from " + queue);
    out.body = text_of(msg.body);
    const auto& p = msg.properties;
    out.text = (p._flags & AMQP_BASIC_CONTENT_TYPE_FLAG) && text_of(p.content_type).rfind("text/", 0) == 0;
    if (p._flags & AMQP_BASIC_HEADERS_FLAG) {
      const auto& h = p.headers;
      if (auto v = as_integer(find(h, kId)); v && *v > 0) out.id = static_cast<std::uint64_t>(*v);
      out.enqueued_at = as_real(find(h, kEnqueuedAt)).value_or(0);
      out.prior = static_cast<int>(std::max<std::int64_t>(0, as_integer(find(h, kPrior)).value_or(0)));
      out.broker_count = static_cast<int>(std::max<std::int64_t>(0, as_integer(find(h, "x-delivery-count")).value_or(0)));
      out.dead_at = as_real(find(h, kDeadAt));
      out.reason = as_text(find(h, kReason));
      const auto* death = find(h, "x-death");
      if (death && death->kind == AMQP_FIELD_KIND_ARRAY && death->value.array.num_entries > 0 &&
          death->value.array.entries[0].kind == AMQP_FIELD_KIND_TABLE) {
        const auto& first = death->value.array.entries[0].value.table;
        out.broker_reason = as_text(find(first, "reason")).value_or("");
        out.broker_dead_at = as_real(find(first, "time")).value_or(0);
      }
    }
    // A message another producer put has no id of ours: one from its delivery (top bit set, so
    // it never meets the 63-bit ids the client assigns).
    if (out.id == 0) out.id = (std::uint64_t{1} << 63) | out.tag;
    amqp_destroy_message(&msg);
    amqp_maybe_release_buffers(conn);
  }

  void ack_tag(std::uint64_t tag) {
    const int rc = amqp_basic_ack(conn, kWork, tag, 0);
    if (rc != AMQP_STATUS_OK) lost("ack", rc);
  }

  Outgoing dead_letter_of(const Held& h, double now, const std::string& why) {
    Outgoing o{name + ".dead", h.d.id, &h.d.body, h.d.text, h.d.enqueued_at, h.deliveries, now, ""};
    o.reason = "delivered " + std::to_string(h.deliveries) + " times (max_deliveries " +
               std::to_string(options.max_deliveries) + "); " + why;
    return o;
  }

  // Republishes each message (to the work queue, to a delay queue, or to the dead letters once
  // delivered max times), waits for the confirms, then acks the originals: a crash in between
  // leaves a copy too many, never none.
  void return_messages(const std::vector<Held>& held_messages, milliseconds delay, const std::string& why) {
    if (held_messages.empty()) return;
    std::string target = name;
    if (delay.count() > 0) {
      auto step = std::find_if(kDelays.begin(), kDelays.end(), [&](milliseconds s) { return s >= delay; });
      target = delay_queue(name, step == kDelays.end() ? kDelays.back() : *step);
    }
    const double now = unix_now();
    const auto first = published + 1;
    for (const auto& h : held_messages) {
      if (h.deliveries >= options.max_deliveries) {
        publish(dead_letter_of(h, now, why));
      } else {
        publish(Outgoing{target, h.d.id, &h.d.body, h.d.text, h.d.enqueued_at, h.deliveries, std::nullopt, ""});
      }
    }
    await_confirms(first, published, "returning " + std::to_string(held_messages.size()) + " message(s)");
    for (const auto& h : held_messages) ack_tag(h.d.tag);
  }

  // ---- operations (on the I/O thread) -------------------------------------------------------

  std::size_t do_put(std::vector<Item>& items) {
    if (items.empty()) return 0;
    ensure_connected();
    const double now = unix_now();
    const auto first = published + 1;
    for (const auto& item : items) publish(Outgoing{name, new_id(), &item.body, item.text, now, 0, std::nullopt, ""});
    await_confirms(first, published, "put of " + std::to_string(items.size()) + " item(s) to queue " + name);
    return items.size();
  }

  Lease do_lease(std::size_t n, milliseconds visibility, milliseconds wait) {
    ensure_connected();
    if (options.consume) {
      if (paused) subscribe();
      watch_socket();
      if (inbox.empty() && wait.count() > 0) await_delivery(wait);
      if (!conn) ensure_connected();  // lost while waiting: the caller gets the failure
    }
    Lease lease;
    lease.token = auth::hex(auth::random_bytes(16));
    lease.expires_at = unix_now() + static_cast<double>(visibility.count()) / 1000.0;
    const std::size_t room = held >= static_cast<std::size_t>(options.prefetch)
                                 ? 0
                                 : static_cast<std::size_t>(options.prefetch) - held;
    LeaseRecord rec;
    rec.expires = Clock::now() + visibility;
    std::vector<Held> too_many;
    while (lease.messages.size() < (options.consume ? n : std::min(n, room))) {
      Delivery d;
      if (options.consume) {
        // The broker keeps what the consumer holds within prefetch: no room to count here.
        if (inbox.empty()) break;
        d = std::move(inbox.front());
        inbox.pop_front();
      } else if (!get_one(name, kWork, d)) {
        break;
      }
      const int deliveries = d.prior + d.broker_count + 1;
      if (deliveries > options.max_deliveries) {
        // Returned by the broker after its last allowed delivery (its lessee's connection was
        // lost): it goes to the dead letters instead of out again.
        too_many.push_back(Held{std::move(d), deliveries - 1});
        continue;
      }
      lease.messages.push_back(Message{d.id, d.body, d.text, deliveries});
      rec.held.push_back(Held{std::move(d), deliveries});
    }
    // Recorded first: should burying the others fail, these still expire and come back.
    if (!rec.held.empty()) {
      held += rec.held.size();
      leases.emplace(lease.token, std::move(rec));
    }
    if (!too_many.empty()) {
      try {
        return_messages(too_many, milliseconds(0), "the connection holding its last lease was lost");
      } catch (const Failed& f) {
        if (!f.connection_lost) hold_for_retry(std::move(too_many));
        throw;
      }
    }
    return lease;
  }

  // Takes the messages of `ids` out of lease `token`; nothing when the lease expired or its
  // connection was lost.
  std::vector<Held> take(const std::string& token, const std::vector<std::uint64_t>& ids) {
    std::vector<Held> out;
    auto it = leases.find(token);
    if (it == leases.end()) return out;
    auto& list = it->second.held;
    for (auto id : ids) {
      auto m = std::find_if(list.begin(), list.end(), [&](const Held& h) { return h.d.id == id; });
      if (m == list.end()) continue;
      out.push_back(std::move(*m));
      list.erase(m);
    }
    held -= out.size();
    if (list.empty()) leases.erase(it);
    return out;
  }

  void put_back(const std::string& token, std::vector<Held> taken) {
    if (taken.empty()) return;
    auto it = leases.find(token);
    if (it == leases.end()) {
      LeaseRecord rec;
      rec.expires = Clock::now();  // taken from a lease that just emptied: expire it next round
      it = leases.emplace(token, std::move(rec)).first;
    }
    held += taken.size();
    for (auto& h : taken) it->second.held.push_back(std::move(h));
  }

  std::size_t do_ack(const std::string& token, const std::vector<std::uint64_t>& ids) {
    if (!conn) return 0;  // the connection that held the lease is gone
    auto taken = take(token, ids);
    for (const auto& h : taken) ack_tag(h.d.tag);
    return taken.size();
  }

  std::size_t do_nack(const std::string& token, const std::vector<std::uint64_t>& ids, milliseconds delay) {
    if (!conn) return 0;
    auto taken = take(token, ids);
    try {
      return_messages(taken, delay, "the last delivery was nacked");
    } catch (const Failed& f) {
      if (!f.connection_lost) put_back(token, std::move(taken));  // still held: the caller may retry
      throw;
    }
    return taken.size();
  }

  std::int64_t count(const std::string& queue) {
    auto* ok = amqp_queue_declare(conn, kWork, bytes_of(queue), 1, 0, 0, 0, amqp_empty_table);
    check(amqp_get_rpc_reply(conn), "counting queue " + queue);
    return ok ? static_cast<std::int64_t>(ok->message_count) : 0;
  }

  Stats do_stats() {
    ensure_connected();
    Stats s;
    s.ready = count(name);
    s.leased = static_cast<std::int64_t>(held);
    for (auto step : kDelays) s.delayed += count(delay_queue(name, step));
    s.dead = count(name + ".dead");
    return s;
  }

  std::vector<DeadLetter> do_dead_letters(std::size_t limit) {
    ensure_connected();
    std::vector<DeadLetter> out;
    std::uint64_t last = 0;
    const std::string dead = name + ".dead";
    while (limit == 0 || out.size() < limit) {
      Delivery d;
      if (!get_one(dead, kPeek, d)) break;
      last = d.tag;
      DeadLetter dl;
      dl.id = d.id;
      dl.body = std::move(d.body);
      dl.text = d.text;
      dl.enqueued_at = d.enqueued_at;
      if (d.reason) {
        dl.deliveries = d.prior;
        dl.dead_at = d.dead_at.value_or(0);
        dl.reason = *d.reason;
      } else {
        // Dead-lettered by the broker itself (its x-delivery-limit, or another client's reject).
        const bool limit_hit = d.broker_reason == "delivery_limit";
        dl.deliveries = d.prior + (limit_hit ? options.max_deliveries + 1 : 0);
        dl.dead_at = d.broker_dead_at;
        dl.reason = "dead-lettered by the broker: " + (d.broker_reason.empty() ? "no reason given" : d.broker_reason);
      }
      out.push_back(std::move(dl));
    }
    // Returned all at once, unacked: a classic queue puts them back where they were.
    if (last) {
      const int rc = amqp_basic_nack(conn, kPeek, last, 1, 1);
      if (rc != AMQP_STATUS_OK) lost("returning the dead letters read", rc);
    }
    return out;
  }

  // Runs `body` on the I/O thread and completes `done` with its result. An operation that
  // changes nothing it cannot redo (not a put) is tried once more after a lost connection.
  template <class T, class Body>
  void submit(Handler<T> done, bool retry, Body body) {
    post([this, done = std::move(done), retry, body = std::move(body)](bool closed) mutable {
      if (closed) {
        done({make_error_code(errc::state_error), redacted + ": queue " + name + " is closed"}, T{});
        return;
      }
      Status status;
      T result{};
      for (int attempt = 0;; ++attempt) {
        try {
          result = body();
          status = {};
        } catch (const Failed& f) {
          status = {make_error_code(f.code), f.message};
          if (retry && f.connection_lost && attempt == 0) continue;
        } catch (const Error& e) {
          status = {e.code(), redacted + ": " + e.what()};
        } catch (const std::exception& e) {
          status = {make_error_code(errc::internal), redacted + ": " + e.what()};
        }
        break;
      }
      done(std::move(status), std::move(result));
    });
  }
};

const std::vector<milliseconds>& AmqpQueue::delay_steps() { return kDelays; }

AmqpQueue::AmqpQueue(const std::string& url, const std::string& name, AmqpQueueOptions options)
    : impl_(std::make_unique<Impl>()) {
  auto& d = *impl_;
  d.redacted = http::redact_url(url);
  auto bad = [&](const std::string& field, const std::string& why) { throw Error(errc::invalid_argument, field + ": " + why); };
  if (options.max_deliveries < 1)
    bad("max_deliveries", std::to_string(options.max_deliveries) + " is not valid; expected an integer >= 1");
  if (options.prefetch < 1 || options.prefetch > 65535)
    bad("prefetch", std::to_string(options.prefetch) + " is not valid; expected an integer from 1 to 65535");
  if (options.connect_timeout.count() <= 0) bad("connect_timeout", "must be > 0");
  if (options.operation_timeout.count() <= 0) bad("operation_timeout", "must be > 0");
  // Room for the suffixes (".delay.300s") within AMQP's 255-byte names; "amq." is reserved.
  if (name.empty() || name.size() > 200 || name.rfind("amq.", 0) == 0 ||
      std::any_of(name.begin(), name.end(), [](unsigned char c) { return c < 0x20 || c == 0x7f; }))
    bad("name", "'" + printable(name).substr(0, 60) +
                    "' is not valid; expected 1 to 200 printable characters, not starting with 'amq.'");
  const bool amqp = url.rfind("amqp://", 0) == 0, amqps = url.rfind("amqps://", 0) == 0;
  if (!amqp && !amqps)
    throw Error(errc::invalid_url, "url: '" + printable(d.redacted) + "' is not valid; expected amqp:// or amqps://");
  // rabbitmq-c fills in "localhost" for a missing host: a URL must name its broker.
  const auto rest = std::string_view(url).substr(amqp ? 7 : 8);
  const auto authority = rest.substr(0, std::min(rest.find_first_of("/?#"), rest.size()));
  const auto at = authority.rfind('@');
  const auto host_port = at == std::string_view::npos ? authority : authority.substr(at + 1);
  if (host_port.empty() || host_port.front() == ':')
    throw Error(errc::invalid_url, "url: '" + printable(d.redacted) + "' is not valid: it names no host");
  std::vector<char> buffer(url.begin(), url.end());
  buffer.push_back('\0');
  amqp_connection_info info;
  amqp_default_connection_info(&info);
  if (amqp_parse_url(buffer.data(), &info) != AMQP_STATUS_OK || !info.host || !*info.host)
    throw Error(errc::invalid_url, "url: '" + printable(d.redacted) +
                                       "' is not valid; expected amqp[s]://user:password@host[:port]/[vhost]");
  d.url = url;
  d.name = name;
  d.options = options;
  d.host = info.host;
  d.port = info.port;
  d.user = info.user ? info.user : "guest";
  d.password = info.password ? info.password : "guest";
  // "amqp://host/" means the default vhost, as pika and the Java client read it.
  d.vhost = info.vhost && *info.vhost ? info.vhost : "/";
  d.tls = info.ssl;
  d.thread = std::thread([&d] { d.run(); });
  std::promise<Status> connected;
  d.post([&](bool) {
    try {
      d.connect();
      connected.set_value({});
    } catch (const Failed& f) {
      connected.set_value({make_error_code(f.code), f.message});
    }
  });
  Status status = connected.get_future().get();
  if (!status) {
    close();
    throw Error(status.code, status.message);
  }
}

AmqpQueue::~AmqpQueue() { close(); }

const std::string& AmqpQueue::name() const noexcept { return impl_->name; }
const std::string& AmqpQueue::redacted_url() const noexcept { return impl_->redacted; }
int AmqpQueue::max_deliveries() const noexcept { return impl_->options.max_deliveries; }
int AmqpQueue::prefetch() const noexcept { return impl_->options.prefetch; }
bool AmqpQueue::consume() const noexcept { return impl_->options.consume; }

void AmqpQueue::async_put(std::vector<Item> items, Handler<std::size_t> done) {
  impl_->submit<std::size_t>(std::move(done), false,
                             [this, items = std::move(items)]() mutable { return impl_->do_put(items); });
}

void AmqpQueue::async_lease(std::size_t n, milliseconds visibility, Handler<Lease> done) {
  async_lease_within(n, visibility, milliseconds(0), std::move(done));
}

void AmqpQueue::async_lease_within(std::size_t n, milliseconds visibility, milliseconds wait, Handler<Lease> done) {
  if (n == 0 || visibility.count() <= 0 || wait.count() < 0) {
    done({make_error_code(errc::invalid_argument),
          n == 0 ? "n: 0 is not valid; expected an integer >= 1"
          : wait.count() < 0
              ? "wait: " + std::to_string(wait.count()) + " ms is not valid; expected >= 0"
              : "visibility: " + std::to_string(visibility.count()) + " ms is not valid; expected > 0"},
         {});
    return;
  }
  impl_->submit<Lease>(std::move(done), true,
                       [this, n, visibility, wait] { return impl_->do_lease(n, visibility, wait); });
}

void AmqpQueue::async_ack(std::string token, std::vector<std::uint64_t> ids, Handler<std::size_t> done) {
  impl_->submit<std::size_t>(std::move(done), false, [this, token = std::move(token), ids = std::move(ids)] {
    return impl_->do_ack(token, ids);
  });
}

void AmqpQueue::async_nack(std::string token, std::vector<std::uint64_t> ids, milliseconds delay,
                           Handler<std::size_t> done) {
  if (delay.count() < 0) {
    done({make_error_code(errc::invalid_argument),
          "delay: " + std::to_string(delay.count()) + " ms is not valid; expected >= 0"},
         0);
    return;
  }
  impl_->submit<std::size_t>(std::move(done), false, [this, token = std::move(token), ids = std::move(ids), delay] {
    return impl_->do_nack(token, ids, delay);
  });
}

void AmqpQueue::async_pause(Handler<std::size_t> done) {
  impl_->submit<std::size_t>(std::move(done), false, [this] { return impl_->do_pause(); });
}

void AmqpQueue::async_dead_letters(std::size_t limit, Handler<std::vector<DeadLetter>> done) {
  impl_->submit<std::vector<DeadLetter>>(std::move(done), true, [this, limit] { return impl_->do_dead_letters(limit); });
}

void AmqpQueue::async_stats(Handler<Stats> done) {
  impl_->submit<Stats>(std::move(done), true, [this] { return impl_->do_stats(); });
}

void AmqpQueue::close() {
  auto& d = *impl_;
  {
    std::lock_guard lock(d.m);
    d.stopping = true;
  }
  d.cv.notify_all();
  if (!d.thread.joinable()) return;
  // A handler running on the I/O thread may close its own queue: the thread ends by itself.
  if (d.thread.get_id() == std::this_thread::get_id())
    d.thread.detach();
  else
    d.thread.join();
}

}  // namespace isthmus::queue
