#include "sandbox/stats.hpp"

#include <nlohmann/json.hpp>

namespace isthmus::sandbox {

void Stats::connection_opened() {
  accepted_.fetch_add(1, std::memory_order_relaxed);
  auto now_open = open_.fetch_add(1, std::memory_order_relaxed) + 1;
  auto seen = max_open_.load(std::memory_order_relaxed);
  while (now_open > seen && !max_open_.compare_exchange_weak(seen, now_open, std::memory_order_relaxed)) {
  }
}

void Stats::connection_closed() { open_.fetch_sub(1, std::memory_order_relaxed); }

Stats::Stats(std::size_t max_arrivals, std::size_t tenants) : max_arrivals_(max_arrivals), tenants_(tenants) {}

Stats::Counters* Stats::of(int tenant) {
  return tenant >= 0 && static_cast<std::size_t>(tenant) < tenants_.size() ? &tenants_[static_cast<std::size_t>(tenant)]
                                                                             : nullptr;
}

namespace {

template <typename Map>
std::uint64_t& slot(Map& map, std::string_view key) {
  auto it = map.find(key);
  if (it == map.end()) it = map.emplace(std::string(key), typename Map::mapped_type{}).first;
  return it->second;
}

}  // namespace

void Stats::count_request(Counters& c, std::string_view endpoint, int status) {
  ++c.requests;
  auto it = c.by_endpoint.find(endpoint);
  if (it == c.by_endpoint.end()) it = c.by_endpoint.emplace(std::string(endpoint), std::map<int, std::uint64_t>{}).first;
  ++it->second[status];
  ++c.by_status[status];
}

void Stats::request(std::string_view endpoint, int status, double when, std::string_view credential, int tenant) {
  std::lock_guard lock(mutex_);
  count_request(totals_, endpoint, status);
  if (Counters* t = of(tenant)) count_request(*t, endpoint, status);
  else if (!tenants_.empty()) ++without_tenant_;
  if (arrivals_.size() < max_arrivals_)
    arrivals_.push_back({when, std::string(endpoint), status, std::string(credential), tenant});
  else
    ++arrivals_dropped_;
}

void Stats::rate_limited(int tenant, bool app) {
  std::lock_guard lock(mutex_);
  for (Counters* c : {&totals_, of(tenant)}) {
    if (!c) continue;
    ++c->rate_limited;
    if (app) ++c->app_rate_limited;
  }
}

void Stats::token_issued(std::string_view grant, int tenant) {
  std::lock_guard lock(mutex_);
  for (Counters* c : {&totals_, of(tenant)})
    if (c) ++slot(c->tokens_issued, grant);
}

void Stats::token_refreshed(int tenant) {
  std::lock_guard lock(mutex_);
  for (Counters* c : {&totals_, of(tenant)})
    if (c) ++c->tokens_refreshed;
}

void Stats::token_revoked(int tenant, std::uint64_t n) {
  std::lock_guard lock(mutex_);
  for (Counters* c : {&totals_, of(tenant)})
    if (c) c->tokens_revoked += n;
}

void Stats::records_served(std::string_view resource, std::uint64_t n, int tenant) {
  std::lock_guard lock(mutex_);
  for (Counters* c : {&totals_, of(tenant)})
    if (c) slot(c->served, resource) += n;
}

bool Stats::record_received(std::string_view resource, const std::string& id, int tenant) {
  std::lock_guard lock(mutex_);
  Counters* t = of(tenant);
  auto& received = (t ? *t : single_).received;
  auto it = received.find(resource);
  if (it == received.end()) it = received.emplace(std::string(resource), Received{}).first;
  bool fresh = it->second.ids.insert(id).second;
  if (!fresh) ++it->second.duplicates;
  return fresh;
}

void Stats::idempotent_replay(std::string_view resource, int tenant) {
  std::lock_guard lock(mutex_);
  Counters* t = of(tenant);
  auto& received = (t ? *t : single_).received;
  auto it = received.find(resource);
  if (it == received.end()) it = received.emplace(std::string(resource), Received{}).first;
  ++it->second.replays;
}

void Stats::fault(std::string_view kind) {
  std::lock_guard lock(mutex_);
  auto it = faults_.find(kind);
  if (it == faults_.end()) it = faults_.emplace(std::string(kind), 0).first;
  ++it->second;
}

void Stats::webhook(std::string_view outcome) {
  std::lock_guard lock(mutex_);
  auto it = webhooks_.find(outcome);
  if (it == webhooks_.end()) it = webhooks_.emplace(std::string(outcome), 0).first;
  ++it->second;
}

namespace {

using Json = nlohmann::json;

template <typename Map>
Json object_of(const Map& map) {
  Json out = Json::object();
  for (const auto& [key, n] : map) out[key] = n;
  return out;
}

}  // namespace

std::string Stats::json() const {
  struct Sum {
    std::uint64_t unique = 0, duplicate = 0, replays = 0;
  };
  using Sums = std::map<std::string, Sum>;
  auto add = [](Sums& into, const Counters& from) {
    for (const auto& [resource, r] : from.received) {
      Sum& s = into[resource];
      s.unique += r.ids.size();  // ids of different tenants are different records
      s.duplicate += r.duplicates;
      s.replays += r.replays;
    }
  };
  // The shape of one set of counters, the same at the top level and per tenant.
  auto fill = [](Json& out, const Counters& c, const Sums& received) {
    Json by_endpoint = Json::object();
    for (const auto& [endpoint, statuses] : c.by_endpoint) {
      Json s = Json::object();
      for (auto [status, n] : statuses) s[std::to_string(status)] = n;
      by_endpoint[endpoint] = std::move(s);
    }
    Json by_status = Json::object();
    for (auto [status, n] : c.by_status) by_status[std::to_string(status)] = n;
    out["requests"] = {{"total", c.requests}, {"by_endpoint", std::move(by_endpoint)}, {"by_status", std::move(by_status)}};
    out["rate_limited"] = c.rate_limited;
    out["app_rate_limited"] = c.app_rate_limited;
    std::uint64_t issued = 0;
    for (const auto& [grant, n] : c.tokens_issued) issued += n;
    out["tokens"] = {{"issued", issued}, {"by_grant", object_of(c.tokens_issued)},
                     {"refreshed", c.tokens_refreshed}, {"revoked", c.tokens_revoked}};
    out["records_served"] = object_of(c.served);
    Json rec = Json::object();
    for (const auto& [resource, r] : received)
      rec[resource] = {{"unique", r.unique}, {"duplicate", r.duplicate}, {"idempotent_replays", r.replays}};
    out["records_received"] = std::move(rec);
  };

  Json out;
  out["connections"] = {{"accepted", accepted_.load()}, {"open", open_.load()}, {"max_open", max_open_.load()}};
  std::lock_guard lock(mutex_);
  Sums all;
  add(all, single_);
  Json tenants = Json::array();
  for (std::size_t i = 0; i < tenants_.size(); ++i) {
    Sums own;
    add(own, tenants_[i]);
    add(all, tenants_[i]);
    Json one = {{"tenant", i}};
    fill(one, tenants_[i], own);
    tenants.push_back(std::move(one));
  }
  fill(out, totals_, all);
  if (!tenants_.empty()) {
    out["requests"]["without_tenant"] = without_tenant_;
    out["tenants"] = std::move(tenants);
  }
  out["faults"] = object_of(faults_);
  out["webhooks"] = object_of(webhooks_);
  Json arrivals = Json::array();
  for (const auto& a : arrivals_) {
    Json one = {{"t", a.when}, {"endpoint", a.endpoint}, {"status", a.status}};
    if (!a.credential.empty()) one["credential"] = a.credential;
    if (!tenants_.empty() && a.tenant >= 0) one["tenant"] = a.tenant;
    arrivals.push_back(std::move(one));
  }
  out["arrivals"] = std::move(arrivals);
  out["arrivals_dropped"] = arrivals_dropped_;
  return out.dump();
}

void Stats::reset() {
  accepted_.store(0);
  max_open_.store(open_.load());
  std::lock_guard lock(mutex_);
  totals_ = Counters{};
  single_ = Counters{};
  for (auto& t : tenants_) t = Counters{};
  without_tenant_ = 0;
  faults_.clear();
  webhooks_.clear();
  arrivals_.clear();
  arrivals_dropped_ = 0;
}

}  // namespace isthmus::sandbox
