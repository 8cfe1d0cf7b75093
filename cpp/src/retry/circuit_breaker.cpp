#include "isthmus/retry/circuit_breaker.hpp"

#include <cmath>

#include "isthmus/error.hpp"

namespace isthmus::retry {

void validate(const BreakerOptions& o) {
  auto bad = [](const std::string& field, const std::string& why) {
    throw Error(errc::invalid_argument, "circuit_breaker." + field + ": " + why);
  };
  if (!(o.failure_ratio > 0 && o.failure_ratio <= 1)) bad("failure_ratio", "must be in (0, 1]");
  if (o.min_calls < 1) bad("min_calls", "must be at least 1");
  if (!(std::isfinite(o.window) && o.window > 0)) bad("window", "must be seconds greater than 0");
  if (!(std::isfinite(o.open_for) && o.open_for > 0)) bad("open_for", "must be seconds greater than 0");
  if (o.probes < 1) bad("probes", "must be at least 1");
}

CircuitBreaker::CircuitBreaker(BreakerOptions options, std::shared_ptr<limits::Clock> clock)
    : options_(options), clock_(clock ? std::move(clock) : limits::SteadyClock::shared()) {
  validate(options_);
}

CircuitBreaker::Host& CircuitBreaker::host(const std::string& name) { return hosts_[name]; }

// Clears slots that fell out of the window, so counts cover the last `window` seconds.
void CircuitBreaker::roll(Host& h, long long epoch) {
  const int i = static_cast<int>(epoch % kSlots);
  if (h.slot_epoch[i] != epoch) {
    h.slot_epoch[i] = epoch;
    h.calls[i] = 0;
    h.failures[i] = 0;
  }
}

bool CircuitBreaker::allow(const std::string& name) {
  std::lock_guard lock(mutex_);
  Host& h = host(name);
  const auto now = clock_->now();
  if (h.state == State::open) {
    if (now < h.open_until) return false;
    h.state = State::half_open;
    h.probes_out = 0;
  }
  if (h.state == State::half_open) {
    if (h.probes_out >= options_.probes) return false;
    ++h.probes_out;
  }
  return true;
}

void CircuitBreaker::abandon(const std::string& name) {
  std::lock_guard lock(mutex_);
  Host& h = host(name);
  if (h.state == State::half_open && h.probes_out > 0) --h.probes_out;
}

void CircuitBreaker::record(const std::string& name, bool failure) {
  std::lock_guard lock(mutex_);
  Host& h = host(name);
  const auto now = clock_->now();
  if (h.state == State::half_open) {
    if (h.probes_out > 0) --h.probes_out;
    if (failure) {
      h.state = State::open;
      h.open_until = now + limits::seconds(options_.open_for);
    } else {
      h = Host{};  // a good probe: closed, with a clean window
    }
    return;
  }
  if (h.state == State::open) return;  // answers to calls sent before it opened
  const double slot_len = options_.window / kSlots;
  const auto epoch = static_cast<long long>(
      std::floor(limits::to_seconds(now.time_since_epoch()) / slot_len));
  roll(h, epoch);
  const int i = static_cast<int>(epoch % kSlots);
  ++h.calls[i];
  if (failure) ++h.failures[i];
  int calls = 0, failures = 0;
  for (int k = 0; k < kSlots; ++k)
    if (h.slot_epoch[k] > epoch - kSlots) {
      calls += h.calls[k];
      failures += h.failures[k];
    }
  if (calls >= options_.min_calls && failures >= options_.failure_ratio * calls) {
    h.state = State::open;
    h.open_until = now + limits::seconds(options_.open_for);
  }
}

CircuitBreaker::State CircuitBreaker::state(const std::string& name) {
  std::lock_guard lock(mutex_);
  Host& h = host(name);
  if (h.state == State::open && clock_->now() >= h.open_until) return State::half_open;
  return h.state;
}

double CircuitBreaker::retry_in(const std::string& name) {
  std::lock_guard lock(mutex_);
  Host& h = host(name);
  if (h.state != State::open) return 0;
  return std::max(0.0, limits::to_seconds(h.open_until - clock_->now()));
}

}  // namespace isthmus::retry
