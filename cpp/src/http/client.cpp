// The curl client: one libcurl multi handle per Client, driven by the engine's io_context.
//
// Every curl call happens on one strand, so the engine may run any number of I/O threads.
// curl's own Asio example was withdrawn (curl issue #5090) because queued handlers touched
// per-socket state that had already been freed; here each watched socket is a
// shared_ptr<SocketState> that handlers keep alive and check through its `closed` flag, and
// the Asio descriptor lets go of the fd before curl closes it (fd numbers are reused at once).
#include <utility>  // before Asio: Boost 1.74 + GCC 12 in C++20

#include <curl/curl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "http/curl_url.hpp"
#include "isthmus/error.hpp"
#include "isthmus/http/client.hpp"
#include "isthmus/http/url.hpp"
#include "runtime/engine_impl.hpp"

namespace isthmus::http {
namespace {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

constexpr std::size_t kEasyPoolSize = 256;
// curl enforces a transfer's deadline itself, except while the transfer waits for a free
// connection (the per-host or total cap). A sweep catches those, a little after curl would,
// so that curl's own, more precise message wins when it is the one that can act.
constexpr auto kDeadlineSlack = std::chrono::milliseconds(20);
// Beyond this a timeout means "none"; it also keeps time_point arithmetic from overflowing.
constexpr double kMaxTimeoutSeconds = 1e7;
// A Content-Length is only a hint from the peer: never reserve more than this up front.
constexpr std::int64_t kMaxReserve = std::int64_t{1} << 30;

void global_init() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

// Counts asynchronous operations that may still call into a Client::Impl, so the Client's
// destructor can wait until none is running or queued. Shared so that the last decrement may
// safely notify while the waiter is already tearing down.
struct Quiesce {
  std::atomic<long> ops{0};
  std::mutex mutex;
  std::condition_variable idle;
};

class OpToken {
 public:
  explicit OpToken(std::shared_ptr<Quiesce> q) : q_(std::move(q)) {
    q_->ops.fetch_add(1, std::memory_order_relaxed);
  }
  OpToken(OpToken&&) noexcept = default;
  OpToken& operator=(OpToken&&) = delete;
  OpToken(const OpToken&) = delete;
  ~OpToken() {
    if (q_ && q_->ops.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard lock(q_->mutex);
      q_->idle.notify_all();
    }
  }

 private:
  std::shared_ptr<Quiesce> q_;
};

struct SocketState {
  explicit SocketState(asio::io_context& io) : descriptor(io) {}
  ~SocketState() {
    // The fd belongs to curl: never let the descriptor close it.
    if (descriptor.is_open()) descriptor.release();
  }
  asio::posix::stream_descriptor descriptor;
  int wanted = 0;  // CURL_POLL_IN / CURL_POLL_OUT bits curl last asked for
  bool closed = false;
  bool wait_pending[2] = {false, false};  // [0] read, [1] write
  bool kick_pending[2] = {false, false};
};

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n'))
    s.remove_suffix(1);
  return s;
}

const char* version_name(long v) {
  switch (v) {
    case CURL_HTTP_VERSION_1_0: return "1.0";
    case CURL_HTTP_VERSION_1_1: return "1.1";
    case CURL_HTTP_VERSION_2_0: return "2";
    case CURL_HTTP_VERSION_3: return "3";
    default: return "";
  }
}

errc map_curl_code(CURLcode rc, bool body_limit_hit) {
  switch (rc) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY: return errc::resolve_failed;
    case CURLE_COULDNT_CONNECT: return errc::connect_failed;
    case CURLE_OPERATION_TIMEDOUT: return errc::timeout;
    case CURLE_PARTIAL_FILE:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_SEND_FAIL_REWIND: return errc::transport_error;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CLIENTCERT:
    case CURLE_USE_SSL_FAILED: return errc::tls_error;
    case CURLE_BAD_CONTENT_ENCODING: return errc::decoding_error;
    case CURLE_WEIRD_SERVER_REPLY:
    // Schemes are checked before curl sees a URL; curl reports an HTTP/0.9 reply this way.
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_HTTP_RETURNED_ERROR: return errc::protocol_error;
    case CURLE_URL_MALFORMAT: return errc::invalid_url;
    case CURLE_FILESIZE_EXCEEDED: return errc::body_too_large;
    case CURLE_WRITE_ERROR: return body_limit_hit ? errc::body_too_large : errc::internal;
    case CURLE_OUT_OF_MEMORY:
    case CURLE_BAD_FUNCTION_ARGUMENT:
    case CURLE_FAILED_INIT: return errc::internal;
    default: return errc::transport_error;
  }
}

bool header_name_ok(std::string_view name) {
  if (name.empty()) return false;
  for (unsigned char c : name)
    if (c <= ' ' || c == ':' || c == 0x7f) return false;
  return true;
}

bool header_value_ok(std::string_view value) {
  return value.find_first_of(std::string_view("\r\n\0", 3)) == std::string_view::npos;
}

bool method_ok(std::string_view method) {
  if (method.empty()) return false;
  for (unsigned char c : method)
    if (c <= ' ' || c >= 0x7f) return false;
  return true;
}

// What is wrong with a request before anything goes on the wire; an empty code if nothing.
std::pair<std::error_code, std::string> validate(const Request& r) {
  if (!method_ok(r.method)) return {errc::invalid_argument, "invalid request method"};
  if (auto [ec, msg] = check_url(r.url); ec) return {ec, std::move(msg)};
  for (const auto& [name, value] : r.headers) {
    if (!header_name_ok(name)) return {errc::invalid_header, "invalid header name"};
    // The name is safe to show; the value may be a credential, so it never is.
    if (!header_value_ok(value))
      return {errc::invalid_header, "header '" + name + "' contains CR, LF or NUL"};
  }
  return {};
}

bool is_redirect(long status) {
  return status == 301 || status == 302 || status == 303 || status == 307 || status == 308;
}

}  // namespace

// One request from send() to its completion, across redirect hops.
struct Transfer {
  std::uint64_t id = 0;
  Request request;  // rewritten in place by redirects
  Completion done;
  Response response;
  CURL* easy = nullptr;
  curl_slist* header_list = nullptr;
  Clock::time_point started;
  Clock::time_point deadline;
  bool follow = true;
  bool body_limit_hit = false;
  bool is_head = false;
  std::int64_t max_body = 0;
  char error[CURL_ERROR_SIZE];
};

class Client::Impl {
 public:
  Impl(std::shared_ptr<Engine> engine, ClientOptions options);
  ~Impl();

  std::uint64_t send(Request request, Completion done);
  void cancel(std::uint64_t id);
  void close();
  // Closes, frees every curl resource and returns once no handler can touch *this.
  // Never from one of the engine's I/O threads (it would wait for itself).
  void shutdown();
  bool on_io_thread() const { return engine_->impl().on_io_thread(); }

  const ClientOptions& options() const noexcept { return options_; }
  std::uint64_t connections_opened() const noexcept {
    return connections_opened_.load(std::memory_order_relaxed);
  }

 private:
  enum Direction { kRead = 0, kWrite = 1 };

  OpToken token() { return OpToken(quiesce_); }

  // Strand only, from here on.
  void start(std::unique_ptr<Transfer> t);
  void begin_hop(Transfer& t);
  void prepare_easy(CURL* easy);
  void configure(Transfer& t);
  void drain();
  void on_hop_done(Transfer& t, CURLcode rc);
  void follow_redirect(Transfer& t, const std::string& location, long status);
  void finish(Transfer& t, std::error_code ec, std::string message);
  void fail(Transfer& t, errc e, std::string_view what);
  void cancel_all(errc reason);
  void teardown();

  void watch(const std::shared_ptr<SocketState>& s, curl_socket_t fd, Direction d);
  void on_ready(const std::shared_ptr<SocketState>& s, curl_socket_t fd, Direction d,
                boost::system::error_code ec);
  void forget_socket(curl_socket_t fd);
  void on_timer();
  void arm_deadline(Clock::time_point deadline);
  void on_deadline();

  CURL* acquire_easy();
  void release_easy(CURL* easy);

  static int socket_cb(CURL* easy, curl_socket_t fd, int what, void* userp, void* socketp);
  static int timer_cb(CURLM* multi, long timeout_ms, void* userp);
  static curl_socket_t open_cb(void* clientp, curlsocktype purpose, curl_sockaddr* address);
  static int close_cb(void* clientp, curl_socket_t fd);
  static std::size_t write_cb(char* data, std::size_t size, std::size_t n, void* userp);
  static std::size_t header_cb(char* data, std::size_t size, std::size_t n, void* userp);

  // Declared first: the io_context must outlive the timer and descriptors below.
  std::shared_ptr<Engine> engine_;
  const ClientOptions options_;
  asio::io_context& io_;
  asio::strand<asio::io_context::executor_type> strand_;
  asio::steady_timer timer_;
  asio::steady_timer deadline_timer_;
  Clock::time_point deadline_armed_ = Clock::time_point::max();
  std::shared_ptr<Quiesce> quiesce_ = std::make_shared<Quiesce>();
  std::atomic<std::uint64_t> next_id_{0};
  std::atomic<std::uint64_t> connections_opened_{0};
  std::atomic<bool> closing_{false};
  std::atomic<bool> shut_down_{false};

  CURLM* multi_ = nullptr;
  bool run_now_posted_ = false;
  std::unordered_map<curl_socket_t, std::shared_ptr<SocketState>> sockets_;
  std::unordered_map<std::uint64_t, std::unique_ptr<Transfer>> transfers_;
  std::vector<CURL*> easy_pool_;
};

Client::Impl::Impl(std::shared_ptr<Engine> engine, ClientOptions options)
    : engine_(std::move(engine)),
      options_(std::move(options)),
      io_(engine_ ? engine_->impl().io() : throw Error(errc::invalid_argument, "engine is null")),
      strand_(asio::make_strand(io_)),
      timer_(io_),
      deadline_timer_(io_) {
  auto bad = [](const char* field, auto value, const char* valid) {
    throw Error(errc::invalid_argument, std::string("ClientOptions.") + field + " = " +
                                            std::to_string(value) + ": must be " + valid);
  };
  if (!(options_.timeout > 0)) bad("timeout", options_.timeout, "> 0 seconds");
  if (!(options_.connect_timeout > 0))
    bad("connect_timeout", options_.connect_timeout, "> 0 seconds");
  if (options_.max_connections_per_host < 0)
    bad("max_connections_per_host", options_.max_connections_per_host, ">= 0 (0 = unlimited)");
  if (options_.max_connections < 0)
    bad("max_connections", options_.max_connections, ">= 0 (0 = unlimited)");
  if (options_.max_redirects < 0) bad("max_redirects", options_.max_redirects, ">= 0");
  if (options_.max_body_bytes < 0)
    bad("max_body_bytes", options_.max_body_bytes, ">= 0 (0 = unlimited)");

  global_init();
  multi_ = curl_multi_init();
  if (!multi_) throw Error(errc::internal, "curl_multi_init failed");
  curl_multi_setopt(multi_, CURLMOPT_SOCKETFUNCTION, &Impl::socket_cb);
  curl_multi_setopt(multi_, CURLMOPT_SOCKETDATA, this);
  curl_multi_setopt(multi_, CURLMOPT_TIMERFUNCTION, &Impl::timer_cb);
  curl_multi_setopt(multi_, CURLMOPT_TIMERDATA, this);
  curl_multi_setopt(multi_, CURLMOPT_MAX_HOST_CONNECTIONS,
                    static_cast<long>(options_.max_connections_per_host));
  curl_multi_setopt(multi_, CURLMOPT_MAX_TOTAL_CONNECTIONS,
                    static_cast<long>(options_.max_connections));
  // The idle cache must hold every connection a busy client keeps open, or keep-alive turns
  // into reconnect churn; curl's default (4 x handles added) shrinks as transfers finish.
  curl_multi_setopt(multi_, CURLMOPT_MAXCONNECTS,
                    static_cast<long>(options_.max_connections > 0 ? options_.max_connections
                                                                   : 256));
}

Client::Impl::~Impl() { shutdown(); }

std::uint64_t Client::Impl::send(Request request, Completion done) {
  const std::uint64_t id = next_id_.fetch_add(1, std::memory_order_relaxed) + 1;
  auto t = std::make_unique<Transfer>();
  t->id = id;
  t->started = Clock::now();
  const double timeout =
      std::min(kMaxTimeoutSeconds, request.timeout > 0 ? request.timeout : options_.timeout);
  t->deadline = t->started + std::chrono::duration_cast<Clock::duration>(
                                 std::chrono::duration<double>(timeout));
  t->follow = request.follow_redirects < 0 ? options_.follow_redirects
                                           : request.follow_redirects != 0;
  t->max_body = options_.max_body_bytes;
  t->request = std::move(request);
  // Raw non-ASCII or spaces would make servers answer 400; signers encoded it the same way.
  t->request.url = encode_url(t->request.url);
  t->done = std::move(done);

  std::error_code ec;
  std::string message;
  if (closing_.load(std::memory_order_acquire)) {
    ec = errc::shutting_down;
    message = "client is closed";
  } else {
    std::tie(ec, message) = validate(t->request);
  }
  if (ec) {
    // Even refusals complete asynchronously, so callers see one behaviour.
    asio::post(strand_, [this, tok = token(), t = std::move(t), ec, message]() mutable {
      finish(*t, ec, std::move(message));
    });
    return id;
  }
  asio::post(strand_, [this, tok = token(), t = std::move(t)]() mutable { start(std::move(t)); });
  return id;
}

void Client::Impl::cancel(std::uint64_t id) {
  asio::post(strand_, [this, tok = token(), id] {
    auto it = transfers_.find(id);
    if (it == transfers_.end()) return;  // already completed: nothing to do
    Transfer& t = *it->second;
    curl_multi_remove_handle(multi_, t.easy);
    fail(t, errc::cancelled, "cancelled by the caller");
  });
}

void Client::Impl::close() {
  if (closing_.exchange(true, std::memory_order_acq_rel)) return;
  asio::post(strand_, [this, tok = token()] { cancel_all(errc::cancelled); });
}

void Client::Impl::shutdown() {
  if (shut_down_.exchange(true)) return;
  close();
  if (engine_->stopped()) {
    // Nobody runs the io_context any more: queued handlers will never run, so tear down here.
    teardown();
    return;
  }
  asio::post(strand_, [this, tok = token()] { teardown(); });
  std::unique_lock lock(quiesce_->mutex);
  while (!quiesce_->idle.wait_for(lock, std::chrono::milliseconds(100),
                                  [&] { return quiesce_->ops.load() == 0; })) {
    // The engine stopped under us: what is still queued is dropped, never run.
    if (engine_->stopped()) {
      lock.unlock();
      teardown();
      return;
    }
  }
}

void Client::Impl::teardown() {
  cancel_all(errc::cancelled);
  if (multi_) {
    // May call socket_cb and close_cb for cached connections: they still find *this intact.
    curl_multi_cleanup(multi_);
    multi_ = nullptr;
  }
  for (CURL* easy : easy_pool_) curl_easy_cleanup(easy);
  easy_pool_.clear();
  for (auto& [fd, s] : sockets_) {
    s->closed = true;
    if (s->descriptor.is_open()) s->descriptor.release();
  }
  sockets_.clear();
  timer_.cancel();
  deadline_timer_.cancel();
}

void Client::Impl::cancel_all(errc reason) {
  while (!transfers_.empty()) {
    Transfer& t = *transfers_.begin()->second;
    if (multi_) curl_multi_remove_handle(multi_, t.easy);
    fail(t, reason, reason == errc::cancelled ? "client closed" : "client shutting down");
  }
}

void Client::Impl::start(std::unique_ptr<Transfer> owned) {
  Transfer& t = *owned;
  transfers_.emplace(t.id, std::move(owned));
  if (closing_.load(std::memory_order_acquire) || !multi_)
    return fail(t, errc::cancelled, "client closed before the request started");
  t.easy = acquire_easy();
  if (!t.easy) return fail(t, errc::internal, "curl_easy_init failed");
  arm_deadline(t.deadline);
  begin_hop(t);
}

void Client::Impl::arm_deadline(Clock::time_point deadline) {
  const auto when = deadline + kDeadlineSlack;
  // Steady state: new deadlines lie after the armed one, so this is a comparison, no syscall.
  if (when >= deadline_armed_) return;
  deadline_armed_ = when;
  deadline_timer_.expires_at(when);
  deadline_timer_.async_wait(
      asio::bind_executor(strand_, [this, tok = token()](boost::system::error_code ec) {
        if (!ec) on_deadline();
      }));
}

void Client::Impl::on_deadline() {
  deadline_armed_ = Clock::time_point::max();
  if (!multi_) return;
  const auto now = Clock::now();
  std::vector<Transfer*> expired;
  auto next = Clock::time_point::max();
  for (auto& [id, t] : transfers_) {
    if (t->deadline + kDeadlineSlack <= now) {
      expired.push_back(t.get());
    } else {
      next = std::min(next, t->deadline);
    }
  }
  for (Transfer* t : expired) {
    curl_multi_remove_handle(multi_, t->easy);
    fail(*t, errc::timeout, "timed out waiting for a free connection");
  }
  if (next != Clock::time_point::max()) arm_deadline(next);
}

void Client::Impl::begin_hop(Transfer& t) {
  if (Clock::now() >= t.deadline) return fail(t, errc::timeout, "deadline passed");
  configure(t);
  if (CURLMcode rc = curl_multi_add_handle(multi_, t.easy); rc != CURLM_OK)
    return fail(t, errc::internal, curl_multi_strerror(rc));
}

// Options that never change for this client are set once per pooled handle; configure()
// sets everything that varies per hop, so a reused handle needs no curl_easy_reset.
void Client::Impl::prepare_easy(CURL* e) {
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &Impl::write_cb);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, &Impl::header_cb);
  curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, &Impl::open_cb);
  curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, this);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, &Impl::close_cb);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, this);
  curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");  // every decoder curl was built with
  curl_easy_setopt(e, CURLOPT_HTTP_VERSION,
                   options_.http2 ? CURL_HTTP_VERSION_2TLS : CURL_HTTP_VERSION_1_1);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, options_.verify ? 1L : 0L);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, options_.verify ? 2L : 0L);
  if (!options_.ca_bundle.empty()) curl_easy_setopt(e, CURLOPT_CAINFO, options_.ca_bundle.c_str());
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                   static_cast<long>(std::max(1.0, options_.connect_timeout * 1000)));
  curl_easy_setopt(e, CURLOPT_USERAGENT, options_.user_agent.c_str());
  if (options_.max_body_bytes > 0)
    curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, static_cast<curl_off_t>(options_.max_body_bytes));
}

void Client::Impl::configure(Transfer& t) {
  CURL* e = t.easy;
  const Request& r = t.request;
  t.error[0] = '\0';
  t.is_head = r.method == "HEAD";

  curl_easy_setopt(e, CURLOPT_PRIVATE, &t);
  curl_easy_setopt(e, CURLOPT_URL, r.url.c_str());
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t.error);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, &t);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, &t);
  // Waiting for a connection to reveal whether it multiplexes only pays off where HTTP/2 can
  // be negotiated (ALPN over TLS); on plain http it would queue requests behind a slow one.
  const bool tls = r.url.size() > 5 && iequals(std::string_view(r.url).substr(0, 6), "https:");
  curl_easy_setopt(e, CURLOPT_PIPEWAIT, options_.http2 && tls ? 1L : 0L);
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(t.deadline - Clock::now());
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, static_cast<long>(std::max<long long>(1, left.count())));

  // Undo whatever method the handle's previous transfer used.
  curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, static_cast<char*>(nullptr));
  curl_easy_setopt(e, CURLOPT_POSTFIELDS, static_cast<char*>(nullptr));
  curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(-1));
  curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);

  const bool has_body = r.body != nullptr;
  if (t.is_head) {
    curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  } else if (has_body || r.method == "POST" || r.method == "PUT" || r.method == "PATCH") {
    // POSTFIELDS points into the shared body, which the Transfer keeps alive: no copy.
    static const char kEmpty[] = "";
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE,
                     static_cast<curl_off_t>(has_body ? r.body->size() : 0));
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, has_body ? r.body->data() : kEmpty);
    if (r.method != "POST") curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, r.method.c_str());
  } else if (r.method != "GET") {
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, r.method.c_str());
  }

  curl_slist_free_all(t.header_list);
  t.header_list = nullptr;
  std::string line;
  auto add = [&](const std::string& l) {
    if (curl_slist* next = curl_slist_append(t.header_list, l.c_str())) t.header_list = next;
  };
  bool has_content_type = false;
  for (const auto& [name, value] : r.headers) {
    if (iequals(name, "Content-Type")) has_content_type = true;
    line.assign(name);
    // curl drops "Name:" as "remove this header"; "Name;" is its spelling of an empty value.
    if (value.empty()) {
      line.push_back(';');
    } else {
      line.append(": ");
      line.append(value);
    }
    add(line);
  }
  // 100-continue costs a round trip (or a 1 s stall) on every large upload.
  add("Expect:");
  // Without this curl labels every body as a form; a raw body has no implied type.
  if (!has_content_type && (has_body || r.method == "POST")) add("Content-Type:");
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, t.header_list);
}

int Client::Impl::socket_cb(CURL*, curl_socket_t fd, int what, void* userp, void*) {
  auto* self = static_cast<Impl*>(userp);
  if (what == CURL_POLL_REMOVE) {
    self->forget_socket(fd);
    return 0;
  }
  auto& slot = self->sockets_[fd];
  if (!slot) {
    auto s = std::make_shared<SocketState>(self->io_);
    boost::system::error_code ec;
    s->descriptor.assign(fd, ec);
    if (ec) {
      self->sockets_.erase(fd);
      return 0;  // the transfer runs into its timeout rather than spinning
    }
    slot = std::move(s);
  }
  auto s = slot;  // watch() may post; keep a reference independent of the map
  s->wanted = what;
  if (what & CURL_POLL_IN) self->watch(s, fd, kRead);
  if (what & CURL_POLL_OUT) self->watch(s, fd, kWrite);
  return 0;
}

// Asio registers descriptors edge-triggered, while curl reads at most one buffer per call and
// expects to be told again while data is left. So after queueing the wait, poll once: if the
// socket is already ready, an extra posted "kick" runs curl again without waiting for an edge
// that may never come. A spurious call later is harmless: curl just sees EAGAIN.
void Client::Impl::watch(const std::shared_ptr<SocketState>& s, curl_socket_t fd, Direction d) {
  if (!s->wait_pending[d]) {
    s->wait_pending[d] = true;
    s->descriptor.async_wait(
        d == kRead ? asio::posix::descriptor_base::wait_read
                   : asio::posix::descriptor_base::wait_write,
        asio::bind_executor(strand_, [this, s, fd, d, tok = token()](boost::system::error_code ec) {
          s->wait_pending[d] = false;
          on_ready(s, fd, d, ec);
        }));
  }
  if (s->kick_pending[d]) return;
  pollfd p{fd, static_cast<short>(d == kRead ? POLLIN : POLLOUT), 0};
  if (::poll(&p, 1, 0) > 0 && p.revents != 0) {
    s->kick_pending[d] = true;
    asio::post(strand_, [this, s, fd, d, tok = token()] {
      s->kick_pending[d] = false;
      on_ready(s, fd, d, {});
    });
  }
}

void Client::Impl::on_ready(const std::shared_ptr<SocketState>& s, curl_socket_t fd, Direction d,
                            boost::system::error_code ec) {
  if (s->closed || !multi_ || ec == asio::error::operation_aborted) return;
  const int mask = d == kRead ? CURL_POLL_IN : CURL_POLL_OUT;
  if (!(s->wanted & mask)) return;
  int flags = ec ? CURL_CSELECT_ERR : (d == kRead ? CURL_CSELECT_IN : CURL_CSELECT_OUT);
  int running = 0;
  curl_multi_socket_action(multi_, fd, flags, &running);
  drain();
  if (!s->closed && (s->wanted & mask)) watch(s, fd, d);
}

void Client::Impl::forget_socket(curl_socket_t fd) {
  auto it = sockets_.find(fd);
  if (it == sockets_.end()) return;
  SocketState& s = *it->second;
  s.closed = true;
  // release() cancels queued waits and deregisters the fd from epoll before curl closes it.
  if (s.descriptor.is_open()) s.descriptor.release();
  sockets_.erase(it);
}

int Client::Impl::timer_cb(CURLM*, long timeout_ms, void* userp) {
  auto* self = static_cast<Impl*>(userp);
  if (timeout_ms < 0) {
    self->timer_.cancel();
    return 0;
  }
  // curl must not be re-entered from here. "Now" is the common case (every new transfer) and
  // is posted, coalesced, rather than re-arming the timer: each re-arm is a timerfd syscall.
  // Whatever else is armed may fire too; a spurious timeout action is harmless.
  if (timeout_ms == 0) {
    if (!self->run_now_posted_) {
      self->run_now_posted_ = true;
      asio::post(self->strand_, [self, tok = self->token()] {
        self->run_now_posted_ = false;
        self->on_timer();
      });
    }
    return 0;
  }
  self->timer_.expires_after(std::chrono::milliseconds(timeout_ms));
  self->timer_.async_wait(asio::bind_executor(
      self->strand_, [self, tok = self->token()](boost::system::error_code ec) {
        if (!ec) self->on_timer();
      }));
  return 0;
}

void Client::Impl::on_timer() {
  if (!multi_) return;
  int running = 0;
  curl_multi_socket_action(multi_, CURL_SOCKET_TIMEOUT, 0, &running);
  drain();
}

curl_socket_t Client::Impl::open_cb(void* clientp, curlsocktype purpose, curl_sockaddr* a) {
  auto* self = static_cast<Impl*>(clientp);
  const int fd = ::socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
  if (fd < 0) return CURL_SOCKET_BAD;
  if (purpose == CURLSOCKTYPE_IPCXN) self->connections_opened_.fetch_add(1, std::memory_order_relaxed);
  return fd;
}

int Client::Impl::close_cb(void* clientp, curl_socket_t fd) {
  static_cast<Impl*>(clientp)->forget_socket(fd);
  return ::close(fd);
}

std::size_t Client::Impl::write_cb(char* data, std::size_t size, std::size_t n, void* userp) {
  auto* t = static_cast<Transfer*>(userp);
  const std::size_t len = size * n;
  std::string& body = t->response.body;
  if (t->max_body > 0 && static_cast<std::int64_t>(body.size() + len) > t->max_body) {
    t->body_limit_hit = true;
    return 0;  // curl aborts with CURLE_WRITE_ERROR
  }
  body.append(data, len);
  return len;
}

std::size_t Client::Impl::header_cb(char* data, std::size_t size, std::size_t n, void* userp) {
  auto* t = static_cast<Transfer*>(userp);
  const std::size_t len = size * n;
  std::string_view line(data, len);
  Response& r = t->response;
  if (line.size() >= 5 && line.substr(0, 5) == "HTTP/") {
    // A new status line: 1xx interim responses and redirect hops start over.
    r.headers.clear();
    r.body.clear();
    r.status = 0;
    if (auto sp = line.find(' '); sp != std::string_view::npos) {
      auto code = trim(line.substr(sp + 1));
      std::from_chars(code.data(), code.data() + std::min<std::size_t>(3, code.size()), r.status);
    }
    return len;
  }
  const auto colon = line.find(':');
  if (colon == std::string_view::npos) return len;  // blank line ending the block, or junk
  const auto name = trim(line.substr(0, colon));
  const auto value = trim(line.substr(colon + 1));
  r.headers.emplace_back(std::string(name), std::string(value));
  if (r.status >= 200 && !t->is_head && iequals(name, "Content-Length")) {
    std::int64_t expected = 0;
    auto [p, ec] = std::from_chars(value.data(), value.data() + value.size(), expected);
    if (ec == std::errc() && expected > 0) {
      std::int64_t want = std::min(expected, kMaxReserve);
      if (t->max_body > 0) want = std::min(want, t->max_body);
      try {
        r.body.reserve(static_cast<std::size_t>(want));
      } catch (const std::exception&) {
        // Only a hint: the body still grows as it arrives.
      }
    }
  }
  return len;
}

void Client::Impl::drain() {
  int left = 0;
  while (CURLMsg* m = curl_multi_info_read(multi_, &left)) {
    if (m->msg != CURLMSG_DONE) continue;
    CURL* easy = m->easy_handle;
    const CURLcode rc = m->data.result;  // m dies with remove_handle
    Transfer* t = nullptr;
    curl_easy_getinfo(easy, CURLINFO_PRIVATE, &t);
    curl_multi_remove_handle(multi_, easy);
    if (t) on_hop_done(*t, rc);
  }
}

void Client::Impl::on_hop_done(Transfer& t, CURLcode rc) {
  long version = 0;
  curl_easy_getinfo(t.easy, CURLINFO_HTTP_VERSION, &version);
  t.response.http_version = version_name(version);
  if (rc != CURLE_OK) {
    const errc e = map_curl_code(rc, t.body_limit_hit);
    std::string what = t.body_limit_hit ? "response body exceeds max_body_bytes"
                                        : (t.error[0] ? t.error : curl_easy_strerror(rc));
    return fail(t, e, what);
  }
  long status = 0;
  curl_easy_getinfo(t.easy, CURLINFO_RESPONSE_CODE, &status);
  t.response.status = static_cast<int>(status);
  if (t.follow && is_redirect(status)) {
    if (const std::string* location = t.response.header("Location"); location && !location->empty())
      return follow_redirect(t, *location, status);
  }
  finish(t, {}, {});
}

void Client::Impl::follow_redirect(Transfer& t, const std::string& location, long status) {
  if (t.response.redirects >= options_.max_redirects)
    return fail(t, errc::too_many_redirects,
                "more than " + std::to_string(options_.max_redirects) + " redirects");
  auto next = resolve_redirect(t.request.url, location);
  if (next.error)
    return fail(t, next.error.value() == static_cast<int>(errc::unsupported_scheme)
                       ? errc::unsupported_scheme
                       : errc::protocol_error,
                "bad redirect Location " + redact_url(location) + ": " + next.message);

  Request& r = t.request;
  const bool to_get = status == 303 ? r.method != "HEAD"
                                    : (status == 301 || status == 302) && r.method == "POST";
  if (to_get) {
    r.method = "GET";
    r.body.reset();
    std::erase_if(r.headers, [](const auto& h) {
      return iequals(h.first, "Content-Type") || iequals(h.first, "Content-Length") ||
             iequals(h.first, "Transfer-Encoding");
    });
  }
  if (next.cross_origin) {
    std::erase_if(r.headers, [&](const auto& h) {
      if (iequals(h.first, "Authorization") || iequals(h.first, "Cookie") ||
          iequals(h.first, "Proxy-Authorization"))
        return true;
      return std::any_of(r.sensitive_headers.begin(), r.sensitive_headers.end(),
                         [&](const std::string& s) { return iequals(s, h.first); });
    });
  }
  r.url = std::move(next.url);
  ++t.response.redirects;
  t.response.headers.clear();
  t.response.body.clear();
  t.response.status = 0;
  begin_hop(t);
}

void Client::Impl::fail(Transfer& t, errc e, std::string_view what) {
  std::string message(what);
  message += " (";
  message += t.request.method;
  message += ' ';
  message += redact_url(t.request.url);
  message += ')';
  finish(t, e, std::move(message));
}

void Client::Impl::finish(Transfer& t, std::error_code ec, std::string message) {
  Response response = std::move(t.response);
  response.error = ec;
  response.error_message = std::move(message);
  response.url = std::move(t.request.url);
  response.elapsed = std::chrono::duration<double>(Clock::now() - t.started).count();
  Completion done = std::move(t.done);
  if (t.easy) release_easy(t.easy);
  curl_slist_free_all(t.header_list);
  // Refusals never entered the map; everything else leaves it here, exactly once.
  std::unique_ptr<Transfer> owned;
  if (auto node = transfers_.extract(t.id)) owned = std::move(node.mapped());
  if (!done) return;
  try {
    done(ec, std::move(response));
  } catch (...) {
    // A throwing completion must not unwind through curl or kill the I/O thread; the
    // caller's code owns its errors, the transport has nothing to add.
  }
}

CURL* Client::Impl::acquire_easy() {
  if (easy_pool_.empty()) {
    CURL* e = curl_easy_init();
    if (e) prepare_easy(e);
    return e;
  }
  CURL* e = easy_pool_.back();
  easy_pool_.pop_back();
  return e;
}

void Client::Impl::release_easy(CURL* easy) {
  if (multi_ && easy_pool_.size() < kEasyPoolSize) {
    // The transfer that owned these is gone; no dangling pointers wait in the pool.
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, static_cast<curl_slist*>(nullptr));
    curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, static_cast<char*>(nullptr));
    curl_easy_setopt(easy, CURLOPT_POSTFIELDS, static_cast<char*>(nullptr));
    curl_easy_setopt(easy, CURLOPT_PRIVATE, static_cast<void*>(nullptr));
    easy_pool_.push_back(easy);
  } else {
    curl_easy_cleanup(easy);
  }
}

// ---------------------------------------------------------------------------------------

Client::Client(std::shared_ptr<Engine> engine, ClientOptions options)
    : impl_(std::make_shared<Impl>(std::move(engine), std::move(options))) {}

Client::~Client() {
  // The last owner may let go inside a completion, on an I/O thread: waiting there for the
  // client's handlers to drain would wait for the handler this thread is running. A thread of
  // its own does the waiting, and keeps *impl_ alive until no handler can touch it.
  if (impl_->on_io_thread()) {
    std::thread([impl = std::move(impl_)] { impl->shutdown(); }).detach();
    return;
  }
  impl_->shutdown();
}

std::uint64_t Client::send(Request request, Completion done) {
  return impl_->send(std::move(request), std::move(done));
}

void Client::cancel(std::uint64_t id) { impl_->cancel(id); }
void Client::close() { impl_->close(); }
const ClientOptions& Client::options() const noexcept { return impl_->options(); }
std::uint64_t Client::connections_opened() const noexcept { return impl_->connections_opened(); }

}  // namespace isthmus::http
