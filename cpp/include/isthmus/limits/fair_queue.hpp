// The calls waiting on one Limiter, and the choice of which goes next. Pure bookkeeping over the
// limiter's clock, like the Limiter itself: the Governor runs it under its lock and arms a timer
// for `Pass::next`; tests drive it with a ManualClock.
//
// Calls wait in a queue per key (Key::str()), high priority first, FIFO within a priority.
// Across queues the head that goes next is the one with the highest priority and then the lowest
// tag: start-time fair queuing between tenants. Each tenant has a tag in virtual time that
// advances by cost / weight with each of its grants (weights from the limiter's shares); a tenant
// that starts waiting after being idle starts at the current virtual time, so idling banks
// nothing. A head that cannot go (its own share's limit, or a rule only it counts against) lets
// the next one try: nothing the allowance could grant is left unused.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <unordered_map>
#include <vector>

#include "isthmus/limits/limiter.hpp"

namespace isthmus::limits {

class FairQueue {
 public:
  struct Call {
    std::uint64_t id = 0;  // unique per queue; also the FIFO order
    Key key;
    double cost = 1;
    Priority priority = Priority::normal;
    std::optional<TimePoint> deadline;  // fail with retry_deadline rather than wait past it
    TimePoint enqueued{};               // set by push()
  };
  // A call that left the queue: granted (no error), or refused with the reason in `reservation`.
  struct Done {
    Call call;
    std::error_code error;
    Reservation reservation;
  };
  struct Pass {
    std::vector<Done> done;          // in the order they were let go
    std::optional<TimePoint> next;   // the earliest a waiting head may go (none: no timed wait)
  };

  explicit FairQueue(std::shared_ptr<Limiter> limiter);

  void push(Call call);
  bool cancel(std::uint64_t id);  // false: not waiting (granted, refused or unknown)
  // Lets go, best first, every call that may go now.
  Pass pump();

  std::size_t size() const { return where_.size(); }
  bool blocked() const { return blocked_; }  // a head waits for an in-flight cap: pump after release
  double virtual_time() const { return virtual_time_; }
  double tag(const std::string& tenant) const;  // the tenant's next start tag (for tests)

 private:
  struct Queue {
    std::map<std::pair<int, std::uint64_t>, Call> waiting;  // (-priority, id)
  };
  struct Tenant {
    double tag = 0;
    std::size_t waiting = 0;  // calls queued, over all its keys
  };
  Tenant& tenant(const std::string& name) { return tenants_[name]; }

  std::shared_ptr<Limiter> limiter_;
  std::unordered_map<std::string, Queue> queues_;        // by Key::str()
  std::unordered_map<std::uint64_t, std::pair<std::string, int>> where_;  // id -> queue, priority
  std::unordered_map<std::string, Tenant> tenants_;
  double virtual_time_ = 0;
  bool blocked_ = false;
};

}  // namespace isthmus::limits
