// Time for limiters. Limiters never read a clock directly: they are handed one, so tests drive
// a ManualClock and stay deterministic (no sleeping).
#pragma once

#include <atomic>
#include <chrono>
#include <memory>

namespace isthmus::limits {

using Duration = std::chrono::nanoseconds;
using TimePoint = std::chrono::steady_clock::time_point;

class Clock {
 public:
  virtual ~Clock() = default;
  // Monotonic time: what waits are measured against.
  virtual TimePoint now() const = 0;
  // Wall time in seconds since the Unix epoch: for HTTP-dates, epoch resets and quota windows
  // that end at a calendar boundary.
  virtual double unix_now() const = 0;
};

class SteadyClock final : public Clock {
 public:
  TimePoint now() const override { return std::chrono::steady_clock::now(); }
  double unix_now() const override {
    return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  }
  static std::shared_ptr<Clock> shared() {
    static const auto instance = std::make_shared<SteadyClock>();
    return instance;
  }
};

// Moves only when told; both times advance together.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(double unix_start = 1'700'000'000.0) : unix_start_(unix_start) {}
  TimePoint now() const override { return TimePoint(Duration(ns_.load())); }
  double unix_now() const override { return unix_start_ + static_cast<double>(ns_.load() - kStart) * 1e-9; }
  void advance(Duration d) { ns_ += d.count(); }
  void advance_seconds(double s) { ns_ += static_cast<long long>(s * 1e9); }

 private:
  // Not zero, so "never" (a zero TimePoint) stays in the past.
  static constexpr long long kStart = 1'000'000'000'000LL;
  double unix_start_;
  std::atomic<long long> ns_{kStart};
};

inline Duration seconds(double s) {
  return std::chrono::duration_cast<Duration>(std::chrono::duration<double>(s));
}
inline double to_seconds(Duration d) { return std::chrono::duration<double>(d).count(); }

}  // namespace isthmus::limits
