// The limiter: pure bookkeeping that answers "how long must this call wait?" and never sleeps.
// The caller arms a timer for the wait (GovernedTransport does it with the engine's Asio timers).
//
// A Limiter holds rules — GCRA rates, calendar-window quotas, in-flight caps and adaptive
// (AIMD) rates or caps — and applies all of them to every call, each to the bucket its scope
// selects from the call's Key. One Limiter shared by several clients governs them together.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <unordered_map>
#include <variant>
#include <vector>

#include "isthmus/limits/clock.hpp"
#include "isthmus/limits/server_signals.hpp"
#include "isthmus/limits/shared.hpp"

namespace isthmus::limits {

// Who a call is made for. The endpoint is a name from the cost table (never a raw path, so
// ids in paths cannot grow the key space); "" when no cost entry matched.
struct Key {
  std::string provider;  // the host, unless the caller names the provider
  std::string credential;
  std::string tenant;
  std::string endpoint;
  std::string str() const;  // "provider/credential/tenant/endpoint", for snapshots
};

// Which parts of the Key select a rule's bucket.
enum Scope : unsigned {
  kProvider = 1,
  kCredential = 2,
  kTenant = 4,
  kEndpoint = 8,
  kDefaultScope = kProvider | kCredential | kTenant,
};

enum class Priority : int { low = 0, normal = 1, high = 2 };

// `rate` units per `per` seconds, with up to `burst` units at once (GCRA).
struct RateSpec {
  double rate = 0;
  double per = 1;
  double burst = 1;
};
// At most `n` units per calendar window of `window` seconds (UTC-aligned: a day quota resets
// at midnight UTC, as most APIs' do).
struct QuotaSpec {
  double n = 0;
  double window = 86400;
};
// At most `n` calls in flight.
struct ConcurrencySpec {
  int n = 0;
};
// AIMD between a floor and a ceiling, fed by observe(): slow start (multiplicative growth)
// until the first congestion signal, then additive growth and multiplicative cuts.
struct AdaptiveSpec {
  enum class Target { rate, concurrency } target = Target::rate;
  double min = 1;
  double max = 100;
  double start = 0;           // 0 = start at min
  double decrease = 0.85;     // factor applied on a congestion signal (the rate there is remembered)
  double latency_factor = 0;  // >0: latency above this multiple of the baseline is congestion
};

struct Rule {
  std::variant<RateSpec, QuotaSpec, ConcurrencySpec, AdaptiveSpec> spec;
  unsigned scope = kDefaultScope;
  std::string name;  // shown in snapshots and errors; defaults to a description
};

// A tenant's part of the allowance: its weight when tenants compete for the same rules (the
// Governor's fair queuing), and limits of its own nested inside them (a call needs a slot of
// both). Keyed by the call's Key::tenant; a tenant without one has weight 1 and no own limit.
struct ShareSpec {
  double weight = 1;
  std::vector<Rule> rules;  // RateSpec and ConcurrencySpec only; counted per tenant
};

struct LimiterOptions {
  std::vector<Rule> rules;
  std::map<std::string, ShareSpec> shares;  // by tenant; moved into the Limiter (see set_share)
  // Endpoint cost table: "METHOD /path/prefix" or "/path/prefix" -> cost. The longest match
  // names the endpoint; unmatched calls cost 1 and have endpoint "".
  std::vector<std::pair<std::string, double>> costs;
  double max_wait = 3600;         // a reservation that would wait longer fails at once
  double max_server_wait = 900;   // Retry-After and resets beyond this are clamped (and counted)
  // Seconds kept back from every rate's burst tolerance (never more than half of it). A server measures
  // arrivals, not sends: a first call slowed by a new connection and a later one on a warm
  // connection arrive closer together than they were sent. Costs no long-run rate.
  double margin = 0.002;
  double margin_fraction = 0.25;  // ... or this share of the tolerance, if more (under load,
                                  // one call can lag the next by more than 2 ms)
  // Seconds a call sent to an idle rate bucket holds the rest back while it is answered, so
  // our clock never runs ahead of the server's (see Limiter::Bucket). 0 = off.
  double probe_timeout = 0.25;
  std::shared_ptr<Clock> clock;   // null = SteadyClock
  // Set: the rate and quota rules are counted here, shared with every process that uses the
  // same `shared_name` and rules, instead of in this process (see limits/shared.hpp).
  std::shared_ptr<SharedCounter> shared;
  std::string shared_name = "limits";
};

// Throw isthmus::Error(errc::invalid_argument) naming the field.
void validate(const LimiterOptions& options);
void validate(const std::string& tenant, const ShareSpec& share);

struct Reservation {
  Duration wait{};          // how long to wait before sending; 0 = now
  bool granted = false;     // true: committed; the caller sends after `wait` and then release()s
  bool blocked = false;     // an in-flight cap is full: ask again after a release
  std::error_code error;    // quota_exhausted / rate_limited: would wait longer than max_wait
  double resets_at = 0;     // Unix seconds the blocking quota refills (with quota_exhausted)
  std::uint64_t ticket = 0; // for release(); 0 when there is nothing to release
  std::string reason;       // which rule set the wait
};

// What one attempt's outcome tells the limiter.
struct Observation {
  int status = 0;                     // 0: no HTTP response
  bool timeout = false;
  bool transport_error = false;       // connection failed or broke (not a congestion signal)
  Duration latency{};
  std::optional<double> retry_after;  // seconds, from Retry-After
  ServerQuota quota;                  // from X-RateLimit-* / RateLimit headers
};
Observation observation_from(const http::Response& response, std::error_code ec, double unix_now);
// True for what adaptive limits treat as "slow down".
bool is_congestion(const Observation& o);

struct KeyStats {
  std::string key;
  std::uint64_t granted = 0;          // reservations committed
  std::uint64_t waited = 0;           // ... of which had to wait
  double wait_seconds = 0;            // total wait handed out
  std::uint64_t refused = 0;          // quota exhausted / wait too long
  std::uint64_t responses = 0;
  std::uint64_t status_429 = 0;
  std::uint64_t status_5xx = 0;
  std::uint64_t timeouts = 0;
  std::uint64_t retries = 0;
  std::uint64_t server_waits_clamped = 0;
  int in_flight = 0;                  // counted when an in-flight cap applies
  double paused_for = 0;                   // seconds left of a server-imposed pause
  std::optional<double> adaptive_limit;    // current adaptive rate or cap, if a rule adapts
  std::optional<double> server_remaining;  // last reported by the server
};

// A tenant's figures, summed over its keys.
struct ShareStats {
  std::string tenant;
  double weight = 1;
  bool configured = false;  // set by a ShareSpec (otherwise the defaults)
  std::uint64_t granted = 0;
  std::uint64_t waited = 0;
  double wait_seconds = 0;
};

class Limiter {
 public:
  explicit Limiter(LimiterOptions options);  // validates
  ~Limiter();
  Limiter(const Limiter&) = delete;
  Limiter& operator=(const Limiter&) = delete;

  // Commits a slot `wait` from now (unless blocked or refused). Thread-safe.
  Reservation reserve(const Key& key, double cost, Priority priority = Priority::normal);
  // Commits only when the call may go now; otherwise says how long (or that it is blocked)
  // without taking anything, so a queue can let a later, higher-priority call go first.
  Reservation try_acquire(const Key& key, double cost, Priority priority = Priority::normal);
  // Ends a granted reservation's in-flight time. Idempotent per ticket. True when it ended a
  // probe, so calls waiting on any key may go sooner.
  bool release(std::uint64_t ticket);
  // Feeds adaptive rules, server pauses and metrics.
  void observe(const Key& key, const Observation& observation);
  // Pauses the key's server scope until `seconds` from now (clamped to max_server_wait).
  void pause(const Key& key, double seconds);
  void note_retry(const Key& key);
  // A queued call waited this long before try_acquire() let it go (for the metrics).
  void note_wait(const Key& key, double seconds);

  // Sets (or replaces) a tenant's share; validates first. A changed limit starts with fresh
  // buckets; calls already granted end against the old ones.
  void set_share(const std::string& tenant, ShareSpec share);
  bool remove_share(const std::string& tenant);  // false: it had none
  double weight(const std::string& tenant) const;  // 1 without a share
  std::vector<ShareStats> share_stats() const;  // configured shares and every tenant seen

  // The shared buckets a call for `key` takes from (empty without options().shared).
  std::vector<SharedRule> shared_rules(const Key& key) const;

  // The cost and endpoint name the cost table gives a request.
  std::pair<std::string, double> endpoint_cost(std::string_view method, std::string_view path) const;

  std::vector<KeyStats> snapshot() const;
  const LimiterOptions& options() const { return options_; }
  const Clock& clock() const { return *clock_; }
  const std::shared_ptr<Clock>& clock_ptr() const { return clock_; }

 private:
  struct Bucket;
  struct KeyState;
  struct Ticket;
  struct ShareState;
  Reservation acquire(const Key& key, double cost, bool commit_if_waiting, Priority priority);
  using RuleSpec = decltype(Rule::spec);
  bool counted_elsewhere(const RuleSpec& spec) const;
  Bucket& bucket(std::size_t rule, const Key& key);
  KeyState& key_state(const Key& key);

  LimiterOptions options_;
  std::shared_ptr<Clock> clock_;
  mutable std::mutex mutex_;
  std::vector<std::unordered_map<std::string, std::unique_ptr<Bucket>>> buckets_;  // per rule
  std::map<std::string, std::unique_ptr<KeyState>> keys_;
  struct ServerPace;
  std::unordered_map<std::string, std::unique_ptr<ServerPace>> servers_;  // per server scope
  std::unordered_map<std::uint64_t, std::unique_ptr<Ticket>> tickets_;
  // By tenant. Shared with the tickets of granted calls, so a removed share's in-flight counts
  // stay valid until those calls end.
  std::unordered_map<std::string, std::shared_ptr<ShareState>> shares_;
  bool paces_ = false;  // some rule sets a pace of its own (rate, quota or adaptive rate)
  std::uint64_t next_ticket_ = 1;
};

}  // namespace isthmus::limits
