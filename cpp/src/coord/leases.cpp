// Leases (partition claims, the token refresh lock) and the shared token record, over the
// Coordination's commands: no hiredis here.
#include <algorithm>
#include <chrono>
#include <cmath>

#include "isthmus/auth/crypto.hpp"
#include "isthmus/coord/coordination.hpp"
#include "isthmus/error.hpp"

namespace isthmus::coord {
namespace {

limits::TimePoint in(double seconds) {
  return std::chrono::steady_clock::now() +
         std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(seconds));
}

std::string millis(double seconds) { return std::to_string(std::max<long long>(1, std::llround(seconds * 1000))); }

std::string new_token() { return auth::hex(auth::random_bytes(16)); }

void check_lease(double lease) {
  if (!std::isfinite(lease) || lease <= 0)
    throw Error(errc::invalid_argument, "lease: " + std::to_string(lease) + " must be seconds greater than 0");
}

}  // namespace

std::shared_ptr<Lease> Lease::try_acquire(std::shared_ptr<Coordination> coord, std::string name, double lease,
                                          double timeout) {
  check_lease(lease);
  if (name.empty()) throw Error(errc::invalid_argument, "name: a claim needs a name");
  auto l = std::shared_ptr<Lease>(new Lease());
  l->coord_ = std::move(coord);
  l->name_ = std::move(name);
  l->key_ = l->coord_->key("claim:" + l->name_);
  l->token_ = new_token();
  l->lease_ = lease;
  Value v = l->coord_->call({"SET", l->key_, l->token_, "NX", "PX", millis(lease)}, timeout);
  if (v.type == Value::Type::status) {
    l->held_ = true;
  } else {
    // A SET sent again after a broken connection may have taken it the first time.
    Value owner = l->coord_->call({"GET", l->key_}, timeout);
    l->held_ = owner.type == Value::Type::string && owner.str == l->token_;
  }
  return l;
}

bool Lease::renew(double timeout) {
  if (!held_) return false;
  Value v = coord_->call_script(renew_script(), {key_}, {token_, millis(lease_)}, timeout);
  held_ = v.type == Value::Type::integer && v.integer == 1;
  return held_;
}

bool Lease::release(double timeout) {
  if (!held_) return false;
  held_ = false;
  Value v = coord_->call_script(release_script(), {key_}, {token_}, timeout);
  return v.type == Value::Type::integer && v.integer == 1;
}

namespace {

// Waits its turn by polling: a holder gives the lock back within one token request, and a
// holder that died lets it lapse after its lease, so the wait is short either way.
class RedisRefreshLock final : public auth::RefreshLock, public std::enable_shared_from_this<RedisRefreshLock> {
 public:
  explicit RedisRefreshLock(std::shared_ptr<Coordination> coord) : coord_(std::move(coord)) {}

  void acquire(const std::string& id, double lease, std::function<void(std::error_code, Release)> done) override {
    auto attempt = std::make_shared<Attempt>();
    attempt->key = coord_->key("token:" + id + ":lock");
    attempt->token = new_token();
    attempt->lease = lease;
    // Longer than a lapsed lease, so only a lock that keeps being retaken makes us give up.
    attempt->deadline = in(2 * lease + coord_->options().connect_timeout);
    attempt->done = std::move(done);
    try_once(attempt);
  }

 private:
  struct Attempt {
    std::string key, token;
    double lease = 0;
    double poll = 0.005;
    limits::TimePoint deadline;
    std::function<void(std::error_code, Release)> done;
  };

  void try_once(const std::shared_ptr<Attempt>& a) {
    auto self = shared_from_this();
    coord_->command({"SET", a->key, a->token, "NX", "PX", millis(a->lease)}, a->deadline,
                    [self, a](std::error_code ec, Value v) {
                      if (ec) return a->done(ec, {});
                      if (v.type == Value::Type::status) return a->done({}, self->releaser(a));
                      if (std::chrono::steady_clock::now() >= a->deadline)
                        return a->done(make_error_code(errc::timeout), {});
                      a->poll = std::min(0.05, a->poll * 1.5);
                      self->coord_->after(a->poll, [self, a] { self->try_once(a); });
                    });
  }

  Release releaser(const std::shared_ptr<Attempt>& a) {
    return [coord = coord_, key = a->key, token = a->token] {
      // Fire and forget: if it never arrives, the lease lapses by itself.
      coord->eval(release_script(), {key}, {token}, in(coord->options().command_timeout),
                  [](std::error_code, Value) {});
    };
  }

  std::shared_ptr<Coordination> coord_;
};

class RedisTokenStore final : public auth::TokenStore {
 public:
  RedisTokenStore(std::shared_ptr<Coordination> coord, std::string key32)
      : coord_(std::move(coord)), key32_(std::move(key32)) {
    if (key32_.size() != 32) throw Error(errc::token_store_error, "token store: the key must be 32 bytes");
  }
  ~RedisTokenStore() override { std::fill(key32_.begin(), key32_.end(), '\0'); }

  std::optional<auth::TokenRecord> load(const std::string& id) override {
    Value v = guarded([&] { return coord_->call({"GET", record_key(id)}, timeout()); });
    if (v.type != Value::Type::string) return std::nullopt;
    return auth::open_record(key32_, id, v.str, "token store in Redis at " + coord_->redacted_url());
  }

  void save(const std::string& id, const auth::TokenRecord& record) override {
    const std::string sealed = auth::seal_record(key32_, id, record);
    guarded([&] { return coord_->call({"SET", record_key(id), sealed}, timeout()); });
  }

  void erase(const std::string& id) override {
    guarded([&] { return coord_->call({"DEL", record_key(id)}, timeout()); });
  }

 private:
  std::string record_key(const std::string& id) const { return coord_->key("token:" + id); }
  double timeout() const { return coord_->options().connect_timeout + coord_->options().command_timeout; }

  template <class F>
  Value guarded(F&& f) {
    try {
      return f();
    } catch (const Error& e) {
      throw Error(errc::token_store_error, std::string("token store: ") + e.what());
    }
  }

  std::shared_ptr<Coordination> coord_;
  std::string key32_;
};

}  // namespace

std::shared_ptr<auth::RefreshLock> make_refresh_lock(std::shared_ptr<Coordination> coord) {
  return std::make_shared<RedisRefreshLock>(std::move(coord));
}

std::shared_ptr<auth::TokenStore> make_token_store(std::shared_ptr<Coordination> coord, std::string key32) {
  return std::make_shared<RedisTokenStore>(std::move(coord), std::move(key32));
}

}  // namespace isthmus::coord
