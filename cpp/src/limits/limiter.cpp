#include "isthmus/limits/limiter.hpp"

#include <algorithm>
#include <cmath>

#include "isthmus/error.hpp"

namespace isthmus::limits {
namespace {

constexpr char kSep = '\x1f';  // cannot appear in a host, so keys never collide

std::string scoped(const Key& k, unsigned scope) {
  std::string s;
  if (scope & kProvider) s += k.provider;
  s += kSep;
  if (scope & kCredential) s += k.credential;
  s += kSep;
  if (scope & kTenant) s += k.tenant;
  s += kSep;
  if (scope & kEndpoint) s += k.endpoint;
  return s;
}

bool finite_positive(double v) { return std::isfinite(v) && v > 0; }

[[noreturn]] void bad(const std::string& field, const std::string& why) {
  throw Error(errc::invalid_argument, field + ": " + why);
}

std::string describe(const Rule& r) {
  if (!r.name.empty()) return r.name;
  return std::visit(
      [](const auto& s) -> std::string {
        using T = std::decay_t<decltype(s)>;
        char buf[96];
        if constexpr (std::is_same_v<T, RateSpec>)
          std::snprintf(buf, sizeof buf, "rate %g per %gs (burst %g)", s.rate, s.per, s.burst);
        else if constexpr (std::is_same_v<T, QuotaSpec>)
          std::snprintf(buf, sizeof buf, "quota %g per %gs", s.n, s.window);
        else if constexpr (std::is_same_v<T, ConcurrencySpec>)
          std::snprintf(buf, sizeof buf, "concurrency %d", s.n);
        else
          std::snprintf(buf, sizeof buf, "adaptive %s %g..%g",
                        s.target == AdaptiveSpec::Target::rate ? "rate" : "concurrency", s.min, s.max);
        return buf;
      },
      r.spec);
}

// Calls per second an adaptive rate grows by each second, given where the server last said no.
// Well below that point it regains the gap fast; near it, it creeps, since a server with burst
// tolerance answers a rate a little too high only once the excess has built up, long after it
// was reached; well past it, the server may have found more room, so it probes faster again.
double rate_growth(double value, double refused_at) {
  if (value < 0.95 * refused_at) return 2 * (refused_at - value);
  if (value < 1.05 * refused_at) return 0.01 * refused_at;
  return 0.03 * value;
}

}  // namespace

std::string Key::str() const {
  std::string s = provider;
  for (const auto* part : {&credential, &tenant, &endpoint}) {
    s += '/';
    s += *part;
  }
  return s;
}

namespace {

void validate_rule(const std::string& at, const Rule& rule) {
    std::visit(
        [&](const auto& s) {
          using T = std::decay_t<decltype(s)>;
          if constexpr (std::is_same_v<T, RateSpec>) {
            if (!finite_positive(s.rate)) bad(at + ".rate", std::to_string(s.rate) + " must be a number greater than 0");
            if (!finite_positive(s.per)) bad(at + ".per", std::to_string(s.per) + " must be a number of seconds greater than 0");
            if (!std::isfinite(s.burst) || s.burst < 1) bad(at + ".burst", std::to_string(s.burst) + " must be at least 1");
          } else if constexpr (std::is_same_v<T, QuotaSpec>) {
            if (!finite_positive(s.n)) bad(at + ".n", std::to_string(s.n) + " must be greater than 0");
            if (!finite_positive(s.window)) bad(at + ".window", std::to_string(s.window) + " must be seconds greater than 0");
          } else if constexpr (std::is_same_v<T, ConcurrencySpec>) {
            if (s.n < 1) bad(at + ".n", std::to_string(s.n) + " must be at least 1");
          } else {
            if (!finite_positive(s.min)) bad(at + ".min", std::to_string(s.min) + " must be greater than 0");
            if (!finite_positive(s.max) || s.max < s.min) bad(at + ".max", std::to_string(s.max) + " must be at least min");
            if (s.start != 0 && (!std::isfinite(s.start) || s.start < s.min || s.start > s.max))
              bad(at + ".start", std::to_string(s.start) + " must lie between min and max");
            if (!(s.decrease > 0 && s.decrease < 1)) bad(at + ".decrease", std::to_string(s.decrease) + " must be between 0 and 1");
            if (!std::isfinite(s.latency_factor) || s.latency_factor < 0 || (s.latency_factor > 0 && s.latency_factor <= 1))
              bad(at + ".latency_factor", std::to_string(s.latency_factor) + " must be 0 (off) or greater than 1");
          }
        },
        rule.spec);
}

}  // namespace

void validate(const std::string& tenant, const ShareSpec& share) {
  if (tenant.empty()) bad("shares", "a tenant name is empty");
  const std::string at = "shares[" + tenant + "]";
  if (!finite_positive(share.weight))
    bad(at + ".weight", std::to_string(share.weight) + " must be a number greater than 0");
  for (std::size_t i = 0; i < share.rules.size(); ++i) {
    const std::string where = at + ".limit[" + std::to_string(i) + "]";
    const auto& spec = share.rules[i].spec;
    if (!std::holds_alternative<RateSpec>(spec) && !std::holds_alternative<ConcurrencySpec>(spec))
      bad(where, describe(share.rules[i]) + " is not valid in a share: a rate or a concurrency rule is");
    validate_rule(where, share.rules[i]);
  }
}

void validate(const LimiterOptions& o) {
  for (std::size_t i = 0; i < o.rules.size(); ++i) validate_rule("rules[" + std::to_string(i) + "]", o.rules[i]);
  for (const auto& [tenant, share] : o.shares) validate(tenant, share);
  for (const auto& [pattern, cost] : o.costs) {
    if (pattern.empty()) bad("costs", "an endpoint pattern is empty");
    if (!finite_positive(cost)) bad("costs[" + pattern + "]", std::to_string(cost) + " must be greater than 0");
  }
  if (!finite_positive(o.max_wait)) bad("max_wait", "must be seconds greater than 0");
  if (!finite_positive(o.max_server_wait)) bad("max_server_wait", "must be seconds greater than 0");
}

struct Limiter::Bucket {
  TimePoint tat{};                // GCRA: theoretical arrival time of the next unit
  std::int64_t window_index = -1; // quota: which calendar window `used` counts
  double used = 0;
  int in_flight = 0;
  // A call sent to an idle rate bucket is a probe: the server starts its own clock when that
  // call arrives, which may be later than we sent it (a new connection, a busy thread). Until
  // the probe is answered (or probe_until passes) the bucket lends nothing more; its answer
  // moves our clock to no earlier than the server's.
  bool probe_out = false;
  TimePoint probe_until{};
  // Adaptive state.
  double value = 0;
  double ssthresh = 0;  // the rate (or cap) at the last congestion signal: where the server said no
  bool slow_start = true;
  TimePoint last_cut{};
  double latency_base = 0;
  double latency_ewma = 0;
};

// What the server said about the allowance of one server scope (see observe()).
struct Limiter::ServerPace {
  TimePoint paused_until{};
  // After "Remaining: 0" from a server whose policy gives its rate, calls go one slot apart
  // from the moment it said the next one frees up, until the key falls idle with room again.
  bool pacing = false;
  Duration slot{};
  TimePoint next{};
};

struct Limiter::KeyState {
  KeyStats stats;
  std::string tenant;
  std::vector<std::pair<std::size_t, Bucket*>> adaptive;  // (rule, bucket) this key feeds
  ServerPace* server = nullptr;                            // shared by the key's server scope
};

struct Limiter::Ticket {
  std::vector<Bucket*> in_flight;
  std::vector<std::pair<Bucket*, Duration>> probes;  // bucket, the call's share of its interval
  KeyState* key = nullptr;
  std::shared_ptr<ShareState> share;  // keeps the share's buckets while the call is in flight
};

struct Limiter::ShareState {
  ShareSpec spec;
  std::vector<std::unique_ptr<Bucket>> buckets;  // one per rule of spec
};

namespace {

bool same_rules(const std::vector<Rule>& a, const std::vector<Rule>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const auto* ra = std::get_if<RateSpec>(&a[i].spec);
    const auto* rb = std::get_if<RateSpec>(&b[i].spec);
    const auto* ca = std::get_if<ConcurrencySpec>(&a[i].spec);
    const auto* cb = std::get_if<ConcurrencySpec>(&b[i].spec);
    if (ra && rb) {
      if (ra->rate != rb->rate || ra->per != rb->per || ra->burst != rb->burst) return false;
    } else if (ca && cb) {
      if (ca->n != cb->n) return false;
    } else {
      return false;
    }
  }
  return true;
}

}  // namespace

Limiter::Limiter(LimiterOptions options) : options_(std::move(options)) {
  validate(options_);
  auto shares = std::move(options_.shares);
  options_.shares.clear();
  for (auto& [tenant, share] : shares) set_share(tenant, std::move(share));
  clock_ = options_.clock ? options_.clock : SteadyClock::shared();
  buckets_.resize(options_.rules.size());
  for (const auto& r : options_.rules) {
    const auto* a = std::get_if<AdaptiveSpec>(&r.spec);
    if (std::holds_alternative<RateSpec>(r.spec) || std::holds_alternative<QuotaSpec>(r.spec) ||
        (a && a->target == AdaptiveSpec::Target::rate))
      paces_ = true;
  }
}

Limiter::~Limiter() = default;

bool Limiter::counted_elsewhere(const RuleSpec& spec) const {
  return options_.shared && (std::holds_alternative<RateSpec>(spec) || std::holds_alternative<QuotaSpec>(spec));
}

std::vector<SharedRule> Limiter::shared_rules(const Key& key) const {
  std::vector<SharedRule> out;
  if (!options_.shared) return out;
  std::vector<const Rule*> rules;
  for (const auto& r : options_.rules) rules.push_back(&r);
  std::shared_ptr<ShareState> share;
  {
    std::lock_guard lock(mutex_);
    if (auto it = shares_.find(key.tenant); it != shares_.end()) share = it->second;
  }
  // A share's rules are named after its tenant, so their buckets are the tenant's everywhere.
  if (share)
    for (const auto& r : share->spec.rules) rules.push_back(&r);
  for (const Rule* rp : rules) {
    const Rule& r = *rp;
    SharedRule s;
    if (auto* rs = std::get_if<RateSpec>(&r.spec)) {
      // The same margin as a local rate: arrivals at the server bunch up more than sends.
      const double interval = rs->per / rs->rate;
      const double tolerance = (rs->burst - 1) * interval;
      s.a = interval;
      s.b = rs->burst * interval -
            std::min(std::max(options_.margin, options_.margin_fraction * tolerance), tolerance / 2);
    } else if (auto* q = std::get_if<QuotaSpec>(&r.spec)) {
      s.quota = true;
      s.a = q->n;
      s.b = q->window;
    } else {
      continue;
    }
    s.describe = describe(r);
    // The rule's own terms are in the name, so processes that disagree on a limit do not
    // silently share one bucket; the scoped key keeps tenants and credentials apart.
    std::string scoped_key = scoped(key, r.scope);
    for (auto& c : scoped_key)
      if (c == kSep) c = '/';
    s.bucket = options_.shared_name + ":" + s.describe + ":" + scoped_key;
    out.push_back(std::move(s));
  }
  return out;
}

Limiter::Bucket& Limiter::bucket(std::size_t rule, const Key& key) {
  auto& slot = buckets_[rule][scoped(key, options_.rules[rule].scope)];
  if (!slot) {
    slot = std::make_unique<Bucket>();
    if (auto* a = std::get_if<AdaptiveSpec>(&options_.rules[rule].spec)) {
      slot->value = a->start > 0 ? a->start : a->min;
      slot->ssthresh = a->max;
    }
  }
  return *slot;
}

Limiter::KeyState& Limiter::key_state(const Key& key) {
  auto& slot = keys_[key.str()];
  if (!slot) {
    slot = std::make_unique<KeyState>();
    slot->stats.key = key.str();
    slot->tenant = key.tenant;
    for (std::size_t r = 0; r < options_.rules.size(); ++r)
      if (std::holds_alternative<AdaptiveSpec>(options_.rules[r].spec))
        slot->adaptive.emplace_back(r, &bucket(r, key));
    // Server signals pause the credential's whole allowance, whatever the endpoint.
    auto& server = servers_[scoped(key, kDefaultScope)];
    if (!server) server = std::make_unique<ServerPace>();
    slot->server = server.get();
  }
  return *slot;
}

std::pair<std::string, double> Limiter::endpoint_cost(std::string_view method,
                                                      std::string_view path) const {
  const std::pair<std::string, double>* best = nullptr;
  std::size_t best_len = 0;
  for (const auto& entry : options_.costs) {
    std::string_view pattern = entry.first;
    auto space = pattern.find(' ');
    std::string_view prefix = pattern;
    if (space != std::string_view::npos) {
      if (!http::iequals(pattern.substr(0, space), method)) continue;
      prefix = pattern.substr(space + 1);
    }
    if (path.substr(0, prefix.size()) != prefix) continue;
    // A prefix matches whole segments only: "/v1/import" is not "/v1/imports".
    if (path.size() > prefix.size() && !prefix.empty() && prefix.back() != '/' && path[prefix.size()] != '/')
      continue;
    // Longer prefixes win; with equal prefixes, a method-specific entry wins.
    std::size_t len = prefix.size() * 2 + (space != std::string_view::npos);
    if (!best || len > best_len) {
      best = &entry;
      best_len = len;
    }
  }
  if (!best) return {"", 1.0};
  return *best;
}

Reservation Limiter::reserve(const Key& key, double cost, Priority priority) {
  return acquire(key, cost, true, priority);
}

Reservation Limiter::try_acquire(const Key& key, double cost, Priority priority) {
  return acquire(key, cost, false, priority);
}

Reservation Limiter::acquire(const Key& key, double cost, bool commit_if_waiting, Priority) {
  Reservation r;
  if (!finite_positive(cost)) {
    r.error = make_error_code(errc::invalid_argument);
    r.reason = "cost must be greater than 0";
    return r;
  }
  std::lock_guard lock(mutex_);
  const TimePoint now = clock_->now();
  const double unix_now = clock_->unix_now();
  KeyState& ks = key_state(key);
  // The app's rules, then those of the tenant's share: a call needs a slot of every one, and
  // takes from none unless it gets all (two-level GCRA).
  ShareState* share = nullptr;
  if (!shares_.empty())
    if (auto it = shares_.find(key.tenant); it != shares_.end()) share = it->second.get();
  const std::size_t n_app = options_.rules.size();
  const std::size_t n = n_app + (share ? share->spec.rules.size() : 0);
  std::vector<std::pair<const Rule*, Bucket*>> rb(n);
  for (std::size_t i = 0; i < n_app; ++i) rb[i] = {&options_.rules[i], &bucket(i, key)};
  for (std::size_t i = n_app; i < n; ++i) rb[i] = {&share->spec.rules[i - n_app], share->buckets[i - n_app].get()};

  // In-flight caps first: when one is full no time can be promised.
  for (std::size_t i = 0; i < n; ++i) {
    const auto& spec = rb[i].first->spec;
    int cap = 0;
    if (auto* c = std::get_if<ConcurrencySpec>(&spec)) cap = c->n;
    else if (auto* a = std::get_if<AdaptiveSpec>(&spec); a && a->target == AdaptiveSpec::Target::concurrency)
      cap = std::max(1, static_cast<int>(std::floor(rb[i].second->value)));
    if (cap > 0 && rb[i].second->in_flight >= cap) {
      r.blocked = true;
      r.reason = describe(*rb[i].first);
      return r;
    }
  }

  // The earliest time every rule admits the call. Rules only ever push it later, so a few
  // rounds settle it (a quota may move it into the next window, which a rate then accepts).
  ServerPace& sp = *ks.server;
  TimePoint t = std::max(now, sp.paused_until);
  if (t > now) r.reason = "paused by the server";
  if (sp.pacing && sp.next > t) {
    t = sp.next;
    r.reason = "paced by the server's policy";
  }
  std::size_t binding = n;
  double resets_at = 0;
  bool impossible = false;
  for (int round = 0; round < 8; ++round) {
    bool moved = false;
    for (std::size_t i = 0; i < n; ++i) {
      const auto& spec = rb[i].first->spec;
      TimePoint e = t;
      if (auto* q = std::get_if<QuotaSpec>(&spec); q && cost > q->n) {
        impossible = true;
        binding = i;
        continue;
      }
      if (counted_elsewhere(spec)) continue;
      if (auto* rs = std::get_if<RateSpec>(&spec)) {
        const double interval = rs->per / rs->rate;  // seconds per unit
        const double tolerance = (rs->burst - std::min(cost, rs->burst)) * interval;
        const double slack = tolerance - std::min(std::max(options_.margin, options_.margin_fraction * tolerance), tolerance / 2);
        e = std::max(t, rb[i].second->tat - seconds(slack));
        if (rb[i].second->probe_out && now < rb[i].second->probe_until) e = std::max(e, rb[i].second->probe_until);
      } else if (auto* a = std::get_if<AdaptiveSpec>(&spec); a && a->target == AdaptiveSpec::Target::rate) {
        const double interval = 1.0 / rb[i].second->value;
        const double burst = std::max(1.0, rb[i].second->value / 50.0);
        const double tolerance = (burst - std::min(cost, burst)) * interval;
        const double slack = tolerance - std::min(std::max(options_.margin, options_.margin_fraction * tolerance), tolerance / 2);
        e = std::max(t, rb[i].second->tat - seconds(slack));
      } else if (auto* q = std::get_if<QuotaSpec>(&spec)) {
        const double unix_t = unix_now + to_seconds(t - now);
        auto idx = static_cast<std::int64_t>(std::floor(unix_t / q->window));
        double used = rb[i].second->window_index == idx ? rb[i].second->used : 0;
        if (rb[i].second->window_index > idx) {  // slots of a later window are already promised
          idx = rb[i].second->window_index;
          used = rb[i].second->used;
          e = now + seconds(static_cast<double>(idx) * q->window - unix_now);
        }
        if (used + cost > q->n) {
          const double next = static_cast<double>(idx + 1) * q->window;
          e = now + seconds(next - unix_now);
          resets_at = next;
        }
        e = std::max(e, t);
      }
      if (e > t) {
        t = e;
        binding = i;
        moved = true;
      }
    }
    if (!moved) break;
  }
  if (binding < n) r.reason = describe(*rb[binding].first);
  r.wait = t - now;
  if (impossible) {
    r.error = make_error_code(errc::invalid_argument);
    r.reason = "cost " + std::to_string(cost) + " exceeds " + describe(*rb[binding].first);
    ++ks.stats.refused;
    return r;
  }
  if (to_seconds(r.wait) > options_.max_wait) {
    const bool quota = binding < n && std::holds_alternative<QuotaSpec>(rb[binding].first->spec);
    r.error = make_error_code(quota ? errc::quota_exhausted : errc::rate_limited);
    r.resets_at = quota ? resets_at : unix_now + to_seconds(r.wait);
    ++ks.stats.refused;
    return r;
  }
  if (r.wait > Duration::zero() && !commit_if_waiting) return r;

  // Commit: every rule takes its share at time t.
  // A call let go late (a busy timer) does not move the grid: the server's bucket keeps its own
  // schedule too, so the next call may catch up.
  if (sp.pacing) sp.next = std::max(sp.next, t - sp.slot) + seconds(cost * to_seconds(sp.slot));
  auto ticket = std::make_unique<Ticket>();
  ticket->key = &ks;
  for (std::size_t i = 0; i < n; ++i) {
    const auto& spec = rb[i].first->spec;
    Bucket& bk = *rb[i].second;
    if (counted_elsewhere(spec)) continue;
    if (auto* rs = std::get_if<RateSpec>(&spec)) {
      const Duration share = seconds(cost * rs->per / rs->rate);
      if (options_.probe_timeout > 0 && bk.tat <= t) {
        bk.probe_out = true;
        bk.probe_until = t + seconds(options_.probe_timeout);
        ticket->probes.emplace_back(&bk, share);
      }
      bk.tat = std::max(bk.tat, t) + share;
    } else if (auto* q = std::get_if<QuotaSpec>(&spec)) {
      const auto idx = static_cast<std::int64_t>(std::floor((unix_now + to_seconds(t - now)) / q->window));
      if (bk.window_index != idx) {
        bk.window_index = std::max(idx, bk.window_index);
        bk.used = 0;
      }
      bk.used += cost;
    } else if (std::holds_alternative<ConcurrencySpec>(spec)) {
      ++bk.in_flight;
      ticket->in_flight.push_back(&bk);
    } else if (auto* a = std::get_if<AdaptiveSpec>(&spec)) {
      if (a->target == AdaptiveSpec::Target::rate) {
        bk.tat = std::max(bk.tat, t) + seconds(cost / bk.value);
      } else {
        ++bk.in_flight;
        ticket->in_flight.push_back(&bk);
      }
    }
  }
  r.granted = true;
  // Only in-flight caps need to hear when a call ends; without one, no ticket is kept.
  if (!ticket->in_flight.empty() || !ticket->probes.empty()) {
    if (share) ticket->share = shares_.at(key.tenant);
    r.ticket = next_ticket_++;
    tickets_.emplace(r.ticket, std::move(ticket));
    ++ks.stats.in_flight;
  }
  ++ks.stats.granted;
  if (r.wait > Duration::zero()) {
    ++ks.stats.waited;
    ks.stats.wait_seconds += to_seconds(r.wait);
  }
  return r;
}

bool Limiter::release(std::uint64_t ticket) {
  std::lock_guard lock(mutex_);
  auto it = tickets_.find(ticket);
  if (it == tickets_.end()) return false;
  for (Bucket* b : it->second->in_flight) --b->in_flight;
  const TimePoint now = clock_->now();
  for (auto [b, share] : it->second->probes) {
    // The probe reached the server no later than now: count its unit from here.
    b->tat = std::max(b->tat, now + share);
    b->probe_out = false;
  }
  const bool probed = !it->second->probes.empty();
  --it->second->key->stats.in_flight;
  tickets_.erase(it);
  return probed;
}

Observation observation_from(const http::Response& response, std::error_code ec, double unix_now) {
  Observation o;
  o.status = response.status;
  o.latency = seconds(response.elapsed);
  if (ec) {
    o.timeout = ec == make_error_code(errc::timeout);
    o.transport_error = !o.timeout;
  }
  if (response.status > 0) {
    if (auto* ra = response.header("Retry-After")) o.retry_after = parse_retry_after(*ra, unix_now);
    o.quota = parse_server_quota(response.headers, unix_now);
  }
  return o;
}

bool is_congestion(const Observation& o) {
  return o.status == 429 || o.status >= 500 || o.timeout;
}

void Limiter::pause(const Key& key, double secs) {
  std::lock_guard lock(mutex_);
  KeyState& ks = key_state(key);
  if (!std::isfinite(secs) || secs <= 0) return;
  if (secs > options_.max_server_wait) {
    secs = options_.max_server_wait;
    ++ks.stats.server_waits_clamped;
  }
  ks.server->paused_until = std::max(ks.server->paused_until, clock_->now() + seconds(secs));
}

void Limiter::note_wait(const Key& key, double secs) {
  std::lock_guard lock(mutex_);
  auto& stats = key_state(key).stats;
  ++stats.waited;
  stats.wait_seconds += secs;
}

void Limiter::note_retry(const Key& key) {
  std::lock_guard lock(mutex_);
  ++key_state(key).stats.retries;
}

void Limiter::observe(const Key& key, const Observation& o) {
  double pause_for = 0;
  {
    std::lock_guard lock(mutex_);
    const TimePoint now = clock_->now();
    KeyState& ks = key_state(key);
    ++ks.stats.responses;
    if (o.status == 429) ++ks.stats.status_429;
    if (o.status >= 500) ++ks.stats.status_5xx;
    if (o.timeout) ++ks.stats.timeouts;
    if (o.quota.remaining) ks.stats.server_remaining = o.quota.remaining;

    // The server's word pauses the whole key: every later call waits, not only this one's retry.
    // "Remaining: 0" on a success pauses only a key that sets no pace of its own: servers
    // disagree on what Reset means (the window's end, or a full refill of a bucket that drips
    // back one call at a time), and a client pacing itself at the limit sees 0 all the time.
    // If that trust is misplaced, the 429 that follows carries the authoritative wait.
    // A policy that gives the server's rate (q per w) turns "Remaining: 0" into a pace rather
    // than a pause: a bucket that drips back one call per slot has the next one free a slot
    // from now, however far off its Reset (often whole seconds, rounded up) says it refills.
    const bool pace = !paces_ && o.status > 0 && o.status < 500 && o.quota.remaining && o.quota.slot;
    if (o.retry_after && (o.status == 429 || o.status == 503)) pause_for = *o.retry_after;
    else if (o.status == 429 && o.quota.reset_after) pause_for = *o.quota.reset_after;
    else if (!pace && !paces_ && o.quota.remaining && *o.quota.remaining <= 0 && o.quota.reset_after)
      pause_for = *o.quota.reset_after;
    if (pace) {
      ServerPace& sp = *ks.server;
      if (*o.quota.remaining <= 0) {
        const double slot = std::min(*o.quota.slot, options_.max_server_wait);
        const double next = o.quota.reset_after ? std::min(*o.quota.reset_after, slot) : slot;
        // The server counted from the call's arrival, somewhere between its send (now - latency)
        // and now. Starting, count from now; once paced, our own slots carry on from there and
        // are moved only if even the earliest arrival says we ran ahead of the server.
        const TimePoint from = sp.pacing ? now - o.latency : now;
        sp.pacing = true;
        sp.slot = seconds(slot);
        sp.next = std::max(sp.next, from + seconds(next));
      } else if (*o.quota.remaining > std::max(1.0, o.quota.limit.value_or(0) / 2) && sp.next + sp.slot < now) {
        // Room for a burst again while nothing paced is pending: the key fell idle, so its next
        // calls may use the burst. (While calls queue, room seen after a pause is no reason to
        // let them all go at once.)
        sp.pacing = false;
      }
    }

    const double latency = to_seconds(o.latency);
    for (auto [rule, bp] : ks.adaptive) {
      const auto& a = std::get<AdaptiveSpec>(options_.rules[rule].spec);
      Bucket& b = *bp;
      bool congested = is_congestion(o);
      if (latency > 0 && !o.transport_error) {
        b.latency_ewma = b.latency_ewma == 0 ? latency : 0.8 * b.latency_ewma + 0.2 * latency;
        // The baseline is the best latency seen, drifting up slowly so a moved server is relearned.
        b.latency_base = b.latency_base == 0 ? latency : std::min(latency, b.latency_base * 1.0005);
        const double threshold = a.latency_factor * std::max(b.latency_base, 0.005);
        if (a.latency_factor > 0 && latency > threshold && b.latency_ewma > threshold) congested = true;
      }
      const bool is_rate = a.target == AdaptiveSpec::Target::rate;
      if (congested) {
        // One cut per round trip: answers to calls sent before the cut say nothing new.
        const double cooldown = std::max(0.05, 2 * b.latency_ewma);
        if (now - b.last_cut >= seconds(cooldown)) {
          b.ssthresh = b.value;
          b.value = std::max(a.min, b.value * a.decrease);
          b.slow_start = false;
          b.last_cut = now;
        }
      } else if (o.status > 0 && o.status < 500) {
        // Grow only while the limit is what holds the caller back.
        const bool busy = is_rate ? b.tat + seconds(2.0 / b.value) >= now
                                  : b.in_flight + 1 >= static_cast<int>(std::floor(b.value));
        if (busy) {
          double step;
          if (b.slow_start) step = is_rate ? 0.5 : 1.0;
          else if (is_rate) step = std::max(0.1, rate_growth(b.value, b.ssthresh)) / b.value;  // ~value answers a second
          else step = 1.0 / b.value;
          b.value = std::min(a.max, b.value + step);
        }
      }
    }
  }
  if (pause_for > 0) pause(key, pause_for);
}

void Limiter::set_share(const std::string& tenant, ShareSpec share) {
  validate(tenant, share);
  for (auto& r : share.rules) {
    r.scope = kTenant;
    if (r.name.empty()) r.name = "share '" + tenant + "': " + describe(r);
  }
  std::lock_guard lock(mutex_);
  auto& slot = shares_[tenant];
  if (slot && same_rules(slot->spec.rules, share.rules)) {
    slot->spec.weight = share.weight;  // the buckets (and what they count) stay
    return;
  }
  auto state = std::make_shared<ShareState>();
  state->spec = std::move(share);
  for (std::size_t i = 0; i < state->spec.rules.size(); ++i) state->buckets.push_back(std::make_unique<Bucket>());
  slot = std::move(state);
}

bool Limiter::remove_share(const std::string& tenant) {
  std::lock_guard lock(mutex_);
  return shares_.erase(tenant) > 0;
}

double Limiter::weight(const std::string& tenant) const {
  std::lock_guard lock(mutex_);
  if (shares_.empty()) return 1;
  auto it = shares_.find(tenant);
  return it == shares_.end() ? 1 : it->second->spec.weight;
}

std::vector<ShareStats> Limiter::share_stats() const {
  std::lock_guard lock(mutex_);
  std::map<std::string, ShareStats> by_tenant;
  for (const auto& [tenant, share] : shares_) {
    auto& s = by_tenant[tenant];
    s.tenant = tenant;
    s.weight = share->spec.weight;
    s.configured = true;
  }
  for (const auto& [name, ks] : keys_) {
    if (ks->tenant.empty()) continue;
    auto& s = by_tenant[ks->tenant];
    s.tenant = ks->tenant;
    s.granted += ks->stats.granted;
    s.waited += ks->stats.waited;
    s.wait_seconds += ks->stats.wait_seconds;
  }
  std::vector<ShareStats> out;
  out.reserve(by_tenant.size());
  for (auto& [_, s] : by_tenant) out.push_back(std::move(s));
  return out;
}

std::vector<KeyStats> Limiter::snapshot() const {
  std::lock_guard lock(mutex_);
  const TimePoint now = clock_->now();
  std::vector<KeyStats> out;
  out.reserve(keys_.size());
  for (const auto& [name, ks] : keys_) {
    KeyStats s = ks->stats;
    s.paused_for = std::max(0.0, to_seconds(ks->server->paused_until - now));
    if (!ks->adaptive.empty()) s.adaptive_limit = ks->adaptive.front().second->value;
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace isthmus::limits
