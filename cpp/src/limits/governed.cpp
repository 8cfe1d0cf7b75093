// The only translation unit of the limits area that sees Asio: timers for waits and backoffs.
#include <utility>  // before Asio: Boost 1.74 + GCC 12 in C++20

#include "isthmus/limits/governed.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cmath>
#include <ctime>
#include <random>
#include <unordered_map>

#include "isthmus/error.hpp"
#include "isthmus/limits/fair_queue.hpp"
#include "runtime/engine_impl.hpp"

namespace isthmus::limits {
namespace asio = boost::asio;

std::pair<std::string, std::string> host_and_path(std::string_view url) {
  auto scheme = url.find("://");
  std::string_view rest = scheme == std::string_view::npos ? url : url.substr(scheme + 3);
  auto end = rest.find_first_of("/?#");
  std::string_view authority = rest.substr(0, end);
  if (auto at = authority.rfind('@'); at != std::string_view::npos) authority.remove_prefix(at + 1);
  std::string host(authority);
  for (auto& c : host)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  std::string path = "/";
  if (end != std::string_view::npos && rest[end] == '/') {
    auto p = rest.substr(end);
    path = std::string(p.substr(0, p.find_first_of("?#")));
  }
  return {host, path};
}

// ---------------------------------------------------------------------------------------------
// Governor

class Governor::Impl : public std::enable_shared_from_this<Governor::Impl> {
 public:
  Impl(std::shared_ptr<Engine> engine, std::shared_ptr<Limiter> limiter)
      : engine_(std::move(engine)), limiter_(std::move(limiter)), queue_(limiter_), timer_(engine_->impl().io()) {}

  using Fire = std::function<void()>;

  std::uint64_t acquire(const Key& key, double cost, Priority priority, Granted granted,
                        std::optional<TimePoint> deadline) {
    std::vector<Fire> fire;
    std::uint64_t id;
    {
      std::lock_guard lock(mutex_);
      id = next_id_++;
      waiting_[id] = std::move(granted);
      queue_.push(FairQueue::Call{id, key, cost, priority, deadline});
      pump(fire);
    }
    for (auto& f : fire) f();
    return id;
  }

  void cancel(std::uint64_t id) {
    Fire fire;
    {
      std::lock_guard lock(mutex_);
      if (queue_.cancel(id)) {
        auto w = waiting_.find(id);
        fire = [g = std::move(w->second)] { g(make_error_code(errc::cancelled), Reservation{}); };
        waiting_.erase(w);
      } else if (auto p = pending_.find(id); p != pending_.end()) {
        if (p->second.timer) p->second.timer->cancel();
        fire = [self = shared_from_this(), g = std::move(p->second.granted), ticket = p->second.r.ticket] {
          self->release(ticket);
          g(make_error_code(errc::cancelled), Reservation{});
        };
        pending_.erase(p);
      }
    }
    if (fire) fire();
  }

  void release(std::uint64_t ticket) {
    if (!ticket) return;
    const bool probed = limiter_->release(ticket);
    std::vector<Fire> fire;
    {
      std::lock_guard lock(mutex_);
      if (queue_.blocked() || (probed && queue_.size())) {
        if (probed) {
          armed_for_.reset();  // the head may go sooner than the armed timer says
          timer_.cancel();
        }
        pump(fire);
      }
    }
    for (auto& f : fire) f();
  }

  std::size_t waiting() const {
    std::lock_guard lock(mutex_);
    return queue_.size() + pending_.size();
  }

  // A call the local rules let go, waiting for the shared counter (and then for the wait it
  // hands out). Nothing is sent before the counter has counted it: a counter that cannot be
  // reached holds the call until its deadline.
  struct Pending {
    Granted granted;
    Reservation r;
    std::shared_ptr<asio::steady_timer> timer;
  };

  void reserve_shared(std::uint64_t id, const Key& key, double cost, std::optional<TimePoint> deadline) {
    const auto& o = limiter_->options();
    // The counter runs on real time; a deadline on the limiter's (maybe manual) clock is moved over.
    auto real_deadline = std::chrono::steady_clock::now() + seconds(o.max_wait);
    if (deadline) real_deadline = std::min(real_deadline, std::chrono::steady_clock::now() + (*deadline - clock_now()));
    o.shared->reserve(limiter_->shared_rules(key), cost, o.max_wait, real_deadline,
                      [weak = weak_from_this(), id](SharedGrant g) {
                        if (auto self = weak.lock()) self->on_shared(id, std::move(g));
                      });
  }

  void on_shared(std::uint64_t id, SharedGrant g) {
    std::unique_lock lock(mutex_);
    auto it = pending_.find(id);
    if (it == pending_.end()) return;  // cancelled meanwhile
    // Completions go through the engine's I/O threads, as the Granted contract says, never from
    // the counter's own thread.
    if (g.granted) {
      auto timer = std::make_shared<asio::steady_timer>(engine_->impl().io());
      it->second.timer = timer;
      timer->expires_after(seconds(std::max(0.0, g.wait)));
      timer->async_wait([weak = weak_from_this(), id](const boost::system::error_code& ec) {
        if (ec) return;  // cancelled: cancel() completed the call
        if (auto self = weak.lock()) self->finish_pending(id, {});
      });
      return;
    }
    lock.unlock();
    asio::post(engine_->impl().io(), [weak = weak_from_this(), id, g = std::move(g)] {
      if (auto self = weak.lock()) self->finish_pending(id, g.error ? g.error : make_error_code(errc::internal), &g);
    });
  }

  void finish_pending(std::uint64_t id, std::error_code ec, const SharedGrant* refused = nullptr) {
    Pending p;
    {
      std::lock_guard lock(mutex_);
      auto it = pending_.find(id);
      if (it == pending_.end()) return;
      p = std::move(it->second);
      pending_.erase(it);
    }
    Reservation r = p.r;
    if (ec) {
      release(r.ticket);
      r.ticket = 0;
      r.granted = false;
      r.reason = refused->reason;
      r.resets_at = refused->resets_at;
      r.wait = seconds(refused->wait);
    }
    p.granted(ec, r);
  }

  // Lets go every waiting call the fair queue says may go now; arms the timer for the next.
  // Callbacks are collected and run after the lock is dropped.
  void pump(std::vector<Fire>& fire) {
    auto pass = queue_.pump();
    for (auto& done : pass.done) {
      auto w = waiting_.find(done.call.id);
      Granted g = std::move(w->second);
      waiting_.erase(w);
      if (!done.error && limiter_->options().shared) {
        // The local rules agree; the shared ones are asked next, and the call stays cancellable.
        pending_[done.call.id] = Pending{std::move(g), done.reservation, nullptr};
        fire.push_back([self = shared_from_this(), id = done.call.id, key = std::move(done.call.key),
                        cost = done.call.cost, deadline = done.call.deadline] {
          self->reserve_shared(id, key, cost, deadline);
        });
      } else {
        fire.push_back([g = std::move(g), ec = done.error, r = std::move(done.reservation)] { g(ec, r); });
      }
    }
    if (pass.next) arm(*pass.next);
  }

  TimePoint clock_now() const { return limiter_->clock().now(); }

  void arm(TimePoint when) {
    if (armed_for_ && *armed_for_ <= when) return;  // an earlier wake-up will re-check
    armed_for_ = when;
    // The limiter's clock may be a test clock; the timer always runs on real time.
    timer_.expires_after(when - clock_now());
    timer_.async_wait([weak = weak_from_this()](const boost::system::error_code& ec) {
      if (ec) return;  // re-armed or shut down
      auto self = weak.lock();
      if (!self) return;
      std::vector<Fire> fire;
      {
        std::lock_guard lock(self->mutex_);
        self->armed_for_.reset();
        self->pump(fire);
      }
      for (auto& f : fire) f();
    });
  }

  void shutdown() {
    std::lock_guard lock(mutex_);
    timer_.cancel();
    for (auto& [id, p] : pending_)
      if (p.timer) p.timer->cancel();
  }

  std::shared_ptr<Engine> engine_;
  std::shared_ptr<Limiter> limiter_;
  mutable std::mutex mutex_;
  FairQueue queue_;
  std::unordered_map<std::uint64_t, Granted> waiting_;  // the callbacks of the calls in queue_
  asio::steady_timer timer_;
  std::optional<TimePoint> armed_for_;
  std::unordered_map<std::uint64_t, Pending> pending_;
  std::uint64_t next_id_ = 1;
};

Governor::Governor(std::shared_ptr<Engine> engine, std::shared_ptr<Limiter> limiter)
    : impl_(std::make_shared<Impl>(std::move(engine), std::move(limiter))) {}

Governor::~Governor() {
  // Calls still waiting are told so; nothing waits forever on a governor that is gone.
  std::vector<std::uint64_t> ids;
  {
    std::lock_guard lock(impl_->mutex_);
    for (auto& [id, _] : impl_->waiting_) ids.push_back(id);
    for (auto& [id, _] : impl_->pending_) ids.push_back(id);
  }
  for (auto id : ids) impl_->cancel(id);
  impl_->shutdown();
}

std::uint64_t Governor::acquire(const Key& key, double cost, Priority priority, Granted granted,
                                std::optional<TimePoint> deadline) {
  return impl_->acquire(key, cost, priority, std::move(granted), deadline);
}
void Governor::cancel(std::uint64_t id) { impl_->cancel(id); }
void Governor::release(std::uint64_t ticket) { impl_->release(ticket); }
std::size_t Governor::waiting() const { return impl_->waiting(); }
Limiter& Governor::limiter() { return *impl_->limiter_; }
const std::shared_ptr<Limiter>& Governor::limiter_ptr() const { return impl_->limiter_; }

// ---------------------------------------------------------------------------------------------
// GovernedTransport

namespace {

double uniform01() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return std::uniform_real_distribution<double>(0.0, 1.0)(rng);
}

std::string utc_iso(double unix_seconds) {
  std::time_t t = static_cast<std::time_t>(std::floor(unix_seconds));
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

Priority take_priority(http::Headers& headers) {
  Priority p = Priority::normal;
  for (auto it = headers.begin(); it != headers.end();) {
    if (http::iequals(it->first, kPriorityHeader)) {
      if (http::iequals(it->second, "high")) p = Priority::high;
      else if (http::iequals(it->second, "low")) p = Priority::low;
      it = headers.erase(it);
    } else {
      ++it;
    }
  }
  return p;
}

}  // namespace

class GovernedTransport::Impl : public std::enable_shared_from_this<GovernedTransport::Impl> {
 public:
  Impl(std::shared_ptr<Engine> engine, std::shared_ptr<Governor> governor,
       std::shared_ptr<http::Transport> inner, GovernedOptions options)
      : engine_(std::move(engine)),
        governor_(std::move(governor)),
        inner_(std::move(inner)),
        options_(std::move(options)) {
    if (options_.retry) retry::validate(*options_.retry);
    if (options_.breaker)
      breaker_ = std::make_shared<retry::CircuitBreaker>(*options_.breaker, governor_->limiter().clock_ptr());
  }

  enum class Phase { queued, backoff, in_flight, done };

  struct Op {
    explicit Op(std::shared_ptr<Engine> e) : engine(std::move(e)), timer(engine->impl().io()) {}
    std::shared_ptr<Engine> engine;  // outlives the timer: handlers may keep an op past its transport
    std::mutex m;
    std::uint64_t id = 0;
    http::Request request;
    http::Completion done;
    Key key;
    std::string host;
    double cost = 1;
    Priority priority = Priority::normal;
    TimePoint started{};
    std::optional<TimePoint> deadline;
    int attempts = 0;
    // What the caller is told about the attempts before the answer it gets.
    int retried_429 = 0;
    std::uint64_t retried_bytes = 0;
    double waited = 0;        // seconds in the governor's queue and backing off
    TimePoint queued_at{};    // when the current attempt joined the governor's queue
    Phase phase = Phase::queued;
    bool cancelled = false;
    std::uint64_t wait_id = 0;   // in the governor's queue
    std::uint64_t inner_id = 0;  // at the inner transport
    bool inner_id_known = false;
    asio::steady_timer timer;    // backoff between attempts
  };

  std::uint64_t send(http::Request request, http::Completion done) {
    auto op = std::make_shared<Op>(engine_);
    op->priority = take_priority(request.headers);
    auto [host, path] = host_and_path(request.url);
    op->host = host;
    auto [endpoint, cost] = governor_->limiter().endpoint_cost(request.method, path);
    op->key = Key{options_.provider.empty() ? host : options_.provider, options_.credential,
                  options_.tenant, endpoint};
    op->cost = cost;
    op->request = std::move(request);
    op->done = std::move(done);
    op->started = now();
    if (options_.retry && options_.retry->deadline > 0) op->deadline = op->started + seconds(options_.retry->deadline);
    {
      std::lock_guard lock(ops_mutex_);
      op->id = next_id_++;
      ops_[op->id] = op;
    }
    const auto id = op->id;
    start_attempt(op);
    return id;
  }

  void cancel(std::uint64_t id) {
    std::shared_ptr<Op> op;
    {
      std::lock_guard lock(ops_mutex_);
      auto it = ops_.find(id);
      if (it == ops_.end()) return;
      op = it->second.lock();
    }
    if (!op) return;
    Phase phase;
    std::uint64_t wait_id, inner_id;
    bool inner_known;
    {
      std::lock_guard lock(op->m);
      if (op->cancelled || op->phase == Phase::done) return;
      op->cancelled = true;
      phase = op->phase;
      wait_id = op->wait_id;
      inner_id = op->inner_id;
      inner_known = op->inner_id_known;
    }
    switch (phase) {
      case Phase::queued: governor_->cancel(wait_id); break;  // completes through on_granted
      case Phase::backoff: {
        // The timer handler may already be queued; posting keeps timer access off this thread.
        asio::post(engine_->impl().io(), [op] { op->timer.cancel(); });
        break;
      }
      case Phase::in_flight:
        if (inner_known) inner_->cancel(inner_id);  // else send() sees `cancelled` when it returns
        break;
      case Phase::done: break;
    }
  }

  TimePoint now() const { return governor_->limiter().clock().now(); }

  void start_attempt(const std::shared_ptr<Op>& op) {
    {
      std::lock_guard lock(op->m);
      if (op->cancelled) return finish_locked(op, make_error_code(errc::cancelled), "cancelled");
      op->phase = Phase::queued;
      op->queued_at = now();
    }
    if (breaker_ && !breaker_->allow(op->host)) {
      char msg[160];
      std::snprintf(msg, sizeof msg, "circuit open for %s: too many recent failures; next probe in %.1f s",
                    op->host.c_str(), breaker_->retry_in(op->host));
      std::lock_guard lock(op->m);
      return finish_locked(op, make_error_code(errc::circuit_open), msg);
    }
    auto weak = weak_from_this();
    const auto wait_id = governor_->acquire(
        op->key, op->cost, op->priority,
        [weak, op](std::error_code ec, const Reservation& r) {
          if (auto self = weak.lock()) self->on_granted(op, ec, r);
        },
        op->deadline);
    std::lock_guard lock(op->m);
    if (op->phase == Phase::queued) op->wait_id = wait_id;
  }

  void on_granted(const std::shared_ptr<Op>& op, std::error_code ec, const Reservation& r) {
    {
      std::lock_guard lock(op->m);
      op->waited += to_seconds(now() - op->queued_at);
    }
    if (ec) {
      if (breaker_) breaker_->abandon(op->host);
      http::Response resp;
      std::string msg;
      if (ec == make_error_code(errc::quota_exhausted)) {
        msg = "quota exhausted for " + op->key.str() + " (" + r.reason + "); resets at " +
              utc_iso(r.resets_at) + " UTC";
        char buf[32];
        std::snprintf(buf, sizeof buf, "%.3f", r.resets_at);
        resp.headers.emplace_back(kResetsAtHeader, buf);
      } else if (ec == make_error_code(errc::rate_limited)) {
        msg = r.reason + " would hold the call for " + std::to_string(static_cast<long long>(to_seconds(r.wait))) +
              " s, longer than the limiter's max_wait";
      } else if (ec == make_error_code(errc::retry_deadline)) {
        msg = "the retry deadline would pass while waiting for " + (r.reason.empty() ? std::string("the limiter") : r.reason);
      } else {
        msg = r.reason.empty() ? ec.message() : r.reason;
      }
      std::lock_guard lock(op->m);
      return finish_locked(op, ec, msg, std::move(resp));
    }
    http::Request attempt;
    {
      std::lock_guard lock(op->m);
      if (op->cancelled) {
        governor_->release(r.ticket);
        if (breaker_) breaker_->abandon(op->host);
        return finish_locked(op, make_error_code(errc::cancelled), "cancelled");
      }
      op->phase = Phase::in_flight;
      op->inner_id_known = false;
      ++op->attempts;
      attempt = op->request;  // the body is shared, not copied
    }
    auto weak = weak_from_this();
    const auto ticket = r.ticket;
    const auto inner_id = inner_->send(std::move(attempt), [weak, op, ticket](std::error_code ec, http::Response resp) {
      if (auto self = weak.lock()) self->on_response(op, ticket, ec, std::move(resp));
    });
    bool cancel_now = false;
    {
      std::lock_guard lock(op->m);
      if (op->phase == Phase::in_flight) {
        op->inner_id = inner_id;
        op->inner_id_known = true;
        cancel_now = op->cancelled;
      }
    }
    if (cancel_now) inner_->cancel(inner_id);
  }

  void on_response(const std::shared_ptr<Op>& op, std::uint64_t ticket, std::error_code ec, http::Response resp) {
    Limiter& limiter = governor_->limiter();
    const Observation obs = observation_from(resp, ec, limiter.clock().unix_now());
    if (ec != make_error_code(errc::cancelled)) limiter.observe(op->key, obs);
    governor_->release(ticket);
    const bool cancelled_ec = ec == make_error_code(errc::cancelled) || ec == make_error_code(errc::shutting_down);
    if (breaker_) {
      if (cancelled_ec) breaker_->abandon(op->host);
      else breaker_->record(op->host, (ec && !retry::never_left(ec)) || ec == make_error_code(errc::connect_failed) ||
                                           resp.status >= 500);
    }
    std::unique_lock lock(op->m);
    if (op->cancelled || cancelled_ec || !options_.retry) return finish_locked(op, ec, resp.error_message, std::move(resp));
    const double elapsed = to_seconds(now() - op->started);
    const auto d = retry::decide(*options_.retry, op->request, ec, resp.status, op->attempts, elapsed,
                                 obs.retry_after, uniform01());
    if (!d.retry) return finish_locked(op, ec, resp.error_message, std::move(resp));
    op->phase = Phase::backoff;
    if (!ec && resp.status == 429) ++op->retried_429;
    op->retried_bytes += resp.body.size();
    op->waited += d.delay;
    lock.unlock();
    limiter.note_retry(op->key);
    op->timer.expires_after(seconds(d.delay));
    auto weak = weak_from_this();
    op->timer.async_wait([weak, op](const boost::system::error_code& tec) {
      auto self = weak.lock();
      if (!self) return;
      if (tec) {
        std::lock_guard lock(op->m);
        return self->finish_locked(op, make_error_code(errc::cancelled), "cancelled");
      }
      self->start_attempt(op);
    });
  }

  // Completes the caller once. Called with op->m held; the completion runs after it is dropped
  // would be nicer, but Completion must not call back into this op, so holding it is safe.
  void finish_locked(const std::shared_ptr<Op>& op, std::error_code ec, std::string message,
                     http::Response resp = {}) {
    if (op->phase == Phase::done) return;
    op->phase = Phase::done;
    if (ec) {
      resp.error = ec;
      if (resp.error_message.empty()) resp.error_message = std::move(message);
    }
    resp.elapsed = to_seconds(now() - op->started);
    resp.attempts = op->attempts;
    resp.retried_429 = op->retried_429;
    resp.retried_bytes = op->retried_bytes;
    resp.waited = op->waited;
    auto done = std::move(op->done);
    {
      std::lock_guard lock(ops_mutex_);
      ops_.erase(op->id);
    }
    if (done) done(ec, std::move(resp));
  }

  std::shared_ptr<Engine> engine_;
  std::shared_ptr<Governor> governor_;
  std::shared_ptr<http::Transport> inner_;
  GovernedOptions options_;
  std::shared_ptr<retry::CircuitBreaker> breaker_;
  std::mutex ops_mutex_;
  std::unordered_map<std::uint64_t, std::weak_ptr<Op>> ops_;
  std::uint64_t next_id_ = 1;
};

GovernedTransport::GovernedTransport(std::shared_ptr<Engine> engine, std::shared_ptr<Governor> governor,
                                     std::shared_ptr<http::Transport> inner, GovernedOptions options)
    : impl_(std::make_shared<Impl>(std::move(engine), std::move(governor), std::move(inner), std::move(options))) {}

GovernedTransport::~GovernedTransport() {
  std::vector<std::uint64_t> ids;
  {
    std::lock_guard lock(impl_->ops_mutex_);
    for (auto& [id, _] : impl_->ops_) ids.push_back(id);
  }
  for (auto id : ids) impl_->cancel(id);
}

std::uint64_t GovernedTransport::send(http::Request request, http::Completion done) {
  return impl_->send(std::move(request), std::move(done));
}
void GovernedTransport::cancel(std::uint64_t id) { impl_->cancel(id); }
const std::shared_ptr<Governor>& GovernedTransport::governor() const { return impl_->governor_; }
retry::CircuitBreaker::State GovernedTransport::circuit(const std::string& host) const {
  return impl_->breaker_ ? impl_->breaker_->state(host) : retry::CircuitBreaker::State::closed;
}

}  // namespace isthmus::limits
