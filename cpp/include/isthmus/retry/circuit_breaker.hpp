// A circuit breaker per host: when too many recent calls to a host failed, stop sending for a
// while, then let a few probes through; their outcome closes or reopens the circuit.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "isthmus/limits/clock.hpp"

namespace isthmus::retry {

struct BreakerOptions {
  double failure_ratio = 0.5;  // open when failures / calls in the window reach this ...
  int min_calls = 20;          // ... over at least this many calls
  double window = 10;          // seconds of history
  double open_for = 5;         // seconds before probing
  int probes = 1;              // calls let through at once while half-open
};

void validate(const BreakerOptions& options);

class CircuitBreaker {
 public:
  enum class State { closed, open, half_open };

  explicit CircuitBreaker(BreakerOptions options = {}, std::shared_ptr<limits::Clock> clock = nullptr);

  // May a call to `host` go now? A true while half-open takes a probe slot: the caller must
  // record() the outcome.
  bool allow(const std::string& host);
  void record(const std::string& host, bool failure);
  // Gives a probe slot back without an outcome (the call was cancelled before it was sent).
  void abandon(const std::string& host);
  State state(const std::string& host);
  // Seconds until an open circuit lets a probe through (0 when not open).
  double retry_in(const std::string& host);

 private:
  static constexpr int kSlots = 10;
  struct Host {
    State state = State::closed;
    limits::TimePoint open_until{};
    int probes_out = 0;
    // The window as kSlots time slots; slot_start[i] says which slot period i holds.
    long long slot_epoch[kSlots] = {};
    int calls[kSlots] = {};
    int failures[kSlots] = {};
  };
  Host& host(const std::string& name);
  void roll(Host& h, long long epoch);

  BreakerOptions options_;
  std::shared_ptr<limits::Clock> clock_;
  std::mutex mutex_;
  std::unordered_map<std::string, Host> hosts_;
};

}  // namespace isthmus::retry
