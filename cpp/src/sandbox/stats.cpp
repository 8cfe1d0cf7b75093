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

void Stats::request(std::string_view endpoint, int status, double when, std::string_view credential) {
  std::lock_guard lock(mutex_);
  ++total_;
  auto it = by_endpoint_.find(endpoint);
  if (it == by_endpoint_.end()) it = by_endpoint_.emplace(std::string(endpoint), std::map<int, std::uint64_t>{}).first;
  ++it->second[status];
  ++by_status_[status];
  if (arrivals_.size() < max_arrivals_)
    arrivals_.push_back({when, std::string(endpoint), status, std::string(credential)});
  else
    ++arrivals_dropped_;
}

void Stats::token_issued(std::string_view grant) {
  std::lock_guard lock(mutex_);
  auto it = tokens_issued_.find(grant);
  if (it == tokens_issued_.end()) it = tokens_issued_.emplace(std::string(grant), 0).first;
  ++it->second;
}

void Stats::records_served(std::string_view resource, std::uint64_t n) {
  std::lock_guard lock(mutex_);
  auto it = served_.find(resource);
  if (it == served_.end()) it = served_.emplace(std::string(resource), 0).first;
  it->second += n;
}

bool Stats::record_received(std::string_view resource, const std::string& id) {
  std::lock_guard lock(mutex_);
  auto it = received_.find(resource);
  if (it == received_.end()) it = received_.emplace(std::string(resource), Received{}).first;
  bool fresh = it->second.ids.insert(id).second;
  if (!fresh) ++it->second.duplicates;
  return fresh;
}

void Stats::idempotent_replay(std::string_view resource) {
  std::lock_guard lock(mutex_);
  auto it = received_.find(resource);
  if (it == received_.end()) it = received_.emplace(std::string(resource), Received{}).first;
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

std::string Stats::json() const {
  using nlohmann::json;
  json out;
  out["connections"] = {{"accepted", accepted_.load()}, {"open", open_.load()}, {"max_open", max_open_.load()}};
  std::lock_guard lock(mutex_);
  json by_endpoint = json::object();
  for (const auto& [endpoint, statuses] : by_endpoint_) {
    json s = json::object();
    for (auto [status, n] : statuses) s[std::to_string(status)] = n;
    by_endpoint[endpoint] = std::move(s);
  }
  json by_status = json::object();
  for (auto [status, n] : by_status_) by_status[std::to_string(status)] = n;
  out["requests"] = {{"total", total_}, {"by_endpoint", std::move(by_endpoint)}, {"by_status", std::move(by_status)}};
  out["rate_limited"] = rate_limited_.load();
  std::uint64_t issued = 0;
  json by_grant = json::object();
  for (const auto& [grant, n] : tokens_issued_) {
    issued += n;
    by_grant[grant] = n;
  }
  out["tokens"] = {{"issued", issued}, {"by_grant", std::move(by_grant)},
                   {"refreshed", tokens_refreshed_.load()}, {"revoked", tokens_revoked_.load()}};
  json served = json::object();
  for (const auto& [resource, n] : served_) served[resource] = n;
  out["records_served"] = std::move(served);
  json received = json::object();
  for (const auto& [resource, r] : received_)
    received[resource] = {{"unique", r.ids.size()}, {"duplicate", r.duplicates}, {"idempotent_replays", r.replays}};
  out["records_received"] = std::move(received);
  json faults = json::object();
  for (const auto& [kind, n] : faults_) faults[kind] = n;
  out["faults"] = std::move(faults);
  json hooks = json::object();
  for (const auto& [kind, n] : webhooks_) hooks[kind] = n;
  out["webhooks"] = std::move(hooks);
  json arrivals = json::array();
  for (const auto& a : arrivals_) {
    json one = {{"t", a.when}, {"endpoint", a.endpoint}, {"status", a.status}};
    if (!a.credential.empty()) one["credential"] = a.credential;
    arrivals.push_back(std::move(one));
  }
  out["arrivals"] = std::move(arrivals);
  out["arrivals_dropped"] = arrivals_dropped_;
  return out.dump();
}

void Stats::reset() {
  accepted_.store(0);
  max_open_.store(open_.load());
  rate_limited_.store(0);
  tokens_refreshed_.store(0);
  tokens_revoked_.store(0);
  std::lock_guard lock(mutex_);
  total_ = 0;
  by_endpoint_.clear();
  by_status_.clear();
  tokens_issued_.clear();
  served_.clear();
  received_.clear();
  faults_.clear();
  webhooks_.clear();
  arrivals_.clear();
  arrivals_dropped_ = 0;
}

}  // namespace isthmus::sandbox
