// Rates and quotas counted outside the process, so that every process given the same limits
// shares one allowance. The Limiter keeps what only makes sense per process (in-flight caps,
// adaptive limits, the server's own pauses); a SharedCounter keeps the rate and quota buckets
// (coord::Coordination does it on Redis). The Governor asks it after the local rules agree.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

#include "isthmus/limits/clock.hpp"

namespace isthmus::limits {

// One rate or quota bucket, named so that every process derives the same name.
struct SharedRule {
  std::string bucket;      // unique per (limiter name, rule, scoped key)
  bool quota = false;
  // rate: seconds per unit, and burst * that less the limiter's margin: a call of cost c may go
  // once the bucket's theoretical arrival time is at most b - c * a ahead of now (GCRA).
  // quota: units per window and the window in seconds (UTC-aligned).
  double a = 0;
  double b = 0;
  std::string describe;    // for reasons and errors
};

struct SharedGrant {
  double wait = 0;         // seconds to wait before sending (counted from the answer)
  bool granted = false;    // committed; otherwise `error` says why not
  std::error_code error;   // quota_exhausted / rate_limited (longer than max_wait) / connect_failed
  double resets_at = 0;    // Unix seconds, with quota_exhausted
  std::string reason;      // which rule set the wait, or what failed
};

class SharedCounter {
 public:
  virtual ~SharedCounter() = default;
  // Atomically takes `cost` from every rule's bucket at the earliest time all admit it, unless
  // that is more than `max_wait` away. While the counter cannot be reached nothing is granted:
  // it keeps trying, with back-off, until `deadline` (steady time), then fails. Completes once,
  // on a thread of the counter's.
  virtual void reserve(std::vector<SharedRule> rules, double cost, double max_wait,
                       TimePoint deadline, std::function<void(SharedGrant)> done) = 0;
};

}  // namespace isthmus::limits
