#include "isthmus/limits/fair_queue.hpp"

#include <algorithm>
#include <queue>
#include <tuple>

#include "isthmus/error.hpp"

namespace isthmus::limits {

FairQueue::FairQueue(std::shared_ptr<Limiter> limiter) : limiter_(std::move(limiter)) {}

void FairQueue::push(Call call) {
  call.enqueued = limiter_->clock().now();
  Tenant& t = tenant(call.key.tenant);
  // Back from idle: start at the current virtual time, with no credit for the time away.
  if (t.waiting == 0) t.tag = std::max(t.tag, virtual_time_);
  ++t.waiting;
  const int order = -static_cast<int>(call.priority);
  const auto id = call.id;
  std::string name = call.key.str();
  where_[id] = {name, order};
  queues_[std::move(name)].waiting.emplace(std::pair{order, id}, std::move(call));
}

bool FairQueue::cancel(std::uint64_t id) {
  auto w = where_.find(id);
  if (w == where_.end()) return false;
  auto q = queues_.find(w->second.first);
  auto it = q->second.waiting.find({w->second.second, id});
  --tenant(it->second.key.tenant).waiting;
  q->second.waiting.erase(it);
  if (q->second.waiting.empty()) queues_.erase(q);
  where_.erase(w);
  return true;
}

double FairQueue::tag(const std::string& name) const {
  auto it = tenants_.find(name);
  if (it == tenants_.end()) return virtual_time_;
  return it->second.waiting ? it->second.tag : std::max(it->second.tag, virtual_time_);
}

FairQueue::Pass FairQueue::pump() {
  Pass pass;
  blocked_ = false;
  if (queues_.empty()) return pass;
  const TimePoint now = limiter_->clock().now();
  // One entry per queue with waiting calls, best first: (-priority, tag, head id). Tags only
  // grow, so an entry whose tenant was granted meanwhile is put back with its new tag.
  using Entry = std::tuple<int, double, std::uint64_t, const std::string*>;
  std::priority_queue<Entry, std::vector<Entry>, std::greater<>> heads;
  auto offer = [&](const std::string& name, Queue& q) {
    const Call& head = q.waiting.begin()->second;
    heads.emplace(q.waiting.begin()->first.first, tenant(head.key.tenant).tag, head.id, &name);
  };
  for (auto& [name, q] : queues_) offer(name, q);

  while (!heads.empty()) {
    auto [order, tag, id, name] = heads.top();
    heads.pop();
    auto qit = queues_.find(*name);
    Queue& q = qit->second;
    auto it = q.waiting.begin();
    Call& call = it->second;
    Tenant& t = tenant(call.key.tenant);
    if (t.tag != tag) {
      heads.emplace(order, t.tag, id, name);
      continue;
    }
    Reservation r = limiter_->try_acquire(call.key, call.cost, call.priority);
    if (r.blocked) {
      blocked_ = true;  // a release pumps again
      continue;
    }
    std::error_code ec = r.error;
    if (!ec && !r.granted && call.deadline && now + r.wait > *call.deadline) ec = make_error_code(errc::retry_deadline);
    if (!ec && !r.granted) {
      const TimePoint when = now + r.wait;
      if (!pass.next || when < *pass.next) pass.next = when;
      continue;
    }
    if (!ec) {
      const auto waited = now - call.enqueued;
      if (waited > Duration::zero()) limiter_->note_wait(call.key, to_seconds(waited));
      // Interactive calls jump the queue without moving virtual time, so they cost the tenants
      // that join later nothing; they still count against their own tenant's tag.
      if (call.priority != Priority::high) virtual_time_ = std::max(virtual_time_, t.tag);
      t.tag += call.cost / limiter_->weight(call.key.tenant);
    }
    --t.waiting;
    where_.erase(call.id);
    pass.done.push_back(Done{std::move(call), ec, std::move(r)});
    q.waiting.erase(it);
    if (q.waiting.empty()) queues_.erase(qit);
    else offer(*name, q);
  }
  return pass;
}

}  // namespace isthmus::limits
