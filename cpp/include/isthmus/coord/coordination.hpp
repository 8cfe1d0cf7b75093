// Coordination between processes on Redis: shared rate limits and quotas (GCRA and window
// counters in one Lua script, on Redis' clock), leases (a lock that lapses by itself) for
// partition claims and for the single-flight token refresh, and a token store whose records
// are sealed before they leave the process.
//
// One Coordination owns one Redis connection, driven by its own thread (hiredis stays in
// cpp/src/coord). Commands run in order; when the connection breaks they wait while it is
// re-made with back-off, and fail only when their deadline passes, so a limiter that needs an
// answer never lets a call go uncounted.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "isthmus/auth/token_store.hpp"
#include "isthmus/limits/shared.hpp"

namespace isthmus::coord {

// redis://[[user]:password@]host[:port][/db]; throws Error(invalid_url) naming the URL with
// the password masked.
struct RedisUrl {
  std::string host;
  int port = 6379;
  std::string username;  // empty: AUTH with the password alone (the default user)
  std::string password;
  int db = 0;
};
RedisUrl parse_redis_url(std::string_view url);

struct Options {
  std::string url;
  std::string ns = "isthmus";    // every key starts with "<ns>:"
  double connect_timeout = 5;    // seconds, for each connection attempt and the first connect
  double command_timeout = 5;    // seconds a command may take once sent
  double backoff_initial = 0.05; // reconnect back-off, doubling up to backoff_max
  double backoff_max = 1.0;
};
// Throws Error(invalid_argument) naming the field.
void validate(const Options& options);

// A Redis reply, without hiredis.
struct Value {
  enum class Type { nil, integer, string, status, error, array } type = Type::nil;
  long long integer = 0;
  std::string str;  // string, status, error
  std::vector<Value> elements;
};

// A Lua script, by its text and the SHA-1 that EVALSHA names it by.
struct Script {
  explicit Script(std::string text);
  std::string text;
  std::string sha1;  // hex
};
// The scripts, for their unit tests.
const Script& gcra_script();
const Script& release_script();
const Script& renew_script();

struct Stats {
  std::uint64_t commands = 0;
  std::uint64_t connects = 0;       // the first one included
  std::uint64_t scripts_loaded = 0; // after a NOSCRIPT (a restarted or flushed Redis)
  std::uint64_t failed = 0;         // commands that outlived their deadline
  bool connected = false;
};

class Coordination final : public limits::SharedCounter,
                           public std::enable_shared_from_this<Coordination> {
 public:
  // Connects (and authenticates) before returning. Throws Error naming the redacted URL:
  // invalid_url, connect_failed (refused, wrong password), timeout (no answer in time).
  static std::shared_ptr<Coordination> connect(Options options);
  ~Coordination() override;
  Coordination(const Coordination&) = delete;
  Coordination& operator=(const Coordination&) = delete;

  using Done = std::function<void(std::error_code, Value)>;
  // Runs a command on the coordination's thread; `done` runs there too, so it must not block
  // (a command issued from inside `done` runs at once, inline).
  // An error reply completes with errc::internal and its text in Value::str.
  void command(std::vector<std::string> argv, limits::TimePoint deadline, Done done);
  // EVALSHA; after a NOSCRIPT, loads the script and tries once more.
  void eval(const Script& script, std::vector<std::string> keys, std::vector<std::string> args,
            limits::TimePoint deadline, Done done);
  // Runs `task` on the coordination's thread `seconds` from now (polling for a lease).
  void after(double seconds, std::function<void()> task);
  // The same, waiting for the answer. Throws Error.
  Value call(std::vector<std::string> argv, double timeout);
  Value call_script(const Script& script, std::vector<std::string> keys, std::vector<std::string> args,
                    double timeout);

  // limits::SharedCounter: every bucket is a key under "<ns>:". Calls of cost 1 under rates
  // alone are served from slots reserved ahead in batches (then `done` may run at once, on
  // the caller's thread); the rest take one script call each.
  void reserve(std::vector<limits::SharedRule> rules, double cost, double max_wait,
               limits::TimePoint deadline, std::function<void(limits::SharedGrant)> done) override;

  std::string key(std::string_view name) const;  // "<ns>:<name>"
  const std::string& redacted_url() const;
  const Options& options() const;
  Stats stats() const;

  class Impl;

 private:
  Coordination() = default;
  void reserve_once(std::vector<limits::SharedRule> rules, double cost, double max_wait,
                    limits::TimePoint deadline, std::function<void(limits::SharedGrant)> done);
  static void drop_stale(std::deque<limits::TimePoint>& slots, const std::vector<limits::SharedRule>& rules);
  void refill(const std::string& name, std::vector<limits::SharedRule> rules, double max_wait,
              limits::TimePoint deadline);
  void stocked(const std::string& name, const std::vector<limits::SharedRule>& rules, std::size_t k,
               double interval, double max_wait, limits::TimePoint deadline, limits::SharedGrant batch);
  std::shared_ptr<Impl> impl_;
};

// A lock with a lease: SET NX PX with a random token; renewed and released only by its holder
// (a compare-and-act script), lapsing by itself `lease` seconds after the last renewal.
class Lease {
 public:
  // Tries once; held() is false when someone else holds it.
  static std::shared_ptr<Lease> try_acquire(std::shared_ptr<Coordination> coord, std::string name,
                                            double lease, double timeout);
  bool held() const { return held_; }
  const std::string& name() const { return name_; }
  double lease() const { return lease_; }
  // True while still ours (and extended by `lease` from now); false once it lapsed or moved on.
  bool renew(double timeout);
  // True when it was still ours. Idempotent.
  bool release(double timeout);

 private:
  Lease() = default;
  std::shared_ptr<Coordination> coord_;
  std::string name_;
  std::string key_;
  std::string token_;
  double lease_ = 0;
  bool held_ = false;
};

// The OAuth2 refresh lock and the shared token record (sealed under `key32`, see
// auth::seal_record), both under "<ns>:token:<id>".
std::shared_ptr<auth::RefreshLock> make_refresh_lock(std::shared_ptr<Coordination> coord);
std::shared_ptr<auth::TokenStore> make_token_store(std::shared_ptr<Coordination> coord, std::string key32);

}  // namespace isthmus::coord
